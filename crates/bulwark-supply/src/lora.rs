//! LoRA adapters in GGUF (llama.cpp's `general.type = adapter`): rank, target modules,
//! weight norms, and the binding to a base model.
//!
//! An adapter changes a model's behaviour with a few megabytes, so it deserves the
//! same scrutiny as the model: a rank or norm far from its siblings is how a backdoor
//! or a wholesale weight replacement shows up. Per module the norm of the update is
//! bounded by ||B||·||A|| (Frobenius); modules whose bound is an outlier among the
//! adapter's modules (more than 8 median absolute deviations above the median, in log
//! space) are flagged, and with the base model at hand the bound is compared with the
//! base weight's own norm.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::finding::{Finding, Severity};
use crate::gguf::{Gguf, Tensor};
use crate::safetensors::{SafeTensors, Tensor as StTensor};

/// One adapted module: `blk.0.attn_q.weight` with its A and B tensors.
struct Pair<'a> {
    a: &'a Tensor,
    b: &'a Tensor,
}

fn pairs(g: &Gguf) -> BTreeMap<&str, Pair<'_>> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for t in &g.tensors {
        if let Some(base) = t.name.strip_suffix(".lora_a") {
            a.insert(base, t);
        } else if let Some(base) = t.name.strip_suffix(".lora_b") {
            b.insert(base, t);
        }
    }
    a.into_iter()
        .filter_map(|(k, a)| b.get(k).map(|b| (k, Pair { a, b })))
        .collect()
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

/// Checks an adapter on its own: shapes, ranks, targets, norms.
pub fn check_gguf(g: &Gguf, path: &Path) -> Vec<Finding> {
    let file = path.display().to_string();
    let mut out = Vec::new();
    if g.str("adapter.type") != Some("lora") {
        out.push(Finding::new(
            Severity::Medium,
            "lora.unknown_adapter",
            format!("{file}: adapter.type"),
            "an adapter that is not a LoRA: Bulwark cannot check it",
        ));
        return out;
    }
    let pairs = pairs(g);
    let paired: BTreeSet<&str> = pairs
        .values()
        .flat_map(|p| [p.a.name.as_str(), p.b.name.as_str()])
        .collect();
    for t in &g.tensors {
        if !paired.contains(t.name.as_str()) {
            out.push(Finding::new(
                Severity::High,
                "lora.unpaired_tensor",
                format!("{file}: tensor `{}`", t.name),
                "not half of a lora_a/lora_b pair: an adapter should carry nothing else",
            ));
        }
    }
    let mut ranks = BTreeSet::new();
    let mut bounds = Vec::new();
    for (module, p) in &pairs {
        let at = format!("{file}: `{module}`");
        // ggml: A is [in, r], B is [r, out].
        let (r_a, r_b) = (p.a.dims.get(1).copied(), p.b.dims.first().copied());
        if r_a != r_b || p.a.dims.len() != 2 || p.b.dims.len() != 2 {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                format!("A {:?} and B {:?} do not multiply", p.a.dims, p.b.dims),
            ));
            continue;
        }
        let r = r_a.unwrap_or(0);
        ranks.insert(r);
        let smaller = p.a.dims[0].min(p.b.dims[1]);
        if r > 256 || (smaller > 0 && r * 2 > smaller) {
            out.push(Finding::new(
                Severity::Medium,
                "lora.high_rank",
                &at,
                format!(
                    "rank {r} for a {}x{} weight: close to a full replacement",
                    p.a.dims[0], p.b.dims[1]
                ),
            ));
        }
        if let (Some(a), Some(b)) = (values(path, g, p.a), values(path, g, p.b)) {
            if a.iter().chain(&b).any(|x| !x.is_finite()) {
                out.push(Finding::new(
                    Severity::High,
                    "lora.non_finite",
                    &at,
                    "NaN or infinite weights",
                ));
                continue;
            }
            bounds.push((*module, norm(&a) * norm(&b)));
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
    let targets: BTreeSet<&str> = pairs
        .keys()
        .map(|m| m.rsplit('.').nth(1).unwrap_or(m))
        .collect();
    out.push(Finding::new(
        Severity::Info,
        "lora.summary",
        file.clone(),
        format!(
            "{} adapted modules, rank {ranks:?}, targets {targets:?}, alpha {:?}",
            pairs.len(),
            g.get("adapter.lora.alpha")
        ),
    ));
    out.extend(outliers(&bounds, &file));
    out
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

/// Checks that an adapter fits a base model: same architecture, every adapted module
/// exists in the base with matching shapes, and (for F32/F16 base weights) that no
/// update is larger than the weight it modifies.
pub fn check_binding(
    adapter: &Gguf,
    adapter_path: &Path,
    base: &Gguf,
    base_path: &Path,
) -> Vec<Finding> {
    let file = adapter_path.display().to_string();
    let mut out = Vec::new();
    if adapter.architecture() != base.architecture() {
        out.push(Finding::new(
            Severity::High,
            "lora.wrong_base",
            format!("{file}: general.architecture"),
            format!(
                "made for {:?}, but the base model is {:?}",
                adapter.architecture(),
                base.architecture()
            ),
        ));
        return out;
    }
    let weights: BTreeMap<&str, &Tensor> =
        base.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    for (module, p) in pairs(adapter) {
        let at = format!("{file}: `{module}`");
        let Some(w) = weights.get(module) else {
            out.push(Finding::new(
                Severity::High,
                "lora.unknown_target",
                &at,
                "the base model has no such weight",
            ));
            continue;
        };
        if w.dims.len() < 2 || p.a.dims[0] != w.dims[0] || p.b.dims.get(1) != w.dims.get(1) {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                format!(
                    "A {:?} · B {:?} does not fit the base weight {:?}",
                    p.a.dims, p.b.dims, w.dims
                ),
            ));
            continue;
        }
        if let (Some(a), Some(b), Some(wv)) = (
            values(adapter_path, adapter, p.a),
            values(adapter_path, adapter, p.b),
            values(base_path, base, w),
        ) {
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

/// PEFT adapters (`adapter_model.safetensors`): `X.lora_A.weight` is [r, in] and
/// `X.lora_B.weight` is [out, r]. Checked alone, and against `adapter_config.json`
/// beside the file when there is one.
pub fn check_safetensors(st: &SafeTensors, path: &Path) -> Vec<Finding> {
    let file = path.display().to_string();
    let mut out = Vec::new();
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
    let mut ranks = BTreeSet::new();
    let mut bounds = Vec::new();
    for (module, ta) in &a {
        let at = format!("{file}: `{module}`");
        let Some(tb) = b.get(module) else {
            out.push(Finding::new(
                Severity::High,
                "lora.unpaired_tensor",
                &at,
                "lora_A without its lora_B",
            ));
            continue;
        };
        if ta.shape.len() != 2 || tb.shape.len() != 2 || ta.shape[0] != tb.shape[1] {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                format!("A {:?} and B {:?} do not multiply", ta.shape, tb.shape),
            ));
            continue;
        }
        let r = ta.shape[0];
        ranks.insert(r);
        let smaller = ta.shape[1].min(tb.shape[0]);
        if r > 256 || (smaller > 0 && r * 2 > smaller) {
            out.push(Finding::new(
                Severity::Medium,
                "lora.high_rank",
                &at,
                format!(
                    "rank {r} for a {}x{} weight: close to a full replacement",
                    tb.shape[0], ta.shape[1]
                ),
            ));
        }
        if let (Some(va), Some(vb)) = (st_values(path, st, ta), st_values(path, st, tb)) {
            if va.iter().chain(&vb).any(|x| !x.is_finite()) {
                out.push(Finding::new(
                    Severity::High,
                    "lora.non_finite",
                    &at,
                    "NaN or infinite weights",
                ));
                continue;
            }
            bounds.push((*module, norm(&va) * norm(&vb)));
        }
    }
    for m in b.keys().filter(|m| !a.contains_key(*m)) {
        out.push(Finding::new(
            Severity::High,
            "lora.unpaired_tensor",
            format!("{file}: `{m}`"),
            "lora_B without its lora_A",
        ));
    }
    if ranks.len() > 1 {
        out.push(Finding::new(
            Severity::Low,
            "lora.mixed_ranks",
            format!("{file}: tensors"),
            format!("ranks {ranks:?} differ between modules"),
        ));
    }
    let targets: BTreeSet<&str> = a
        .keys()
        .map(|m| m.rsplit('.').next().unwrap_or(m))
        .collect();
    let config: Option<serde_json::Value> = path
        .parent()
        .map(|d| d.join("adapter_config.json"))
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(c) = &config {
        let at = format!("{file}: adapter_config.json");
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
            let undeclared: Vec<&&str> =
                targets.iter().filter(|t| !declared.contains(**t)).collect();
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
    out.push(Finding::new(
        Severity::Info,
        "lora.summary",
        file.clone(),
        format!(
            "{} adapted modules, rank {ranks:?}, targets {targets:?}, base {}",
            a.len(),
            config
                .as_ref()
                .and_then(|c| c["base_model_name_or_path"].as_str())
                .unwrap_or("not stated")
        ),
    ));
    out.extend(outliers(&bounds, &file));
    out
}

/// A PEFT adapter against its base model's safetensors: every adapted module exists
/// with matching shapes, and no update outweighs its base weight.
pub fn check_safetensors_binding(
    adapter: &SafeTensors,
    adapter_path: &Path,
    base: &SafeTensors,
    base_path: &Path,
) -> Vec<Finding> {
    let file = adapter_path.display().to_string();
    let mut out = Vec::new();
    let weights: BTreeMap<&str, &StTensor> =
        base.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    // PEFT prefixes `base_model.model.`; the base names the module without it.
    let find = |module: &str| {
        let mut m = module;
        loop {
            if let Some(w) = weights.get(format!("{m}.weight").as_str()) {
                return Some(*w);
            }
            match m.split_once('.') {
                Some((_, rest)) => m = rest,
                None => return None,
            }
        }
    };
    for ta in &adapter.tensors {
        let Some(module) = ta.name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let at = format!("{file}: `{module}`");
        let b_name = format!("{module}.lora_B.weight");
        let Some(tb) = adapter.tensors.iter().find(|x| x.name == b_name) else {
            continue;
        };
        let Some(w) = find(module) else {
            out.push(Finding::new(
                Severity::High,
                "lora.unknown_target",
                &at,
                "the base model has no such weight",
            ));
            continue;
        };
        if w.shape.len() != 2
            || ta.shape.get(1) != w.shape.get(1)
            || tb.shape.first() != w.shape.first()
        {
            out.push(Finding::new(
                Severity::High,
                "lora.shape_mismatch",
                &at,
                format!(
                    "B {:?} · A {:?} does not fit the base weight {:?}",
                    tb.shape, ta.shape, w.shape
                ),
            ));
            continue;
        }
        if let (Some(va), Some(vb), Some(vw)) = (
            st_values(adapter_path, adapter, ta),
            st_values(adapter_path, adapter, tb),
            st_values(base_path, base, w),
        ) {
            let (bound, base_norm) = (norm(&va) * norm(&vb), norm(&vw));
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
