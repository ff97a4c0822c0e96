//! The routing decision as a pure function: which replica of a model a
//! request goes to, given how much of its prompt each one holds and how
//! loaded each one is.
//!
//! Every candidate gets a cost in blocks of prompt work
//! ([`cortex_bus::prefix::BLOCK_BYTES`] bytes each):
//!
//! `cost = -matched + LOAD_BLOCKS * load + QUEUE_BLOCKS * max(0, load - capacity + 1)`
//!
//! A block the replica already holds is a block it need not prefill; each
//! sequence it runs makes every step a little slower; a request that
//! finds the batch full waits for a whole request to end, which
//! [`QUEUE_BLOCKS`] prices as that many blocks. So a replica with the
//! prefix and room in its batch wins; one with the prefix and a full batch
//! loses to an idle one unless the prefix is longer than the wait is
//! worth. Candidates within [`TIE`] of the cheapest are alike: of those,
//! two are drawn and the cheaper takes the request, the one this pod sent
//! less to recently on equal cost (power of two choices), so requests with
//! nothing in common spread evenly even between heartbeats.

/// What the cost adds per sequence a replica runs or queues.
pub const LOAD_BLOCKS: f64 = 0.5;
/// What it adds per request a full batch makes this one wait behind.
pub const QUEUE_BLOCKS: f64 = 64.0;
/// Costs closer than this are ties.
pub const TIE: f64 = 0.25;

/// One replica as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Leading prompt blocks the replica holds.
    pub matched: usize,
    /// Sequences it runs or queues (the larger of its last heartbeat and
    /// this pod's own calls to it).
    pub load: u32,
    /// Sequences its batch runs at once (its slots).
    pub capacity: u32,
    /// Requests this pod sent it lately (decaying): the tie-breaker.
    pub recent: f64,
}

/// Why a replica was picked, as `cortex_route_decisions_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// It holds more of the prompt than the others, and that decided.
    Prefix,
    /// Load decided (no replica holds more of the prompt than another).
    Load,
    /// No view to choose from: the model's queue group picks.
    Fallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefix => "prefix",
            Self::Load => "load",
            Self::Fallback => "fallback",
        }
    }
}

/// The cost of sending the request to `c` (lower is better).
pub fn cost(c: &Candidate) -> f64 {
    let waiting = (c.load + 1).saturating_sub(c.capacity.max(1));
    -(c.matched as f64) + LOAD_BLOCKS * f64::from(c.load) + QUEUE_BLOCKS * f64::from(waiting)
}

/// The candidate to use and why; `None` for no candidates. `draw(n)`
/// returns a uniformly random index below `n` (the caller's randomness,
/// so that tests can fix it).
pub fn pick(
    candidates: &[Candidate],
    mut draw: impl FnMut(usize) -> usize,
) -> Option<(usize, Reason)> {
    let costs: Vec<f64> = candidates.iter().map(cost).collect();
    let best = costs.iter().copied().fold(f64::INFINITY, f64::min);
    let alike: Vec<usize> = (0..candidates.len())
        .filter(|i| costs[*i] <= best + TIE)
        .collect();
    let chosen = match alike.len() {
        0 => return None,
        1 => alike[0],
        n => {
            let first = draw(n) % n;
            let second = (first + 1 + draw(n - 1) % (n - 1)) % n;
            let (a, b) = (alike[first], alike[second]);
            let key = |i: usize| (costs[i], candidates[i].recent);
            if key(b) < key(a) {
                b
            } else {
                a
            }
        }
    };
    let least = candidates.iter().map(|c| c.matched).min().unwrap_or(0);
    let reason = if candidates[chosen].matched > least {
        Reason::Prefix
    } else {
        Reason::Load
    };
    Some((chosen, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate() -> impl Strategy<Value = Candidate> {
        (0usize..200, 0u32..40, 1u32..16, 0.0f64..50.0).prop_map(
            |(matched, load, capacity, recent)| Candidate {
                matched,
                load,
                capacity,
                recent,
            },
        )
    }

    fn idle(matched: usize) -> Candidate {
        Candidate {
            matched,
            load: 0,
            capacity: 4,
            recent: 0.0,
        }
    }

    proptest! {
        #[test]
        fn the_pick_is_one_of_the_cheapest(cands in proptest::collection::vec(candidate(), 1..8), seed in any::<u64>()) {
            let mut state = seed;
            let draw = |n: usize| { state = state.wrapping_mul(6364136223846793005).wrapping_add(1); (state >> 33) as usize % n };
            let (i, _) = pick(&cands, draw).unwrap();
            let best = cands.iter().map(cost).fold(f64::INFINITY, f64::min);
            prop_assert!(cost(&cands[i]) <= best + TIE);
        }

        #[test]
        fn with_equal_load_the_longest_prefix_wins(
            load in 0u32..3, others in proptest::collection::vec(0usize..50, 1..6), extra in 1usize..50,
        ) {
            let longest = others.iter().max().unwrap() + extra;
            let mut cands: Vec<Candidate> = others.iter().map(|m| Candidate { load, ..idle(*m) }).collect();
            cands.push(Candidate { load, ..idle(longest) });
            let (i, reason) = pick(&cands, |_| 0).unwrap();
            prop_assert_eq!(i, cands.len() - 1);
            prop_assert_eq!(reason, Reason::Prefix);
        }

        #[test]
        fn a_full_batch_loses_to_an_idle_replica_unless_its_prefix_outweighs_the_wait(
            matched in 0usize..200, capacity in 1u32..16, over in 0u32..4,
        ) {
            let full = Candidate { matched, load: capacity + over, capacity, recent: 0.0 };
            let (i, _) = pick(&[full, idle(0)], |_| 0).unwrap();
            let wait = QUEUE_BLOCKS * f64::from(over + 1) + LOAD_BLOCKS * f64::from(capacity + over);
            if (matched as f64) + TIE < wait {
                prop_assert_eq!(i, 1);
            }
        }

        #[test]
        fn more_load_never_attracts_a_request(
            cands in proptest::collection::vec(candidate(), 2..6), j in 0usize..6, more in 1u32..10,
        ) {
            let j = j % cands.len();
            let before = pick(&cands, |_| 0).unwrap().0;
            let mut loaded = cands.clone();
            loaded[j].load += more;
            let after = pick(&loaded, |_| 0).unwrap().0;
            if before != j {
                prop_assert_ne!(after, j);
            }
        }

        #[test]
        fn without_a_shared_prefix_the_reason_is_load(
            load in proptest::collection::vec(0u32..10, 1..6), matched in 0usize..20,
        ) {
            let cands: Vec<Candidate> = load.iter().map(|l| Candidate { load: *l, ..idle(matched) }).collect();
            prop_assert_eq!(pick(&cands, |_| 0).unwrap().1, Reason::Load);
        }
    }

    #[test]
    fn nothing_to_choose_from_is_none() {
        assert_eq!(pick(&[], |_| 0), None);
    }

    #[test]
    fn ties_go_to_the_replica_sent_less_lately() {
        let mut cands = [idle(0), idle(0), idle(0)];
        cands[0].recent = 3.0;
        cands[1].recent = 1.0;
        cands[2].recent = 2.0;
        // Draws 0 then 0: the first is candidate 0, the second the next one along.
        assert_eq!(pick(&cands, |_| 0).unwrap().0, 1);
    }

    #[test]
    fn drawing_two_of_many_spreads_requests_evenly() {
        // Equal replicas, the tie-breaker fed back: 600 picks end within 5% of even.
        let mut cands = [idle(0), idle(0), idle(0)];
        let mut seed = 7u64;
        let mut counts = [0usize; 3];
        for _ in 0..600 {
            let draw = |n: usize| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize % n
            };
            let (i, _) = pick(&cands, draw).unwrap();
            counts[i] += 1;
            for c in &mut cands {
                c.recent *= 0.99;
            }
            cands[i].recent += 1.0;
        }
        assert!(counts.iter().all(|c| (190..=210).contains(c)), "{counts:?}");
    }
}
