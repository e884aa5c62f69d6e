//! The timer queue: which policy fires next, and when.
//!
//! A binary heap of `(fire_at, policy)` entries. The daemon sleeps until the earliest entry
//! (a single tokio timer, never a polling loop), so 10,000 idle policies cost one sleeping
//! task. Rescheduling a policy bumps its generation; entries from older generations are
//! dropped when they surface instead of being searched for and removed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};

/// One due slot of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The policy.
    pub policy: String,
    /// When the slot fell due (before jitter): what the rotation serves.
    pub due: DateTime<Utc>,
    /// When to start it (due + the policy's jitter).
    pub fire_at: DateTime<Utc>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    fire_at: DateTime<Utc>,
    policy: String,
    due: DateTime<Utc>,
    generation: u64,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    generation: HashMap<String, u64>,
}

impl Queue {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `slot`, replacing any slot the policy had.
    pub fn schedule(&mut self, slot: Slot) {
        let g = self.generation.entry(slot.policy.clone()).or_default();
        *g += 1;
        self.heap.push(Reverse(Entry {
            fire_at: slot.fire_at,
            policy: slot.policy,
            due: slot.due,
            generation: *g,
        }));
    }

    /// When `policy`'s queued slot fires, if it has one.
    #[must_use]
    pub fn fire_time(&self, policy: &str) -> Option<DateTime<Utc>> {
        let g = self.generation.get(policy)?;
        self.heap
            .iter()
            .find(|Reverse(e)| e.policy == policy && e.generation == *g)
            .map(|Reverse(e)| e.fire_at)
    }

    /// Delays `policy`'s queued slot to `at` if it would fire sooner (a backoff that outlives
    /// a restart). A linear search: this runs once per policy at start-up, not per tick.
    pub fn not_before(&mut self, policy: &str, at: DateTime<Utc>) {
        let Some(g) = self.generation.get(policy) else {
            return;
        };
        let live = self
            .heap
            .iter()
            .find(|Reverse(e)| e.policy == policy && e.generation == *g)
            .map(|Reverse(e)| (e.fire_at, e.due));
        if let Some((fire_at, due)) = live
            && fire_at < at
        {
            self.schedule(Slot {
                policy: policy.to_owned(),
                due,
                fire_at: at,
            });
        }
    }

    /// Forgets a policy (removed from the policy set, or being rotated right now).
    pub fn cancel(&mut self, policy: &str) {
        if let Some(g) = self.generation.get_mut(policy) {
            *g += 1;
        }
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.generation.get(&top.policy) == Some(&top.generation) {
                return;
            }
            self.heap.pop();
        }
    }

    /// When the next live slot fires.
    pub fn next_fire(&mut self) -> Option<DateTime<Utc>> {
        self.drop_stale();
        self.heap.peek().map(|Reverse(e)| e.fire_at)
    }

    /// Takes every live slot due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<Slot> {
        let mut out = Vec::new();
        loop {
            self.drop_stale();
            match self.heap.peek() {
                Some(Reverse(e)) if e.fire_at <= now => {
                    let Reverse(e) = self.heap.pop().expect("peeked");
                    // A popped slot is consumed: bump so a duplicate can't fire.
                    self.cancel(&e.policy);
                    out.push(Slot {
                        policy: e.policy,
                        due: e.due,
                        fire_at: e.fire_at,
                    });
                }
                _ => return out,
            }
        }
    }

    /// How many live slots are queued.
    #[must_use]
    pub fn len(&self) -> usize {
        self.heap
            .iter()
            .filter(|Reverse(e)| self.generation.get(&e.policy) == Some(&e.generation))
            .count()
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::utc;

    fn slot(p: &str, m: u32) -> Slot {
        Slot {
            policy: p.into(),
            due: utc(2026, 1, 1, 0, m),
            fire_at: utc(2026, 1, 1, 0, m),
        }
    }

    #[test]
    fn slots_come_out_in_fire_order() {
        let mut q = Queue::new();
        q.schedule(slot("b", 5));
        q.schedule(slot("a", 1));
        q.schedule(slot("c", 9));
        assert_eq!(q.next_fire(), Some(utc(2026, 1, 1, 0, 1)));
        let due: Vec<_> = q
            .pop_due(utc(2026, 1, 1, 0, 6))
            .into_iter()
            .map(|s| s.policy)
            .collect();
        assert_eq!(due, ["a", "b"]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn rescheduling_replaces_the_old_slot() {
        let mut q = Queue::new();
        q.schedule(slot("a", 1));
        q.schedule(slot("a", 30));
        assert_eq!(q.len(), 1);
        assert!(q.pop_due(utc(2026, 1, 1, 0, 10)).is_empty());
        assert_eq!(q.next_fire(), Some(utc(2026, 1, 1, 0, 30)));
    }

    #[test]
    fn not_before_only_ever_delays_a_slot() {
        let mut q = Queue::new();
        q.schedule(slot("a", 1));
        q.not_before("a", utc(2026, 1, 1, 0, 20));
        assert_eq!(q.fire_time("a"), Some(utc(2026, 1, 1, 0, 20)));
        q.not_before("a", utc(2026, 1, 1, 0, 5));
        assert_eq!(q.fire_time("a"), Some(utc(2026, 1, 1, 0, 20)));
        assert_eq!(q.len(), 1);
        let due = q.pop_due(utc(2026, 1, 1, 0, 30));
        assert_eq!(
            due[0].due,
            utc(2026, 1, 1, 0, 1),
            "the slot served is unchanged"
        );
        q.not_before("nobody", utc(2026, 1, 1, 0, 5));
        assert!(q.is_empty());
    }

    #[test]
    fn a_cancelled_policy_never_fires() {
        let mut q = Queue::new();
        q.schedule(slot("a", 1));
        q.cancel("a");
        assert!(q.pop_due(utc(2030, 1, 1, 0, 0)).is_empty());
        assert_eq!(q.next_fire(), None);
    }
}
