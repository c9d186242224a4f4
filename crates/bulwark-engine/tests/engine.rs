//! The engine on the real default model: greedy determinism, shared batches,
//! cancellation, queue bounds and context limits.

use bulwark_api::response::FinishReason;
use bulwark_api::sampling::SamplingParams;
use bulwark_engine::template::TemplateMessage;
use bulwark_engine::{Engine, EngineConfig, EngineError, Event, Generation};

fn engine(parallel: u32, queue_depth: usize) -> Engine {
    engine_with(parallel, queue_depth, true)
}

fn engine_with(parallel: u32, queue_depth: usize, unified_kv: bool) -> Engine {
    let cfg = EngineConfig {
        name: "smollm2".into(),
        path: bulwark_testkit::default_model_path(),
        ctx_size: 512,
        threads: 2,
        parallel,
        batch_size: 256,
        queue_depth,
        unified_kv,
    };
    match Engine::load(cfg) {
        Ok(e) => e,
        Err(e) => panic!("engine failed to load: {e}"),
    }
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn chat(engine: &Engine, user: &str) -> bulwark_engine::Prompt {
    let text = engine
        .apply_chat_template(&[TemplateMessage::new("user", user)])
        .unwrap_or_else(|e| panic!("template: {e}"));
    engine
        .tokenize(&text)
        .unwrap_or_else(|e| panic!("tokenize: {e}"))
}

/// Collects a whole generation: (text, finish reason, completion tokens).
fn collect(g: Generation) -> (String, FinishReason, u32) {
    let (pieces, finish, n) = collect_pieces(g);
    (pieces.concat(), finish, n)
}

/// As [`collect`], with the text as the deltas it arrived in.
fn collect_pieces(mut g: Generation) -> (Vec<String>, FinishReason, u32) {
    let mut pieces = Vec::new();
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Delta(d) => pieces.push(d),
            Event::Done { finish, usage } => {
                assert_eq!(usage.prompt_tokens, g.prompt_tokens);
                return (pieces, finish, usage.completion_tokens);
            }
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("generation ended without Done")
}

#[test]
fn greedy_generation_is_deterministic() {
    let e = engine(2, 8);
    let run = || {
        collect(
            e.generate(chat(&e, "Say hello."), greedy(24))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    };
    let first = run();
    let second = run();
    assert_eq!(first, second);
    // Which words come out depends on the CPU's arithmetic (llama.cpp picks kernels for
    // the instructions it finds), so only their shape is fixed here.
    assert_eq!((first.1, first.2), (FinishReason::Length, 24), "{first:?}");
    assert!(first.0.split_whitespace().count() >= 5, "{first:?}");
}

/// Runs four greedy requests at once; returns their outputs after checking that they
/// completed and were decoded in shared batches.
fn four_at_once(e: &Engine, prompts: &[&str; 4]) -> Vec<(String, FinishReason, u32)> {
    let before = e.stats();
    // End-of-generation is ignored so that no request can finish before the last one
    // joins: all four are then guaranteed to be in flight together.
    let params = SamplingParams {
        ignore_eos: true,
        ..greedy(32)
    };
    let gens: Vec<Generation> = prompts
        .iter()
        .map(|p| {
            e.generate(chat(e, p), params.clone())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let results: Vec<_> = gens.into_iter().map(collect).collect();
    for (text, _, n) in &results {
        assert!(
            !text.is_empty() && *n == 32,
            "incomplete generation: {results:?}"
        );
    }
    let after = e.stats();
    assert_eq!(after.completed - before.completed, 4);
    assert!(
        after.shared_steps > before.shared_steps,
        "no decode step carried two sequences: {after:?}"
    );
    assert_eq!(
        after.max_batch_sequences, 4,
        "the four requests never shared one batch: {after:?}"
    );
    results
}

const PROMPTS: [&str; 4] = [
    "Name a fruit.",
    "Count to five.",
    "Say hello.",
    "What is 2+2?",
];

#[test]
fn concurrent_requests_share_batches() {
    let e = engine(4, 8);
    four_at_once(&e, &PROMPTS);
}

#[test]
fn with_split_kv_batching_does_not_change_greedy_output() {
    // With one KV buffer per sequence, a request's arithmetic does not depend on its
    // neighbours (with the shared buffer it may differ in late tokens, as in llama.cpp's
    // own server).
    let e = engine_with(4, 8, false);
    let batched = four_at_once(&e, &PROMPTS);
    let params = SamplingParams {
        ignore_eos: true,
        ..greedy(32)
    };
    for (prompt, together) in PROMPTS.iter().zip(&batched) {
        let alone = collect(
            e.generate(chat(&e, prompt), params.clone())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(&alone, together, "{prompt}");
    }
}

#[test]
fn dropping_a_generation_frees_its_sequence() {
    let e = engine(1, 4);
    let mut g = e
        .generate(chat(&e, "Write a long story about a dragon."), greedy(400))
        .unwrap_or_else(|e| panic!("{e}"));
    // Wait for the first token, then walk away.
    assert!(matches!(g.events.blocking_recv(), Some(Event::Delta(_))));
    drop(g);
    let (text, _, usage) = collect(
        e.generate(chat(&e, "Say hello."), greedy(8))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert!(!text.is_empty());
    let stats = e.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.active, 0);
    // With one sequence, the next request could only run once the abandoned one left
    // its slot; it left at once instead of generating its 400 tokens (no wall-clock
    // bound here: the machine may be busy, the token count is what tells).
    let abandoned = stats.generated_tokens - u64::from(usage);
    assert!(
        abandoned < 100,
        "the abandoned story kept generating: {stats:?}"
    );
}

#[test]
fn full_queue_is_refused() {
    let e = engine(1, 1);
    let running = e
        .generate(chat(&e, "Tell me a story."), greedy(200))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut running = running;
    assert!(matches!(
        running.events.blocking_recv(),
        Some(Event::Delta(_))
    ));
    let _queued = e
        .generate(chat(&e, "Hi"), greedy(4))
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = e.generate(chat(&e, "Hi"), greedy(4));
    assert!(
        matches!(refused, Err(EngineError::QueueFull { depth: 1 })),
        "{refused:?}"
    );
    assert_eq!(e.stats().rejected, 1);
}

#[test]
fn stop_sequences_and_max_tokens() {
    let e = engine(1, 4);
    // The stop text is taken from the greedy answer itself (its words depend on the
    // CPU's arithmetic): the end of one token and the start of the next, so this also
    // checks that text held back while it might begin a stop is cut, not sent.
    let (pieces, _, _) = collect_pieces(
        e.generate(chat(&e, "Say hello."), greedy(24))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let whole = pieces.concat();
    let (stop, at) = (1..pieces.len())
        .find_map(|i| {
            let (a, b) = (&pieces[i - 1], &pieces[i]);
            let cut = a.len().checked_sub(2)?;
            // `is_char_boundary(2)` is false for a piece shorter than 2 bytes.
            if !a.is_char_boundary(cut) || !b.is_char_boundary(2) {
                return None;
            }
            let at = pieces[..i].iter().map(String::len).sum::<usize>() - 2;
            let stop = format!("{}{}", &a[cut..], &b[..2]);
            (whole.find(&stop) == Some(at)).then_some((stop, at))
        })
        .unwrap_or_else(|| panic!("no stop text spans two tokens of {pieces:?}"));
    let p = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(24)
    };
    let (text, finish, _) = collect(
        e.generate(chat(&e, "Say hello."), p)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(
        (text.as_str(), finish),
        (&whole[..at], FinishReason::Stop),
        "stop {stop:?} in {pieces:?}"
    );
    let (_, finish, n) = collect(
        e.generate(chat(&e, "Write a poem."), greedy(3))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!((finish, n), (FinishReason::Length, 3));
}

#[test]
fn prompt_longer_than_context_is_refused_with_numbers() {
    let e = engine(1, 4);
    let long = "word ".repeat(2000);
    match e.tokenize(&long) {
        Err(EngineError::PromptTooLong {
            prompt,
            context: 512,
        }) => assert!(prompt > 512),
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}
