//! The watermark on the real default model: what it writes with the key is detected,
//! what it writes without it, what people wrote and what another key marked are not,
//! and the mark survives edits and being pasted into other text.

mod common;

use bulwark_api::sampling::SamplingParams;
use bulwark_engine::template::TemplateMessage;
use bulwark_engine::watermark::{Marker, Verdict, WatermarkKey, DEFAULT_DELTA, MIN_TOKENS};
use bulwark_engine::Generation;
use common::{collect, engine};
use llama_cpp_2::token::LlamaToken;

fn key(b: u8) -> WatermarkKey {
    WatermarkKey::from_bytes([b; 32])
}

const PROMPTS: [&str; 4] = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how bread is made, from the field to the bakery.",
    "Describe a walk through a busy market in a city you like.",
    "Write a letter to a friend about your plans for the summer holidays.",
];

fn sampling(seed: u32) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(200),
        // 200 tokens whatever the model would do: the test is about length.
        ignore_eos: true,
        // And 200 tokens of text, not a phrase repeated: the detector scores each
        // (previous, token) pair once, and this small model, past its end of turn,
        // loops on some CPUs (whose arithmetic makes it write another answer): one
        // answer had 102 distinct pairs in 200 tokens, too few to be found once pasted
        // between twice its length of other writing.
        frequency_penalty: Some(0.5),
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// The texts the model writes for [`PROMPTS`], marked with `with` or not marked.
fn write(with: Option<&WatermarkKey>) -> Vec<String> {
    let e = engine();
    let gens: Vec<Generation> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prompt = e
                .apply_chat_template(&[TemplateMessage::new("user", *p)])
                .and_then(|t| e.tokenize(&t))
                .unwrap_or_else(|e| panic!("prompt: {e}"));
            match with {
                Some(k) => e.generate_watermarked(
                    prompt,
                    sampling(i as u32),
                    Marker {
                        key: k.clone(),
                        delta: DEFAULT_DELTA,
                    },
                ),
                None => e.generate(prompt, sampling(i as u32)),
            }
            .unwrap_or_else(|e| panic!("generate: {e}"))
        })
        .collect();
    gens.into_iter().map(|g| collect(g).0).collect()
}

fn human() -> Vec<&'static str> {
    include_str!("data/human_sentences.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect()
}

/// One set of marked texts (generating is the slow part) for everything said of them.
#[test]
fn marked_text_is_detected_also_edited_or_pasted_and_only_with_its_key() {
    let e = engine();
    let marked = write(Some(&key(1)));
    let sentences = human();
    let before: String = sentences[100..110].join(" ");
    let after: String = sentences[500..510].join(" ");
    let mut rng = fastrand::Rng::with_seed(25);
    for text in &marked {
        // At 200 tokens, p < 1e-6.
        let tokens = e.text_tokens(text);
        let d = key(1).detect(&tokens);
        eprintln!(
            "marked: {} of {} green, z {:.1}, p {:.1e}",
            d.green_tokens, d.tokens_scored, d.z_score, d.p_value
        );
        assert!(
            d.p_value < 1e-6 && d.verdict == Verdict::Watermarked,
            "{d:?} for {} tokens: {text}",
            tokens.len()
        );
        // Another key's green lists say nothing.
        let other = key(2).detect(&tokens);
        assert_eq!(other.verdict, Verdict::NotWatermarked, "{other:?}");
        // A tenth of the tokens replaced by random ones.
        let d = key(1).detect(&edited(&tokens, 10, &mut rng));
        assert_eq!(d.verdict, Verdict::Watermarked, "{d:?} after 10% edits");
        // Pasted between paragraphs people wrote, twice its length.
        let pasted = e.text_tokens(&format!("{before}\n\n{text}\n\n{after}"));
        assert!(
            pasted.len() >= 3 * tokens.len() / 2,
            "{} vs {}",
            pasted.len(),
            tokens.len()
        );
        let d = key(1).detect(&pasted);
        assert_eq!(d.verdict, Verdict::Watermarked, "{d:?}");
    }
    // A quarter of the tokens replaced, in 400 tokens (two answers one after the
    // other): at 200 tokens and the default strength, a quarter of the tokens edited
    // leaves about two texts in three detected (BENCHMARKS.md), at 400 all of them.
    for pair in marked.chunks(2) {
        let tokens = e.text_tokens(&pair.join("\n\n"));
        assert!(tokens.len() >= 380, "{}", tokens.len());
        let d = key(1).detect(&edited(&tokens, 25, &mut rng));
        assert_eq!(d.verdict, Verdict::Watermarked, "{d:?} after 25% edits");
    }
}

/// `tokens` with `percent` of them replaced by random ones.
fn edited(tokens: &[LlamaToken], percent: usize, rng: &mut fastrand::Rng) -> Vec<LlamaToken> {
    let mut out = tokens.to_vec();
    for i in rand_indices(rng, out.len(), out.len() * percent / 100) {
        out[i] = LlamaToken(rng.i32(0..49_152));
    }
    out
}

#[test]
fn unmarked_text_is_not() {
    for text in write(None) {
        let d = key(1).detect(&engine().text_tokens(&text));
        assert_eq!(d.verdict, Verdict::NotWatermarked, "{d:?}: {text}");
    }
}

#[test]
fn human_text_is_not_called_marked() {
    let e = engine();
    let k = key(1);
    let sentences = human();
    assert!(sentences.len() >= 3_000, "{}", sentences.len());
    // Every sentence alone, and passages of about 50, 100 and 200 tokens.
    let (mut judged, mut too_short, mut false_alarms) = (0usize, 0usize, Vec::new());
    let mut passages = Vec::new();
    let mut open = [
        (50, String::new()),
        (100, String::new()),
        (200, String::new()),
    ];
    for s in &sentences {
        match k.detect(&e.text_tokens(s)).verdict {
            Verdict::TooShort => too_short += 1,
            Verdict::Watermarked => {
                judged += 1;
                false_alarms.push(s.to_string());
            }
            Verdict::NotWatermarked => judged += 1,
        }
        for (size, passage) in &mut open {
            passage.push_str(s);
            passage.push(' ');
            if e.text_tokens(passage).len() >= *size {
                passages.push(std::mem::take(passage));
            }
        }
    }
    for p in &passages {
        let d = k.detect(&e.text_tokens(p));
        assert_ne!(d.verdict, Verdict::TooShort);
        judged += 1;
        if d.verdict == Verdict::Watermarked {
            false_alarms.push(p.clone());
        }
    }
    eprintln!(
        "human text: {judged} judged ({} passages), {too_short} sentences too short, {} false alarms",
        passages.len(),
        false_alarms.len()
    );
    assert!(judged >= 4_500, "{judged}");
    // At most one in a thousand.
    assert!(
        false_alarms.len() * 1_000 <= judged,
        "{} of {judged}: {false_alarms:?}",
        false_alarms.len()
    );
}

fn rand_indices(rng: &mut fastrand::Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut all);
    all.truncate(k);
    all
}

#[test]
fn short_text_gets_no_verdict() {
    let d = key(1).detect(&engine().text_tokens("Hello there, how are you?"));
    assert!(d.tokens_scored < MIN_TOKENS);
    assert_eq!(d.verdict, Verdict::TooShort);
}
