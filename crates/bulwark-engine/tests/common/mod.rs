//! What the engine's test files share: one loaded default model per test binary, and
//! reading a generation to its end.

use std::sync::OnceLock;

use bulwark_api::response::FinishReason;
use bulwark_engine::{Engine, EngineConfig, Event, Generation};

/// The default model, loaded once: 1024-token context, 4 sequences batched together.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cfg = EngineConfig {
            name: "smollm2".into(),
            path: bulwark_testkit::default_model_path(),
            ctx_size: 1024,
            threads: 2,
            parallel: 4,
            batch_size: 256,
            queue_depth: 16,
            unified_kv: true,
        };
        Engine::load(cfg).unwrap_or_else(|e| panic!("engine failed to load: {e}"))
    })
}

/// The whole text of a generation and why it ended; panics if it failed.
pub fn collect(mut g: Generation) -> (String, FinishReason) {
    let mut text = String::new();
    while let Some(ev) = g.events.blocking_recv() {
        match ev {
            Event::Delta(d) => text.push_str(&d),
            Event::Done { finish, .. } => return (text, finish),
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("generation ended without Done")
}
