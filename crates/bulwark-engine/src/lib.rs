//! In-process inference on GGUF models through llama.cpp (`llama-cpp-2`).
//!
//! One [`Engine`] per loaded model. Each engine owns a single worker thread with one
//! llama.cpp context of `parallel` sequences, and runs a continuous-batching loop: every
//! decode step packs the next token of every generating sequence plus prompt chunks of
//! newly admitted ones into one shared batch; requests join between steps and leave as
//! soon as they finish or their client goes away.
//!
//! The engine never blocks on a client: results go out over unbounded channels, and a
//! closed channel cancels the sequence and frees its slot at the next step. Admission is
//! a bounded queue; when it is full, [`Engine::generate`] fails at once with
//! [`EngineError::QueueFull`] (a 429 for the client).

mod sampler;
mod stats;
pub mod template;
pub mod text;
/// Tool-call formats (pure text parsing; in `bulwark-api` so that it can be fuzzed without llama.cpp).
pub use bulwark_api::tool_calls as tools;
pub mod watermark;
mod worker;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use bulwark_api::response::{FinishReason, Usage};
use bulwark_api::sampling::SamplingParams;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use stats::Stats;
pub use stats::StatsSnapshot;
use template::{ChatTemplate, TemplateMessage, CHATML_FALLBACK};

/// How to load and run one local model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The name clients use in `model`.
    pub name: String,
    pub path: PathBuf,
    /// Context window per sequence, in tokens.
    pub ctx_size: u32,
    /// CPU threads for llama.cpp's compute.
    pub threads: u32,
    /// Sequences decoded together (the continuous batch width).
    pub parallel: u32,
    /// Most tokens in one decode call (prompt chunks plus one per generating sequence).
    pub batch_size: u32,
    /// Requests that may wait for a free sequence before new ones get 429.
    pub queue_depth: usize,
    /// One KV buffer shared by all sequences (faster batching) rather than one per
    /// sequence (a request's greedy output is then identical whatever else is batched).
    pub unified_kv: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("llama.cpp backend failed to initialise: {0}")]
    Backend(String),
    #[error("failed to load model `{path}`: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("failed to create a llama.cpp context: {0}")]
    Context(String),
    #[error("{0}")]
    Template(#[from] template::TemplateError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("This model's maximum context length is {context} tokens, but the prompt has {prompt} tokens. Shorten the prompt (it must leave room for at least one generated token).")]
    PromptTooLong { prompt: usize, context: u32 },
    #[error("the engine's queue is full ({depth} requests waiting)")]
    QueueFull { depth: usize },
    #[error("the engine has stopped")]
    Stopped,
    /// A JSON Schema or grammar that llama.cpp's grammar sampler cannot take.
    #[error("{0}")]
    Grammar(String),
}

/// Something that happened to a generation, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text. Never empty.
    Delta(String),
    /// The generation ended normally; no event follows.
    Done { finish: FinishReason, usage: Usage },
    /// The engine failed this generation; no event follows.
    Failed(String),
}

/// A tokenized prompt, ready for [`Engine::generate`].
#[derive(Debug, Clone)]
pub struct Prompt {
    tokens: Vec<LlamaToken>,
}

impl Prompt {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A running generation. Dropping it cancels the request and frees its sequence.
#[derive(Debug)]
pub struct Generation {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub prompt_tokens: u32,
}

/// A GBNF grammar that llama.cpp parsed against this model's vocabulary: every token
/// a generation under it samples keeps the output a prefix of a sentence of the
/// grammar, and the end of generation is allowed only where a sentence is complete.
#[derive(Debug, Clone)]
pub struct Grammar(Arc<str>);

impl Grammar {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) struct Job {
    tokens: Vec<LlamaToken>,
    params: SamplingParams,
    grammar: Option<Grammar>,
    watermark: Option<watermark::Marker>,
    events: mpsc::UnboundedSender<Event>,
}

/// The GBNF that llama.cpp's converter writes for a JSON Schema (`{}` and `true` are
/// any JSON value), with two changes: compact JSON (at most one space between tokens,
/// where the converter would allow newlines and indentation that a small model can
/// spend its whole `max_tokens` on), and exponents of at most two digits (the
/// converter allows sixteen, and `1e1911101017222403` is JSON that no parser can hold
/// as a number). Schemas it cannot express are an error that says so.
pub fn json_schema_gbnf(schema: &serde_json::Value) -> Result<String, EngineError> {
    let gbnf = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
        // The binding reports only a status code, not the converter's reason.
        tracing::debug!(error = %e, "JSON Schema conversion failed");
        EngineError::Grammar(
            "llama.cpp's grammar cannot express this JSON Schema (its converter refuses, \
             among others, `$ref`s that point outside the schema)"
                .to_owned(),
        )
    })?;
    Ok(gbnf
        .lines()
        .map(|l| {
            if l.starts_with("space ::=") {
                r#"space ::= | " ""#.to_owned()
            } else {
                l.replace("[eE] [-+]? integral-part", "[eE] [-+]? [0-9]{1,2}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

fn text_tokens(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    model.vocab().tokenize(text.as_bytes(), false, false)
}

/// A model's tokenizer alone (its vocabulary, without the weights): for reading texts
/// as the model would, e.g. to detect its watermark, without loading it to generate.
pub struct Tokenizer(LlamaModel);

impl Tokenizer {
    pub fn load(path: &std::path::Path) -> Result<Tokenizer, EngineError> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        LlamaModel::load_from_file(backend()?, path, &params)
            .map(Tokenizer)
            .map_err(|e| EngineError::Load {
                path: path.to_owned(),
                reason: e.to_string(),
            })
    }

    pub fn tokens(&self, text: &str) -> Vec<LlamaToken> {
        text_tokens(&self.0, text)
    }
}

/// A loaded model and its decode loop.
pub struct Engine {
    config: EngineConfig,
    model: Arc<LlamaModel>,
    template: ChatTemplate,
    jobs: SyncSender<Job>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The process's llama.cpp backend, initialised once (with its logs sent to `tracing`):
/// for code that loads a model of its own beside the engines, such as benchmarks.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

impl Engine {
    /// Loads the model (memory-mapped), compiles its chat template and starts the
    /// decode loop. Blocks for the duration of the load: call it off the async runtime.
    pub fn load(config: EngineConfig) -> Result<Engine, EngineError> {
        let backend = backend()?;
        let params = LlamaModelParams::default().with_use_mmap(true);
        let model = LlamaModel::load_from_file(backend, &config.path, &params).map_err(|e| {
            EngineError::Load {
                path: config.path.clone(),
                reason: e.to_string(),
            }
        })?;
        let model = Arc::new(model);

        let vocab = model.vocab();
        let piece = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let (bos, eos) = (piece(vocab.bos()), piece(vocab.eos()));
        let source = match model.meta_val_str("tokenizer.chat_template") {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(model = %config.name, "GGUF has no chat template; using ChatML");
                CHATML_FALLBACK.to_owned()
            }
        };
        let template = ChatTemplate::new(&source, &bos, &eos)?;

        let parallel = config.parallel.max(1);
        let total_ctx = config.ctx_size.saturating_mul(parallel);
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(total_ctx))
            .with_n_batch(config.batch_size)
            .with_n_ubatch(config.batch_size)
            .with_n_seq_max(parallel)
            // Shared KV buffer: a batch of N sequences runs as one attention pass instead of
            // N per-stream passes (1.6-1.8x the single-stream aggregate at 8 streams against
            // 1.3x split, BENCHMARKS.md), at the price of floating-point order depending on
            // what else is in the batch. Each sequence is still held to `ctx_size`.
            .with_kv_unified(config.unified_kv)
            .with_n_threads(config.threads as i32)
            .with_n_threads_batch(config.threads as i32);

        let (jobs, rx) = sync_channel::<Job>(config.queue_depth);
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), EngineError>>();
        let worker = worker::Worker {
            model: Arc::clone(&model),
            ctx_size: config.ctx_size,
            parallel,
            batch_size: config.batch_size as usize,
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name(format!("engine-{}", config.name))
            .spawn(move || worker.run(backend, ctx_params, rx, ready_tx))
            .map_err(|e| EngineError::Context(e.to_string()))?;
        ready_rx.recv().map_err(|_| EngineError::Stopped)??;

        tracing::info!(
            model = %config.name,
            params = model.n_params(),
            ctx_size = config.ctx_size,
            parallel,
            threads = config.threads,
            "local model loaded"
        );
        Ok(Engine {
            config,
            model,
            template,
            jobs,
            stats,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Renders a conversation with the model's own chat template.
    pub fn apply_chat_template(&self, messages: &[TemplateMessage]) -> Result<String, EngineError> {
        Ok(self.template.render(messages)?)
    }

    /// Tokenizes a prompt and checks that it fits the context window.
    pub fn tokenize(&self, text: &str) -> Result<Prompt, EngineError> {
        let tokens = self.model.vocab().tokenize(text.as_bytes(), true, true);
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if tokens.len() >= self.config.ctx_size as usize {
            return Err(EngineError::PromptTooLong {
                prompt: tokens.len(),
                context: self.config.ctx_size,
            });
        }
        Ok(Prompt { tokens })
    }

    /// The chat template this model renders conversations with.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Compiles a GBNF grammar (start rule `root`) for this model.
    pub fn grammar(&self, gbnf: &str) -> Result<Grammar, EngineError> {
        llama_cpp_2::sampling::LlamaSampler::grammar(&self.model, gbnf, "root")
            .map_err(|e| EngineError::Grammar(format!("the grammar does not parse: {e}")))?;
        Ok(Grammar(Arc::from(gbnf)))
    }

    /// The grammar of JSON documents that validate against `schema`, by llama.cpp's own
    /// JSON Schema converter.
    pub fn schema_grammar(&self, schema: &serde_json::Value) -> Result<Grammar, EngineError> {
        let gbnf = json_schema_gbnf(schema)?;
        self.grammar(&gbnf)
    }

    /// Queues a generation. Fails at once when the queue is full.
    pub fn generate(
        &self,
        prompt: Prompt,
        params: SamplingParams,
    ) -> Result<Generation, EngineError> {
        self.generate_constrained(prompt, params, None)
    }

    /// Queues a generation whose output follows `grammar`.
    pub fn generate_constrained(
        &self,
        prompt: Prompt,
        params: SamplingParams,
        grammar: Option<Grammar>,
    ) -> Result<Generation, EngineError> {
        self.queue(prompt, params, grammar, None)
    }

    /// Queues a generation whose text carries a watermark ([`watermark`]): free
    /// text only, as constrained output is never marked.
    pub fn generate_watermarked(
        &self,
        prompt: Prompt,
        params: SamplingParams,
        marker: watermark::Marker,
    ) -> Result<Generation, EngineError> {
        self.queue(prompt, params, None, Some(marker))
    }

    fn queue(
        &self,
        prompt: Prompt,
        params: SamplingParams,
        grammar: Option<Grammar>,
        watermark: Option<watermark::Marker>,
    ) -> Result<Generation, EngineError> {
        let (tx, events) = mpsc::unbounded_channel();
        let prompt_tokens = u32::try_from(prompt.tokens.len()).unwrap_or(u32::MAX);
        let job = Job {
            tokens: prompt.tokens,
            params,
            grammar,
            watermark,
            events: tx,
        };
        self.stats.queued(1);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Generation {
                events,
                prompt_tokens,
            }),
            Err(TrySendError::Full(_)) => {
                self.stats.queued(-1);
                self.stats.rejected();
                Err(EngineError::QueueFull {
                    depth: self.config.queue_depth,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued(-1);
                Err(EngineError::Stopped)
            }
        }
    }

    /// The tokens of a text as this model reads it (no BOS, special tokens as text):
    /// what watermark detection scores.
    pub fn text_tokens(&self, text: &str) -> Vec<LlamaToken> {
        text_tokens(&self.model, text)
    }

    /// Counters of the decode loop, e.g. how often sequences shared a batch.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}
