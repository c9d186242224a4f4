//! A llama.cpp sampler chain from validated sampling parameters.
//!
//! Order and defaults follow llama.cpp's server: penalties, top-k, top-p, min-p,
//! temperature, then a seeded draw; temperature 0 means greedy.

use bulwark_api::sampling::SamplingParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use crate::watermark::Marker;

pub(crate) const DEFAULT_TEMPERATURE: f32 = 0.8;
pub(crate) const DEFAULT_TOP_K: u32 = 40;
pub(crate) const DEFAULT_TOP_P: f32 = 0.95;
pub(crate) const DEFAULT_MIN_P: f32 = 0.05;
/// How many recent tokens the presence/frequency penalties look at.
const PENALTY_LAST_N: i32 = 64;
/// llama.cpp's "pick a random seed".
const RANDOM_SEED: u32 = u32::MAX;

/// The chain for one sequence (without its grammar: see [`Sampler`]).
pub(crate) fn build(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::with_capacity(6);
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

/// One sequence's sampling: its chain, and the grammar its output must follow.
///
/// As llama.cpp's own server does, a token is drawn by the chain first and only then
/// checked against the grammar; only when the grammar refuses it is the grammar run
/// over the whole vocabulary and the token drawn again from what it allows. Running
/// the grammar over all 49k tokens of a vocabulary at every step halves decode speed
/// (BENCHMARKS.md); most steps' first draw is allowed. Either way the token is one the
/// grammar allows, drawn from the same distribution restricted to them.
///
/// A watermarked sequence (never one under a grammar) has the green tokens' logits
/// raised before the chain runs ([`crate::watermark`]).
pub(crate) struct Sampler {
    chain: LlamaSampler,
    grammar: Option<LlamaSampler>,
    watermark: Option<Marking>,
}

/// A watermark and the token its next green list follows.
pub(crate) struct Marking {
    pub(crate) marker: Marker,
    pub(crate) prev: LlamaToken,
}

impl Sampler {
    pub(crate) fn new(
        chain: LlamaSampler,
        grammar: Option<LlamaSampler>,
        watermark: Option<Marking>,
    ) -> Self {
        Sampler {
            chain,
            // Constrained output is never marked.
            watermark: watermark.filter(|_| grammar.is_none()),
            grammar,
        }
    }

    /// The next token from the logits at `idx`, accepted by the chain and the grammar.
    pub(crate) fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        if let Some(mark) = &mut self.watermark {
            let mut all = ctx.token_data_array_ith(idx);
            mark.marker.bias(mark.prev, &mut all.data);
            all.apply_sampler(&mut self.chain);
            let token = all.selected_token().unwrap_or_else(|| most_likely(&all));
            self.chain.accept(token);
            mark.prev = token;
            return token;
        }
        let Some(grammar) = &mut self.grammar else {
            return self.chain.sample(ctx, idx);
        };
        let mut all = ctx.token_data_array_ith(idx);
        all.apply_sampler(&mut self.chain);
        let token = match all.selected_token() {
            Some(first) => {
                let mut one =
                    LlamaTokenDataArray::new(vec![LlamaTokenData::new(first, 1.0, 0.0)], false);
                one.apply_sampler(grammar);
                if one.data[0].logit().is_finite() {
                    first
                } else {
                    redraw(ctx, idx, grammar, &mut self.chain)
                }
            }
            None => redraw(ctx, idx, grammar, &mut self.chain),
        };
        grammar.accept(token);
        self.chain.accept(token);
        token
    }
}

/// The draw over the tokens the grammar allows.
fn redraw(
    ctx: &LlamaContext<'_>,
    idx: i32,
    grammar: &mut LlamaSampler,
    chain: &mut LlamaSampler,
) -> LlamaToken {
    let mut all = ctx.token_data_array_ith(idx);
    all.apply_sampler(grammar);
    all.apply_sampler(chain);
    // The grammar always allows something (the end of generation where the output is
    // complete); the chain always selects.
    all.selected_token().unwrap_or_else(|| most_likely(&all))
}

/// The token with the highest finite logit (a chain always selects one; this is the
/// answer should it not).
fn most_likely(all: &LlamaTokenDataArray) -> LlamaToken {
    all.data
        .iter()
        .filter(|d| d.logit().is_finite())
        .max_by(|a, b| a.logit().total_cmp(&b.logit()))
        .map_or(LlamaToken(0), LlamaTokenData::id)
}
