//! The engine in-process (no HTTP, no client competing for the CPU).
//!
//! `batch_throughput MODEL [THREADS] [GEN]`: aggregate decode throughput at 1, 4 and 8
//! concurrent sequences, one JSON line each.
//! `batch_throughput MODEL THREADS GEN PROMPT_FILE [GRAMMAR_FILE]`: one greedy run of that
//! prompt (under that GBNF grammar, start rule `root`, when given), printing its prompt
//! and decode speed as one JSON line.

use std::time::Instant;

use bulwark_api::sampling::SamplingParams;
use bulwark_engine::{Engine, EngineConfig, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: batch_throughput MODEL [THREADS] [GEN]")?;
    let threads: u32 = args.next().map_or(Ok(2), |t| t.parse())?;
    let gen: u32 = args.next().map_or(Ok(128), |t| t.parse())?;
    let engine = Engine::load(EngineConfig {
        name: "bench".into(),
        path: path.into(),
        ctx_size: 1024,
        threads,
        parallel: 8,
        batch_size: 512,
        queue_depth: 16,
        unified_kv: true,
    })?;
    let params = SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(gen),
        ignore_eos: true,
        ..Default::default()
    };
    if let Some(prompt_file) = args.next() {
        let prompt = engine.tokenize(&std::fs::read_to_string(prompt_file)?)?;
        let n_prompt = prompt.len();
        let start = Instant::now();
        let grammar = match args.next() {
            Some(file) => Some(engine.grammar(&std::fs::read_to_string(file)?)?),
            None => None,
        };
        let mut g = engine.generate_constrained(prompt, params, grammar)?;
        let (mut first, mut last, mut tokens) = (None, start, 0u32);
        while let Some(ev) = g.events.blocking_recv() {
            match ev {
                Event::Delta(_) => {
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                Event::Done { usage, .. } => tokens = usage.completion_tokens,
                Event::Failed(e) => return Err(e.into()),
            }
        }
        let first = first.ok_or("no tokens")?;
        println!(
            "{{\"prompt_tokens\":{n_prompt},\"ttft_s\":{:.6},\"decode_tps\":{:.2},\"tokens\":{tokens}}}",
            (first - start).as_secs_f64(),
            f64::from(tokens - 1) / (last - first).as_secs_f64()
        );
        return Ok(());
    }
    let mut base = 0.0;
    for n in [1usize, 4, 8] {
        let before = engine.stats();
        let start = Instant::now();
        let gens: Vec<_> = (0..n)
            .map(|_| engine.generate(engine.tokenize("Once upon a time")?, params.clone()))
            .collect::<Result<_, _>>()?;
        let mut tokens = 0;
        for mut g in gens {
            while let Some(ev) = g.events.blocking_recv() {
                if let Event::Done { usage, .. } = ev {
                    tokens += usage.completion_tokens;
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let tps = f64::from(tokens) / secs;
        if n == 1 {
            base = tps;
        }
        let after = engine.stats();
        println!(
            "{{\"streams\":{n},\"tokens\":{tokens},\"wall_s\":{secs:.3},\"aggregate_tps\":{tps:.1},\"vs_single\":{:.2},\"decode_steps\":{}}}",
            tps / base,
            after.decode_steps - before.decode_steps
        );
    }
    Ok(())
}
