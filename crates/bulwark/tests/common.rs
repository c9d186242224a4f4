//! Shared helpers for the integration tests: config files and the launched binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bulwark_testkit::Bulwark;

pub fn model_path() -> PathBuf {
    bulwark_testkit::default_model_path()
}

/// Runs the binary with `args` (no input): (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first line a started `bulwark serve` prints (`bulwark listening on URL` when it
/// started), after which the process is stopped.
pub fn first_line_then_kill(mut child: std::process::Child) -> String {
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    let _ = child.kill();
    let _ = child.wait();
    line
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("bulwark-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("temp dir: {e}"));
        TempDir(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `[[local_models]]` block for the default model with the given extra lines.
pub fn local_model(extra: &str) -> String {
    format!(
        "[[local_models]]\nname = \"smollm2\"\npath = \"{}\"\nsha256 = \"{}\"\nthreads = 2\n{extra}\n",
        model_path().display(),
        bulwark_config::default_model::GGUF_SHA256
    )
}

/// Starts the binary with a config and waits until `/readyz` says ready.
pub async fn start(dir: &TempDir, config: &str) -> Bulwark {
    let cfg = dir.write("bulwark.toml", config);
    start_with(Some(&cfg), &[]).await
}

pub async fn start_with(config: Option<&Path>, env: &[(&str, &str)]) -> Bulwark {
    let b = Bulwark::start(Path::new(env!("CARGO_BIN_EXE_bulwark")), config, env)
        .unwrap_or_else(|e| panic!("start bulwark: {e}"));
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = client.get(b.url("/readyz")).send().await {
            if r.status() == 200 {
                return b;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("bulwark never became ready; logs:\n{}", b.logs());
}

/// Reads a Prometheus counter for the local model.
pub async fn metric(b: &Bulwark, name: &str) -> f64 {
    let text = reqwest::get(b.url("/metrics"))
        .await
        .and_then(|r| r.error_for_status());
    let text = match text {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => panic!("metrics: {e}"),
    };
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

/// POSTs a chat request (one user message), with a data-class header when given;
/// returns (status, `x-bulwark-route`, JSON body).
pub async fn send_chat(
    b: &Bulwark,
    model: &str,
    class: Option<&str>,
    content: &str,
) -> (u16, String, serde_json::Value) {
    let body =
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]});
    let mut req = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .json(&body);
    if let Some(c) = class {
        req = req.header("x-bulwark-data-class", c);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{e}"));
    let status = r.status().as_u16();
    let route = r
        .headers()
        .get("x-bulwark-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (
        status,
        route,
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The text of a streamed chat answer: its deltas' content, concatenated.
pub fn streamed_content(sse: &str) -> String {
    sse.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}
