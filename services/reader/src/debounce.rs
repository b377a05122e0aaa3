//! Turns a reader's stream of sightings into one tap per tag presence.
//!
//! Readers report a tag many times while it rests on the antenna (Parallax
//! repeats its frame, the SM130 answers every poll), but a voter who holds a
//! tag there has voted once. A presence starts with the first sighting and
//! ends when the tag has not been seen for the quiet time, when the reader
//! says the field is empty, or when a different tag is seen (one antenna reads
//! one tag at a time). Time is passed in, so this is pure and testable.

use std::time::{Duration, Instant};

/// Quiet time after which a tag counts as removed (as in the original system).
pub const DEFAULT_QUIET: Duration = Duration::from_millis(300);

/// The start of a tag presence: this becomes a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub uid: Vec<u8>,
    /// When the tag was first seen.
    pub at: Instant,
}

#[derive(Debug, Clone)]
struct Presence {
    uid: Vec<u8>,
    last_seen: Instant,
}

/// Debounce state of one reader.
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: Duration,
    present: Option<Presence>,
}

impl Default for Debouncer {
    fn default() -> Self {
        Debouncer::new(DEFAULT_QUIET)
    }
}

impl Debouncer {
    pub fn new(quiet: Duration) -> Self {
        Debouncer {
            quiet,
            present: None,
        }
    }

    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    /// The tag currently present, if any.
    pub fn present(&self) -> Option<&[u8]> {
        self.present.as_ref().map(|p| p.uid.as_slice())
    }

    /// Records that the reader saw `uid` at `now`; returns a tap when this
    /// starts a new presence. A sighting after the quiet time starts a new
    /// presence even if [`expire`](Self::expire) was not called in between.
    pub fn sighting(&mut self, uid: &[u8], now: Instant) -> Option<Tap> {
        if let Some(p) = &mut self.present
            && p.uid == uid
            && now.saturating_duration_since(p.last_seen) < self.quiet
        {
            p.last_seen = p.last_seen.max(now);
            return None;
        }
        self.present = Some(Presence {
            uid: uid.to_vec(),
            last_seen: now,
        });
        Some(Tap {
            uid: uid.to_vec(),
            at: now,
        })
    }

    /// The reader reported an empty field: every presence ends now. Returns
    /// the UIDs whose presence ended.
    pub fn no_tag(&mut self, _now: Instant) -> Vec<Vec<u8>> {
        self.present.take().map(|p| p.uid).into_iter().collect()
    }

    /// Ends presences not seen for at least the quiet time; returns their UIDs.
    pub fn expire(&mut self, now: Instant) -> Vec<Vec<u8>> {
        match &self.present {
            Some(p) if now.saturating_duration_since(p.last_seen) >= self.quiet => self.no_tag(now),
            _ => Vec::new(),
        }
    }

    /// When [`expire`](Self::expire) next has something to do; `None` when
    /// nothing is present (or the quiet time is too large to represent).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.present
            .as_ref()
            .and_then(|p| p.last_seen.checked_add(self.quiet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = &[0xAA, 1, 2, 3];
    const B: &[u8] = &[0xBB, 1, 2, 3, 4, 5, 6];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_sighting_is_a_tap() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        assert_eq!(d.quiet(), ms(300));
        assert_eq!(
            d.sighting(A, t0),
            Some(Tap {
                uid: A.to_vec(),
                at: t0
            })
        );
        assert_eq!(d.present(), Some(A));
    }

    #[test]
    fn repeated_sightings_keep_one_presence_alive() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300));
        assert!(d.sighting(A, t0).is_some());
        // Seen every 200 ms for two seconds: each refresh extends the presence.
        for i in 1..=10 {
            assert_eq!(d.sighting(A, t0 + ms(200 * i)), None, "sighting {i}");
        }
        assert_eq!(d.next_deadline(), Some(t0 + ms(2000 + 300)));
    }

    #[test]
    fn quiet_time_ends_a_presence() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300));
        d.sighting(A, t0);
        d.sighting(A, t0 + ms(100));
        assert_eq!(d.expire(t0 + ms(399)), Vec::<Vec<u8>>::new());
        assert_eq!(d.expire(t0 + ms(400)), vec![A.to_vec()]);
        assert_eq!(d.present(), None);
        assert_eq!(d.next_deadline(), None);
        assert_eq!(
            d.sighting(A, t0 + ms(401)).map(|t| t.at),
            Some(t0 + ms(401))
        );
    }

    #[test]
    fn late_sighting_is_a_new_tap_even_without_expire() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300));
        d.sighting(A, t0);
        assert!(d.sighting(A, t0 + ms(299)).is_none());
        assert!(d.sighting(A, t0 + ms(599)).is_some());
    }

    #[test]
    fn no_tag_ends_the_presence_early() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300));
        d.sighting(A, t0);
        assert_eq!(d.no_tag(t0 + ms(50)), vec![A.to_vec()]);
        assert!(d.sighting(A, t0 + ms(100)).is_some());
        assert_eq!(d.no_tag(t0 + ms(150)), vec![A.to_vec()]);
        assert_eq!(d.no_tag(t0 + ms(160)), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn a_different_tag_replaces_the_present_one() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300));
        assert!(d.sighting(A, t0).is_some());
        assert_eq!(d.sighting(B, t0 + ms(10)).map(|t| t.uid), Some(B.to_vec()));
        assert_eq!(d.present(), Some(B));
        // A is back: a new presence, since B ended A's.
        assert!(d.sighting(A, t0 + ms(20)).is_some());
    }

    #[test]
    fn deadline_follows_the_last_sighting() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300));
        assert_eq!(d.next_deadline(), None);
        d.sighting(A, t0);
        assert_eq!(d.next_deadline(), Some(t0 + ms(300)));
        d.sighting(A, t0 + ms(250));
        assert_eq!(d.next_deadline(), Some(t0 + ms(550)));
    }

    #[test]
    fn time_going_backwards_does_not_panic_or_shorten_presence() {
        let t0 = Instant::now() + ms(1000);
        let mut d = Debouncer::new(ms(300));
        d.sighting(A, t0);
        assert!(d.sighting(A, t0 - ms(500)).is_none());
        assert_eq!(d.next_deadline(), Some(t0 + ms(300)));
        assert!(d.expire(t0 - ms(900)).is_empty());
    }

    #[test]
    fn zero_quiet_makes_every_sighting_a_tap() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::ZERO);
        assert!(d.sighting(A, t0).is_some());
        assert!(d.sighting(A, t0).is_some());
    }

    #[test]
    fn huge_quiet_has_no_deadline_and_does_not_panic() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::MAX);
        d.sighting(A, t0);
        assert_eq!(d.next_deadline(), None);
        assert!(d.expire(t0 + ms(10_000)).is_empty());
        assert!(d.sighting(A, t0 + ms(10_000)).is_none());
    }
}
