//! What this neuron tells ingress about its prefix caches: per chat model,
//! the block hashes (`cortex_bus::prefix`) of the prompts it computed
//! recently, and of those prompts with their answers (the start of a
//! conversation's next turn), published as a [`PrefixSummary`] on
//! `<prefix>.v1.prefix.<id>`.
//!
//! The index is bounded (about as many blocks as the engine's prefix
//! cache holds tokens for, [`capacity_for`]; the least recently used out
//! first, a prompt's leading blocks refreshed last so they go last), so it
//! tells what the engine's prefix cache most likely still holds; a hash whose KV the engine has already let go
//! costs the request a cache miss on a replica that was otherwise a fine
//! choice, nothing more. A change goes out at once (a conversation's next
//! turn follows its answer within milliseconds), then changes wait
//! [`DEBOUNCE`] and go out together; every heartbeat interval they go out
//! again, so a pod that starts late learns them. A model that leaves gets
//! one empty summary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cortex_schemas::PrefixSummary;
use tokio_util::sync::CancellationToken;

use crate::pace::Pace;
use crate::shared::Shared;

/// Most hashes kept per model: 256 KiB of prompt text at 64 bytes a block
/// (a summary of about 70 KB of JSON).
pub const MAX_BLOCKS: usize = 4096;

/// Fewest kept, however small the cache.
const MIN_BLOCKS: usize = 64;

/// Tokens a 64-byte block stands for (English prose; code runs denser).
const TOKENS_PER_BLOCK: usize = 16;

/// The hashes worth keeping for a prefix cache of `tokens` tokens: about
/// what it can hold, within [`MIN_BLOCKS`]..=[`MAX_BLOCKS`].
pub fn capacity_for(tokens: usize) -> usize {
    (tokens / TOKENS_PER_BLOCK).clamp(MIN_BLOCKS, MAX_BLOCKS)
}

/// After a summary goes out, changes wait this long for the next one
/// (and go out together).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The block hashes one model's recent prompts made, least recently used
/// out first.
#[derive(Debug, Default)]
pub struct PrefixIndex {
    inner: Mutex<Lru>,
}

#[derive(Debug, Default)]
struct Lru {
    clock: u64,
    by_hash: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
}

impl PrefixIndex {
    /// Marks `blocks` as just used (new ones enter, old ones move up),
    /// keeping at most `capacity`. The chain is taken from its end, so its
    /// first blocks, which every longer prompt shares, are the freshest.
    pub fn record(&self, blocks: &[u64], capacity: usize) {
        if blocks.is_empty() {
            return;
        }
        let mut lru = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for hash in blocks.iter().rev() {
            lru.clock += 1;
            let now = lru.clock;
            if let Some(old) = lru.by_hash.insert(*hash, now) {
                lru.by_age.remove(&old);
            }
            lru.by_age.insert(now, *hash);
        }
        while lru.by_hash.len() > capacity {
            let Some((_, oldest)) = lru.by_age.pop_first() else {
                break;
            };
            lru.by_hash.remove(&oldest);
        }
    }

    /// Every hash held, oldest first.
    pub fn blocks(&self) -> Vec<u64> {
        let lru = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lru.by_age.values().copied().collect()
    }

    pub fn len(&self) -> usize {
        let lru = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lru.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Publishes summaries until `stop` fires.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut published: HashSet<String> = HashSet::new();
    let mut pace = Pace::new(shared.config.heartbeat_interval);
    while pace.turn(&stop, &shared.prefixes_changed).await {
        publish(&shared, &mut published).await;
        // A change meanwhile leaves a permit: the next turn publishes at once.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DEBOUNCE) => {}
        }
    }
}

/// One summary per model that has blocks, and an empty one for each model
/// published before that has none now (or has gone).
async fn publish(shared: &Shared, published: &mut HashSet<String>) {
    let mut now: HashSet<String> = HashSet::new();
    let at_ms = cortex_bus::headers::unix_ms();
    let mut summaries = Vec::new();
    for held in shared.all_models() {
        if held.prefixes.is_empty() {
            continue;
        }
        now.insert(held.id().to_string());
        summaries.push(summary(shared, held.id(), at_ms, held.prefixes.blocks()));
    }
    for gone in published.difference(&now) {
        summaries.push(summary(shared, gone, at_ms, Vec::new()));
    }
    *published = now;
    let subject = shared.subjects.prefix(&shared.id);
    for summary in summaries {
        shared
            .publish_json(subject.clone(), &summary, "prefix summary")
            .await;
    }
}

fn summary(shared: &Shared, model: &str, at_ms: u64, blocks: Vec<u64>) -> PrefixSummary {
    PrefixSummary {
        neuron_id: shared.id.clone(),
        model_id: model.to_string(),
        at_ms,
        block_bytes: cortex_bus::prefix::BLOCK_BYTES as u32,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_the_most_recent_blocks_within_its_bound() {
        let index = PrefixIndex::default();
        let first: Vec<u64> = (0..100).collect();
        index.record(&first, 100);
        // A chain's first block is its freshest; block 99 (its last) the oldest.
        assert_eq!(index.blocks()[0], 99);
        // Block 99 used again: it outlives blocks 98 and 97.
        index.record(&[99], 100);
        index.record(&[1000, 1001], 100);
        let blocks = index.blocks();
        assert_eq!(blocks.len(), 100);
        assert!(blocks.contains(&99));
        assert!(!blocks.contains(&98) && !blocks.contains(&97));
        assert_eq!(&blocks[blocks.len() - 3..], &[99, 1001, 1000]);
    }

    #[test]
    fn a_prompt_longer_than_the_index_keeps_its_start() {
        let index = PrefixIndex::default();
        let long: Vec<u64> = (0..500).collect();
        index.record(&long, 100);
        let blocks = index.blocks();
        assert!(blocks.contains(&0) && blocks.contains(&99) && !blocks.contains(&100));
    }

    #[test]
    fn the_capacity_follows_the_cache() {
        assert_eq!(capacity_for(0), MIN_BLOCKS);
        assert_eq!(capacity_for(8192), 512);
        assert_eq!(capacity_for(10_000_000), MAX_BLOCKS);
    }
}
