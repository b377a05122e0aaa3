//! Turns a reader's stream of sightings into one tap per tag presence.
//!
//! Readers report a tag many times while it rests on the antenna (Parallax
//! repeats its frame, the SM130 answers every poll), but a voter who holds a
//! tag there has voted once. A presence starts with the first sighting and
//! ends when the tag has not been seen for the quiet time, when the reader
//! says the field is empty, or when a different tag is seen (one antenna reads
//! one tag at a time). Time is passed in, so this is pure and testable.
//!
//! Readers without a checksum (Parallax) can be made to require several
//! identical sightings before a presence starts
//! ([`Debouncer::with_confirmations`]): a frame garbled by line noise into
//! another valid-looking UID is then only a *candidate* that never becomes a
//! tap, and it does not end the presence of the tag really held there.

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
    first_seen: Instant,
    last_seen: Instant,
    /// Sightings so far; only counted for candidates.
    sightings: u32,
}

impl Presence {
    fn new(uid: &[u8], now: Instant) -> Self {
        Presence {
            uid: uid.to_vec(),
            first_seen: now,
            last_seen: now,
            sightings: 1,
        }
    }

    /// Whether a sighting of `uid` at `now` continues this presence.
    fn continued_by(&self, uid: &[u8], now: Instant, quiet: Duration) -> bool {
        self.uid == uid && now.saturating_duration_since(self.last_seen) < quiet
    }

    fn deadline(&self, quiet: Duration) -> Option<Instant> {
        self.last_seen.checked_add(quiet)
    }
}

/// Debounce state of one reader.
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: Duration,
    confirmations: u32,
    /// The tag whose presence was tapped.
    present: Option<Presence>,
    /// A tag seen fewer than `confirmations` times so far.
    candidate: Option<Presence>,
}

impl Default for Debouncer {
    fn default() -> Self {
        Debouncer::new(DEFAULT_QUIET)
    }
}

impl Debouncer {
    /// Every first sighting is a tap.
    pub fn new(quiet: Duration) -> Self {
        Debouncer::with_confirmations(quiet, 1)
    }

    /// A presence (and its tap) starts only once the same tag was seen
    /// `confirmations` times with less than `quiet` between sightings
    /// (0 is read as 1).
    pub fn with_confirmations(quiet: Duration, confirmations: u32) -> Self {
        Debouncer {
            quiet,
            confirmations: confirmations.max(1),
            present: None,
            candidate: None,
        }
    }

    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    pub fn confirmations(&self) -> u32 {
        self.confirmations
    }

    /// The tag currently present (tapped), if any.
    pub fn present(&self) -> Option<&[u8]> {
        self.present.as_ref().map(|p| p.uid.as_slice())
    }

    /// Records that the reader saw `uid` at `now`; returns a tap when this
    /// starts a new presence. A sighting after the quiet time starts a new
    /// presence even if [`expire`](Self::expire) was not called in between.
    pub fn sighting(&mut self, uid: &[u8], now: Instant) -> Option<Tap> {
        let quiet = self.quiet;
        if let Some(p) = &mut self.present
            && p.continued_by(uid, now, quiet)
        {
            p.last_seen = p.last_seen.max(now);
            // The held tag was seen again: whatever else was seen in between
            // was not a tag that replaced it.
            self.candidate = None;
            return None;
        }
        let mut candidate = match self.candidate.take() {
            Some(mut c) if c.continued_by(uid, now, quiet) => {
                c.last_seen = c.last_seen.max(now);
                c.sightings += 1;
                c
            }
            _ => Presence::new(uid, now),
        };
        if candidate.sightings < self.confirmations {
            self.candidate = Some(candidate);
            return None;
        }
        candidate.sightings = self.confirmations;
        let tap = Tap {
            uid: candidate.uid.clone(),
            at: candidate.first_seen,
        };
        self.present = Some(candidate);
        Some(tap)
    }

    /// The reader reported an empty field: every presence ends now. Returns
    /// the UIDs whose (tapped) presence ended.
    pub fn no_tag(&mut self, _now: Instant) -> Vec<Vec<u8>> {
        self.candidate = None;
        self.present.take().map(|p| p.uid).into_iter().collect()
    }

    /// Ends presences (and candidates) not seen for at least the quiet time;
    /// returns the UIDs of the tapped presences that ended.
    pub fn expire(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let quiet = self.quiet;
        let stale = |p: &Presence| now.saturating_duration_since(p.last_seen) >= quiet;
        if self.candidate.as_ref().is_some_and(stale) {
            self.candidate = None;
        }
        match &self.present {
            Some(p) if stale(p) => self.present.take().map(|p| p.uid).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// When [`expire`](Self::expire) next has something to do; `None` when
    /// nothing is present (or the quiet time is too large to represent).
    pub fn next_deadline(&self) -> Option<Instant> {
        let present = self.present.as_ref().and_then(|p| p.deadline(self.quiet));
        let candidate = self.candidate.as_ref().and_then(|p| p.deadline(self.quiet));
        match (present, candidate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    #[test]
    fn one_confirmation_is_the_default() {
        assert_eq!(Debouncer::new(ms(300)).confirmations(), 1);
        assert_eq!(Debouncer::with_confirmations(ms(300), 0).confirmations(), 1);
    }

    #[test]
    fn two_confirmations_need_two_sightings_within_quiet() {
        let t0 = Instant::now();
        let mut d = Debouncer::with_confirmations(ms(300), 2);
        assert_eq!(d.sighting(A, t0), None);
        assert_eq!(d.present(), None);
        assert_eq!(d.next_deadline(), Some(t0 + ms(300)));
        // The second sighting starts the presence, dated at the first.
        assert_eq!(
            d.sighting(A, t0 + ms(100)),
            Some(Tap {
                uid: A.to_vec(),
                at: t0
            })
        );
        assert_eq!(d.present(), Some(A));
        for i in 2..10 {
            assert_eq!(d.sighting(A, t0 + ms(100 * i)), None);
        }
    }

    #[test]
    fn a_lone_sighting_never_taps_with_two_confirmations() {
        let t0 = Instant::now();
        let mut d = Debouncer::with_confirmations(ms(300), 2);
        assert_eq!(d.sighting(A, t0), None);
        // Too late for the candidate: it starts over.
        assert_eq!(d.sighting(A, t0 + ms(300)), None);
        assert_eq!(d.expire(t0 + ms(600)), Vec::<Vec<u8>>::new());
        assert_eq!(d.next_deadline(), None);
        assert!(d.sighting(A, t0 + ms(700)).is_none());
        assert!(d.sighting(A, t0 + ms(710)).is_some());
    }

    #[test]
    fn a_garbled_frame_neither_taps_nor_ends_the_held_tag() {
        let t0 = Instant::now();
        let mut d = Debouncer::with_confirmations(ms(300), 2);
        assert!(d.sighting(A, t0).is_none());
        assert!(d.sighting(A, t0 + ms(50)).is_some());
        // Line noise turned one of A's frames into B.
        assert!(d.sighting(B, t0 + ms(100)).is_none());
        assert_eq!(d.present(), Some(A));
        assert!(d.sighting(A, t0 + ms(150)).is_none());
        // B again right after would have been a candidate from scratch.
        assert!(d.sighting(B, t0 + ms(200)).is_none());
        assert_eq!(d.present(), Some(A));
    }

    #[test]
    fn a_confirmed_new_tag_replaces_the_held_one() {
        let t0 = Instant::now();
        let mut d = Debouncer::with_confirmations(ms(300), 2);
        d.sighting(A, t0);
        assert!(d.sighting(A, t0 + ms(10)).is_some());
        assert!(d.sighting(B, t0 + ms(20)).is_none());
        assert_eq!(d.sighting(B, t0 + ms(30)).map(|t| t.uid), Some(B.to_vec()));
        assert_eq!(d.present(), Some(B));
    }

    #[test]
    fn no_tag_drops_the_candidate_too() {
        let t0 = Instant::now();
        let mut d = Debouncer::with_confirmations(ms(300), 2);
        d.sighting(A, t0);
        assert_eq!(d.no_tag(t0 + ms(10)), Vec::<Vec<u8>>::new());
        assert!(d.sighting(A, t0 + ms(20)).is_none());
        assert!(d.sighting(A, t0 + ms(30)).is_some());
    }
}
