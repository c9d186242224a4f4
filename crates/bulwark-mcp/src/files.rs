//! The built-in `files` tools: list, read and search under the configured roots.
//!
//! A path is relative to its root; it is joined, resolved (symlinks and `..` followed
//! by the operating system) and must still lie under the root's resolved path, so
//! neither `..` nor a symlink can leave it. Search walks without following symlinks.
//! Everything is bounded: entries listed, bytes read, files and bytes searched.

use std::path::{Component, Path, PathBuf};

use bulwark_config::mcp::FilesRoot;
use rmcp::model::{JsonObject, Tool};
use serde_json::{json, Value};

/// Most bytes `read` returns (the rest is cut, and the result says so).
pub const MAX_READ_BYTES: u64 = 1 << 20;
/// Most entries `list` returns.
pub const MAX_LIST: usize = 1000;
/// Most files `search` opens, and most matches it returns.
pub const MAX_SEARCH_FILES: usize = 10_000;
pub const MAX_MATCHES: usize = 100;

/// The tools, on their server's own names (`list`, `read`, `search`).
pub fn tools(roots: &[FilesRoot]) -> Vec<Tool> {
    let names: Vec<&str> = roots.iter().map(|r| r.name.as_str()).collect();
    let root = json!({"type": "string", "enum": names, "description": "Which root."});
    let schema = |props: Value, required: &[&str]| -> JsonObject {
        json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    vec![
        Tool::new(
            "list",
            "List the files and directories at a path under a root.",
            schema(
                json!({"root": root, "path": {"type": "string", "maxLength": 4096, "description": "Relative to the root; empty for the root itself."}}),
                &["root"],
            ),
        ),
        Tool::new(
            "read",
            "Read a text file under a root (at most 1 MiB).",
            schema(
                json!({"root": root, "path": {"type": "string", "maxLength": 4096}}),
                &["root", "path"],
            ),
        ),
        Tool::new(
            "search",
            "Find files under a root whose name or text contains a string (case-insensitive).",
            schema(
                json!({"root": root, "query": {"type": "string", "minLength": 1, "maxLength": 256}}),
                &["root", "query"],
            ),
        ),
    ]
}

/// What went wrong, in words for the caller.
pub type Refusal = String;

fn root<'a>(roots: &'a [FilesRoot], args: &JsonObject) -> Result<&'a FilesRoot, Refusal> {
    let name = args.get("root").and_then(Value::as_str).unwrap_or("");
    roots
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no root named `{name}`"))
}

/// `rel` resolved under `root`, or why not.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, Refusal> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
    {
        return Err(format!("`{rel}` is not a path relative to the root"));
    }
    let joined = root.join(rel_path);
    let real = std::fs::canonicalize(&joined).map_err(|_| format!("`{rel}` does not exist"))?;
    if !real.starts_with(root) {
        return Err(format!("`{rel}` leads outside the root"));
    }
    Ok(real)
}

/// Runs tool `name`: the result's text, or a refusal.
pub fn call(roots: &[FilesRoot], name: &str, args: &JsonObject) -> Result<String, Refusal> {
    let r = root(roots, args)?;
    let path = args.get("path").and_then(Value::as_str).unwrap_or("");
    match name {
        "list" => {
            let dir = resolve(&r.path, path)?;
            let mut out = Vec::new();
            let entries =
                std::fs::read_dir(&dir).map_err(|_| format!("`{path}` is not a directory"))?;
            for e in entries.flatten() {
                if out.len() == MAX_LIST {
                    break;
                }
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => "directory",
                    Ok(t) if t.is_symlink() => "symlink",
                    _ => "file",
                };
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(
                    json!({"name": e.file_name().to_string_lossy(), "type": kind, "size": size}),
                );
            }
            out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(Value::Array(out).to_string())
        }
        "read" => {
            let file = resolve(&r.path, path)?;
            if !file.is_file() {
                return Err(format!("`{path}` is not a file"));
            }
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(&file)
                .and_then(|f| f.take(MAX_READ_BYTES).read_to_end(&mut bytes))
                .map_err(|_| format!("`{path}` could not be read"))?;
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            if file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_READ_BYTES {
                text.push_str("\n[cut at 1 MiB]");
            }
            Ok(text)
        }
        "search" => {
            let query = args
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_lowercase();
            if query.is_empty() {
                return Err("query must not be empty".into());
            }
            let mut matches = Vec::new();
            let mut opened = 0usize;
            let mut stack = vec![r.path.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    if matches.len() >= MAX_MATCHES || opened >= MAX_SEARCH_FILES {
                        break;
                    }
                    let Ok(t) = e.file_type() else { continue };
                    let p = e.path();
                    if t.is_dir() {
                        stack.push(p);
                        continue;
                    }
                    if !t.is_file() {
                        continue; // symlinks are not followed
                    }
                    let rel = p
                        .strip_prefix(&r.path)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned();
                    if rel.to_lowercase().contains(&query) {
                        matches.push(json!({"path": rel, "line": null, "text": null}));
                        continue;
                    }
                    opened += 1;
                    if e.metadata().map(|m| m.len()).unwrap_or(u64::MAX) > MAX_READ_BYTES {
                        continue;
                    }
                    let Ok(text) = std::fs::read_to_string(&p) else {
                        continue;
                    };
                    if let Some((n, line)) = text
                        .lines()
                        .enumerate()
                        .find(|(_, l)| l.to_lowercase().contains(&query))
                    {
                        let line: String = line.chars().take(200).collect();
                        matches.push(json!({"path": rel, "line": n + 1, "text": line}));
                    }
                }
            }
            matches.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
            Ok(Value::Array(matches).to_string())
        }
        other => Err(format!("the files server has no tool `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_policy::DataClass;

    fn setup() -> (tempfile::TempDir, Vec<FilesRoot>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), "hello\nthe Quarterly plan\n").unwrap();
        std::fs::write(root.join("sub/b.md"), "nothing here").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).unwrap();
        let roots = vec![FilesRoot {
            name: "docs".into(),
            path: std::fs::canonicalize(&root).unwrap(),
            class: DataClass::Internal,
        }];
        (dir, roots)
    }

    fn args(v: Value) -> JsonObject {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn list_read_and_search_stay_under_the_root() {
        let (_dir, roots) = setup();
        let listed = call(&roots, "list", &args(json!({"root": "docs"}))).unwrap();
        assert!(
            listed.contains("\"a.txt\"") && listed.contains("\"sub\""),
            "{listed}"
        );
        let text = call(
            &roots,
            "read",
            &args(json!({"root": "docs", "path": "a.txt"})),
        )
        .unwrap();
        assert!(text.starts_with("hello"));
        let found = call(
            &roots,
            "search",
            &args(json!({"root": "docs", "query": "quarterly"})),
        )
        .unwrap();
        assert!(
            found.contains("\"a.txt\"") && found.contains("\"line\":2"),
            "{found}"
        );
        for (path, why) in [
            ("../secret.txt", "outside the root"),
            ("sub/../../secret.txt", "outside the root"),
            ("/etc/passwd", "not a path relative"),
            ("link", "outside the root"),
            ("missing.txt", "does not exist"),
        ] {
            let e = call(&roots, "read", &args(json!({"root": "docs", "path": path}))).unwrap_err();
            assert!(e.contains(why), "{path}: {e}");
        }
        let e = call(
            &roots,
            "read",
            &args(json!({"root": "nope", "path": "a.txt"})),
        )
        .unwrap_err();
        assert!(e.contains("no root named"), "{e}");
        // The symlink to the outside is not followed by search either.
        let found = call(
            &roots,
            "search",
            &args(json!({"root": "docs", "query": "outside"})),
        )
        .unwrap();
        assert_eq!(found, "[]");
    }

    proptest::proptest! {
        /// Whatever path a caller sends, what it resolves to lies under the root.
        #[test]
        fn no_path_resolves_outside_the_root(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "..", ".", "sub", "a.txt", "link", "", "/", "%2e%2e", "..%2f", "..\\",
                    "~", "\u{0}", "sub/..", "../root", "root", "secret.txt",
                ]),
                0..8,
            ),
            absolute in proptest::bool::ANY,
        ) {
            let (_dir, roots) = setup();
            let mut path = parts.join("/");
            if absolute {
                path.insert(0, '/');
            }
            if let Ok(p) = resolve(&roots[0].path, &path) {
                proptest::prop_assert!(p.starts_with(&roots[0].path), "{path} -> {}", p.display());
            }
            let args = json!({"root": "docs", "path": path});
            if let Ok(text) = call(&roots, "read", &args.as_object().unwrap().clone()) {
                proptest::prop_assert!(!text.contains("outside"), "{path}");
            }
        }
    }
}
