//! Request ids: unique across pods without coordination (a per-process
//! random seed, the time and a counter, hashed).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 24 hex characters, fresh each call.
pub fn new_id() -> String {
    static SEED: OnceLock<RandomState> = OnceLock::new();
    let seed = SEED.get_or_init(RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut a = seed.build_hasher();
    a.write_u64(n);
    a.write_u64(nanos);
    let mut b = seed.build_hasher();
    b.write_u64(!n);
    format!("{:016x}{:08x}", a.finish(), b.finish() as u32)
}

/// Unix seconds now (OpenAI's `created`).
pub fn unix_seconds() -> u64 {
    cortex_bus::headers::unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| super::new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 24));
    }
}
