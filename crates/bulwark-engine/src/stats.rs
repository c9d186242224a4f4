//! Counters of the decode loop, read by `/metrics` and by tests.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    decode_steps: AtomicU64,
    shared_steps: AtomicU64,
    max_batch_sequences: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    queued: AtomicI64,
    active: AtomicI64,
}

/// A point-in-time copy of the engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Calls to llama.cpp's decode.
    pub decode_steps: u64,
    /// Decode steps that carried tokens of two or more sequences.
    pub shared_steps: u64,
    /// The most sequences seen in one decode step.
    pub max_batch_sequences: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub completed: u64,
    /// Generations dropped because their client went away.
    pub cancelled: u64,
    pub failed: u64,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// Requests waiting for a sequence.
    pub queued: i64,
    /// Sequences in use.
    pub active: i64,
}

impl Stats {
    pub(crate) fn step(&self, sequences: u64, prompt_tokens: u64) {
        self.decode_steps.fetch_add(1, Relaxed);
        if sequences > 1 {
            self.shared_steps.fetch_add(1, Relaxed);
        }
        self.max_batch_sequences.fetch_max(sequences, Relaxed);
        self.prompt_tokens.fetch_add(prompt_tokens, Relaxed);
    }
    pub(crate) fn generated(&self) {
        self.generated_tokens.fetch_add(1, Relaxed);
    }
    pub(crate) fn completed(&self) {
        self.completed.fetch_add(1, Relaxed);
    }
    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }
    pub(crate) fn queued(&self, delta: i64) {
        self.queued.fetch_add(delta, Relaxed);
    }
    pub(crate) fn active(&self, delta: i64) {
        self.active.fetch_add(delta, Relaxed);
    }
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            decode_steps: self.decode_steps.load(Relaxed),
            shared_steps: self.shared_steps.load(Relaxed),
            max_batch_sequences: self.max_batch_sequences.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            generated_tokens: self.generated_tokens.load(Relaxed),
            completed: self.completed.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            failed: self.failed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            queued: self.queued.load(Relaxed),
            active: self.active.load(Relaxed),
        }
    }
}
