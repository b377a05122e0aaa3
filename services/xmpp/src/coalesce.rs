//! Coalescing bursts: at most one publish per poll per interval, the latest
//! state wins. Pure code; the caller supplies the clock.
//!
//! A change after a quiet period goes out at once (leading edge); further
//! changes within the interval are folded into one publish when it ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    last: Option<Instant>,
    dirty: bool,
}

/// Which polls changed, and when each may be published next.
#[derive(Debug)]
pub struct Coalescer {
    interval: Duration,
    slots: HashMap<String, Slot>,
}

impl Coalescer {
    pub fn new(interval: Duration) -> Self {
        Coalescer {
            interval,
            slots: HashMap::new(),
        }
    }

    /// Notes that `poll` changed.
    pub fn mark(&mut self, poll: &str) {
        self.slots.entry(poll.to_string()).or_default().dirty = true;
    }

    /// Polls due now, in id order; each is then counted as published at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due: Vec<String> = self
            .slots
            .iter_mut()
            .filter(|(_, s)| s.dirty && s.last.is_none_or(|l| now >= l + self.interval))
            .map(|(id, s)| {
                s.dirty = false;
                s.last = Some(now);
                id.clone()
            })
            .collect();
        due.sort();
        due
    }

    /// When the next dirty poll becomes due (None: nothing pending).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| s.dirty)
            .map(|s| s.last.map_or_else(Instant::now, |l| l + self.interval))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_change_goes_out_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let i = Duration::from_millis(500);
        let mut c = Coalescer::new(i);
        assert!(c.due(t0).is_empty());
        assert_eq!(c.next_deadline(), None);
        c.mark("p1");
        assert_eq!(c.due(t0), ["p1"]);
        // A burst within the interval: nothing until it ends, then one.
        for _ in 0..10 {
            c.mark("p1");
        }
        assert!(c.due(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(c.next_deadline(), Some(t0 + i));
        assert_eq!(c.due(t0 + i), ["p1"]);
        assert!(c.due(t0 + i * 3).is_empty());
        // Polls are independent.
        c.mark("p2");
        c.mark("p1");
        assert_eq!(c.due(t0 + i * 3), ["p1", "p2"]);
    }

    #[test]
    fn zero_interval_publishes_every_change() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO);
        c.mark("p");
        assert_eq!(c.due(t0), ["p"]);
        c.mark("p");
        assert_eq!(c.due(t0), ["p"]);
    }
}
