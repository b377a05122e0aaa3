//! The configuration as of any tap moment.
//!
//! Every change of the config bucket (a put, delete or purge of one key) is
//! kept with its stream sequence and the server time it was stored, from
//! stream TAGPOLL_CONFIG_HISTORY (a mirror that keeps every change for the
//! hand-off streams' retention) and the bucket's own stream (the latest
//! values of every key, however old). [`ConfigHistory::as_of`] folds the
//! changes stored up to a moment into an [`EventConfig`]; results are cached
//! per prefix, so deciding many taps at the same moment costs one fold.
//!
//! When older changes are gone (the mirror starts above sequence 1), a
//! moment before the first kept change is decided against the oldest kept
//! state: every key at its oldest kept value, then the changes up to the
//! moment. [`AsOf::before_history`] says so, and the tally counts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tagpoll_bus::config::EventConfig;
use tagpoll_proto::names::config_keys;

/// One stored change of one config key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Sequence in the config bucket's stream (the mirror keeps it).
    pub seq: u64,
    /// When the server stored it.
    pub at: SystemTime,
    /// The key inside the bucket, e.g. `reader.coffee-left`.
    pub key: String,
    /// The new value; `None` for a delete or purge.
    pub value: Option<Vec<u8>>,
}

/// Whether the tally needs a key: polls, readers and the event settings
/// (tags and forgotten voters are identity's and the exports' business).
pub fn is_decision_key(key: &str) -> bool {
    key == config_keys::EVENT
        || key.starts_with(config_keys::POLL_PREFIX)
        || key.starts_with(config_keys::READER_PREFIX)
}

/// The configuration in force at a moment.
#[derive(Debug, Clone)]
pub struct AsOf {
    pub config: Arc<EventConfig>,
    /// The moment is older than the kept history: decided against the
    /// oldest kept state.
    pub before_history: bool,
}

/// Most prefix snapshots kept at once (late taps cluster at few moments).
const SNAPSHOTS: usize = 64;

/// Every kept change in sequence order, and the state they lead to.
#[derive(Debug, Default)]
pub struct ConfigHistory {
    changes: Vec<Change>,
    current: Arc<EventConfig>,
    snapshots: HashMap<usize, Arc<EventConfig>>,
    /// Changes before the first kept one were dropped (by age or by the
    /// bucket's history limit): the time of the mirror's first kept change,
    /// from which on every change is kept.
    complete_since: Option<SystemTime>,
}

impl ConfigHistory {
    /// Marks that the history is complete only from `at` on (the time of
    /// the mirror's first kept change, when the mirror does not start at 1).
    pub fn set_complete_since(&mut self, at: Option<SystemTime>) {
        self.complete_since = at;
        self.snapshots.clear();
    }

    /// The highest sequence known.
    pub fn last_seq(&self) -> u64 {
        self.changes.last().map_or(0, |c| c.seq)
    }

    /// The time of the latest change known.
    pub fn last_change_at(&self) -> Option<SystemTime> {
        self.changes.last().map(|c| c.at)
    }

    /// Number of changes kept.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Adds one change; a sequence already known is ignored (the mirror and
    /// the bucket's stream overlap). Returns whether it was new.
    pub fn insert(&mut self, mut change: Change) -> bool {
        if !is_decision_key(&change.key) {
            return false;
        }
        // Server times rise with the sequence, but a server clock stepping
        // back (or a new cluster leader) must not unsort them: as_of
        // searches by time.
        if let Some(before) = self.changes.iter().rev().find(|c| c.seq < change.seq) {
            change.at = change.at.max(before.at);
        }
        let at = self.changes.partition_point(|c| c.seq < change.seq);
        if self.changes.get(at).is_some_and(|c| c.seq == change.seq) {
            return false;
        }
        if at == self.changes.len() {
            Arc::make_mut(&mut self.current).apply(
                &change.key,
                change.value.as_deref(),
                change.seq,
            );
            if self.complete_since.is_some() {
                // The oldest-kept-state overlay may have gained a key.
                self.snapshots.clear();
            }
            self.changes.push(change);
        } else {
            // An older change (the bucket's stream delivering what the
            // mirror had dropped): rare, so simply fold everything again.
            self.changes.insert(at, change);
            self.current = Arc::new(self.fold(self.changes.len(), false));
            self.snapshots.clear();
        }
        true
    }

    /// The configuration as it stands now.
    pub fn current(&self) -> Arc<EventConfig> {
        self.current.clone()
    }

    /// The configuration in force at `moment`: every change stored at or
    /// before it (server clock).
    pub fn as_of(&mut self, moment: SystemTime) -> AsOf {
        let prefix = self.changes.partition_point(|c| c.at <= moment);
        let before_history = self
            .complete_since
            .is_some_and(|since| moment < since && !self.changes.is_empty());
        if prefix == self.changes.len() && !before_history {
            return AsOf {
                config: self.current.clone(),
                before_history,
            };
        }
        // Only a moment before the kept history needs the oldest kept
        // state; inside it, the changes up to the moment are all there.
        let overlay = before_history;
        // Keys 0..: prefix snapshots, offset by one bit for the overlay.
        let cache_key = prefix * 2 + usize::from(overlay);
        if let Some(c) = self.snapshots.get(&cache_key) {
            return AsOf {
                config: c.clone(),
                before_history,
            };
        }
        let config = Arc::new(self.fold(prefix, overlay));
        if self.snapshots.len() >= SNAPSHOTS {
            self.snapshots.clear();
        }
        self.snapshots.insert(cache_key, config.clone());
        AsOf {
            config,
            before_history,
        }
    }

    /// The first `prefix` changes folded; with `overlay`, on top of every
    /// key's oldest kept value (a truncated history's oldest kept state).
    fn fold(&self, prefix: usize, overlay: bool) -> EventConfig {
        let mut config = EventConfig::default();
        if overlay {
            let mut seen = std::collections::HashSet::new();
            for c in &self.changes {
                if seen.insert(c.key.as_str()) {
                    config.apply(&c.key, c.value.as_deref(), 0);
                }
            }
        }
        for c in &self.changes[..prefix] {
            config.apply(&c.key, c.value.as_deref(), c.seq);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::time::Duration;
    use tagpoll_proto::v1;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn map(seq: u64, at: u64, reader: &str, poll: &str, answer: &str) -> Change {
        Change {
            seq,
            at: t(at),
            key: format!("reader.{reader}"),
            value: Some(
                v1::ReaderMapping {
                    reader_id: reader.into(),
                    poll_id: poll.into(),
                    answer_id: answer.into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        }
    }

    fn answer_at(h: &mut ConfigHistory, at: u64, reader: &str) -> Option<String> {
        h.as_of(t(at))
            .config
            .readers
            .get(reader)
            .map(|m| m.answer_id.clone())
    }

    #[test]
    fn a_moment_sees_the_changes_stored_up_to_it() {
        let mut h = ConfigHistory::default();
        assert!(h.insert(map(1, 10, "r", "p", "a")));
        assert!(h.insert(map(2, 20, "r", "p", "b")));
        assert!(
            !h.insert(map(2, 20, "r", "p", "b")),
            "a known sequence is ignored"
        );
        assert_eq!(answer_at(&mut h, 5, "r"), None);
        assert_eq!(answer_at(&mut h, 10, "r").as_deref(), Some("a"));
        assert_eq!(answer_at(&mut h, 19, "r").as_deref(), Some("a"));
        assert_eq!(answer_at(&mut h, 20, "r").as_deref(), Some("b"));
        assert_eq!(answer_at(&mut h, 99, "r").as_deref(), Some("b"));
        assert_eq!(h.current().readers["r"].answer_id, "b");
        // A delete unmaps.
        h.insert(Change {
            seq: 3,
            at: t(30),
            key: "reader.r".into(),
            value: None,
        });
        assert_eq!(answer_at(&mut h, 25, "r").as_deref(), Some("b"));
        assert_eq!(answer_at(&mut h, 30, "r"), None);
        assert!(!h.as_of(t(30)).before_history);
    }

    #[test]
    fn an_older_change_arriving_later_is_folded_in_order() {
        let mut h = ConfigHistory::default();
        h.insert(map(5, 50, "r", "p", "late"));
        assert_eq!(answer_at(&mut h, 40, "r"), None);
        h.insert(map(2, 20, "r", "p", "early"));
        assert_eq!(answer_at(&mut h, 40, "r").as_deref(), Some("early"));
        assert_eq!(h.current().readers["r"].answer_id, "late");
        assert_eq!(h.last_seq(), 5);
    }

    #[test]
    fn before_a_truncated_history_the_oldest_kept_state_decides() {
        let mut h = ConfigHistory::default();
        h.insert(map(7, 70, "r", "p", "b"));
        h.insert(map(8, 80, "r", "p", "c"));
        h.set_complete_since(Some(t(70)));
        let old = h.as_of(t(10));
        assert!(old.before_history);
        assert_eq!(old.config.readers["r"].answer_id, "b");
        let inside = h.as_of(t(75));
        assert!(!inside.before_history);
        assert_eq!(inside.config.readers["r"].answer_id, "b");
        // A reader first mapped inside the kept history was not mapped
        // before that, even though older history is gone.
        h.insert(map(9, 90, "new", "p", "a"));
        assert_eq!(answer_at(&mut h, 85, "new"), None);
        assert_eq!(answer_at(&mut h, 90, "new").as_deref(), Some("a"));
        // ...and the oldest kept state now knows it (the cache was cleared).
        assert_eq!(answer_at(&mut h, 10, "new").as_deref(), Some("a"));
    }

    #[test]
    fn a_server_clock_stepping_back_keeps_the_history_in_order() {
        let mut h = ConfigHistory::default();
        h.insert(map(1, 50, "r", "p", "a"));
        h.insert(map(2, 40, "r", "p", "b"));
        assert_eq!(answer_at(&mut h, 45, "r"), None);
        assert_eq!(answer_at(&mut h, 50, "r").as_deref(), Some("b"));
    }

    #[test]
    fn tags_are_not_kept() {
        let mut h = ConfigHistory::default();
        assert!(!h.insert(Change {
            seq: 1,
            at: t(1),
            key: "tag.04A1B2C3".into(),
            value: Some(vec![]),
        }));
        assert!(h.is_empty());
    }
}
