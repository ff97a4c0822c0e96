//! KV budgets: the prefix cache's ([`prefix_cache_bytes`]) and the running
//! batch's. The running sequences' KV together
//! stays within [`EngineConfig::kv_budget_bytes`] (one context window by
//! default, what `footprint/src/estimate.rs` reserves for the batch).
//! Before a step that would pass it, the newest sequence gives its KV up
//! ([`Run::suspend`]) and waits in its slot; suspended sequences come back
//! oldest first when there is room, new requests behind them. A sequence
//! alone always runs.

use crate::chat_model::ChatModel;
use crate::engine::EngineConfig;
use crate::generate::run::Run;
use crate::prefix_cache::PrefixCache;

/// The prefix cache's budget: the configured one, else one full context
/// window of KV (what [`crate::footprint`] accounts for it).
pub(crate) fn prefix_cache_bytes(model: &ChatModel, cfg: EngineConfig) -> usize {
    let window = model.lm.kv_bytes_per_token() * model.context_length();
    cfg.prefix_cache_bytes.map_or(window, |b| b as usize)
}

/// Whether `need` more tokens of KV fit beside the running sequences'
/// (always, when none runs).
pub(crate) fn fits(runs: &[Run], need: usize, budget: usize) -> bool {
    let used: usize = runs.iter().map(Run::kv_need).sum();
    used == 0 || used + need <= budget
}

/// Tokens of KV the running sequences hold after a step.
pub(crate) fn held(runs: &[Run]) -> usize {
    runs.iter()
        .filter(|r| !r.suspended())
        .map(|r| r.kv_need().saturating_sub(1))
        .sum()
}

/// The batch's KV budget in tokens: the configured bytes, else one window.
/// None for models that cannot tell their KV size (candle's own phi3 and
/// gemma3, `models/wrapped.rs`: a clone per sequence, and no multi-token
/// pass after the first, which a suspended sequence's recompute needs).
pub(crate) fn tokens(model: &ChatModel, cfg: EngineConfig) -> usize {
    let per_token = model.lm.kv_bytes_per_token();
    if per_token == 0 {
        return usize::MAX;
    }
    cfg.kv_budget_bytes
        .map_or(model.context_length(), |b| b as usize / per_token)
}

/// Brings suspended runs back, oldest first, while their KV fits beside the
/// running ones' (or nothing else runs). Returns whether none is left
/// waiting (new requests may be admitted).
pub(crate) fn resume(
    model: &ChatModel,
    runs: &mut [Run],
    cache: &mut PrefixCache,
    budget: usize,
) -> bool {
    let mut order: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].suspended()).collect();
    order.sort_by_key(|&i| runs[i].started());
    for i in order {
        if !fits(runs, runs[i].resume_need(), budget) {
            return false;
        }
        let (seq, hit) = cache
            .lookup(runs[i].prompt())
            .unwrap_or_else(|| (model.lm.start(), 0));
        runs[i].resume(seq, hit);
    }
    true
}

/// Before a step: while the running sequences' KV (with this step's
/// growth) would pass the budget, the newest gives its KV up (into the
/// prefix cache, where its resume may find it). One always runs. Returns
/// how many were suspended.
pub(crate) fn fit(
    model: &ChatModel,
    runs: &mut [Run],
    cache: &mut PrefixCache,
    budget: usize,
) -> u64 {
    let mut suspended = 0;
    loop {
        let used: usize = runs.iter().map(Run::kv_need).sum();
        let active = runs.iter().filter(|r| r.kv_need() > 0).count();
        if used <= budget || active <= 1 {
            return suspended;
        }
        let Some(newest) = (0..runs.len())
            .filter(|&i| runs[i].kv_need() > 0)
            .max_by_key(|&i| runs[i].started())
        else {
            return suspended;
        };
        tracing::debug!(
            request_id = runs[newest].request_id(),
            used,
            budget,
            "KV budget reached: suspending the newest sequence"
        );
        if let Some((tokens, mut seq)) = runs[newest].suspend(model.lm.start()) {
            seq.shrink();
            cache.insert(tokens, seq);
        }
        suspended += 1;
    }
}
