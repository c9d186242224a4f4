//! LoRA adapters: llama.cpp's GGUF adapters (`general.type = adapter`) and PEFT's
//! safetensors (`adapter_model.safetensors`): pairing, rank, target modules, weight
//! norms, and the binding to a base model.
//!
//! An adapter changes a model's behaviour with a few megabytes, so it deserves the
//! same scrutiny as the model: a rank or norm far from its siblings is how a backdoor
//! or a wholesale weight replacement shows up. Per module the norm of the update is
//! bounded by ||B||·||A|| (Frobenius); modules whose bound is an outlier among the
//! adapter's modules (more than 8 median absolute deviations above the median, in log
//! space) are flagged, and with the base model at hand the bound is compared with the
//! base weight's own norm.
//!
//! Both formats are read into [`Module`]s, and one set of checks runs on those.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::finding::{Finding, Severity};
use crate::gguf::{Gguf, Tensor};
use crate::safetensors::{SafeTensors, Tensor as StTensor};

/// One adapted module, whatever the format: A maps `input` features to `rank`, B maps
/// `rank` to `output`.
struct Module<'a> {
    name: &'a str,
    /// A as (input, rank) and B as (rank, output); `None` when a tensor is not 2-D.
    a: Option<(u64, u64)>,
    b: Option<(u64, u64)>,
    /// Both tensors' values, when their type can be read.
    values: PairValues<'a>,
}

/// Reads a module's A and B values on demand (large adapters are read once, here).
type PairValues<'a> = Box<dyn Fn() -> Option<(Vec<f32>, Vec<f32>)> + 'a>;

/// A base weight as (input, output) and its values.
struct BaseWeight<'a> {
    shape: Option<(u64, u64)>,
    values: Box<dyn Fn() -> Option<Vec<f32>> + 'a>,
}

fn two(d: &[u64]) -> Option<(u64, u64)> {
    match d {
        [x, y] => Some((*x, *y)),
        _ => None,
    }
}

/// Element encodings the norm checks can read.
#[derive(Clone, Copy)]
enum Float {
    F32,
    F16,
    Bf16,
}

/// Reads `size` bytes at `offset` as floats; `None` when unreadable or over 1 GiB.
fn read_floats(path: &Path, offset: u64, size: u64, ty: Float) -> Option<Vec<f32>> {
    if size > 1 << 30 {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0u8; size as usize];
    f.read_exact(&mut buf).ok()?;
    Some(match ty {
        Float::F32 => buf
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Float::F16 => buf
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Float::Bf16 => buf
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
    })
}

/// An F32, F16 or BF16 GGUF tensor's values; `None` for other types.
fn values(path: &Path, g: &Gguf, t: &Tensor) -> Option<Vec<f32>> {
    let ty = match t.ggml_type {
        0 => Float::F32,
        1 => Float::F16,
        30 => Float::Bf16,
        _ => return None,
    };
    read_floats(path, g.data_offset.checked_add(t.offset)?, t.size?, ty)
}

/// An F32, F16 or BF16 safetensors tensor's values.
fn st_values(path: &Path, st: &SafeTensors, t: &StTensor) -> Option<Vec<f32>> {
    let ty = match t.dtype.as_str() {
        "F32" => Float::F32,
        "F16" => Float::F16,
        "BF16" => Float::Bf16,
        _ => return None,
    };
    read_floats(
        path,
        st.data_offset.checked_add(t.begin)?,
        t.end.checked_sub(t.begin)?,
        ty,
    )
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 => {
            if frac == 0.0 {
                f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// The checks every adapter gets: shapes that multiply, ranks, finite weights, norm
/// outliers, and a summary. `unpaired` are the format's leftover tensors.
fn check_modules(
    modules: &[Module<'_>],
    file: &str,
    mut out: Vec<Finding>,
    summary: String,
) -> Vec<Finding> {
    let mut ranks = BTreeSet::new();
    let mut bounds = Vec::new();
    for m in modules {
        let at = format!("{file}: `{}`", m.name);
        let (Some((input, r)), Some((r_b, output))) = (m.a, m.b) else {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                "A and B must both be matrices",
            ));
            continue;
        };
        if r != r_b {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                format!("A ({input} -> {r}) and B ({r_b} -> {output}) do not multiply"),
            ));
            continue;
        }
        ranks.insert(r);
        let smaller = input.min(output);
        if r > 256 || (smaller > 0 && r * 2 > smaller) {
            out.push(Finding::new(
                Severity::Medium,
                "lora.high_rank",
                &at,
                format!("rank {r} for a {input}x{output} weight: close to a full replacement"),
            ));
        }
        if let Some((a, b)) = (m.values)() {
            if a.iter().chain(&b).any(|x| !x.is_finite()) {
                out.push(Finding::new(
                    Severity::High,
                    "lora.non_finite",
                    &at,
                    "NaN or infinite weights",
                ));
                continue;
            }
            bounds.push((m.name, norm(&a) * norm(&b)));
        }
    }
    if ranks.len() > 1 {
        out.push(Finding::new(
            Severity::Low,
            "lora.mixed_ranks",
            format!("{file}: tensors"),
            format!("ranks {ranks:?} differ between modules"),
        ));
    }
    let targets: BTreeSet<&str> = modules.iter().map(|m| target(m.name)).collect();
    out.push(Finding::new(
        Severity::Info,
        "lora.summary",
        file,
        format!(
            "{} adapted modules, rank {ranks:?}, targets {targets:?}, {summary}",
            modules.len()
        ),
    ));
    out.extend(outliers(&bounds, file));
    out
}

/// The kind of weight a module adapts: `attn_q` in `blk.0.attn_q.weight`, `q_proj` in
/// `model.layers.0.self_attn.q_proj`.
fn target(module: &str) -> &str {
    let m = module.strip_suffix(".weight").unwrap_or(module);
    m.rsplit('.').next().unwrap_or(m)
}

/// Each module against the base weight it adapts (found by `base`): it must exist,
/// fit, and not be outweighed by its update.
fn check_modules_binding<'a>(
    modules: &[Module<'_>],
    file: &str,
    base: impl Fn(&str) -> Option<BaseWeight<'a>>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in modules {
        let at = format!("{file}: `{}`", m.name);
        let Some(w) = base(m.name) else {
            out.push(Finding::new(
                Severity::High,
                "lora.unknown_target",
                &at,
                "the base model has no such weight",
            ));
            continue;
        };
        let fits = matches!((w.shape, m.a, m.b), (Some((wi, wo)), Some((ai, _)), Some((_, bo))) if wi == ai && wo == bo);
        if !fits {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                format!(
                    "A {:?} · B {:?} does not fit the base weight {:?} (input, output)",
                    m.a, m.b, w.shape
                ),
            ));
            continue;
        }
        if let (Some((a, b)), Some(wv)) = ((m.values)(), (w.values)()) {
            let (bound, base_norm) = (norm(&a) * norm(&b), norm(&wv));
            if base_norm > 0.0 && bound > base_norm {
                out.push(Finding::new(
                    Severity::High,
                    "lora.update_exceeds_base",
                    &at,
                    format!("the update's norm bound {bound:.3e} exceeds the base weight's norm {base_norm:.3e}"),
                ));
            }
        }
    }
    out
}

// GGUF: A is [input, rank], B is [rank, output] (ggml's ne order); names end in
// `.lora_a` / `.lora_b`.

fn gguf_modules<'a>(g: &'a Gguf, path: &'a Path, out: &mut Vec<Finding>) -> Vec<Module<'a>> {
    let file = path.display();
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for t in &g.tensors {
        if let Some(m) = t.name.strip_suffix(".lora_a") {
            a.insert(m, t);
        } else if let Some(m) = t.name.strip_suffix(".lora_b") {
            b.insert(m, t);
        } else {
            out.push(Finding::new(
                Severity::High,
                "lora.unpaired_tensor",
                format!("{file}: tensor `{}`", t.name),
                "not half of a lora_a/lora_b pair: an adapter should carry nothing else",
            ));
        }
    }
    unpaired(&a, &b, &file.to_string(), out);
    a.into_iter()
        .filter_map(|(name, ta)| {
            let tb: &Tensor = b.get(name)?;
            Some(Module {
                name,
                a: two(&ta.dims),
                b: two(&tb.dims),
                values: Box::new(move || Some((values(path, g, ta)?, values(path, g, tb)?))),
            })
        })
        .collect()
}

/// Findings for the A without a B and the B without an A.
fn unpaired<T>(a: &BTreeMap<&str, T>, b: &BTreeMap<&str, T>, file: &str, out: &mut Vec<Finding>) {
    for (m, which) in a
        .keys()
        .filter(|m| !b.contains_key(*m))
        .map(|m| (m, "A without its B"))
        .chain(
            b.keys()
                .filter(|m| !a.contains_key(*m))
                .map(|m| (m, "B without its A")),
        )
    {
        out.push(Finding::new(
            Severity::High,
            "lora.unpaired_tensor",
            format!("{file}: `{m}`"),
            which,
        ));
    }
}

/// Checks a GGUF adapter on its own.
pub fn check_gguf(g: &Gguf, path: &Path) -> Vec<Finding> {
    let file = path.display().to_string();
    if g.str("adapter.type") != Some("lora") {
        return vec![Finding::new(
            Severity::Medium,
            "lora.unknown_adapter",
            format!("{file}: adapter.type"),
            "an adapter that is not a LoRA: Bulwark cannot check it",
        )];
    }
    let mut out = Vec::new();
    let modules = gguf_modules(g, path, &mut out);
    let summary = format!("alpha {:?}", g.get("adapter.lora.alpha"));
    check_modules(&modules, &file, out, summary)
}

/// Checks that a GGUF adapter fits its GGUF base: same architecture, every adapted
/// weight present with matching shape, no update larger than its weight.
pub fn check_binding(
    adapter: &Gguf,
    adapter_path: &Path,
    base: &Gguf,
    base_path: &Path,
) -> Vec<Finding> {
    let file = adapter_path.display().to_string();
    if adapter.architecture() != base.architecture() {
        return vec![Finding::new(
            Severity::High,
            "lora.wrong_base",
            format!("{file}: general.architecture"),
            format!(
                "made for {:?}, but the base model is {:?}",
                adapter.architecture(),
                base.architecture()
            ),
        )];
    }
    let weights: BTreeMap<&str, &Tensor> =
        base.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let modules = gguf_modules(adapter, adapter_path, &mut Vec::new());
    check_modules_binding(&modules, &file, |name| {
        let w: &Tensor = weights.get(name)?;
        Some(BaseWeight {
            // ggml: [input, output].
            shape: two(&w.dims),
            values: Box::new(move || values(base_path, base, w)),
        })
    })
}

// PEFT safetensors: A is [rank, input], B is [output, rank] (PyTorch's order); names
// end in `.lora_A.weight` / `.lora_B.weight`, prefixed `base_model.model.`.

fn safetensors_modules<'a>(
    st: &'a SafeTensors,
    path: &'a Path,
    out: &mut Vec<Finding>,
) -> Vec<Module<'a>> {
    let file = path.display();
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for t in &st.tensors {
        if let Some(m) = t.name.strip_suffix(".lora_A.weight") {
            a.insert(m, t);
        } else if let Some(m) = t.name.strip_suffix(".lora_B.weight") {
            b.insert(m, t);
        } else if !t.name.ends_with("lora_magnitude_vector") {
            out.push(Finding::new(
                Severity::High,
                "lora.unpaired_tensor",
                format!("{file}: tensor `{}`", t.name),
                "not part of a LoRA pair: an adapter should carry nothing else",
            ));
        }
    }
    unpaired(&a, &b, &file.to_string(), out);
    let flip = |s: &[u64]| two(s).map(|(x, y)| (y, x));
    a.into_iter()
        .filter_map(|(name, ta)| {
            let tb: &StTensor = b.get(name)?;
            Some(Module {
                name,
                a: flip(&ta.shape),
                b: flip(&tb.shape),
                values: Box::new(move || {
                    Some((st_values(path, st, ta)?, st_values(path, st, tb)?))
                }),
            })
        })
        .collect()
}

/// Checks a PEFT adapter on its own, and against `adapter_config.json` beside it.
pub fn check_safetensors(st: &SafeTensors, path: &Path) -> Vec<Finding> {
    let file = path.display().to_string();
    let mut out = Vec::new();
    let modules = safetensors_modules(st, path, &mut out);
    let config: Option<serde_json::Value> = path
        .parent()
        .map(|d| d.join("adapter_config.json"))
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(c) = &config {
        let at = format!("{file}: adapter_config.json");
        let ranks: BTreeSet<u64> = modules.iter().filter_map(|m| m.a.map(|a| a.1)).collect();
        if let Some(r) = c["r"].as_u64() {
            if !ranks.is_empty() && !ranks.contains(&r) {
                out.push(Finding::new(
                    Severity::Medium,
                    "lora.config_mismatch",
                    &at,
                    format!("says rank {r}, the tensors have {ranks:?}"),
                ));
            }
        }
        if let Some(declared) = c["target_modules"].as_array() {
            let declared: BTreeSet<&str> = declared
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect();
            let undeclared: BTreeSet<&str> = modules
                .iter()
                .map(|m| target(m.name))
                .filter(|t| !declared.contains(t))
                .collect();
            if !undeclared.is_empty() {
                out.push(Finding::new(
                    Severity::Medium,
                    "lora.config_mismatch",
                    &at,
                    format!(
                        "modules {undeclared:?} are adapted but not in target_modules {declared:?}"
                    ),
                ));
            }
        }
    }
    let summary = format!(
        "base {}",
        config
            .as_ref()
            .and_then(|c| c["base_model_name_or_path"].as_str())
            .unwrap_or("not stated")
    );
    check_modules(&modules, &file, out, summary)
}

/// Checks that a PEFT adapter fits its safetensors base: every adapted weight present
/// with matching shape, no update larger than its weight.
pub fn check_safetensors_binding(
    adapter: &SafeTensors,
    adapter_path: &Path,
    base: &SafeTensors,
    base_path: &Path,
) -> Vec<Finding> {
    let file = adapter_path.display().to_string();
    let weights: BTreeMap<&str, &StTensor> =
        base.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let modules = safetensors_modules(adapter, adapter_path, &mut Vec::new());
    check_modules_binding(&modules, &file, |name| {
        // PEFT prefixes `base_model.model.`; the base names the module without it.
        let mut m = name;
        let w: &StTensor = loop {
            if let Some(w) = weights.get(format!("{m}.weight").as_str()) {
                break w;
            }
            m = m.split_once('.')?.1;
        };
        Some(BaseWeight {
            // PyTorch: [output, input].
            shape: two(&w.shape).map(|(o, i)| (i, o)),
            values: Box::new(move || st_values(base_path, base, w)),
        })
    })
}

/// Modules whose update bound is far above the adapter's others.
fn outliers(bounds: &[(&str, f64)], file: &str) -> Vec<Finding> {
    if bounds.len() < 4 {
        return Vec::new();
    }
    let logs: Vec<f64> = bounds.iter().map(|b| b.1.max(1e-30).ln()).collect();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = median(&mut logs.clone());
    let mad = median(&mut logs.iter().map(|x| (x - m).abs()).collect()).max(0.05);
    bounds
        .iter()
        .zip(&logs)
        .filter(|(_, l)| (*l - m) / mad > 8.0)
        .map(|((name, b), _)| {
            Finding::new(
                Severity::High,
                "lora.norm_outlier",
                format!("{file}: `{name}`"),
                format!("update norm bound {b:.3e} is {:.0}x the adapter's median: one module changed far more than the others", b / m.exp()),
            )
        })
        .collect()
}
