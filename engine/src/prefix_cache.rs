//! The prefix cache: KV caches of finished sequences, kept per model within
//! a byte budget (least recently used out first), so that a prompt that
//! starts with tokens seen before (a chat's earlier turns, an agent's fixed
//! system prompt and tool list, a repeated request) starts from their KV
//! instead of computing it again.
//!
//! An entry is a sequence with the tokens its KV holds: a prompt as soon
//! as it has been computed, then the prompt and answer once it ends.
//! A lookup finds the entry sharing the longest prefix with the new prompt
//! and forks its first positions into a new sequence (a copy: the entry
//! stays for the next caller). At least the prompt's last token is always
//! run again, since its logits choose the first new token. An entry that
//! is a prefix of a newer one is replaced by it.
//!
//! Precision: positions the entry computed while decoding were computed
//! without the prompt precision pass (see [`crate::models::cpu`]), so a
//! prompt that reuses an earlier *answer* sees those positions as decode
//! computed them; reused prompt positions are exactly what a miss computes.

use crate::models::Sequence;

/// Reuse shorter than this is not worth a copy.
pub const MIN_REUSE: usize = 4;

struct Entry {
    tokens: Vec<u32>,
    seq: Box<dyn Sequence>,
    bytes: usize,
    last_used: u64,
}

/// Counters for heartbeats and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Prompt tokens served from the cache.
    pub hit_tokens: u64,
    pub bytes: u64,
    pub budget: u64,
    pub entries: usize,
}

/// Kept KV caches of one model.
pub struct PrefixCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: Vec<Entry>,
    hits: u64,
    misses: u64,
    hit_tokens: u64,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache")
            .field("budget", &self.budget)
            .field("used", &self.used)
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// A cache holding at most `budget` bytes of KV (0 turns it off).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
            hits: 0,
            misses: 0,
            hit_tokens: 0,
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            hit_tokens: self.hit_tokens,
            bytes: self.used as u64,
            budget: self.budget as u64,
            entries: self.entries.len(),
        }
    }

    /// A sequence holding the longest cached prefix of `prompt` and its
    /// length, or `None` (a miss) when nothing useful is kept.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(Box<dyn Sequence>, usize)> {
        if self.budget == 0 {
            return None;
        }
        // The last prompt token always runs: its logits pick the answer.
        let most = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter_mut()
            .map(|e| (common_prefix(&e.tokens, prompt).min(most), e))
            .max_by_key(|(len, _)| *len);
        self.clock += 1;
        match best {
            Some((len, entry)) if len >= MIN_REUSE => {
                let seq = entry.seq.fork(len)?;
                entry.last_used = self.clock;
                self.hits += 1;
                self.hit_tokens += len as u64;
                Some((seq, len))
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Whether an entry already holds `tokens` (or more after them), so
    /// that inserting them would add nothing; a disabled cache covers all.
    pub fn covers(&self, tokens: &[u32]) -> bool {
        self.budget == 0
            || tokens.len() < MIN_REUSE
            || self
                .entries
                .iter()
                .any(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(tokens))
    }

    /// Keeps `seq`, whose KV holds `tokens`, evicting the least recently
    /// used entries to stay within the budget.
    pub fn insert(&mut self, tokens: Vec<u32>, seq: Box<dyn Sequence>) {
        if self.budget == 0 || tokens.len() < MIN_REUSE || seq.position() != tokens.len() {
            return;
        }
        let bytes = seq.kv_bytes();
        // A model that shows no KV memory cannot be accounted: keep none.
        if bytes == 0 || bytes > self.budget {
            return;
        }
        self.clock += 1;
        // Already covered by a longer entry: only refresh it.
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(&tokens))
        {
            e.last_used = self.clock;
            return;
        }
        // Entries the new one extends are superseded.
        let mut freed = 0;
        self.entries.retain(|e| {
            let superseded = tokens.starts_with(&e.tokens);
            if superseded {
                freed += e.bytes;
            }
            !superseded
        });
        self.used -= freed;
        while self.used + bytes > self.budget {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            self.used -= self.entries.swap_remove(oldest).bytes;
        }
        self.used += bytes;
        self.entries.push(Entry {
            tokens,
            seq,
            bytes,
            last_used: self.clock,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence that only remembers its length, 100 bytes a position.
    struct Fake(usize);

    impl Sequence for Fake {
        fn forward(&mut self, tokens: &[u32]) -> crate::Result<Vec<f32>> {
            self.0 += tokens.len();
            Ok(Vec::new())
        }
        fn position(&self) -> usize {
            self.0
        }
        fn fork(&self, len: usize) -> Option<Box<dyn Sequence>> {
            Some(Box::new(Fake(len.min(self.0))))
        }
        fn kv_bytes(&self) -> usize {
            self.0 * 100
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn the_longest_prefix_is_reused_and_the_last_token_always_runs() {
        let mut cache = PrefixCache::new(1_000_000);
        cache.insert(toks(0..20), Box::new(Fake(20)));
        cache.insert(toks(100..130), Box::new(Fake(30)));
        let mut prompt = toks(0..12);
        prompt.extend([7, 7]);
        let (seq, len) = cache.lookup(&prompt).unwrap();
        assert_eq!((len, seq.position()), (12, 12));
        // The whole prompt cached: all but its last token reused.
        let (_, len) = cache.lookup(&toks(0..20)).unwrap();
        assert_eq!(len, 19);
        assert!(cache.lookup(&toks(50..60)).is_none());
        assert!(cache.lookup(&[0, 1, 2, 9]).is_none(), "under MIN_REUSE");
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.hit_tokens), (2, 2, 31));
    }

    #[test]
    fn a_longer_entry_supersedes_its_prefix() {
        let mut cache = PrefixCache::new(1_000_000);
        cache.insert(toks(0..10), Box::new(Fake(10)));
        cache.insert(toks(0..25), Box::new(Fake(25)));
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(cache.stats().bytes, 2_500);
        cache.insert(toks(0..15), Box::new(Fake(15)));
        assert_eq!(cache.stats().entries, 1, "covered by the longer entry");
    }

    #[test]
    fn churn_stays_within_the_budget_and_evicts_least_recently_used() {
        let mut cache = PrefixCache::new(10_000);
        for i in 0..200u32 {
            let start = i * 1000;
            let len = 10 + i % 20;
            cache.insert(toks(start..start + len), Box::new(Fake(len as usize)));
            assert!(cache.stats().bytes <= 10_000, "over budget at {i}");
            // The first entry, used after every insert, is never the oldest.
            assert!(
                cache.lookup(&toks(0..11)).is_some(),
                "warm entry lost at {i}"
            );
        }
        assert!(cache.lookup(&toks(199_000..199_020)).is_some());
        assert!(cache.stats().entries < 200);
        assert!(
            cache.lookup(&toks(1000..1011)).is_none(),
            "cold entry evicted"
        );
        // A sequence larger than the whole budget is not kept.
        cache.insert(toks(500_000..500_200), Box::new(Fake(200)));
        assert!(cache.stats().bytes <= 10_000);
        assert!(PrefixCache::new(0).lookup(&toks(0..11)).is_none());
    }

    #[test]
    fn a_sequence_that_does_not_match_its_tokens_is_not_kept() {
        let mut cache = PrefixCache::new(10_000);
        cache.insert(toks(0..10), Box::new(Fake(9)));
        assert_eq!(cache.stats().entries, 0);
    }
}
