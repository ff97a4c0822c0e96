//! The pace of the neuron's publishing loops (heartbeats, prefix
//! summaries): once each interval, or at once when something asks for it.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks each `every` (a late tick is not made up), or earlier on a
/// notification.
#[derive(Debug)]
pub(crate) struct Pace {
    tick: Interval,
}

impl Pace {
    /// The first turn comes at once.
    pub(crate) fn new(every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { tick }
    }

    /// Waits for the next turn: `true` on a tick or on `now`, `false` once
    /// `stop` fires.
    pub(crate) async fn turn(&mut self, stop: &CancellationToken, now: &Notify) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.tick.tick() => true,
            _ = now.notified() => true,
        }
    }
}
