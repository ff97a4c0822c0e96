//! Each replica's load between heartbeats, as one pod can tell: the last
//! heartbeat's figure, corrected by this pod's own calls since, scaled by
//! how many pods like it the heartbeats suggest.

use crate::fleet::ReplicaLoad;

/// This pod's calls to one replica.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Mine {
    /// In flight now.
    pub now: u32,
    /// In flight when its last heartbeat was first seen.
    pub then: u32,
    /// Sent lately (decaying).
    pub recent: f64,
}

/// Most pods like this one the estimate assumes.
const MAX_PEERS: f64 = 64.0;
/// This pod's calls in the heartbeats' count below which its share says
/// too little to tell how many pods there are (it is taken as alone).
const MIN_PART: f64 = 16.0;

/// Each replica's load now, as this pod can tell: its heartbeat's figure
/// plus the change in this pod's calls since, times how many pods like
/// this one the heartbeats suggest (all replicas' load over this pod's
/// part of it, 1 to [`MAX_PEERS`], 1 while its part is under
/// [`MIN_PART`]); at least this pod's own calls.
pub(super) fn estimate(replicas: &[ReplicaLoad], mine: &[Mine]) -> Vec<u32> {
    let counted: f64 = replicas.iter().map(|r| f64::from(r.load)).sum();
    let part: f64 = mine.iter().map(|m| f64::from(m.then)).sum();
    let pods = if part >= MIN_PART {
        (counted / part).clamp(1.0, MAX_PEERS)
    } else {
        1.0
    };
    replicas
        .iter()
        .zip(mine)
        .map(|(replica, mine)| {
            let since = f64::from(mine.now) - f64::from(mine.then);
            let load = (f64::from(replica.load) + pods * since).max(f64::from(mine.now));
            load.round().clamp(0.0, f64::from(u32::MAX)) as u32
        })
        .collect()
}
