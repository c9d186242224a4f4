//! The learned injection detector's features: hashed word unigrams and bigrams and
//! character 3- to 5-grams of the normalised text. Shared by inference and by the
//! trainer (`examples/train_injection.rs`), so the two can never disagree.

/// Number of hash buckets (weights) of the model.
pub const BUCKETS: usize = 1 << 18;

const WORD: u32 = 0x9E37_79B9;
const BIGRAM: u32 = 0x85EB_CA6B;
const CHAR: u32 = 0xC2B2_AE35;

fn fnv(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = 0x811C_9DC5 ^ seed;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn bucket(h: u32) -> u32 {
    h & (BUCKETS as u32 - 1)
}

/// The buckets of `text` (already normalised), with repeats; each counts
/// `1/sqrt(len)` so that long and short texts score on one scale. Reuses `out`.
pub fn extract(text: &str, out: &mut Vec<u32>) {
    out.clear();
    let mut prev: Option<&str> = None;
    for w in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
    {
        out.push(bucket(fnv(WORD, w.as_bytes())));
        if let Some(p) = prev {
            let h = fnv(BIGRAM, p.as_bytes());
            let mut h2 = h ^ 0x20;
            h2 = h2.wrapping_mul(0x0100_0193);
            for &b in w.as_bytes() {
                h2 ^= u32::from(b);
                h2 = h2.wrapping_mul(0x0100_0193);
            }
            out.push(bucket(h2));
        }
        prev = Some(w);
    }
    // Character n-grams over the text with runs of whitespace collapsed to one space.
    let mut squeezed: Vec<u8> = Vec::with_capacity(text.len() + 2);
    squeezed.push(b' ');
    for &b in text.as_bytes() {
        let b = if b.is_ascii_whitespace() { b' ' } else { b };
        if !(b == b' ' && squeezed.last() == Some(&b' ')) {
            squeezed.push(b);
        }
    }
    squeezed.push(b' ');
    for n in 3..=5 {
        for g in squeezed.windows(n) {
            out.push(bucket(fnv(CHAR ^ n as u32, g)));
        }
    }
}

/// The weight each occurrence carries.
pub fn scale(n: usize) -> f32 {
    1.0 / (n.max(1) as f32).sqrt()
}
