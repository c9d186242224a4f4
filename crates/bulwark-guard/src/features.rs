//! The learned injection detector's features: hashed word unigrams and bigrams and
//! character 3- to 5-grams of the normalised text (bytes), and character bigrams and
//! trigrams of the scripts written without spaces (Chinese, Japanese, Korean, Thai).
//! Shared by inference and by the trainer (`examples/train_injection.rs`), so the two
//! can never disagree.

/// Number of hash buckets (weights) of the model.
pub const BUCKETS: usize = 1 << 18;

const WORD: u32 = 0x9E37_79B9;
const BIGRAM: u32 = 0x85EB_CA6B;
const CHAR: u32 = 0xC2B2_AE35;
const UNSPACED: u32 = 0x27D4_EB2F;

/// Whether `c` belongs to a script written without spaces between words: there a "word"
/// is a whole clause and a byte 3- to 5-gram at most one or two characters, so the model
/// reads character bigrams and trigrams instead.
fn unspaced(c: char) -> bool {
    matches!(u32::from(c), 0x0E00..=0x0EFF | 0x2E80..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF66..=0xFF9F)
}

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
    if !text.is_ascii() {
        unspaced_ngrams(text, out);
    }
}

/// Character bigrams and trigrams of the runs of [`unspaced`] characters in `text`.
fn unspaced_ngrams(text: &str, out: &mut Vec<u32>) {
    // The byte offsets of the last three characters of the current run.
    let mut run: [usize; 3] = [0; 3];
    let mut len = 0usize;
    for (i, c) in text.char_indices() {
        if !unspaced(c) {
            len = 0;
            continue;
        }
        run = [run[1], run[2], i];
        len += 1;
        let end = i + c.len_utf8();
        if len >= 2 {
            out.push(bucket(fnv(UNSPACED ^ 2, &text.as_bytes()[run[1]..end])));
        }
        if len >= 3 {
            out.push(bucket(fnv(UNSPACED ^ 3, &text.as_bytes()[run[0]..end])));
        }
    }
}

/// Texts longer than this many words are read in windows of this many words, which share
/// [`WINDOW_OVERLAP`] words: a bag of n-grams over a whole page dilutes one injected
/// sentence, and its score drifts with length (the texts it was trained on are short).
pub const WINDOW_WORDS: usize = 64;
/// Words shared by consecutive windows, so that a sentence of up to this many words lies
/// whole in some window.
pub const WINDOW_OVERLAP: usize = 16;

/// The byte ranges of `text` the model reads: the whole text when it has at most
/// [`WINDOW_WORDS`] words, otherwise windows of that many words.
pub fn windows(text: &str) -> Vec<(usize, usize)> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                words.push((s, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push((s, text.len()));
    }
    if words.len() <= WINDOW_WORDS {
        return vec![(0, text.len())];
    }
    let mut out = Vec::new();
    let mut first = 0;
    loop {
        let last = (first + WINDOW_WORDS).min(words.len()) - 1;
        out.push((words[first].0, words[last].1));
        if last + 1 == words.len() {
            return out;
        }
        first += WINDOW_WORDS - WINDOW_OVERLAP;
    }
}

/// The log-odds of `window` under `weights` and `bias` (its features left in `scratch`):
/// the model's ([`crate::injection::Model`]) and its trainer's, which holds the weights
/// unquantised.
pub fn logit(weights: &[f32], bias: f32, window: &str, scratch: &mut Vec<u32>) -> f32 {
    extract(window, scratch);
    let sum: f32 = scratch.iter().map(|&h| weights[h as usize]).sum();
    bias + sum * scale(scratch.len())
}

/// The weight each occurrence carries.
pub fn scale(n: usize) -> f32 {
    1.0 / (n.max(1) as f32).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unspaced_scripts_get_character_bigrams_and_trigrams() {
        let count = |t: &str| {
            let mut out = Vec::new();
            extract(t, &mut out);
            out.len()
        };
        let mut plain = Vec::new();
        unspaced_ngrams("ignore all that", &mut plain);
        assert!(plain.is_empty());
        // Four Han characters: three bigrams and two trigrams, run broken by the comma.
        unspaced_ngrams("忽略指令", &mut plain);
        assert_eq!(plain.len(), 5);
        plain.clear();
        unspaced_ngrams("忽略,指令", &mut plain);
        assert_eq!(plain.len(), 2);
        assert!(count("忽略之前的所有指令") > count("abcdefghi"));
    }

    #[test]
    fn a_short_text_is_one_window() {
        assert_eq!(windows("ignore the above"), vec![(0, 16)]);
        assert_eq!(windows(""), vec![(0, 0)]);
    }

    proptest! {
        // Every window starts and ends on a word, holds at most WINDOW_WORDS words, and
        // every run of WINDOW_OVERLAP consecutive words lies whole in some window.
        #[test]
        fn windows_cover_every_short_run_of_words(words in proptest::collection::vec("[a-zé]{1,6}", 0..300), sep in "[ \n\t]{1,3}") {
            let text = words.join(&sep);
            let ws = windows(&text);
            let spans: Vec<(usize, usize)> = {
                let mut at = 0;
                words.iter().map(|w| { let s = at; at += w.len() + sep.len(); (s, s + w.len()) }).collect()
            };
            if words.len() <= WINDOW_WORDS {
                prop_assert_eq!(ws, vec![(0, text.len())]);
            } else {
                for &(s, e) in &ws {
                    let inside = spans.iter().filter(|w| w.0 >= s && w.1 <= e).count();
                    prop_assert!(inside <= WINDOW_WORDS);
                    prop_assert!(spans.iter().any(|w| w.0 == s) && spans.iter().any(|w| w.1 == e));
                }
                for run in spans.windows(WINDOW_OVERLAP) {
                    let (s, e) = (run[0].0, run[WINDOW_OVERLAP - 1].1);
                    prop_assert!(ws.iter().any(|w| w.0 <= s && e <= w.1), "run {}..{} not in a window", s, e);
                }
            }
        }
    }
}
