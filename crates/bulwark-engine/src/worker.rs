//! The continuous-batching decode loop: one thread, one llama.cpp context, many sequences.
//!
//! Each step (1) admits queued jobs into free sequences, (2) drops sequences whose client
//! went away, (3) builds one batch holding the next token of every generating sequence and
//! as many prompt tokens of prefilling sequences as the batch has room for, (4) decodes it
//! once, and (5) samples one token for every sequence that produced logits. Generating
//! sequences go first so that a long prompt never stalls the streams already running.

use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

use bulwark_api::response::{FinishReason, Usage};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::stats::Stats;
use crate::text::{StopMatcher, Utf8Decoder};
use crate::{sampler, EngineError, Event, Job};

pub(crate) struct Worker {
    pub(crate) model: Arc<LlamaModel>,
    pub(crate) ctx_size: u32,
    pub(crate) parallel: u32,
    pub(crate) batch_size: usize,
    pub(crate) stats: Arc<Stats>,
}

/// One sequence in flight.
struct Slot {
    seq: i32,
    job: Job,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Tokens of this sequence in the KV cache (prompt and generated).
    n_past: i32,
    /// The last sampled token, to be fed at the next step.
    last: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    logits_at: Option<i32>,
    sampler: sampler::Sampler,
    generated: u32,
    max_tokens: u32,
    utf8: Utf8Decoder,
    stops: StopMatcher,
}

impl Slot {
    fn prefilling(&self) -> bool {
        self.prefilled < self.job.tokens.len()
    }

    fn send(&self, event: Event) -> bool {
        self.job.events.send(event).is_ok()
    }
}

enum Outcome {
    Continue,
    Finished(FinishReason),
    ClientGone,
}

impl Worker {
    pub(crate) fn run(
        self,
        backend: &'static LlamaBackend,
        params: LlamaContextParams,
        jobs: Receiver<Job>,
        ready: Sender<Result<(), EngineError>>,
    ) {
        let model = Arc::clone(&self.model);
        let mut ctx = match model.new_context(backend, params) {
            Ok(ctx) => ctx,
            Err(e) => {
                let _ = ready.send(Err(EngineError::Context(e.to_string())));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        self.decode_loop(&mut ctx, &jobs);
        tracing::debug!("engine worker stopped");
    }

    fn decode_loop(&self, ctx: &mut LlamaContext<'_>, jobs: &Receiver<Job>) {
        let vocab = self.model.vocab();
        let n_vocab = self.model.n_vocab();
        let mut batch = LlamaBatch::new(self.batch_size, 1);
        let mut slots: Vec<Slot> = Vec::with_capacity(self.parallel as usize);
        let mut free: Vec<i32> = (0..self.parallel as i32).rev().collect();

        loop {
            // 1. Admit. Block only when there is nothing else to do.
            while let Some(&seq) = free.last() {
                let job = if slots.is_empty() {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return, // the engine was dropped
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                };
                self.stats.queued(-1);
                if job.events.is_closed() {
                    self.stats.cancelled();
                    continue;
                }
                let grammar = match &job.grammar {
                    None => None,
                    Some(g) => match LlamaSampler::grammar(&self.model, g.as_str(), "root") {
                        Ok(s) => Some(s),
                        Err(e) => {
                            let _ = job
                                .events
                                .send(Event::Failed(format!("the grammar did not compile: {e}")));
                            self.stats.failed();
                            continue;
                        }
                    },
                };
                free.pop();
                self.stats.active(1);
                let remaining = self.ctx_size.saturating_sub(job.tokens.len() as u32);
                let max_tokens = job
                    .params
                    .max_tokens
                    .map_or(remaining, |m| m.min(remaining));
                slots.push(Slot {
                    seq,
                    sampler: sampler::Sampler::new(
                        sampler::build(&job.params, n_vocab),
                        grammar,
                        job.watermark.clone().map(|marker| sampler::Marking {
                            marker,
                            // The first green list follows the prompt's last token.
                            prev: job.tokens.last().copied().unwrap_or(LlamaToken(0)),
                        }),
                    ),
                    stops: StopMatcher::new(job.params.stop.clone()),
                    job,
                    prefilled: 0,
                    n_past: 0,
                    last: None,
                    logits_at: None,
                    generated: 0,
                    max_tokens,
                    utf8: Utf8Decoder::default(),
                });
            }

            // 2. Drop sequences whose client went away.
            slots.retain(|s| {
                if s.job.events.is_closed() {
                    self.release(ctx, &mut free, s.seq);
                    self.stats.cancelled();
                    false
                } else {
                    true
                }
            });
            if slots.is_empty() {
                continue;
            }

            // 3. Build one shared batch.
            batch.clear();
            let mut sequences = 0u64;
            let mut prompt_tokens = 0u64;
            let mut failed = None;
            for s in slots.iter_mut().filter(|s| !s.prefilling()) {
                s.logits_at = None;
                if let Some(tok) = s.last {
                    if let Err(e) = batch.add(tok, s.n_past, &[s.seq], true) {
                        failed = Some(e.to_string());
                        break;
                    }
                    s.logits_at = Some(batch.n_tokens() - 1);
                    s.n_past += 1;
                    sequences += 1;
                }
            }
            for s in slots.iter_mut().filter(|s| s.prefilling()) {
                s.logits_at = None;
                let room = self.batch_size.saturating_sub(batch.n_tokens() as usize);
                if room == 0 || failed.is_some() {
                    break;
                }
                let end = (s.prefilled + room).min(s.job.tokens.len());
                for i in s.prefilled..end {
                    let last = i + 1 == s.job.tokens.len();
                    if let Err(e) = batch.add(s.job.tokens[i], s.n_past, &[s.seq], last) {
                        failed = Some(e.to_string());
                        break;
                    }
                    s.n_past += 1;
                }
                prompt_tokens += (end - s.prefilled) as u64;
                s.prefilled = end;
                if !s.prefilling() {
                    s.logits_at = Some(batch.n_tokens() - 1);
                }
                sequences += 1;
            }

            // 4. Decode once for everyone.
            let decoded = match failed {
                Some(e) => Err(e),
                None => ctx.decode(&mut batch).map_err(|e| e.to_string()),
            };
            if let Err(e) = decoded {
                tracing::error!(error = %e, sequences, "decode failed; failing the batch");
                for s in slots.drain(..) {
                    s.send(Event::Failed(format!(
                        "the local engine failed to decode: {e}"
                    )));
                    self.release(ctx, &mut free, s.seq);
                    self.stats.failed();
                }
                continue;
            }
            self.stats.step(sequences, prompt_tokens);

            // 5. Sample one token for every sequence with logits.
            let mut i = 0;
            while i < slots.len() {
                let outcome = match slots[i].logits_at {
                    Some(idx) => self.advance(ctx, &vocab, &mut slots[i], idx),
                    None => Outcome::Continue,
                };
                match outcome {
                    Outcome::Continue => i += 1,
                    Outcome::Finished(finish) => {
                        let s = slots.swap_remove(i);
                        let usage = Usage::new(s.job.tokens.len() as u32, s.generated);
                        // Free the sequence before telling the client, so that whoever
                        // sees `Done` also sees the slot available again.
                        self.release(ctx, &mut free, s.seq);
                        self.stats.completed();
                        s.send(Event::Done { finish, usage });
                    }
                    Outcome::ClientGone => {
                        let s = slots.swap_remove(i);
                        self.release(ctx, &mut free, s.seq);
                        self.stats.cancelled();
                    }
                }
            }
        }
    }

    /// Samples the next token of one sequence and sends whatever text is final.
    fn advance(
        &self,
        ctx: &LlamaContext<'_>,
        vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
        s: &mut Slot,
        idx: i32,
    ) -> Outcome {
        let token = s.sampler.sample(ctx, idx);
        // Under a grammar the end of generation is sampled only where the output is
        // complete, so it always ends the sequence.
        if vocab.is_eog(token) && (!s.job.params.ignore_eos || s.job.grammar.is_some()) {
            return self.flush(s, FinishReason::Stop);
        }
        s.generated += 1;
        self.stats.generated();
        s.last = Some(token);
        let text = s.utf8.push(&vocab.token_to_piece(token, false, None));
        let pushed = s.stops.push(&text);
        if !pushed.emit.is_empty() && !s.send(Event::Delta(pushed.emit)) {
            return Outcome::ClientGone;
        }
        if pushed.stopped {
            return Outcome::Finished(FinishReason::Stop);
        }
        if s.generated >= s.max_tokens || s.n_past as u32 >= self.ctx_size {
            return self.flush(s, FinishReason::Length);
        }
        Outcome::Continue
    }

    /// Sends text held back for UTF-8 or stop matching, then finishes.
    fn flush(&self, s: &mut Slot, finish: FinishReason) -> Outcome {
        let tail = s.utf8.finish();
        let pushed = s.stops.push(&tail);
        let mut rest = pushed.emit;
        if !pushed.stopped {
            rest.push_str(&s.stops.finish());
        }
        if !rest.is_empty() && !s.send(Event::Delta(rest)) {
            return Outcome::ClientGone;
        }
        Outcome::Finished(if pushed.stopped {
            FinishReason::Stop
        } else {
            finish
        })
    }

    fn release(&self, ctx: &mut LlamaContext<'_>, free: &mut Vec<i32>, seq: i32) {
        if let Err(e) = ctx.clear_kv_cache_seq(Some(seq as u32), None, None) {
            tracing::error!(seq, error = %e, "failed to clear a sequence's KV cache");
        }
        free.push(seq);
        self.stats.active(-1);
    }
}
