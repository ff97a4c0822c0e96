//! The engine's wait queue, fair between tenants. A free slot goes to the
//! waiting job of the highest priority; among those, to the tenant served
//! least recently (round robin), and within a tenant to its oldest job.
//! So a tenant that floods a model queues behind its own requests, and
//! another tenant's request waits for one slot to free, not for the
//! flood.
//!
//! Slots are shared too: while another tenant is active (it runs a
//! sequence, or asked or had one end within [`ACTIVE_WINDOW`]) and runs
//! fewer sequences than its share (the slots divided among the active
//! tenants), the last free slot
//! is kept for it rather than given to a tenant already at or over its
//! share. So a tenant sending one request after another finds a slot at
//! once however hard another floods, at the cost of at most one idle slot
//! while it is active. With one tenant (no keys) nothing is kept back.
//!
//! When the queue is full, a newcomer may push out the newest job of the
//! tenant holding the most places, if that tenant holds more places than
//! the newcomer's would after it joins (or its job has a lower priority);
//! the pushed-out job is refused as overloaded, as the newcomer would
//! have been. Otherwise the newcomer is refused. Every operation scans
//! the queue, which is bounded (`max_queue`, a few dozen at most).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::generate::run::Job;

/// A tenant that asked this recently counts as active for slot shares.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct FairQueue {
    jobs: Vec<Job>,
    /// The tick at which each tenant last had a job admitted.
    served: HashMap<String, u64>,
    clock: u64,
    /// When each tenant last queued a job.
    asked: HashMap<String, Instant>,
}

impl FairQueue {
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Queues `job` (the caller checked there is room).
    pub fn push(&mut self, job: Job) {
        let now = Instant::now();
        self.asked
            .retain(|_, at| now.duration_since(*at) < ACTIVE_WINDOW);
        self.asked.insert(job.tenant.clone(), now);
        self.jobs.push(job);
    }

    /// Marks `tenant` active now (its sequence just ended: its next
    /// request is likely on its way).
    pub fn touch(&mut self, tenant: &str) {
        let now = Instant::now();
        match self.asked.get_mut(tenant) {
            Some(at) => *at = now,
            None => {
                self.asked.insert(tenant.to_string(), now);
            }
        }
    }

    /// The job for a free slot, given how many slots are `free` of
    /// `slots` and the tenants of the running sequences; `None` when the
    /// queue is empty or the last free slot is kept for an active tenant
    /// under its share (see the module doc).
    pub fn pop_for<'a>(
        &mut self,
        free: usize,
        slots: usize,
        running: impl Iterator<Item = &'a str>,
    ) -> Option<Job> {
        let next = self.next_index()?;
        if free == 1 && slots > 1 {
            let mut holds: HashMap<&str, usize> = HashMap::new();
            for tenant in running {
                *holds.entry(tenant).or_default() += 1;
            }
            let now = Instant::now();
            // Active: asked or finished within the window, or running now.
            let mut active: Vec<&str> = self
                .asked
                .iter()
                .filter(|(_, at)| now.duration_since(**at) < ACTIVE_WINDOW)
                .map(|(tenant, _)| tenant.as_str())
                .collect();
            for tenant in holds.keys() {
                if !active.contains(tenant) {
                    active.push(tenant);
                }
            }
            let share = slots.div_ceil(active.len().max(1));
            let tenant = self.jobs[next].tenant.as_str();
            let held = |t: &str| holds.get(t).copied().unwrap_or(0);
            let waits = |t: &str| self.jobs.iter().any(|j| j.tenant == t);
            let kept = held(tenant) >= share
                && active
                    .iter()
                    .any(|other| *other != tenant && held(other) < share && !waits(other));
            if kept {
                return None;
            }
        }
        Some(self.take(next))
    }

    /// Makes room for `job` in a full queue: the job pushed out, if one
    /// yields to it (see the module doc).
    pub fn displace_for(&mut self, job: &Job) -> Option<Job> {
        let mut places: HashMap<&str, usize> = HashMap::new();
        for queued in &self.jobs {
            *places.entry(queued.tenant.as_str()).or_default() += 1;
        }
        let own = places.get(job.tenant.as_str()).copied().unwrap_or(0) + 1;
        // The newest job of each candidate tenant, worst first: lowest
        // priority, then most places.
        let victim = (0..self.jobs.len())
            .rev()
            .filter(|i| {
                let queued = &self.jobs[*i];
                queued.priority < job.priority
                    || (queued.priority == job.priority
                        && queued.tenant != job.tenant
                        && places[queued.tenant.as_str()] > own)
            })
            .min_by_key(|i| {
                let queued = &self.jobs[*i];
                (
                    queued.priority,
                    std::cmp::Reverse(places[queued.tenant.as_str()]),
                )
            })?;
        Some(self.jobs.remove(victim))
    }

    /// The job that takes the next free slot.
    pub fn pop(&mut self) -> Option<Job> {
        let index = self.next_index()?;
        Some(self.take(index))
    }

    fn next_index(&self) -> Option<usize> {
        (0..self.jobs.len()).min_by_key(|i| {
            let job = &self.jobs[*i];
            let served = self.served.get(&job.tenant).copied().unwrap_or(0);
            // Highest priority, least recently served tenant, oldest job.
            (std::cmp::Reverse(job.priority), served, *i)
        })
    }

    fn take(&mut self, index: usize) -> Job {
        let job = self.jobs.remove(index);
        self.clock += 1;
        self.served.insert(job.tenant.clone(), self.clock);
        if self.served.len() > 4 * self.jobs.len().max(64) {
            // Forget tenants with nothing waiting (they start even again).
            let waiting: std::collections::HashSet<&str> =
                self.jobs.iter().map(|j| j.tenant.as_str()).collect();
            self.served.retain(|t, _| waiting.contains(t.as_str()));
        }
        job
    }

    /// Keeps the jobs for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&Job) -> bool) {
        self.jobs.retain(keep);
    }

    /// Takes every job out.
    pub fn drain(&mut self) -> impl Iterator<Item = Job> + '_ {
        self.jobs.drain(..)
    }

    /// The jobs in the order [`FairQueue::pop`] would take them now (for
    /// the queue positions told to each): `pop` replayed on a copy of the
    /// tenants' turns.
    pub fn in_order(&self) -> Vec<&Job> {
        let mut served = self.served.clone();
        let mut clock = self.clock;
        let mut left: Vec<usize> = (0..self.jobs.len()).collect();
        let mut order = Vec::with_capacity(left.len());
        while let Some(at) = (0..left.len()).min_by_key(|k| {
            let job = &self.jobs[left[*k]];
            let turn = served.get(&job.tenant).copied().unwrap_or(0);
            (std::cmp::Reverse(job.priority), turn, left[*k])
        }) {
            let job = &self.jobs[left.remove(at)];
            clock += 1;
            served.insert(job.tenant.clone(), clock);
            order.push(job);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::{Sampler, SamplingConfig};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

    fn job(id: &str, tenant: &str, priority: i8) -> Job {
        let (events, _) = tokio::sync::mpsc::channel(1);
        Job {
            request_id: id.to_string(),
            prompt: vec![1],
            replay: 0,
            max_tokens: 1,
            sampler: Sampler::new(SamplingConfig::greedy(), &[1]),
            stops: Vec::new(),
            tools: false,
            think: None,
            logprobs: None,
            constraint: None,
            deadline: None,
            events,
            cancel: Arc::new(AtomicBool::new(false)),
            queued_at: Instant::now(),
            tenant: tenant.to_string(),
            priority,
        }
    }

    fn ids<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Vec<&'a str> {
        jobs.into_iter().map(|j| j.request_id.as_str()).collect()
    }

    #[test]
    fn tenants_take_turns_and_each_keeps_its_order() {
        let mut queue = FairQueue::default();
        for id in ["f1", "f2", "f3", "f4"] {
            queue.push(job(id, "flood", 0));
        }
        queue.push(job("o1", "other", 0));
        queue.push(job("o2", "other", 0));
        assert_eq!(ids(queue.in_order()), ["f1", "o1", "f2", "o2", "f3", "f4"]);
        let mut popped = Vec::new();
        while let Some(job) = queue.pop() {
            popped.push(job.request_id);
        }
        assert_eq!(popped, ["f1", "o1", "f2", "o2", "f3", "f4"]);
    }

    #[test]
    fn tenants_never_served_still_take_turns() {
        let mut queue = FairQueue::default();
        for (id, tenant) in [("a1", "a"), ("b1", "b"), ("b2", "b"), ("a2", "a")] {
            queue.push(job(id, tenant, 0));
        }
        assert_eq!(ids(queue.in_order()), ["a1", "b1", "a2", "b2"]);
    }

    proptest::proptest! {
        /// The positions told to waiting jobs are the order they leave in.
        #[test]
        fn in_order_is_the_order_pop_takes(
            jobs in proptest::collection::vec((0u8..3, -1i8..=1), 0..24),
            popped_first in 0usize..6,
        ) {
            let mut queue = FairQueue::default();
            for (i, (tenant, priority)) in jobs.iter().enumerate() {
                queue.push(job(&i.to_string(), &tenant.to_string(), *priority));
            }
            for _ in 0..popped_first {
                queue.pop();
            }
            let told: Vec<String> = queue.in_order().iter().map(|j| j.request_id.clone()).collect();
            let mut taken = Vec::new();
            while let Some(job) = queue.pop() {
                taken.push(job.request_id);
            }
            proptest::prop_assert_eq!(told, taken);
        }
    }

    #[test]
    fn a_tenant_just_served_waits_for_the_others() {
        let mut queue = FairQueue::default();
        queue.push(job("f1", "flood", 0));
        assert_eq!(queue.pop().unwrap().request_id, "f1");
        queue.push(job("f2", "flood", 0));
        queue.push(job("o1", "other", 0));
        assert_eq!(queue.pop().unwrap().request_id, "o1");
    }

    #[test]
    fn the_last_free_slot_is_kept_for_an_active_tenant_under_its_share() {
        let mut queue = FairQueue::default();
        queue.push(job("o1", "other", 0));
        assert_eq!(queue.pop().unwrap().request_id, "o1");
        for id in ["f1", "f2"] {
            queue.push(job(id, "flood", 0));
        }
        // 4 slots, 2 active tenants: a share of 2. "flood" runs 2 already
        // and "other" (just finished) runs none: the last slot waits for it.
        let running = ["flood", "flood", "flood"];
        assert!(queue.pop_for(1, 4, running.into_iter()).is_none());
        // With two slots free, or "flood" under its share, it goes.
        assert_eq!(
            queue.pop_for(2, 4, running.into_iter()).unwrap().request_id,
            "f1"
        );
        assert_eq!(
            queue
                .pop_for(1, 4, ["other"; 3].into_iter())
                .unwrap()
                .request_id,
            "f2"
        );
        // "other" asks: it takes the kept slot.
        queue.push(job("f3", "flood", 0));
        queue.push(job("o2", "other", 0));
        assert_eq!(
            queue.pop_for(1, 4, running.into_iter()).unwrap().request_id,
            "o2"
        );
    }

    #[test]
    fn one_tenant_alone_gets_every_slot() {
        let mut queue = FairQueue::default();
        queue.push(job("a", "", 0));
        assert!(queue.pop_for(1, 4, ["", "", ""].into_iter()).is_some());
    }

    #[test]
    fn higher_priority_goes_first() {
        let mut queue = FairQueue::default();
        queue.push(job("low", "a", -1));
        queue.push(job("normal", "b", 0));
        queue.push(job("high", "c", 5));
        assert_eq!(ids(queue.in_order()), ["high", "normal", "low"]);
        assert_eq!(queue.pop().unwrap().request_id, "high");
    }

    #[test]
    fn a_full_queue_makes_room_only_from_a_tenant_over_its_share() {
        let mut queue = FairQueue::default();
        for id in ["f1", "f2", "f3"] {
            queue.push(job(id, "flood", 0));
        }
        queue.push(job("o1", "other", 0));
        // "other" would hold 2 places, "flood" holds 3: its newest yields.
        let out = queue.displace_for(&job("o2", "other", 0)).unwrap();
        assert_eq!(out.request_id, "f3");
        queue.push(job("o2", "other", 0));
        // Now 2 and 2: "other" may not take a third place from "flood".
        assert!(queue.displace_for(&job("o3", "other", 0)).is_none());
        // The flooder never pushes out another tenant.
        assert!(queue.displace_for(&job("f4", "flood", 0)).is_none());
        // A higher priority pushes out the newest of the lowest.
        let out = queue.displace_for(&job("urgent", "flood", 1)).unwrap();
        assert_eq!(out.request_id, "o2");
    }
}
