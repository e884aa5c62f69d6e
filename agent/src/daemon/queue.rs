//! The timer queue: which policy fires next, and when.
//!
//! A binary heap of `(fire_at, policy)` entries. The daemon sleeps until the earliest entry
//! (a single tokio timer, never a polling loop), so 10,000 idle policies cost one sleeping
//! task. Each entry carries a ticket, unique over the queue's life; a policy's live entry is
//! the one whose ticket the policy's map entry holds. Rescheduling or cancelling a policy
//! only changes (or drops) that map entry: the old entry goes stale and is dropped when it
//! surfaces instead of being searched for and removed.
//!
//! Stale entries are also swept out whenever they outnumber the live ones: a replica that
//! gave up most of its policies (it started alone, then others joined) would otherwise keep
//! their entries, and their names, until each one's slot came round, a day later for a
//! daily policy.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

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
    ticket: u64,
    due: DateTime<Utc>,
    /// The same allocation as the policy's key in `live`: one copy of the name a policy.
    policy: Arc<str>,
}

impl Entry {
    /// Whether this is its policy's live entry in `live` (the queue's map of live tickets),
    /// not one a reschedule or cancel left stale.
    fn is_live_in(&self, live: &HashMap<Arc<str>, u64>) -> bool {
        live.get(&self.policy) == Some(&self.ticket)
    }
}

/// Below this many entries the heap is never swept: a sweep is not worth its pass.
const SWEEP_FLOOR: usize = 1024;

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Each queued policy's live ticket; a cancelled or fired policy has none.
    live: HashMap<Arc<str>, u64>,
    tickets: u64,
}

impl Queue {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `slot`, replacing any slot the policy had.
    pub fn schedule(&mut self, slot: Slot) {
        self.tickets += 1;
        let ticket = self.tickets;
        // The name the map holds already, or a new one: one allocation a policy, shared.
        let policy = match self.live.get_key_value(slot.policy.as_str()) {
            Some((name, _)) => Arc::clone(name),
            None => slot.policy.into(),
        };
        self.live.insert(Arc::clone(&policy), ticket);
        self.heap.push(Reverse(Entry {
            fire_at: slot.fire_at,
            ticket,
            due: slot.due,
            policy,
        }));
        self.sweep();
    }

    fn live_entry(&self, policy: &str) -> Option<&Entry> {
        let ticket = self.live.get(policy)?;
        self.heap
            .iter()
            .map(|Reverse(e)| e)
            .find(|e| e.ticket == *ticket)
    }

    /// When `policy`'s queued slot fires, if it has one.
    #[must_use]
    pub fn fire_time(&self, policy: &str) -> Option<DateTime<Utc>> {
        self.live_entry(policy).map(|e| e.fire_at)
    }

    /// Delays `policy`'s queued slot to `at` if it would fire sooner (a backoff that outlives
    /// a restart). A linear search: this runs once per policy at start-up, not per tick.
    pub fn not_before(&mut self, policy: &str, at: DateTime<Utc>) {
        if let Some((fire_at, due)) = self.live_entry(policy).map(|e| (e.fire_at, e.due))
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
        if self.live.remove(policy).is_some() {
            self.sweep();
        }
    }

    /// Drops every stale entry once they outnumber the live ones, and gives back what the
    /// heap and the map no longer need: amortised, each sweep follows at least as many
    /// reschedules or cancels as there are live entries.
    fn sweep(&mut self) {
        let live = self.live.len();
        if self.heap.len() <= SWEEP_FLOOR.max(2 * live) {
            return;
        }
        let live_tickets = &self.live;
        self.heap.retain(|Reverse(e)| e.is_live_in(live_tickets));
        self.heap.shrink_to(2 * live);
        self.live.shrink_to(2 * live);
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.is_live_in(&self.live) {
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
                    // A popped slot is consumed: no longer live, so a duplicate can't fire.
                    self.live.remove(&e.policy);
                    out.push(Slot {
                        policy: e.policy.as_ref().to_owned(),
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
        self.live.len()
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
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

    #[test]
    fn stale_entries_are_swept_once_they_outnumber_the_live_ones() {
        let mut q = Queue::new();
        let names: Vec<String> = (0..4 * SWEEP_FLOOR).map(|i| format!("p{i}")).collect();
        for n in &names {
            q.schedule(slot(n, 30));
        }
        // Give up all but a tenth, as a replica does when others join.
        for n in names.iter().skip(names.len() / 10) {
            q.cancel(n);
        }
        assert_eq!(q.len(), names.len() / 10);
        assert!(
            q.heap.len() <= SWEEP_FLOOR.max(2 * q.len()),
            "{} entries kept for {} live slots",
            q.heap.len(),
            q.len()
        );
        // Rescheduling one policy again and again does not grow the heap either.
        for m in 0..(4 * SWEEP_FLOOR as u32) {
            q.schedule(slot("p0", m % 60));
        }
        assert!(q.heap.len() <= SWEEP_FLOOR.max(2 * q.len()));
        // And the live slots are the ones kept.
        assert_eq!(
            q.fire_time("p0"),
            Some(utc(2026, 1, 1, 0, (4 * SWEEP_FLOOR as u32 - 1) % 60))
        );
        assert_eq!(q.fire_time("p1"), Some(utc(2026, 1, 1, 0, 30)));
        assert_eq!(q.fire_time(&names[names.len() - 1]), None);
        let due = q.pop_due(utc(2026, 1, 1, 1, 0));
        assert_eq!(due.len(), names.len() / 10);
        assert!(q.is_empty());
    }

    #[test]
    fn a_policy_cancelled_then_queued_again_fires_once() {
        let mut q = Queue::new();
        q.schedule(slot("a", 1));
        q.cancel("a");
        q.schedule(slot("a", 2));
        let due = q.pop_due(utc(2026, 1, 1, 0, 10));
        assert_eq!(due, [slot("a", 2)]);
    }
}
