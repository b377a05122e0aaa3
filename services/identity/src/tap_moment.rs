//! The tap moment of a read: the one trusted time of a tap (pure; the I/O is in
//! [`crate::device_clocks`]). See docs/identity.md, section "Tap moments".
//!
//! A read's moment is when `TAGPOLL_READS` stored it (server clock), except for a tap that
//! waited in a reader box's spool while the box was offline. Such a tap's moment is the
//! device's `read_at` corrected by the device's clock offset, never after the read was stored
//! and never before the device's previous stored tap. Device clocks cannot be trusted blindly
//! (a box without NTP may be minutes off), so the offset is measured from the box's own
//! heartbeats against the server's clock ([`ClockBook`]), and a device whose offset is unknown
//! or beyond [`CLOCK_TRUST_BOUND`] falls back to the stored time.
//!
//! Times are [`Nanos`]: signed nanoseconds since the Unix epoch, wide enough that no
//! timestamp from the bus, however wrong, overflows.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use tagpoll_proto::v1;

/// Largest clock offset (either way) under which a device's `read_at` is believed. A box
/// synchronised by NTP is milliseconds off; one that is seconds off is not synchronised, and its
/// spooled taps count at their arrival.
pub const CLOCK_TRUST_BOUND: Duration = Duration::from_secs(2);
/// A read stored more than this after its corrected `read_at` waited in the spool (held); a
/// prompt read, which only travelled, keeps the stored time.
pub const HOLD_THRESHOLD: Duration = Duration::from_secs(2);
/// Samples older than this (before the device's newest) no longer count for its offset.
pub const SAMPLE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Most samples kept per device.
pub const MAX_SAMPLES: usize = 64;
/// Most devices remembered; beyond it the device heard from longest ago is forgotten.
pub const MAX_DEVICES: usize = 10_000;

/// Signed nanoseconds since the Unix epoch (or a signed span of them).
pub type Nanos = i128;

const NANOS_PER_SEC: i128 = 1_000_000_000;

fn span(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

/// A protobuf timestamp as [`Nanos`] (any field values, no overflow).
pub fn nanos_of_timestamp(t: &Timestamp) -> Nanos {
    i128::from(t.seconds) * NANOS_PER_SEC + i128::from(t.nanos)
}

/// A system time as [`Nanos`].
pub fn nanos_of(t: SystemTime) -> Nanos {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => span(d),
        Err(e) => -span(e.duration()),
    }
}

/// [`Nanos`] as a normalised protobuf timestamp, saturating at its seconds' range.
pub fn timestamp_of(n: Nanos) -> Timestamp {
    let seconds = n.div_euclid(NANOS_PER_SEC);
    let nanos = n.rem_euclid(NANOS_PER_SEC) as i32;
    match i64::try_from(seconds) {
        Ok(seconds) => Timestamp { seconds, nanos },
        Err(_) if seconds < 0 => Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        },
        Err(_) => Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        },
    }
}

/// Whether an offset is small enough to believe the device's clock.
pub fn is_trusted(offset: Nanos) -> bool {
    offset.abs() <= span(CLOCK_TRUST_BOUND)
}

/// One clock sample from a device heartbeat stored at `stored`: stored time − `sent_at`
/// (transit only adds to it). `None` for a heartbeat sent while the box was offline
/// (`nats_connected` false: buffered, flushed later, its delay says nothing about the clock)
/// or without `sent_at`.
pub fn clock_sample(hb: &v1::Heartbeat, stored: Nanos) -> Option<Nanos> {
    if !hb.nats_connected {
        return None;
    }
    Some(stored - nanos_of_timestamp(hb.sent_at.as_ref()?))
}

#[derive(Debug, Default)]
struct Samples {
    /// (stored time, offset), oldest first.
    samples: VecDeque<(Nanos, Nanos)>,
    newest: Nanos,
}

/// Clock offsets of devices, from their heartbeats: per device the samples of the
/// [`SAMPLE_WINDOW`] up to its newest one (at most [`MAX_SAMPLES`]); the estimate is their
/// minimum, the sample that travelled fastest.
///
/// The window ends at the device's newest sample, not at "now": a box that was offline for an
/// hour flushes its spool before its next heartbeat, and its clock as measured just before it
/// went away is the best knowledge there is.
#[derive(Debug, Default)]
pub struct ClockBook {
    devices: HashMap<String, Samples>,
}

impl ClockBook {
    /// Records a heartbeat of `device` stored at `stored`; ignores what [`clock_sample`] ignores
    /// and samples older than the device's window.
    pub fn record(&mut self, device: &str, hb: &v1::Heartbeat, stored: Nanos) {
        let Some(offset) = clock_sample(hb, stored) else {
            return;
        };
        if !self.devices.contains_key(device) && self.devices.len() >= MAX_DEVICES {
            let oldest = self
                .devices
                .iter()
                .min_by_key(|(_, s)| s.newest)
                .map(|(d, _)| d.clone());
            if let Some(d) = oldest {
                self.devices.remove(&d);
            }
        }
        let s = self.devices.entry(device.to_string()).or_default();
        if !s.samples.is_empty() && stored < s.newest - span(SAMPLE_WINDOW) {
            return;
        }
        s.newest = if s.samples.is_empty() {
            stored
        } else {
            s.newest.max(stored)
        };
        s.samples.push_back((stored, offset));
        let from = s.newest - span(SAMPLE_WINDOW);
        s.samples.retain(|(at, _)| *at >= from);
        while s.samples.len() > MAX_SAMPLES {
            s.samples.pop_front();
        }
    }

    /// The device's clock offset (server − device), if any sample is known.
    pub fn offset(&self, device: &str) -> Option<Nanos> {
        self.devices
            .get(device)?
            .samples
            .iter()
            .map(|(_, o)| *o)
            .min()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// A tap moment and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    pub at: Nanos,
    pub source: v1::TapMoment,
}

/// What the moment of one read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Known now.
    Done(Moment),
    /// The tap was held: its moment is `corrected` bounded by the device's previous stored tap
    /// ([`held`]), which must be looked up first; `offset` is the trusted clock offset used.
    Held { corrected: Nanos, offset: Nanos },
}

/// Decides a read's moment from its `read_at` (device clock), when it was `stored` and the
/// device's clock `offset` (if known).
pub fn plan(read_at: Option<&Timestamp>, stored: Nanos, offset: Option<Nanos>) -> Plan {
    let at_stored = |source| Plan::Done(Moment { at: stored, source });
    let Some(read_at) = read_at.map(nanos_of_timestamp) else {
        return at_stored(v1::TapMoment::Stored);
    };
    match offset.filter(|o| is_trusted(*o)) {
        Some(offset) => {
            let corrected = read_at + offset;
            if stored - corrected > span(HOLD_THRESHOLD) {
                Plan::Held { corrected, offset }
            } else {
                at_stored(v1::TapMoment::Stored)
            }
        }
        None if stored - read_at > span(HOLD_THRESHOLD) => {
            at_stored(v1::TapMoment::StoredClockUntrusted)
        }
        None => at_stored(v1::TapMoment::Stored),
    }
}

/// The moment of a held tap: `corrected`, not before `lower` (the device's previous stored
/// tap, if any) and not after `stored`.
pub fn held(corrected: Nanos, stored: Nanos, lower: Option<Nanos>) -> Moment {
    let at = lower.map_or(corrected, |l| corrected.max(l)).min(stored);
    Moment {
        at,
        source: v1::TapMoment::DeviceClock,
    }
}

/// The moment taken for the device's previous stored tap, as a lower bound: the earlier of its
/// stored time and its corrected `read_at` (its own moment is one of them, or in between).
pub fn previous_moment(stored: Nanos, read_at: Option<Nanos>, offset: Nanos) -> Nanos {
    read_at.map_or(stored, |r| stored.min(r + offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = NANOS_PER_SEC;
    /// A stored time (server clock), 2026-ish.
    const T: Nanos = 1_780_000_000 * S;

    fn ts(n: Nanos) -> Timestamp {
        timestamp_of(n)
    }

    fn hb(sent: Nanos, connected: bool) -> v1::Heartbeat {
        v1::Heartbeat {
            sent_at: Some(ts(sent)),
            nats_connected: connected,
            ..Default::default()
        }
    }

    fn done(at: Nanos, source: v1::TapMoment) -> Plan {
        Plan::Done(Moment { at, source })
    }

    #[test]
    fn a_prompt_read_keeps_its_stored_time() {
        // Trusted clock, 300 ms on the way.
        let p = plan(Some(&ts(T - 300 * S / 1000)), T, Some(40 * S / 1000));
        assert_eq!(p, done(T, v1::TapMoment::Stored));
        // Exactly at the threshold is still prompt.
        let p = plan(Some(&ts(T - 2 * S)), T, Some(0));
        assert_eq!(p, done(T, v1::TapMoment::Stored));
        // A device clock ahead (read_at after stored) is prompt too.
        let p = plan(Some(&ts(T + S)), T, Some(-S));
        assert_eq!(p, done(T, v1::TapMoment::Stored));
        // No read_at at all.
        assert_eq!(plan(None, T, Some(0)), done(T, v1::TapMoment::Stored));
        assert_eq!(plan(None, T, None), done(T, v1::TapMoment::Stored));
    }

    #[test]
    fn a_held_read_is_moved_to_its_corrected_device_time() {
        // Device clock 1.5 s behind the server; the tap waited a minute in the spool.
        let offset = 1_500 * S / 1000;
        let read_at = T - 60 * S - offset;
        let p = plan(Some(&ts(read_at)), T, Some(offset));
        assert_eq!(
            p,
            Plan::Held {
                corrected: T - 60 * S,
                offset
            }
        );
        // Just over the threshold once corrected.
        let p = plan(Some(&ts(T - 2 * S - 1 - offset)), T, Some(offset));
        assert!(matches!(p, Plan::Held { .. }), "{p:?}");
        // Without previous tap, the corrected time is the moment.
        assert_eq!(
            held(T - 60 * S, T, None),
            Moment {
                at: T - 60 * S,
                source: v1::TapMoment::DeviceClock
            }
        );
    }

    #[test]
    fn a_held_moment_is_clamped_between_the_previous_tap_and_its_storing() {
        // Before the device's previous stored tap: moved up to it.
        assert_eq!(held(T - 60 * S, T, Some(T - 10 * S)).at, T - 10 * S);
        // After the previous tap: untouched.
        assert_eq!(held(T - 60 * S, T, Some(T - 90 * S)).at, T - 60 * S);
        // Never after it was stored, even if the lower bound is (a server clock step).
        assert_eq!(held(T - 60 * S, T, Some(T + 5 * S)).at, T);
        assert_eq!(held(T + 5 * S, T, None).at, T);
        // The previous tap counts at the earlier of its stored and corrected times.
        assert_eq!(previous_moment(T, Some(T - 30 * S), S), T - 29 * S);
        assert_eq!(previous_moment(T, Some(T + 30 * S), S), T);
        assert_eq!(previous_moment(T, None, S), T);
    }

    #[test]
    fn an_untrusted_or_unknown_clock_falls_back_to_the_stored_time_and_says_so() {
        for offset in [None, Some(35 * S), Some(-35 * S), Some(2 * S + 1)] {
            let p = plan(Some(&ts(T - 60 * S)), T, offset);
            assert_eq!(
                p,
                done(T, v1::TapMoment::StoredClockUntrusted),
                "{offset:?}"
            );
            // A raw read_at within 2 s of storing gives no reason to suspect a held tap.
            let p = plan(Some(&ts(T - S)), T, offset);
            assert_eq!(p, done(T, v1::TapMoment::Stored), "{offset:?}");
        }
        // The bound itself is trusted.
        assert!(is_trusted(2 * S) && is_trusted(-2 * S) && !is_trusted(-2 * S - 1));
        assert!(matches!(
            plan(Some(&ts(T - 60 * S)), T, Some(-2 * S)),
            Plan::Held { .. }
        ));
    }

    #[test]
    fn the_offset_is_the_fastest_sample_and_buffered_heartbeats_do_not_count() {
        let mut book = ClockBook::default();
        assert_eq!(book.offset("a"), None);
        // Device clock 1 s behind, transit 20..200 ms.
        for (i, transit_ms) in [200, 20, 90, 150].into_iter().enumerate() {
            let stored = T + i as Nanos * 2 * S;
            book.record("a", &hb(stored - S - transit_ms * S / 1000, true), stored);
        }
        assert_eq!(book.offset("a"), Some(S + 20 * S / 1000));
        // Heartbeats buffered while offline and flushed later: huge delays, ignored.
        book.record("a", &hb(T - 600 * S, false), T + 10 * S);
        book.record("a", &hb(T + 12 * S, false), T + 12 * S + 9 * S);
        assert_eq!(book.offset("a"), Some(S + 20 * S / 1000));
        // No sent_at: nothing to learn.
        let mut no_sent = hb(0, true);
        no_sent.sent_at = None;
        book.record("b", &no_sent, T);
        assert_eq!(book.offset("b"), None);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn samples_leave_the_window_and_the_count_is_bounded() {
        let mut book = ClockBook::default();
        // A fast sample, then six minutes of slower ones: the fast one leaves the window.
        book.record("a", &hb(T, true), T + S / 100);
        for i in 1..=180 {
            let stored = T + i * 2 * S;
            book.record("a", &hb(stored - S / 10, true), stored);
        }
        assert_eq!(book.offset("a"), Some(S / 10));
        // An old sample (re-delivered after a restart of the follower) does not come back.
        book.record("a", &hb(T, true), T + S / 100);
        assert_eq!(book.offset("a"), Some(S / 10));
        // At most MAX_SAMPLES per device: the oldest go first.
        let mut book = ClockBook::default();
        for i in 0..(MAX_SAMPLES as Nanos + 1) {
            let delay = if i == 0 { 0 } else { S / 10 };
            book.record("a", &hb(T + i * S / 10 - delay, true), T + i * S / 10);
        }
        assert_eq!(book.offset("a"), Some(S / 10));
    }

    #[test]
    fn the_device_heard_from_longest_ago_is_forgotten_first() {
        let mut book = ClockBook::default();
        for i in 0..MAX_DEVICES {
            let stored = T + i as Nanos * S;
            book.record(&format!("d{i}"), &hb(stored, true), stored);
        }
        // d0 is heard from again, so d1 is now the oldest.
        book.record("d0", &hb(T + 20_000 * S, true), T + 20_000 * S);
        book.record("new", &hb(T + 20_001 * S, true), T + 20_001 * S);
        assert_eq!(book.len(), MAX_DEVICES);
        assert!(book.offset("d0").is_some() && book.offset("new").is_some());
        assert_eq!(book.offset("d1"), None);
    }

    #[test]
    fn times_convert_both_ways_and_never_overflow() {
        for n in [0, T, T + 123, -S - 1, -1] {
            assert_eq!(nanos_of_timestamp(&timestamp_of(n)), n);
        }
        let now = SystemTime::now();
        assert_eq!(
            nanos_of_timestamp(&tagpoll_proto::timestamp(now)),
            nanos_of(now)
        );
        let wild = Timestamp {
            seconds: i64::MIN,
            nanos: -5,
        };
        let p = plan(Some(&wild), T, Some(S));
        let Plan::Held { corrected, .. } = p else {
            panic!("{p:?}")
        };
        assert_eq!(timestamp_of(corrected - 10 * S).seconds, i64::MIN);
        assert_eq!(held(corrected, T, None).at, corrected);
        assert_eq!(timestamp_of(Nanos::MAX).seconds, i64::MAX);
        // A heartbeat with wild fields gives a sample, not a panic (and it is not trusted).
        let s = clock_sample(
            &v1::Heartbeat {
                sent_at: Some(Timestamp {
                    seconds: i64::MAX,
                    nanos: i32::MAX,
                }),
                nats_connected: true,
                ..Default::default()
            },
            T,
        );
        assert!(s.is_some_and(|s| !is_trusted(s)));
    }
}
