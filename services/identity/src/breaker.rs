//! A circuit breaker for one remote backend (anyMeta).
//!
//! Closed: calls go through; `threshold` consecutive failures open it. Open: calls are refused
//! without touching the backend until `cooldown` has passed. Then it is half-open: exactly one
//! call (the probe) goes through; its success closes the breaker, its failure opens it again.
//! A permanent failure (bad credentials, a wrong entry point) opens it at once: retrying every
//! read against a backend that refuses us only adds load, and an operator has to act anyway.
//!
//! Pure state plus a clock passed in, so the transitions are unit-tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the backend, then report the result.
    Go,
    /// Call the backend as the half-open probe, then report the result.
    Probe,
    /// Do not call; try again after this long.
    Refused(Duration),
}

/// A transition worth logging, returned by the `record_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_started: Option<Instant>,
}

/// Thread-safe circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// A probe that never reported (its task died) is forgotten after this long.
    probe_timeout: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// `threshold` consecutive transient failures open it (at least 1); `probe_timeout` should
    /// exceed one backend call's time limit.
    pub fn new(threshold: u32, cooldown: Duration, probe_timeout: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            probe_timeout,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probe_started: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// May a call go through at `now`?
    pub fn admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        match s.state {
            BreakerState::Closed => Admission::Go,
            BreakerState::Open => {
                let opened = s.opened_at.unwrap_or(now);
                let ready = opened + self.cooldown;
                if now >= ready {
                    s.state = BreakerState::HalfOpen;
                    s.probe_started = Some(now);
                    Admission::Probe
                } else {
                    Admission::Refused(ready - now)
                }
            }
            BreakerState::HalfOpen => {
                let started = s.probe_started.unwrap_or(now);
                if now.duration_since(started) >= self.probe_timeout {
                    // The probe never came back; let another caller probe.
                    s.probe_started = Some(now);
                    Admission::Probe
                } else {
                    Admission::Refused(self.cooldown.min(Duration::from_secs(1)))
                }
            }
        }
    }

    /// The backend answered (a person or a clear "unknown").
    pub fn record_success(&self) -> Transition {
        let mut s = self.lock();
        s.consecutive_failures = 0;
        s.probe_started = None;
        s.opened_at = None;
        if s.state == BreakerState::Closed {
            Transition::None
        } else {
            s.state = BreakerState::Closed;
            Transition::Closed
        }
    }

    /// The backend failed; `permanent` failures open the breaker at once.
    pub fn record_failure(&self, permanent: bool, now: Instant) -> Transition {
        let mut s = self.lock();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        let open = match s.state {
            BreakerState::Closed => permanent || s.consecutive_failures >= self.threshold,
            // A failed probe (or a late failure of a call admitted before the breaker opened).
            BreakerState::HalfOpen | BreakerState::Open => true,
        };
        if !open {
            return Transition::None;
        }
        let was_open = s.state != BreakerState::Closed;
        s.state = BreakerState::Open;
        s.opened_at = Some(now);
        s.probe_started = None;
        if was_open {
            Transition::None
        } else {
            Transition::Opened
        }
    }

    /// Time left until the next probe may go, zero when calls go through.
    pub fn remaining_cooldown(&self, now: Instant) -> Duration {
        let s = self.lock();
        match (s.state, s.opened_at) {
            (BreakerState::Open, Some(at)) => (at + self.cooldown).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(5);

    fn breaker() -> Breaker {
        Breaker::new(3, COOL, Duration::from_secs(30))
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker();
        let t = Instant::now();
        assert_eq!(b.admit(t), Admission::Go);
        assert_eq!(b.record_failure(false, t), Transition::None);
        assert_eq!(b.record_failure(false, t), Transition::None);
        // A success in between resets the count.
        assert_eq!(b.record_success(), Transition::None);
        assert_eq!(b.record_failure(false, t), Transition::None);
        assert_eq!(b.record_failure(false, t), Transition::None);
        assert_eq!(b.record_failure(false, t), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.admit(t + Duration::from_secs(1)),
            Admission::Refused(COOL - Duration::from_secs(1))
        );
        assert_eq!(
            b.remaining_cooldown(t + Duration::from_secs(2)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let b = breaker();
        let t = Instant::now();
        b.record_failure(true, t);
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "permanent failures open at once"
        );
        let later = t + COOL;
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(b.admit(later), Admission::Refused(_)));
        // Failed probe: open again for a full cool-down.
        assert_eq!(b.record_failure(false, later), Transition::None);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(
            b.admit(later + Duration::from_secs(1)),
            Admission::Refused(_)
        ));
        assert_eq!(b.admit(later + COOL), Admission::Probe);
        assert_eq!(b.record_success(), Transition::Closed);
        assert_eq!(b.admit(later + COOL), Admission::Go);
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let b = breaker();
        let t = Instant::now();
        b.record_failure(true, t);
        assert_eq!(b.admit(t + COOL), Admission::Probe);
        assert!(matches!(
            b.admit(t + COOL + Duration::from_secs(29)),
            Admission::Refused(_)
        ));
        assert_eq!(
            b.admit(t + COOL + Duration::from_secs(30)),
            Admission::Probe
        );
    }
}
