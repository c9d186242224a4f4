//! A llama.cpp sampler chain from validated sampling parameters.
//!
//! Order and defaults follow llama.cpp's server: penalties, top-k, top-p, min-p,
//! temperature, then a seeded draw; temperature 0 means greedy.

use bulwark_api::sampling::SamplingParams;
use llama_cpp_2::sampling::LlamaSampler;

pub(crate) const DEFAULT_TEMPERATURE: f32 = 0.8;
pub(crate) const DEFAULT_TOP_K: u32 = 40;
pub(crate) const DEFAULT_TOP_P: f32 = 0.95;
pub(crate) const DEFAULT_MIN_P: f32 = 0.05;
/// How many recent tokens the presence/frequency penalties look at.
const PENALTY_LAST_N: i32 = 64;
/// llama.cpp's "pick a random seed".
const RANDOM_SEED: u32 = u32::MAX;

/// The chain for one sequence; a grammar, when given, comes first, so that every later
/// stage only sees the tokens it allows.
pub(crate) fn build(
    params: &SamplingParams,
    n_vocab: i32,
    grammar: Option<LlamaSampler>,
) -> LlamaSampler {
    let mut chain = Vec::with_capacity(7);
    chain.extend(grammar);
    let presence = params.presence_penalty.unwrap_or(0.0);
    let frequency = params.frequency_penalty.unwrap_or(0.0);
    if presence != 0.0 || frequency != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_LAST_N,
            1.0,
            frequency,
            presence,
        ));
    }
    let temperature = params.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        return LlamaSampler::chain_simple(chain);
    }
    let top_k = params.top_k.unwrap_or(DEFAULT_TOP_K);
    if top_k > 0 {
        chain.push(LlamaSampler::top_k(
            i32::try_from(top_k).unwrap_or(i32::MAX),
        ));
    }
    chain.push(LlamaSampler::top_p(
        params.top_p.unwrap_or(DEFAULT_TOP_P),
        1,
    ));
    chain.push(LlamaSampler::min_p(
        params.min_p.unwrap_or(DEFAULT_MIN_P),
        1,
    ));
    chain.push(LlamaSampler::temp(temperature));
    chain.push(LlamaSampler::dist(params.seed.unwrap_or(RANDOM_SEED)));
    LlamaSampler::chain_simple(chain)
}
