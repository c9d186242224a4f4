//! Pickle files (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`, raw or inside a PyTorch zip):
//! an opcode-level scan that never executes anything.
//!
//! Unpickling runs whatever callables the pickle imports. This reads opcodes (protocols
//! 0 to 5), models the stack and memo just enough to resolve every imported global,
//! including `STACK_GLOBAL` names built from earlier strings and memo lookups, and
//! classifies each one: deny-listed (high), allow-listed (the handful that tensors and
//! dicts need), or unknown (medium). A pickle that cannot be fully parsed is itself a
//! high finding: a scanner that stops early could miss what comes after.
//!
//! Files are recognised by content, not extension; zip archives are opened entry by
//! entry (nested zips too, to a depth of 3) and every entry that is a pickle is scanned.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek};

use crate::finding::{Finding, Severity};

/// Globals that run code, touch the system or the network, or load more pickles.
/// `*` denies the whole module.
const DENY: &[(&str, &str)] = &[
    ("os", "*"),
    ("posix", "*"),
    ("nt", "*"),
    ("subprocess", "*"),
    ("sys", "*"),
    ("builtins", "eval exec compile open getattr setattr delattr __import__ globals locals breakpoint input vars dir apply execfile memoryview"),
    ("__builtin__", "eval exec compile open getattr setattr delattr __import__ globals locals breakpoint input vars dir apply execfile"),
    ("runpy", "*"),
    ("pty", "*"),
    ("socket", "*"),
    ("webbrowser", "*"),
    ("shutil", "*"),
    ("pickle", "*"),
    ("_pickle", "*"),
    ("cPickle", "*"),
    ("dill", "*"),
    ("marshal", "*"),
    ("types", "*"),
    ("importlib", "*"),
    ("pkgutil", "*"),
    ("code", "*"),
    ("codeop", "*"),
    ("ctypes", "*"),
    ("multiprocessing", "*"),
    ("asyncio", "*"),
    ("threading", "*"),
    ("signal", "*"),
    ("functools", "partial reduce partialmethod"),
    ("operator", "attrgetter methodcaller itemgetter getitem"),
    ("bdb", "*"),
    ("pdb", "*"),
    ("pydoc", "*"),
    ("venv", "*"),
    ("pip", "*"),
    ("setuptools", "*"),
    ("http", "*"),
    ("urllib", "*"),
    ("urllib2", "*"),
    ("httplib", "*"),
    ("requests", "*"),
    ("aiohttp", "*"),
    ("ftplib", "*"),
    ("smtplib", "*"),
    ("telnetlib", "*"),
    ("tempfile", "*"),
    ("glob", "*"),
    ("io", "*"),
    ("platform", "*"),
    ("torch.serialization", "load"),
    ("torch.hub", "*"),
    ("torch._inductor.codecache", "*"),
    ("torch.jit", "*"),
    ("numpy.testing._private.utils", "runstring"),
    ("numpy.load", "*"),
    ("numpy.lib.npyio", "load"),
    ("joblib", "load"),
    ("socketserver", "*"),
    ("xmlrpc", "*"),
    ("_thread", "*"),
    ("winreg", "*"),
    ("_winapi", "*"),
    ("msvcrt", "*"),
    ("_posixsubprocess", "*"),
    ("tkinter", "*"),
    ("sqlite3", "*"),
    ("zipimport", "*"),
    ("cProfile", "run runctx"),
    ("profile", "run runctx"),
    ("timeit", "*"),
    ("trace", "*"),
    ("doctest", "*"),
    ("imp", "*"),
    ("gc", "*"),
    ("inspect", "*"),
];

/// Globals a model checkpoint legitimately needs.
const ALLOW: &[(&str, &str)] = &[
    ("collections", "OrderedDict defaultdict Counter deque"),
    ("builtins", "set frozenset slice range complex bytearray dict list tuple int float bool str bytes object"),
    ("__builtin__", "set frozenset slice range complex bytearray dict list tuple int float bool str bytes object"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("torch._utils", "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter _rebuild_parameter_with_state _rebuild_sparse_tensor _rebuild_qtensor _rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass _rebuild_device_tensor_from_numpy"),
    ("torch._tensor", "_rebuild_from_type _rebuild_from_type_v2"),
    ("torch", "Size Tensor FloatStorage DoubleStorage HalfStorage BFloat16Storage LongStorage IntStorage ShortStorage CharStorage ByteStorage BoolStorage ComplexFloatStorage ComplexDoubleStorage QInt8Storage QUInt8Storage float32 float16 bfloat16 float64 int64 int32 int16 int8 uint8 bool complex64 complex128 device dtype strided sparse_coo per_tensor_affine per_channel_affine"),
    ("torch.nn.parameter", "Parameter"),
    ("torch.storage", "UntypedStorage TypedStorage _load_from_bytes"),
    ("numpy", "ndarray dtype"),
    ("numpy.core.multiarray", "_reconstruct scalar"),
    ("numpy._core.multiarray", "_reconstruct scalar"),
    ("numpy.dtypes", "*"),
    ("argparse", "Namespace"),
];

fn listed(list: &[(&str, &str)], module: &str, name: &str) -> bool {
    list.iter().any(|(m, names)| {
        (module == *m || module.starts_with(&format!("{m}.")))
            && (*names == "*" || names.split(' ').any(|n| n == name))
    })
}

/// Python 2 module names that Python 3's unpickler maps to Python 3 modules
/// (`_compat_pickle.IMPORT_MAPPING`): `commands.Popen` loads as `subprocess.Popen`.
const PY2_MODULES: &[(&str, &str)] = &[
    ("__builtin__", "builtins"),
    ("exceptions", "builtins"),
    ("copy_reg", "copyreg"),
    ("commands", "subprocess"),
    ("cPickle", "pickle"),
    ("urllib2", "urllib.request"),
    ("urlparse", "urllib.parse"),
    ("httplib", "http.client"),
    ("BaseHTTPServer", "http.server"),
    ("SimpleHTTPServer", "http.server"),
    ("CGIHTTPServer", "http.server"),
    ("Cookie", "http.cookies"),
    ("cookielib", "http.cookiejar"),
    ("SocketServer", "socketserver"),
    ("xmlrpclib", "xmlrpc.client"),
    ("SimpleXMLRPCServer", "xmlrpc.server"),
    ("thread", "_thread"),
    ("dummy_thread", "_dummy_thread"),
    ("Queue", "queue"),
    ("_winreg", "winreg"),
    ("UserDict", "collections"),
    ("UserList", "collections"),
    ("UserString", "collections"),
    ("StringIO", "io"),
    ("cStringIO", "io"),
    ("repr", "reprlib"),
    ("Tkinter", "tkinter"),
];

/// The module Python 3 will import for `module`.
fn py3_module(module: &str) -> std::borrow::Cow<'_, str> {
    let head = module.split('.').next().unwrap_or(module);
    match PY2_MODULES.iter().find(|(old, _)| *old == head) {
        Some((old, new)) => std::borrow::Cow::Owned(format!("{new}{}", &module[old.len()..])),
        None => std::borrow::Cow::Borrowed(module),
    }
}

/// How an imported global is judged.
pub fn classify(module: &str, name: &str) -> Option<Severity> {
    let module = &*py3_module(module);
    // `getattr` chains in names (`os.path` as module, `system` as name) are caught by the
    // module prefix rule; a dotted name is checked on its first part too.
    let head = name.split('.').next().unwrap_or(name);
    if listed(DENY, module, name) || listed(DENY, module, head) {
        Some(Severity::High)
    } else if listed(ALLOW, module, name) {
        None
    } else {
        Some(Severity::Medium)
    }
}

/// A symbolic stack entry: a string we know, a mark, or anything else.
#[derive(Clone, Debug)]
enum V {
    Str(String),
    Mark,
    Other,
}

/// What one pickle imports, and where it stopped.
#[derive(Debug, Default)]
pub struct Pickle {
    /// (byte offset, module, name).
    pub globals: Vec<(u64, String, String)>,
    /// Offset just past STOP.
    pub end: u64,
    /// Calls (REDUCE, BUILD, NEWOBJ, INST, OBJ): a pickle with globals but no call only
    /// names things.
    pub calls: u32,
}

#[derive(Debug)]
pub struct Malformed {
    pub offset: u64,
    pub reason: String,
}

/// Limits on what the symbolic machine keeps.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
const MAX_KEPT_STRING: usize = 512;

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, Malformed> {
        Err(Malformed {
            offset: self.base + self.pos as u64,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.b.len() - self.pos < n {
            return self.err(format!("truncated: {n} bytes needed"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, Malformed> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, Malformed> {
        let l = self.uint(n)?;
        if l > (self.b.len() - self.pos) as u64 {
            return self.err(format!("a length of {l} runs past the end"));
        }
        Ok(l as usize)
    }

    fn line(&mut self) -> Result<&'a [u8], Malformed> {
        match self.b[self.pos..].iter().position(|&c| c == b'\n') {
            Some(i) => {
                let s = &self.b[self.pos..self.pos + i];
                self.pos += i + 1;
                Ok(s)
            }
            None => self.err("a text argument has no end of line"),
        }
    }
}

fn text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > MAX_KEPT_STRING {
        s.chars().take(MAX_KEPT_STRING).collect()
    } else {
        s.into_owned()
    }
}

/// Parses one pickle starting at `b[0]`; `base` is its offset in the file.
pub fn parse(b: &[u8], base: u64) -> Result<Pickle, Malformed> {
    let mut r = Reader { b, pos: 0, base };
    let mut stack: Vec<V> = Vec::new();
    let mut memo: HashMap<u64, V> = HashMap::new();
    let mut out = Pickle::default();
    macro_rules! pop {
        () => {
            match stack.pop() {
                Some(v) => v,
                None => return r.err("stack underflow"),
            }
        };
    }
    macro_rules! pop_mark {
        () => {{
            let mut items = Vec::new();
            loop {
                match stack.pop() {
                    Some(V::Mark) => break,
                    Some(v) => items.push(v),
                    None => return r.err("no MARK on the stack"),
                }
            }
            items
        }};
    }
    loop {
        if stack.len() > MAX_STACK || memo.len() > MAX_MEMO {
            return r.err("the pickle's stack or memo grows without bound");
        }
        let at = base + r.pos as u64;
        let op = r.take(1)?[0];
        match op {
            b'.' => {
                out.end = base + r.pos as u64;
                return Ok(out);
            }
            b'(' => stack.push(V::Mark),
            b'0' => {
                pop!();
            }
            b'1' => {
                pop_mark!();
            }
            b'2' => {
                let top = stack.last().cloned();
                match top {
                    Some(v) => stack.push(v),
                    None => return r.err("DUP on an empty stack"),
                }
            }
            // Constants with a text line.
            b'F' | b'I' | b'L' => {
                r.line()?;
                stack.push(V::Other);
            }
            b'S' => {
                let l = r.line()?;
                let l = l
                    .strip_prefix(b"'")
                    .and_then(|l| l.strip_suffix(b"'"))
                    .or_else(|| l.strip_prefix(b"\"").and_then(|l| l.strip_suffix(b"\"")));
                stack.push(l.map_or(V::Other, |l| V::Str(text(l))));
            }
            b'V' => {
                let l = r.line()?;
                stack.push(V::Str(text(l)));
            }
            b'P' => {
                r.line()?;
                stack.push(V::Other);
            }
            b'J' => {
                r.take(4)?;
                stack.push(V::Other);
            }
            b'K' => {
                r.take(1)?;
                stack.push(V::Other);
            }
            b'M' => {
                r.take(2)?;
                stack.push(V::Other);
            }
            b'G' => {
                r.take(8)?;
                stack.push(V::Other);
            }
            b'N' | 0x88 | 0x89 | b'}' | b']' | b')' | 0x8f => stack.push(V::Other),
            b'T' => {
                let n = r.len(4)?;
                let s = r.take(n)?;
                stack.push(V::Str(text(s)));
            }
            b'U' => {
                let n = r.len(1)?;
                let s = r.take(n)?;
                stack.push(V::Str(text(s)));
            }
            b'X' => {
                let n = r.len(4)?;
                let s = r.take(n)?;
                stack.push(V::Str(text(s)));
            }
            0x8c => {
                let n = r.len(1)?;
                let s = r.take(n)?;
                stack.push(V::Str(text(s)));
            }
            0x8d => {
                let n = r.len(8)?;
                let s = r.take(n)?;
                stack.push(V::Str(text(s)));
            }
            b'B' => {
                let n = r.len(4)?;
                r.take(n)?;
                stack.push(V::Other);
            }
            b'C' => {
                let n = r.len(1)?;
                r.take(n)?;
                stack.push(V::Other);
            }
            0x8e | 0x96 => {
                let n = r.len(8)?;
                r.take(n)?;
                stack.push(V::Other);
            }
            0x8a => {
                let n = r.len(1)?;
                r.take(n)?;
                stack.push(V::Other);
            }
            0x8b => {
                let n = r.len(4)?;
                r.take(n)?;
                stack.push(V::Other);
            }
            0x82 => {
                r.take(1)?;
                stack.push(V::Other);
            }
            0x83 => {
                r.take(2)?;
                stack.push(V::Other);
            }
            0x84 => {
                r.take(4)?;
                stack.push(V::Other);
            }
            0x97 => stack.push(V::Other),
            0x98 => {}
            0x80 => {
                let v = r.take(1)?[0];
                if v > 5 {
                    return r.err(format!("pickle protocol {v} does not exist"));
                }
            }
            0x95 => {
                r.take(8)?;
            }
            // Imports.
            b'c' | b'i' => {
                let module = text(r.line()?);
                let name = text(r.line()?);
                out.globals.push((at, module, name));
                if op == b'i' {
                    pop_mark!();
                    out.calls += 1;
                }
                stack.push(V::Other);
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (V::Str(m), V::Str(n)) => out.globals.push((at, m, n)),
                    _ => out.globals.push((
                        at,
                        "?".into(),
                        "? (a name computed at load time)".into(),
                    )),
                }
                stack.push(V::Other);
            }
            // Memo.
            b'p' => {
                let idx = text(r.line()?)
                    .trim()
                    .parse::<u64>()
                    .or_else(|_| r.err("PUT index"))?;
                let top = stack.last().cloned().unwrap_or(V::Other);
                memo.insert(idx, top);
            }
            b'q' | b'r' => {
                let idx = r.uint(if op == b'q' { 1 } else { 4 })?;
                let top = stack.last().cloned().unwrap_or(V::Other);
                memo.insert(idx, top);
            }
            0x94 => {
                let top = stack.last().cloned().unwrap_or(V::Other);
                memo.insert(memo.len() as u64, top);
            }
            b'g' | b'h' | b'j' => {
                let idx = match op {
                    b'g' => text(r.line()?)
                        .trim()
                        .parse::<u64>()
                        .or_else(|_| r.err("GET index"))?,
                    b'h' => r.uint(1)?,
                    _ => r.uint(4)?,
                };
                match memo.get(&idx) {
                    Some(v) => stack.push(v.clone()),
                    None => return r.err(format!("memo entry {idx} read before it was written")),
                }
            }
            // Building and calling.
            b'Q' => {
                pop!();
                stack.push(V::Other);
            }
            b'R' | 0x81 => {
                pop!();
                pop!();
                out.calls += 1;
                stack.push(V::Other);
            }
            0x92 => {
                pop!();
                pop!();
                pop!();
                out.calls += 1;
                stack.push(V::Other);
            }
            b'b' => {
                pop!();
                out.calls += 1;
            }
            b'a' => {
                pop!();
            }
            b's' => {
                pop!();
                pop!();
            }
            b'e' | b'u' | 0x90 => {
                pop_mark!();
            }
            b'l' | b'd' | b't' | 0x91 => {
                pop_mark!();
                stack.push(V::Other);
            }
            b'o' => {
                pop_mark!();
                out.calls += 1;
                stack.push(V::Other);
            }
            0x85 => {
                pop!();
                stack.push(V::Other);
            }
            0x86 => {
                pop!();
                pop!();
                stack.push(V::Other);
            }
            0x87 => {
                pop!();
                pop!();
                pop!();
                stack.push(V::Other);
            }
            other => return r.err(format!("unknown opcode 0x{other:02x}")),
        }
    }
}

/// Whether bytes look like the start of a pickle (protocol 2+ header, or a protocol 0/1
/// opening that only a pickle would have).
pub fn looks_like_pickle(b: &[u8]) -> bool {
    match b {
        [0x80, v, ..] => *v <= 5,
        [b'(', b'd' | b'l' | b'c' | b'(' | b'}' | b']' | b'S' | b'V' | b'I', ..] => true,
        [b'c', rest @ ..] => {
            rest.iter().take(64).any(|&c| c == b'\n')
                && rest.first().is_some_and(u8::is_ascii_alphabetic)
        }
        [b'}' | b']', b'q' | b'(' | b'.' | 0x94, ..] => true,
        _ => false,
    }
}

/// Scans a buffer that starts with a pickle, and the pickles that follow it (PyTorch's
/// legacy format is several in a row, then raw tensor bytes).
pub fn scan_bytes(b: &[u8], location: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut seen = BTreeSet::new();
    let mut first = true;
    while at < b.len() && (first || looks_like_pickle(&b[at..])) {
        match parse(&b[at..], at as u64) {
            Ok(p) => {
                for (off, m, n) in p.globals {
                    if !seen.insert((m.clone(), n.clone())) {
                        continue;
                    }
                    if let Some(sev) = classify(&m, &n) {
                        let (code, why) = if sev == Severity::High {
                            (
                                "pickle.dangerous_global",
                                "runs code, touches the system or the network when unpickled",
                            )
                        } else {
                            ("pickle.unknown_global", "is not on the list of imports a checkpoint needs; unpickling would call it")
                        };
                        out.push(Finding::new(
                            sev,
                            code,
                            format!("{location}: byte {off}"),
                            format!("imports `{m}.{n}`, which {why}"),
                        ));
                    }
                }
                at = p.end as usize;
            }
            Err(e) => {
                // After a first good pickle, what follows may be raw tensor data that
                // happened to look like a pickle; only a broken first pickle is an error.
                if first {
                    out.push(Finding::new(
                        Severity::High,
                        "pickle.malformed",
                        format!("{location}: byte {}", e.offset),
                        format!("the pickle cannot be fully parsed ({}); what follows cannot be vouched for", e.reason),
                    ));
                }
                break;
            }
        }
        first = false;
    }
    out
}

/// Largest zip entry read for scanning; bigger pickles are reported, not read.
const MAX_ENTRY: u64 = 1 << 30;
const MAX_ZIP_DEPTH: u32 = 3;

/// Scans a zip archive: every entry that is a pickle (by name or content), and nested
/// archives.
pub fn scan_zip<R: Read + Seek>(r: R, location: &str, depth: u32) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut z = match zip::ZipArchive::new(r) {
        Ok(z) => z,
        Err(e) => {
            out.push(Finding::new(
                Severity::High,
                "zip.malformed",
                location,
                format!("not a readable zip archive: {e}"),
            ));
            return out;
        }
    };
    for i in 0..z.len() {
        let mut entry = match z.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                out.push(Finding::new(
                    Severity::High,
                    "zip.malformed",
                    format!("{location}: entry {i}"),
                    format!("cannot be read: {e}"),
                ));
                continue;
            }
        };
        let name = entry.name().to_owned();
        let loc = format!("{location}!{name}");
        if entry.is_dir() {
            continue;
        }
        let mut head = [0u8; 4];
        let n = entry.read(&mut head).unwrap_or(0);
        let head = &head[..n];
        let named_pickle = [".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt"]
            .iter()
            .any(|e| name.ends_with(e))
            && !name.contains("/data/");
        let is_zip = head.starts_with(b"PK\x03\x04");
        if !(is_zip || looks_like_pickle(head) || named_pickle) {
            continue;
        }
        if entry.size() > MAX_ENTRY {
            out.push(Finding::new(
                Severity::High,
                "zip.entry_too_large",
                &loc,
                format!("{} bytes: too large to scan", entry.size()),
            ));
            continue;
        }
        let mut data = head.to_vec();
        if let Err(e) = (&mut entry).take(MAX_ENTRY).read_to_end(&mut data) {
            out.push(Finding::new(
                Severity::High,
                "zip.malformed",
                &loc,
                format!("cannot be decompressed: {e}"),
            ));
            continue;
        }
        if is_zip {
            if depth >= MAX_ZIP_DEPTH {
                out.push(Finding::new(
                    Severity::High,
                    "zip.nested_too_deep",
                    &loc,
                    format!("archives nested more than {MAX_ZIP_DEPTH} deep"),
                ));
            } else {
                out.push(Finding::new(
                    Severity::Medium,
                    "zip.nested_archive",
                    &loc,
                    "an archive inside the archive: nothing a checkpoint needs",
                ));
                out.extend(scan_zip(std::io::Cursor::new(data), &loc, depth + 1));
            }
        } else if looks_like_pickle(&data) {
            out.extend(scan_bytes(&data, &loc));
        } else if named_pickle && !data.is_empty() {
            // A `.pkl` entry that is not a pickle: nothing to unpickle, but odd.
            out.push(Finding::new(
                Severity::Low,
                "pickle.not_a_pickle",
                &loc,
                "named like a pickle but is not one",
            ));
        }
    }
    out
}
