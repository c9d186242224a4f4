//! GGUF: a defensive reader of the header, metadata and tensor table, and the checks a
//! model file must pass before llama.cpp is given it.
//!
//! Every count and length is checked against what is left of the file before anything
//! is allocated, arrays may nest at most [`MAX_DEPTH`] deep, and reading stops at the
//! first structural error (reported as a high-severity finding, with its byte offset).
//! Large arrays (the tokenizer's vocabulary) are kept only where a check needs them.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::finding::{Finding, Severity};

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DEPTH: u32 = 3;
/// More tensors or keys than this is not a model; it is an attempt to exhaust memory.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KEYS: u64 = 1 << 20;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// A metadata value. Arrays of numbers are summarised; arrays of strings are kept
/// (the vocabulary), other arrays only counted.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    /// An array that is not kept: element type and count.
    Array {
        elem: u32,
        len: u64,
    },
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Uint(v) => Some(*v),
            Value::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Number of elements of an array value.
    pub fn array_len(&self) -> Option<u64> {
        match self {
            Value::Strings(v) => Some(v.len() as u64),
            Value::Array { len, .. } => Some(*len),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes, when the type is known.
    pub size: Option<u64>,
}

impl Tensor {
    pub fn elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// What a GGUF file says about itself.
#[derive(Debug, Clone, Default)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<Tensor>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    pub file_size: u64,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.str("tokenizer.chat_template")
    }

    /// Total number of weights.
    pub fn parameters(&self) -> u64 {
        self.tensors
            .iter()
            .map(Tensor::elements)
            .fold(0u64, u64::saturating_add)
    }

    pub fn context_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.context_length"))
            .and_then(Value::as_u64)
    }

    /// The quantisation named by `general.file_type`, else the most common tensor type.
    pub fn quantisation(&self) -> String {
        if let Some(ft) = self.get("general.file_type").and_then(Value::as_u64) {
            if let Some(name) = file_type_name(ft) {
                return name.to_owned();
            }
        }
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.ggml_type).or_default() += t.elements();
        }
        counts
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .and_then(|(t, _)| ggml_type(t).map(|g| g.0.to_owned()))
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

/// (name, block size in elements, bytes per block) of a ggml tensor type.
pub fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// llama.cpp's `general.file_type` names.
fn file_type_name(ft: u64) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// A reader that knows its position and how much of the file is left.
struct Cursor<R> {
    r: R,
    pos: u64,
    size: u64,
}

/// A structural error at a byte offset.
#[derive(Debug)]
pub struct Malformed {
    pub offset: u64,
    pub reason: String,
}

type Res<T> = Result<T, Malformed>;

impl<R: Read> Cursor<R> {
    fn fail<T>(&self, reason: impl Into<String>) -> Res<T> {
        Err(Malformed {
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn left(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut b = [0u8; N];
        if self.left() < N as u64 {
            return self.fail("the file ends in the middle of the header");
        }
        if let Err(e) = self.r.read_exact(&mut b) {
            return self.fail(format!("read error: {e}"));
        }
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Res<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Res<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn skip(&mut self, n: u64) -> Res<()> {
        if n > self.left() {
            return self.fail(format!(
                "a length of {n} bytes runs past the end of the file"
            ));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink());
        match copied {
            Ok(c) if c == n => {
                self.pos += n;
                Ok(())
            }
            _ => self.fail("read error"),
        }
    }

    fn string(&mut self) -> Res<String> {
        let len = self.u64()?;
        if len > self.left() {
            return self.fail(format!(
                "a string of {len} bytes runs past the end of the file"
            ));
        }
        let mut v = vec![0u8; len as usize];
        if let Err(e) = self.r.read_exact(&mut v) {
            return self.fail(format!("read error: {e}"));
        }
        self.pos += len;
        String::from_utf8(v).or_else(|_| self.fail("a string is not valid UTF-8"))
    }

    /// A value of `ty`; `keep_strings` keeps a string array (the vocabulary).
    fn value(&mut self, ty: u32, depth: u32, keep_strings: bool) -> Res<Value> {
        Ok(match ty {
            0 => Value::Uint(u64::from(self.bytes::<1>()?[0])),
            1 => Value::Int(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::Uint(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return self.fail(format!("a bool has the value {b}")),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return self.fail(format!("arrays nested more than {MAX_DEPTH} deep"));
                }
                let elem = self.u32()?;
                let len = self.u64()?;
                // Every element takes at least one byte (strings at least eight).
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return self.fail(format!("unknown array element type {other}")),
                };
                if len.saturating_mul(min) > self.left() {
                    return self.fail(format!(
                        "an array of {len} elements cannot fit in the rest of the file"
                    ));
                }
                if let Some(size) = match elem {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                } {
                    if elem == 7 {
                        for _ in 0..len {
                            self.value(7, depth + 1, false)?;
                        }
                    } else {
                        self.skip(len * size)?;
                    }
                    Value::Array { elem, len }
                } else if elem == 8 && keep_strings {
                    let mut v = Vec::with_capacity(len.min(1 << 20) as usize);
                    for _ in 0..len {
                        v.push(self.string()?);
                    }
                    Value::Strings(v)
                } else {
                    for _ in 0..len {
                        self.value(elem, depth + 1, false)?;
                    }
                    Value::Array { elem, len }
                }
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            other => return self.fail(format!("unknown metadata value type {other}")),
        })
    }
}

/// Reads the header, metadata and tensor table of a GGUF file.
pub fn read(path: &Path) -> Result<Gguf, Malformed> {
    let io = |e: std::io::Error| Malformed {
        offset: 0,
        reason: format!("cannot read: {e}"),
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    read_from(BufReader::with_capacity(1 << 16, f), size)
}

/// [`read`] over any reader of a file of `size` bytes.
pub fn read_from<R: Read>(r: R, size: u64) -> Result<Gguf, Malformed> {
    let mut c = Cursor { r, pos: 0, size };
    if &c.bytes::<4>()? != MAGIC {
        return Err(Malformed {
            offset: 0,
            reason: "not a GGUF file (no `GGUF` magic)".into(),
        });
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return c.fail(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    let tensor_count = c.u64()?;
    let kv_count = c.u64()?;
    if tensor_count > MAX_TENSORS {
        return c.fail(format!("{tensor_count} tensors declared"));
    }
    if kv_count > MAX_KEYS {
        return c.fail(format!("{kv_count} metadata keys declared"));
    }
    let mut g = Gguf {
        version,
        file_size: size,
        ..Gguf::default()
    };
    for _ in 0..kv_count {
        let key = c.string()?;
        let ty = c.u32()?;
        let keep = key == "tokenizer.ggml.tokens";
        let v = c.value(ty, 0, keep)?;
        if g.metadata.insert(key.clone(), v).is_some() {
            return c.fail(format!("metadata key `{key}` appears twice"));
        }
    }
    g.alignment = match g.get("general.alignment") {
        None => 32,
        Some(Value::Uint(a)) if a.is_power_of_two() && *a <= 1 << 16 => *a,
        Some(other) => return c.fail(format!("general.alignment {other:?} is not a power of two")),
    };
    for _ in 0..tensor_count {
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return c.fail(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64()?);
        }
        let ty = c.u32()?;
        let offset = c.u64()?;
        let mut t = Tensor {
            name,
            dims,
            ggml_type: ty,
            offset,
            size: None,
        };
        if let Some((_, block, bytes)) = ggml_type(ty) {
            let n = t.elements();
            if n != u64::MAX && t.dims[0].is_multiple_of(block) {
                t.size = (n / block).checked_mul(bytes);
            }
        }
        g.tensors.push(t);
    }
    g.data_offset = c.pos.div_ceil(g.alignment) * g.alignment;
    Ok(g)
}

/// Structural checks of a parsed file: tensors, tokenizer, chat template.
pub fn check(g: &Gguf, file: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let at = |what: &str| format!("{file}: {what}");
    if g.architecture().is_none() {
        out.push(Finding::new(
            Severity::Medium,
            "gguf.no_architecture",
            at("general.architecture"),
            "no `general.architecture`: llama.cpp cannot tell what model this is",
        ));
    }
    // Tensors: known types, whole blocks, aligned, inside the file, no overlaps.
    let data_len = g.file_size.saturating_sub(g.data_offset);
    let mut spans = Vec::with_capacity(g.tensors.len());
    let mut names = std::collections::BTreeSet::new();
    for t in &g.tensors {
        let loc = at(&format!("tensor `{}`", t.name));
        if !names.insert(t.name.as_str()) {
            out.push(Finding::new(
                Severity::High,
                "gguf.duplicate_tensor",
                &loc,
                "the tensor name appears twice",
            ));
        }
        if t.dims.contains(&0) {
            out.push(Finding::new(
                Severity::High,
                "gguf.empty_dimension",
                &loc,
                format!("a dimension is zero: {:?}", t.dims),
            ));
        }
        let Some((ty, block, _)) = ggml_type(t.ggml_type) else {
            out.push(Finding::new(
                Severity::High,
                "gguf.unknown_tensor_type",
                &loc,
                format!(
                    "unknown ggml type {}: its size and bounds cannot be checked",
                    t.ggml_type
                ),
            ));
            continue;
        };
        if !t.dims[0].is_multiple_of(block) {
            out.push(Finding::new(
                Severity::High,
                "gguf.partial_block",
                &loc,
                format!(
                    "first dimension {} is not a multiple of {ty}'s block of {block}",
                    t.dims[0]
                ),
            ));
            continue;
        }
        let Some(size) = t.size else {
            out.push(Finding::new(
                Severity::High,
                "gguf.tensor_too_large",
                &loc,
                format!("dimensions {:?} overflow", t.dims),
            ));
            continue;
        };
        if !t.offset.is_multiple_of(g.alignment) {
            out.push(Finding::new(
                Severity::High,
                "gguf.misaligned_tensor",
                &loc,
                format!(
                    "offset {} is not a multiple of the alignment {}",
                    t.offset, g.alignment
                ),
            ));
        }
        match t.offset.checked_add(size) {
            Some(end) if end <= data_len => spans.push((t.offset, end, t.name.as_str())),
            _ => out.push(Finding::new(
                Severity::High,
                "gguf.tensor_out_of_file",
                &loc,
                format!(
                    "{size} bytes at data offset {} run past the end of the file ({data_len} bytes of tensor data)",
                    t.offset
                ),
            )),
        }
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            out.push(Finding::new(
                Severity::High,
                "gguf.overlapping_tensors",
                at(&format!("tensors `{}` and `{}`", w[0].2, w[1].2)),
                format!(
                    "bytes {}..{} and {}..{} overlap",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ),
            ));
        }
    }
    check_tokenizer(g, file, &mut out);
    if let Some(t) = g.chat_template() {
        out.extend(crate::template::scan(
            t,
            g.str("general.name"),
            &at("tokenizer.chat_template"),
        ));
    }
    out
}

fn check_tokenizer(g: &Gguf, file: &str, out: &mut Vec<Finding>) {
    let at = |what: &str| format!("{file}: {what}");
    let Some(tokens) = g.get("tokenizer.ggml.tokens") else {
        if g.str("general.type") != Some("adapter") {
            out.push(Finding::new(
                Severity::Medium,
                "gguf.no_vocabulary",
                at("tokenizer.ggml.tokens"),
                "no vocabulary in the file",
            ));
        }
        return;
    };
    let Some(n) = tokens.array_len() else {
        out.push(Finding::new(
            Severity::High,
            "gguf.bad_vocabulary",
            at("tokenizer.ggml.tokens"),
            "the vocabulary is not an array",
        ));
        return;
    };
    if let Value::Strings(v) = tokens {
        let mut seen = std::collections::HashSet::with_capacity(v.len());
        let dupes = v.iter().filter(|t| !seen.insert(t.as_str())).count();
        if dupes > 0 {
            out.push(Finding::new(
                Severity::Low,
                "gguf.duplicate_tokens",
                at("tokenizer.ggml.tokens"),
                format!("{dupes} tokens appear more than once"),
            ));
        }
    }
    for key in ["tokenizer.ggml.token_type", "tokenizer.ggml.scores"] {
        if let Some(len) = g.get(key).and_then(Value::array_len) {
            if len != n {
                out.push(Finding::new(
                    Severity::High,
                    "gguf.vocabulary_mismatch",
                    at(key),
                    format!("{len} entries for {n} tokens"),
                ));
            }
        }
    }
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.eot_token_id",
    ] {
        if let Some(id) = g.get(key).and_then(Value::as_u64) {
            if id >= n {
                out.push(Finding::new(
                    Severity::High,
                    "gguf.token_id_out_of_range",
                    at(key),
                    format!("token id {id} is outside the vocabulary of {n}"),
                ));
            }
        }
    }
    // The embedding matrix must have a row per token.
    if let Some(emb) = g.tensors.iter().find(|t| t.name == "token_embd.weight") {
        if emb.dims.get(1).is_some_and(|&rows| rows != n) {
            out.push(Finding::new(
                Severity::High,
                "gguf.vocabulary_mismatch",
                at("tensor `token_embd.weight`"),
                format!("{} embedding rows for {n} tokens", emb.dims[1]),
            ));
        }
    }
}

/// Reads and checks a GGUF file: the parsed file (when it parses) and the findings.
pub fn scan(path: &Path) -> (Option<Gguf>, Vec<Finding>) {
    let file = path.display().to_string();
    match read(path) {
        Ok(g) => {
            let f = check(&g, &file);
            (Some(g), f)
        }
        Err(m) => (
            None,
            vec![Finding::new(
                Severity::High,
                "gguf.malformed",
                format!("{file}: byte {}", m.offset),
                m.reason,
            )],
        ),
    }
}

/// Writes GGUF files for tests, benchmarks and fuzzing: a header, metadata and tensors.
pub mod write {
    /// A metadata value to write.
    pub enum Val<'a> {
        U32(u32),
        U64(u64),
        F32(f32),
        Str(&'a str),
        Strings(&'a [&'a str]),
        I32s(&'a [i32]),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A version-3 GGUF with `kv` and F32 tensors `(name, dims, data offset)`, the data
    /// section zero-filled to `data_len` bytes.
    pub fn gguf(
        kv: &[(&str, Val<'_>)],
        tensors: &[(&str, &[u64], u64)],
        data_len: usize,
    ) -> Vec<u8> {
        let typed: Vec<(&str, &[u64], u32, u64)> =
            tensors.iter().map(|&(n, d, o)| (n, d, 0, o)).collect();
        gguf_data(kv, &typed, &vec![0; data_len])
    }

    /// F32 tensors laid out one after another (32-byte aligned) with the given values.
    pub fn gguf_f32(kv: &[(&str, Val<'_>)], tensors: &[(&str, &[u64], &[f32])]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut table = Vec::new();
        for (name, dims, values) in tensors {
            table.push((*name, *dims, 0u32, data.len() as u64));
            for v in *values {
                data.extend_from_slice(&v.to_le_bytes());
            }
            while !data.len().is_multiple_of(32) {
                data.push(0);
            }
        }
        gguf_data(kv, &table, &data)
    }

    /// A version-3 GGUF with tensors `(name, dims, ggml type, data offset)` and `data`
    /// as its data section.
    pub fn gguf_data(
        kv: &[(&str, Val<'_>)],
        tensors: &[(&str, &[u64], u32, u64)],
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            string(&mut out, k);
            match v {
                Val::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::U64(x) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Val::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Val::Strings(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for s in *v {
                        string(&mut out, s);
                    }
                }
                Val::I32s(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for x in *v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        for (name, dims, ty, offset) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend_from_slice(data);
        out
    }
}
