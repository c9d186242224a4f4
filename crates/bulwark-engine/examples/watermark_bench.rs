//! What the watermark costs and how it holds, on one model, in-process.
//!
//! `watermark_bench MODEL HUMAN_SENTENCES [ROUNDS] [DELTA]` writes one JSON object:
//! - decode speed of the same prompts with and without the mark, interleaved (one
//!   sequence at a time, sampling at the engine's defaults, 200 tokens);
//! - perplexity of both outputs under the same model without the mark (the quality
//!   cost: text the mark pushed off the model's preferred path scores worse);
//! - detection of marked and unmarked text after replacing 0-50% of its tokens with
//!   random ones (the robustness curve), and of greedy marked output;
//! - detection throughput (tokenizing and scoring) over people's text;
//! - false alarms on people's text, passages of 50 to 200 tokens under 200 keys.

use std::time::Instant;

use bulwark_api::sampling::SamplingParams;
use bulwark_engine::template::TemplateMessage;
use bulwark_engine::watermark::{Marker, Verdict, WatermarkKey, DEFAULT_DELTA};
use bulwark_engine::{Engine, EngineConfig, Event};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

#[path = "shared/prompts.rs"]
mod prompts;
use prompts::PROMPTS;

struct Sample {
    prompt: String,
    text: String,
    tokens: u32,
    decode_tps: f64,
}

fn generate(e: &Engine, prompt: &str, params: SamplingParams, key: Option<&Marker>) -> Sample {
    let rendered = e
        .apply_chat_template(&[TemplateMessage::new("user", prompt)])
        .unwrap_or_default();
    let p = e.tokenize(&rendered).unwrap_or_else(|err| panic!("{err}"));
    let mut g = match key {
        Some(k) => e.generate_watermarked(p, params, k.clone()),
        None => e.generate(p, params),
    }
    .unwrap_or_else(|err| panic!("{err}"));
    let (mut first, mut last, mut tokens, mut text) = (None, Instant::now(), 0, String::new());
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Delta(d) => {
                last = Instant::now();
                first.get_or_insert(last);
                text.push_str(&d);
            }
            Event::Done { usage, .. } => tokens = usage.completion_tokens,
            Event::Failed(err) => panic!("{err}"),
        }
    }
    let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());
    Sample {
        prompt: rendered,
        text,
        tokens,
        decode_tps: f64::from(tokens.saturating_sub(1)) / secs.max(1e-9),
    }
}

/// exp(mean negative log-likelihood) of `text` after `prompt`, under the model alone.
fn perplexity(model: &LlamaModel, prompt: &str, text: &str) -> f64 {
    let backend = bulwark_engine::backend().unwrap_or_else(|e| panic!("{e}"));
    let vocab = model.vocab();
    let p = vocab.tokenize(prompt.as_bytes(), true, true);
    let c = vocab.tokenize(text.as_bytes(), false, false);
    let all: Vec<LlamaToken> = p.iter().chain(&c).copied().collect();
    let n = all.len() as u32;
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(n + 8))
        .with_n_batch(n + 8)
        .with_n_ubatch(n + 8);
    let mut ctx = model
        .new_context(backend, params)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut batch = LlamaBatch::new(all.len(), 1);
    for (i, t) in all.iter().enumerate() {
        // Logits wherever the next token is part of the continuation.
        let wanted = i + 1 >= p.len() && i + 1 < all.len();
        batch
            .add(*t, i as i32, &[0], wanted)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    ctx.decode(&mut batch).unwrap_or_else(|e| panic!("{e}"));
    let mut nll = 0.0;
    for i in p.len() - 1..all.len() - 1 {
        let logits = ctx.get_logits_ith(i as i32);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = logits
            .iter()
            .map(|&l| f64::from(l - max).exp())
            .sum::<f64>()
            .ln()
            + f64::from(max);
        nll += lse - f64::from(logits[all[i + 1].0 as usize]);
    }
    (nll / c.len().max(1) as f64).exp()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: watermark_bench MODEL HUMAN_SENTENCES [ROUNDS] [DELTA]";
    let path = args.next().ok_or(usage)?;
    let human = std::fs::read_to_string(args.next().ok_or(usage)?)?;
    let rounds: usize = args.next().map_or(Ok(2), |r| r.parse())?;
    let delta: f32 = args.next().map_or(Ok(DEFAULT_DELTA), |d| d.parse())?;
    let engine = Engine::load(EngineConfig {
        name: "bench".into(),
        path: path.clone().into(),
        ctx_size: 1024,
        threads: 2,
        parallel: 1,
        batch_size: 512,
        queue_depth: 16,
        unified_kv: true,
    })?;
    let key = WatermarkKey::from_bytes([42; 32]);
    let marker = Marker {
        key: key.clone(),
        delta,
    };
    let params = |seed: u32| SamplingParams {
        max_tokens: Some(200),
        seed: Some(seed),
        ..Default::default()
    };

    // Speed and texts: plain and marked of the same prompt and seed, back to back.
    let (mut plain, mut marked) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (i, prompt) in PROMPTS.iter().enumerate() {
            let seed = (round * PROMPTS.len() + i) as u32;
            if (round + i) % 2 == 0 {
                plain.push(generate(&engine, prompt, params(seed), None));
                marked.push(generate(&engine, prompt, params(seed), Some(&marker)));
            } else {
                marked.push(generate(&engine, prompt, params(seed), Some(&marker)));
                plain.push(generate(&engine, prompt, params(seed), None));
            }
        }
    }
    let tps = |s: &[Sample]| median(s.iter().map(|x| x.decode_tps).collect());
    let (plain_tps, marked_tps) = (tps(&plain), tps(&marked));

    // Quality: perplexity under the model without the mark.
    let model = LlamaModel::load_from_file(
        bulwark_engine::backend()?,
        &path,
        &LlamaModelParams::default(),
    )?;
    let ppl = |s: &[Sample]| {
        mean(
            &s.iter()
                .filter(|x| x.tokens >= 20)
                .map(|x| perplexity(&model, &x.prompt, &x.text))
                .collect::<Vec<_>>(),
        )
    };
    let (plain_ppl, marked_ppl) = (ppl(&plain), ppl(&marked));

    // Robustness: random token replacement, on these answers (they end where the model
    // ends them) and on answers of exactly 200 tokens (past the model's end of turn).
    let (mut plain_200, mut marked_200) = (Vec::new(), Vec::new());
    for (i, prompt) in PROMPTS.iter().cycle().take(2 * PROMPTS.len()).enumerate() {
        let long = SamplingParams {
            ignore_eos: true,
            ..params(1_000 + i as u32)
        };
        plain_200.push(generate(&engine, prompt, long.clone(), None));
        marked_200.push(generate(&engine, prompt, long, Some(&marker)));
    }
    // And 400 tokens: two of those answers, one after the other.
    let join = |s: &[Sample]| -> Vec<Sample> {
        s.chunks(2)
            .map(|pair| Sample {
                prompt: String::new(),
                text: pair
                    .iter()
                    .map(|x| x.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n"),
                tokens: pair.iter().map(|x| x.tokens).sum(),
                decode_tps: 0.0,
            })
            .collect()
    };
    let (plain_400, marked_400) = (join(&plain_200), join(&marked_200));
    let mut rng = fastrand::Rng::with_seed(7);
    let n_vocab = model.n_vocab();
    let mut curve = |marked: &[Sample], plain: &[Sample]| {
        let mut out = Vec::new();
        for rate in [0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5] {
            let mut judge = |s: &[Sample]| {
                let (mut hits, mut judged, mut ps) = (0usize, 0usize, Vec::new());
                for x in s {
                    let mut t = engine.text_tokens(&x.text);
                    let k = (t.len() as f64 * rate).round() as usize;
                    let mut idx: Vec<usize> = (0..t.len()).collect();
                    rng.shuffle(&mut idx);
                    for &i in &idx[..k] {
                        t[i] = LlamaToken(rng.i32(0..n_vocab));
                    }
                    let d = key.detect(&t);
                    if d.verdict != Verdict::TooShort {
                        judged += 1;
                        hits += usize::from(d.verdict == Verdict::Watermarked);
                        ps.push(d.p_value.max(1e-300).log10());
                    }
                }
                (hits as f64 / judged.max(1) as f64, median(ps), judged)
            };
            let (tpr, median_log10_p, judged) = judge(marked);
            let (fpr, _, _) = judge(plain);
            out.push(serde_json::json!({"edit_rate": rate, "detected": tpr,
                "median_log10_p": median_log10_p, "texts": judged, "unmarked_called_marked": fpr}));
        }
        out
    };
    let edit_curve = curve(&marked, &plain);
    let edit_curve_200 = curve(&marked_200, &plain_200);
    let edit_curve_400 = curve(&marked_400, &plain_400);
    let median_tokens = median(marked.iter().map(|x| f64::from(x.tokens)).collect());

    // Greedy decoding: still marked where the model hesitates.
    let greedy: Vec<Sample> = PROMPTS
        .iter()
        .map(|p| {
            let params = SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(200),
                ..Default::default()
            };
            generate(&engine, p, params, Some(&marker))
        })
        .collect();
    let greedy_detected = greedy
        .iter()
        .filter(|x| key.detect(&engine.text_tokens(&x.text)).verdict == Verdict::Watermarked)
        .count();

    // Throughput of detection: tokenizing and scoring people's text.
    let corpus: String = human
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let started = Instant::now();
    let tokens = engine.text_tokens(&corpus);
    let tokenize_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let d = key.detect(&tokens);
    let score_s = started.elapsed().as_secs_f64();

    // False alarms on people's text: passages of about 50, 100 and 200 tokens, each
    // judged under 200 different keys (every key is a different green list).
    let mut passages: Vec<Vec<LlamaToken>> = Vec::new();
    for size in [50, 100, 200] {
        let mut cur: Vec<LlamaToken> = Vec::new();
        for line in human.lines().filter(|l| !l.starts_with('#')) {
            cur.extend(engine.text_tokens(&format!("{line} ")));
            if cur.len() >= size {
                passages.push(std::mem::take(&mut cur));
            }
        }
    }
    let (mut judged, mut alarms) = (0usize, 0usize);
    for k in 0..200u32 {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&k.to_le_bytes());
        bytes[31] = 0xa5;
        let other = WatermarkKey::from_bytes(bytes);
        for p in &passages {
            let d = other.detect(p);
            if d.verdict != Verdict::TooShort {
                judged += 1;
                alarms += usize::from(d.verdict == Verdict::Watermarked);
            }
        }
    }

    let out = serde_json::json!({
        "delta": delta,
        "texts": plain.len(),
        "tokens_plain": plain.iter().map(|x| x.tokens).sum::<u32>(),
        "tokens_marked": marked.iter().map(|x| x.tokens).sum::<u32>(),
        "decode_tps_plain": plain_tps,
        "decode_tps_marked": marked_tps,
        "decode_ratio": marked_tps / plain_tps,
        "perplexity_plain": plain_ppl,
        "perplexity_marked": marked_ppl,
        "median_tokens_marked": median_tokens,
        "edit_curve": edit_curve,
        "edit_curve_200_tokens": edit_curve_200,
        "edit_curve_400_tokens": edit_curve_400,
        "greedy_detected": format!("{greedy_detected} of {}", greedy.len()),
        "detect_tokens": tokens.len(),
        "detect_tokens_per_s": tokens.len() as f64 / (tokenize_s + score_s),
        "score_tokens_per_s": tokens.len() as f64 / score_s,
        "human_corpus_verdict": d.verdict,
        "human_passages": passages.len(),
        "human_judgments": judged,
        "human_false_alarms": alarms,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
