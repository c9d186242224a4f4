//! safetensors: an 8-byte little-endian header length, a JSON header, then tensor
//! bytes. The header is bounded before it is read, and every tensor is checked: known
//! dtype, shape and byte range consistent, inside the data section, no overlaps.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::finding::{Finding, Severity};

/// The reference implementation refuses headers over 100 MB.
const MAX_HEADER: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

impl Tensor {
    pub fn elements(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Default)]
pub struct SafeTensors {
    pub tensors: Vec<Tensor>,
    pub metadata: BTreeMap<String, String>,
    pub data_len: u64,
    /// Absolute offset of the data section (8 + header length).
    pub data_offset: u64,
}

/// Bits per element of a safetensors dtype.
fn dtype_bits(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Reads and checks a safetensors file.
pub fn scan(path: &Path) -> (Option<SafeTensors>, Vec<Finding>) {
    let file = path.display().to_string();
    let malformed = |offset: u64, reason: String| {
        (
            None,
            vec![Finding::new(
                Severity::High,
                "safetensors.malformed",
                format!("{file}: byte {offset}"),
                reason,
            )],
        )
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return malformed(0, format!("cannot read: {e}")),
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return malformed(0, "shorter than the 8-byte header length".into());
    }
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > size - 8 {
        return malformed(
            0,
            format!("header length {n} is larger than the file or the 100 MB limit"),
        );
    }
    let mut header = vec![0u8; n as usize];
    if f.read_exact(&mut header).is_err() {
        return malformed(8, "the header is cut short".into());
    }
    match parse_header(&header, size - 8 - n, &file) {
        Ok((mut st, findings)) => {
            st.data_offset = 8 + n;
            (Some(st), findings)
        }
        Err(reason) => malformed(8, reason),
    }
}

/// Checks a header given the number of data bytes after it.
pub fn parse_header(
    header: &[u8],
    data_len: u64,
    file: &str,
) -> Result<(SafeTensors, Vec<Finding>), String> {
    let v: Value =
        serde_json::from_slice(header).map_err(|e| format!("the header is not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("the header is not a JSON object".into());
    };
    let mut st = SafeTensors {
        data_len,
        ..SafeTensors::default()
    };
    let mut out = Vec::new();
    for (name, t) in map {
        let at = format!("{file}: tensor `{name}`");
        if name == "__metadata__" {
            let Value::Object(m) = t else {
                return Err("`__metadata__` is not an object".into());
            };
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        st.metadata.insert(k, s);
                    }
                    _ => return Err(format!("`__metadata__.{k}` is not a string")),
                }
            }
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tensor `{name}` has no dtype"))?;
        let shape: Vec<u64> = t
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| format!("tensor `{name}` has no valid shape"))?;
        let offsets: Vec<u64> = t
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| format!("tensor `{name}` has no valid data_offsets"))?;
        let tensor = Tensor {
            name: name.clone(),
            dtype: dtype.to_owned(),
            shape,
            begin: offsets[0],
            end: offsets[1],
        };
        if tensor.end < tensor.begin {
            out.push(Finding::new(
                Severity::High,
                "safetensors.bad_offsets",
                &at,
                format!("ends ({}) before it begins ({})", tensor.end, tensor.begin),
            ));
        } else if tensor.end > data_len {
            out.push(Finding::new(
                Severity::High,
                "safetensors.tensor_out_of_file",
                &at,
                format!(
                    "bytes {}..{} run past the {data_len} bytes of data",
                    tensor.begin, tensor.end
                ),
            ));
        }
        match dtype_bits(dtype) {
            None => out.push(Finding::new(
                Severity::High,
                "safetensors.unknown_dtype",
                &at,
                format!("unknown dtype `{dtype}`"),
            )),
            Some(bits) => {
                let want = tensor.elements().checked_mul(bits).map(|b| b.div_ceil(8));
                if want != Some(tensor.end.wrapping_sub(tensor.begin)) {
                    out.push(Finding::new(
                        Severity::High,
                        "safetensors.size_mismatch",
                        &at,
                        format!(
                            "shape {:?} of {dtype} needs {want:?} bytes but the offsets span {}",
                            tensor.shape,
                            tensor.end.wrapping_sub(tensor.begin)
                        ),
                    ));
                }
            }
        }
        st.tensors.push(tensor);
    }
    let mut spans: Vec<_> = st
        .tensors
        .iter()
        .filter(|t| t.end >= t.begin)
        .map(|t| (t.begin, t.end, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    let mut covered = 0u64;
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            out.push(Finding::new(
                Severity::High,
                "safetensors.overlapping_tensors",
                format!("{file}: tensors `{}` and `{}`", w[0].2, w[1].2),
                format!(
                    "bytes {}..{} and {}..{} overlap",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ),
            ));
        }
    }
    for s in &spans {
        if s.0 > covered {
            out.push(Finding::new(
                Severity::Low,
                "safetensors.hole",
                format!("{file}: data bytes {covered}..{}", s.0),
                "bytes no tensor claims",
            ));
        }
        covered = covered.max(s.1);
    }
    if covered < data_len {
        out.push(Finding::new(
            Severity::Medium,
            "safetensors.trailing_data",
            format!("{file}: data bytes {covered}..{data_len}"),
            format!(
                "{} bytes after the last tensor that no tensor claims",
                data_len - covered
            ),
        ));
    }
    Ok((st, out))
}
