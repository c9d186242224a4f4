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

/// Reads an F32 or F16 tensor's values; `None` for other types.
fn values(path: &Path, g: &Gguf, t: &Tensor) -> Option<Vec<f32>> {
    let size = t.size?;
    if size > 1 << 30 || !(t.ggml_type == 0 || t.ggml_type == 1) {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(g.data_offset.checked_add(t.offset)?))
        .ok()?;
    let mut buf = vec![0u8; size as usize];
    f.read_exact(&mut buf).ok()?;
    Some(if t.ggml_type == 0 {
        buf.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        buf.chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    })
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
