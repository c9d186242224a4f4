//! False alarms on what the model writes without the mark.
//!
//! `watermark_null MODEL [TEXTS] [KEYS]` has the model write TEXTS answers of 200 tokens
//! (past its end of turn, at the engine's default sampling, 12 prompts, one seed
//! each), unmarked, and judges each under KEYS keys: text that never saw a key must
//! be called marked at most as often as the threshold (1e-4) says. People's writing
//! is measured by `watermark_bench`; this is the other null: the same model, unmarked.
//! Prints one JSON object: judgments, false alarms, and the smallest p-values seen.

use bulwark_api::sampling::SamplingParams;
use bulwark_engine::template::TemplateMessage;
use bulwark_engine::watermark::{Verdict, WatermarkKey, P_THRESHOLD};
use bulwark_engine::{Engine, EngineConfig, Event};

#[path = "shared/prompts.rs"]
mod prompts;
use prompts::PROMPTS;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: watermark_null MODEL [TEXTS] [KEYS]";
    let path = args.next().ok_or(usage)?;
    let texts: usize = args.next().map_or(Ok(48), |n| n.parse())?;
    let keys: u32 = args.next().map_or(Ok(500), |n| n.parse())?;
    let engine = Engine::load(EngineConfig {
        name: "null".into(),
        path: path.into(),
        ctx_size: 2048,
        threads: 2,
        parallel: 4,
        batch_size: 512,
        queue_depth: 64,
        unified_kv: true,
    })?;
    let gens = (0..texts)
        .map(|i| {
            let rendered = engine
                .apply_chat_template(&[TemplateMessage::new("user", PROMPTS[i % PROMPTS.len()])])
                .unwrap_or_default();
            let prompt = engine.tokenize(&rendered)?;
            engine.generate(
                prompt,
                SamplingParams {
                    max_tokens: Some(200),
                    ignore_eos: true,
                    seed: Some(5_000 + i as u32),
                    ..Default::default()
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut written = Vec::new();
    for mut g in gens {
        let mut text = String::new();
        while let Some(ev) = g.events.blocking_recv() {
            match ev {
                Event::Delta(d) => text.push_str(&d),
                Event::Done { .. } => break,
                Event::Failed(e) => return Err(e.into()),
            }
        }
        written.push(engine.text_tokens(&text));
    }
    let (mut judged, mut alarms, mut too_short) = (0usize, 0usize, 0usize);
    let mut lowest: Vec<f64> = Vec::new();
    for k in 0..keys {
        let mut bytes = [0x5au8; 32];
        bytes[..4].copy_from_slice(&k.to_le_bytes());
        let key = WatermarkKey::from_bytes(bytes);
        for t in &written {
            let d = key.detect(t);
            match d.verdict {
                Verdict::TooShort => too_short += 1,
                v => {
                    judged += 1;
                    alarms += usize::from(v == Verdict::Watermarked);
                    lowest.push(d.p_value);
                }
            }
        }
    }
    lowest.sort_by(f64::total_cmp);
    lowest.truncate(5);
    let mut scored: Vec<usize> = written
        .iter()
        .map(|t| WatermarkKey::from_bytes([1; 32]).detect(t).tokens_scored)
        .collect();
    scored.sort_unstable();
    let median_scored = scored.get(scored.len() / 2).copied();
    let out = serde_json::json!({
        "texts": written.len(),
        "keys": keys,
        "judgments": judged,
        "too_short": too_short,
        "false_alarms": alarms,
        "rate": alarms as f64 / judged.max(1) as f64,
        "threshold": P_THRESHOLD,
        "lowest_p": lowest,
        "median_pairs_scored": median_scored,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
