//! The last requests this pod finished, for the console (`/ui`): bounded
//! (the oldest is dropped when full), newest first, nothing but what an
//! operator reads: no prompt or answer text, no key.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many finished requests a pod remembers.
pub const KEPT: usize = 50;

/// One finished request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finished {
    /// Unix ms when it finished.
    pub at_ms: u64,
    /// The model it asked for (catalogue id once resolved).
    pub model: String,
    /// `openai` or `anthropic`.
    pub api: &'static str,
    pub stream: bool,
    /// HTTP status (499: the client went away).
    pub status: u16,
    /// Time to the first token, when one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub duration_ms: u64,
}

/// The ring of [`Finished`] requests.
#[derive(Debug, Default)]
pub struct Recent {
    ring: Mutex<VecDeque<Finished>>,
}

impl Recent {
    /// Keeps `finished`, dropping the oldest past [`KEPT`].
    pub fn push(&self, finished: Finished) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEPT {
            ring.pop_back();
        }
        ring.push_front(finished);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Finished> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(at_ms: u64) -> Finished {
        Finished {
            at_ms,
            model: "m".into(),
            api: "openai",
            stream: false,
            status: 200,
            ttft_ms: Some(1),
            prompt_tokens: 1,
            completion_tokens: 1,
            duration_ms: 1,
        }
    }

    #[test]
    fn keeps_the_newest_first_and_no_more_than_its_bound() {
        let recent = Recent::default();
        for at in 0..(KEPT as u64 + 7) {
            recent.push(finished(at));
        }
        let list = recent.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].at_ms, KEPT as u64 + 6);
        assert_eq!(list[KEPT - 1].at_ms, 7);
    }
}
