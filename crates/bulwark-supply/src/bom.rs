//! The AI-BOM: CycloneDX 1.6 JSON listing every registered model (as a
//! `machine-learning-model` component with hashes, licence and model card) and Bulwark
//! itself with the crates it was built from (read from its `Cargo.lock` at build time).

use serde_json::{json, Value};

use crate::registry::{Entry, Registry};

const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

/// SPDX identifiers written as `license.id`; anything else goes in `license.name`.
const SPDX: &[&str] = &[
    "Apache-2.0",
    "MIT",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "GPL-2.0-only",
    "GPL-3.0-only",
    "LGPL-2.1-only",
    "LGPL-3.0-only",
    "MPL-2.0",
    "CC-BY-4.0",
    "CC-BY-SA-4.0",
    "CC-BY-NC-4.0",
    "CC0-1.0",
    "Unlicense",
    "ISC",
    "OpenRAIL",
    "AFL-3.0",
];

/// `(name, version)` of every crate from a registry in the lock file.
pub fn locked_crates() -> Vec<(String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for block in CARGO_LOCK.split("[[package]]").skip(1) {
        let field = |k: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(k)
                    .and_then(|r| r.trim_start().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_owned())
            })
        };
        if let (Some(n), Some(v), Some(src)) = (field("name "), field("version "), field("source "))
        {
            if src.starts_with("registry+") {
                out.insert((n, v));
            }
        }
    }
    out.into_iter().collect()
}

fn licence(l: &str) -> Value {
    let l = l.trim();
    match SPDX.iter().find(|s| s.eq_ignore_ascii_case(l)) {
        Some(id) => json!({"license": {"id": id}}),
        None => json!({"license": {"name": l}}),
    }
}

fn hashes(sha256: &str, blake3: &str) -> Value {
    json!([{"alg": "SHA-256", "content": sha256}, {"alg": "BLAKE3", "content": blake3}])
}

fn model(e: &Entry) -> Value {
    let mut c = json!({
        "type": "machine-learning-model",
        "bom-ref": format!("model:{}", e.name),
        "name": e.name,
        "description": format!("{} model registered from {}", e.format, e.source),
    });
    if let [f] = e.files.as_slice() {
        c["hashes"] = hashes(&f.sha256, &f.blake3);
    } else {
        c["components"] = e
            .files
            .iter()
            .map(|f| {
                json!({
                    "type": "file",
                    "bom-ref": format!("model:{}:{}", e.name, f.path.display()),
                    "name": f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    "hashes": hashes(&f.sha256, &f.blake3),
                })
            })
            .collect();
    }
    if let Some(l) = &e.info.license {
        c["licenses"] = json!([licence(l)]);
    }
    let mut params = json!({
        "task": if e.info.kind.as_deref() == Some("adapter") { "adapter" } else { "text-generation" },
        "inputs": [{"format": "text"}],
        "outputs": [{"format": "text"}],
    });
    if let Some(a) = &e.info.architecture {
        params["architectureFamily"] = json!(a);
        params["modelArchitecture"] = json!(format!(
            "{a}{}{}",
            e.info
                .parameters
                .map(|p| format!(", {p} parameters"))
                .unwrap_or_default(),
            e.info
                .quantisation
                .as_ref()
                .map(|q| format!(", {q}"))
                .unwrap_or_default()
        ));
    }
    c["modelCard"] = json!({
        "modelParameters": params,
        "considerations": {
            "useCases": ["Served by Bulwark behind its OpenAI- and Anthropic-compatible API, with the guard and data-residency policy in front of it."],
        },
    });
    let mut props = vec![
        json!({"name": "bulwark:format", "value": e.format}),
        json!({"name": "bulwark:source", "value": e.source}),
        json!({"name": "bulwark:verification", "value": e.state()}),
        json!({"name": "bulwark:signed", "value": e.signature.is_some().to_string()}),
    ];
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            props.push(json!({"name": format!("bulwark:{k}"), "value": v}));
        }
    };
    add("parameters", e.info.parameters.map(|p| p.to_string()));
    add("quantisation", e.info.quantisation.clone());
    add(
        "context_length",
        e.info.context_length.map(|p| p.to_string()),
    );
    add("chat_template_sha256", e.info.chat_template_sha256.clone());
    add("findings", Some(e.findings.len().to_string()));
    c["properties"] = json!(props);
    c
}

/// The BOM for a registry, made at `timestamp` (RFC 3339), with `serial` as its UUID.
pub fn build(reg: &Registry, timestamp: &str, serial: &str) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let crates = locked_crates();
    let mut components: Vec<Value> = reg.models.values().map(model).collect();
    components.extend(crates.iter().map(|(n, v)| {
        json!({
            "type": "library",
            "bom-ref": format!("pkg:cargo/{n}@{v}"),
            "name": n,
            "version": v,
            "purl": format!("pkg:cargo/{n}@{v}"),
        })
    }));
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{serial}"),
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {"components": [{"type": "application", "name": "bulwark", "version": version}]},
            "component": {
                "type": "application",
                "bom-ref": "bulwark",
                "name": "bulwark",
                "version": version,
                "description": "Sovereign AI gateway",
                "licenses": [{"license": {"id": "Apache-2.0"}}],
            },
        },
        "components": components,
        "dependencies": [{
            "ref": "bulwark",
            "dependsOn": reg.models.values().map(|e| format!("model:{}", e.name))
                .chain(crates.iter().map(|(n, v)| format!("pkg:cargo/{n}@{v}")))
                .collect::<Vec<_>>(),
        }],
    })
}
