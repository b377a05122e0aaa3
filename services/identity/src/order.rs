//! Per-tag order across retries and instances: the ledger of reads not yet identified.
//!
//! The tally decides identified reads in `TAGPOLL_IDENTIFIED` order and poll rules depend on
//! the order of one voter's taps, so identity must never store a tap before an earlier tap of
//! the same tag. Inside one instance the pipeline publishes in arrival order, but a read that
//! is handed back (nak) comes back later, and several instances share the consumer, so each
//! instance also keeps this ledger:
//!
//! - It follows `TAGPOLL_READS` (an ordered consumer from the `identity` consumer's ack floor)
//!   and records every read above the floor: stream sequence, read id, tag.
//! - A read is done once its identified read is stored: this instance marks its own at once;
//!   reads stored by other instances are seen on `TAGPOLL_IDENTIFIED` (an ordered consumer,
//!   headers only, starting [`IDENTIFIED_LOOKBACK`] in the past so reads stored but not yet
//!   acknowledged by an instance that just died count as done); and everything at or below
//!   the consumer's ack floor (polled) is done.
//! - Before read `S` of tag `T` is published, every read of `T` below `S` must be done
//!   ([`Ledger::blockers`]); otherwise the caller waits (if the blocker is its own publish in
//!   flight) or hands `S` back to JetStream to try again shortly.
//!
//! Every delay in learning facts (a follower behind, a floor not yet polled) errs on the side of
//! waiting, never of overtaking. Blockers always have a lower stream sequence, so waiting can
//! not form a cycle: the lowest pending read of a tag is never blocked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::Stream as JsStream};
use futures::StreamExt;
use tagpoll_bus::BusError;
use tagpoll_proto::{names, v1};
use tokio::sync::watch;

/// How far back the `TAGPOLL_IDENTIFIED` follower starts: twice the consumer's ack wait. A
/// read stored longer ago and still unacknowledged has been re-delivered since (its re-publish
/// is de-duplicated) and is acknowledged soon, moving the ack floor past it.
pub const IDENTIFIED_LOOKBACK: Duration = Duration::from_secs(60);
/// How often the consumer's ack floor is polled.
pub const FLOOR_POLL: Duration = Duration::from_millis(500);
/// Read ids remembered as done (for reads whose identified read was seen before the read).
const RECENT_DONE: usize = 1 << 16;

#[derive(Debug)]
struct Pending {
    tag: Vec<u8>,
    read_id: String,
}

/// The ledger's state, pure (unit-tested without NATS).
#[derive(Debug, Default)]
pub struct LedgerState {
    /// Every read at or below this stream sequence is done.
    floor: u64,
    /// Every read at or below this sequence has been recorded (or is below the floor).
    seen: u64,
    pending: BTreeMap<u64, Pending>,
    by_tag: HashMap<Vec<u8>, BTreeSet<u64>>,
    by_read: HashMap<String, Vec<u64>>,
    recent_done: HashSet<String>,
    recent_order: VecDeque<String>,
}

impl LedgerState {
    /// Starts with everything at or below `floor` done.
    pub fn new(floor: u64) -> Self {
        LedgerState {
            floor,
            seen: floor,
            ..Default::default()
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Read `seq` of `tag` is in the stream (the reads follower saw it).
    pub fn observe(&mut self, seq: u64, read_id: &str, tag: &[u8]) {
        self.seen = self.seen.max(seq);
        if seq <= self.floor
            || self.recent_done.contains(read_id)
            || self.pending.contains_key(&seq)
        {
            return;
        }
        self.pending.insert(
            seq,
            Pending {
                tag: tag.to_vec(),
                read_id: read_id.to_string(),
            },
        );
        self.by_tag.entry(tag.to_vec()).or_default().insert(seq);
        self.by_read
            .entry(read_id.to_string())
            .or_default()
            .push(seq);
    }

    /// Stream sequence `seq` was seen but holds no usable read (undecodable).
    pub fn observe_other(&mut self, seq: u64) {
        self.seen = self.seen.max(seq);
    }

    /// The identified read for `read_id` is stored.
    pub fn done_read(&mut self, read_id: &str) {
        if self.recent_done.insert(read_id.to_string()) {
            self.recent_order.push_back(read_id.to_string());
            while self.recent_order.len() > RECENT_DONE {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent_done.remove(&old);
                }
            }
        }
        if let Some(seqs) = self.by_read.remove(read_id) {
            for seq in seqs {
                self.remove(seq);
            }
        }
    }

    /// Every read at or below `floor` is done (the consumer's ack floor).
    pub fn set_floor(&mut self, floor: u64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        self.seen = self.seen.max(floor);
        let above = self.pending.split_off(&(floor + 1));
        let below = std::mem::replace(&mut self.pending, above);
        for (seq, p) in below {
            self.unlink(seq, &p);
        }
    }

    /// Reads of `tag` below `seq` that are not done yet, lowest first.
    pub fn blockers(&self, tag: &[u8], seq: u64) -> Vec<u64> {
        self.by_tag
            .get(tag)
            .map(|s| s.range(..seq).copied().collect())
            .unwrap_or_default()
    }

    fn remove(&mut self, seq: u64) {
        if let Some(p) = self.pending.remove(&seq) {
            self.unlink(seq, &p);
        }
    }

    fn unlink(&mut self, seq: u64, p: &Pending) {
        if let Some(set) = self.by_tag.get_mut(&p.tag) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_tag.remove(&p.tag);
            }
        }
        if let Some(seqs) = self.by_read.get_mut(&p.read_id) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.by_read.remove(&p.read_id);
            }
        }
    }
}

/// The shared ledger of one instance, fed by its followers.
pub struct Ledger {
    state: Mutex<LedgerState>,
    seen: watch::Sender<u64>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_seen(&self, seen: u64) {
        self.seen.send_if_modified(|s| {
            if seen > *s {
                *s = seen;
                true
            } else {
                false
            }
        });
    }

    /// A ledger that is not fed (tests of the pipeline alone).
    pub fn detached(floor: u64) -> Arc<Self> {
        Arc::new(Ledger {
            state: Mutex::new(LedgerState::new(floor)),
            seen: watch::channel(floor).0,
        })
    }

    pub fn observe(&self, seq: u64, read_id: &str, tag: &[u8]) {
        let seen = {
            let mut s = self.lock();
            s.observe(seq, read_id, tag);
            s.seen()
        };
        self.publish_seen(seen);
    }

    pub fn observe_other(&self, seq: u64) {
        let seen = {
            let mut s = self.lock();
            s.observe_other(seq);
            s.seen()
        };
        self.publish_seen(seen);
    }

    pub fn done_read(&self, read_id: &str) {
        self.lock().done_read(read_id);
    }

    pub fn set_floor(&self, floor: u64) {
        let seen = {
            let mut s = self.lock();
            s.set_floor(floor);
            s.seen()
        };
        self.publish_seen(seen);
    }

    pub fn blockers(&self, tag: &[u8], seq: u64) -> Vec<u64> {
        self.lock().blockers(tag, seq)
    }

    pub fn pending_len(&self) -> usize {
        self.lock().pending_len()
    }

    /// Waits until every read up to `seq` has been recorded; false after `limit`.
    pub async fn wait_seen(&self, seq: u64, limit: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Creates the ledger and starts its followers: `TAGPOLL_IDENTIFIED` (headers only, from
    /// [`IDENTIFIED_LOOKBACK`] ago) first, then the ack floor, then `TAGPOLL_READS` from just
    /// above the floor.
    pub async fn start(
        js: &jetstream::Context,
        identity: &consumer::Consumer<consumer::pull::Config>,
    ) -> Result<Arc<Self>, BusError> {
        let identified = js
            .get_stream(names::STREAM_IDENTIFIED)
            .await
            .map_err(|e| BusError::js("looking up identified stream", e))?;
        let reads = js
            .get_stream(names::STREAM_READS)
            .await
            .map_err(|e| BusError::js("looking up reads stream", e))?;
        let done_feed = follow(&identified, recent(), true).await?;
        let floor = identity
            .get_info()
            .await
            .map_err(|e| BusError::js("identity consumer info", e))?
            .ack_floor
            .stream_sequence;
        let ledger = Arc::new(Ledger {
            state: Mutex::new(LedgerState::new(floor)),
            seen: watch::channel(floor).0,
        });
        tokio::spawn(identified_loop(
            identified,
            done_feed,
            Arc::downgrade(&ledger),
        ));
        tokio::spawn(reads_loop(reads, floor, Arc::downgrade(&ledger)));
        tokio::spawn(floor_loop(identity.clone(), Arc::downgrade(&ledger)));
        Ok(ledger)
    }
}

/// Messages stored since [`IDENTIFIED_LOOKBACK`] ago.
fn recent() -> consumer::DeliverPolicy {
    let since = std::time::SystemTime::now() - IDENTIFIED_LOOKBACK;
    let nanos = since
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default();
    match async_nats::datetime::from_nanos(nanos) {
        Ok(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
        Err(_) => consumer::DeliverPolicy::New,
    }
}

async fn follow(
    stream: &JsStream,
    deliver_policy: consumer::DeliverPolicy,
    headers_only: bool,
) -> Result<consumer::pull::Ordered, BusError> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js("creating ordered consumer for the identity ledger", e))?
        .messages()
        .await
        .map_err(|e| BusError::js("following a stream for the identity ledger", e))
}

async fn identified_loop(
    stream: JsStream,
    mut feed: consumer::pull::Ordered,
    ledger: std::sync::Weak<Ledger>,
) {
    loop {
        while let Some(m) = feed.next().await {
            let Some(ledger) = ledger.upgrade() else {
                return;
            };
            match m {
                Ok(m) => {
                    let id = m
                        .headers
                        .as_ref()
                        .and_then(|h| {
                            h.get(names::HEADER_READ_ID)
                                .or_else(|| h.get(names::HEADER_MSG_ID))
                        })
                        .map(|v| v.as_str().to_string());
                    if let Some(id) = id {
                        ledger.done_read(&id);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "identified follower hiccup"),
            }
        }
        if ledger.strong_count() == 0 {
            return;
        }
        // Missing some "done" marks only makes later taps wait for the ack floor.
        tracing::warn!("identified follower ended; restarting");
        tokio::time::sleep(Duration::from_secs(1)).await;
        match follow(&stream, recent(), true).await {
            Ok(f) => feed = f,
            Err(e) => tracing::warn!(error = %e, "identified follower restart failed"),
        }
    }
}

async fn reads_loop(stream: JsStream, floor: u64, ledger: std::sync::Weak<Ledger>) {
    let mut next = floor + 1;
    loop {
        let mut feed = match follow(
            &stream,
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            false,
        )
        .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reads follower start failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if ledger.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        while let Some(m) = feed.next().await {
            let Some(ledger) = ledger.upgrade() else {
                return;
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "reads follower hiccup");
                    continue;
                }
            };
            let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
                continue;
            };
            match <v1::TagRead as prost::Message>::decode(m.payload.as_ref()) {
                Ok(read) => ledger.observe(seq, &read.read_id, &read.tag_uid),
                Err(_) => ledger.observe_other(seq),
            }
            next = seq + 1;
        }
        if ledger.strong_count() == 0 {
            return;
        }
        tracing::warn!("reads follower ended; restarting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn floor_loop(
    identity: consumer::Consumer<consumer::pull::Config>,
    ledger: std::sync::Weak<Ledger>,
) {
    let mut tick = tokio::time::interval(FLOOR_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(l) = ledger.upgrade() else { return };
        match identity.get_info().await {
            Ok(info) => l.set_floor(info.ack_floor.stream_sequence),
            Err(e) => tracing::debug!(error = %e, "identity consumer info failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockers_are_earlier_undone_reads_of_the_same_tag() {
        let mut l = LedgerState::new(10);
        l.observe(5, "old", b"A"); // below the floor: done
        l.observe(11, "r11", b"A");
        l.observe(12, "r12", b"B");
        l.observe(13, "r13", b"A");
        l.observe(14, "r14", b"A");
        assert_eq!(l.seen(), 14);
        assert_eq!(l.blockers(b"A", 14), [11, 13]);
        assert_eq!(l.blockers(b"A", 11), Vec::<u64>::new());
        assert_eq!(l.blockers(b"B", 12), Vec::<u64>::new());
        l.done_read("r11");
        assert_eq!(l.blockers(b"A", 14), [13]);
        l.set_floor(13);
        assert_eq!(l.blockers(b"A", 14), Vec::<u64>::new());
        assert_eq!(l.pending_len(), 1);
    }

    #[test]
    fn done_before_observed_is_remembered() {
        let mut l = LedgerState::new(0);
        // Another instance stored r1 and our identified follower saw it first.
        l.done_read("r1");
        l.observe(1, "r1", b"A");
        l.observe(2, "r2", b"A");
        assert_eq!(l.blockers(b"A", 2), Vec::<u64>::new());
        assert_eq!(l.pending_len(), 1);
    }

    #[test]
    fn floor_moves_seen_and_prunes() {
        let mut l = LedgerState::new(0);
        l.observe(3, "r3", b"A");
        l.observe_other(4);
        assert_eq!(l.seen(), 4);
        l.set_floor(100);
        assert_eq!(l.seen(), 100);
        assert_eq!(l.pending_len(), 0);
        l.set_floor(50);
        l.observe(60, "late", b"A");
        assert_eq!(l.pending_len(), 0, "reads at or below the floor are done");
    }

    #[tokio::test]
    async fn wait_seen_wakes_up() {
        let ledger = Ledger::detached(0);
        let l2 = ledger.clone();
        let waiter = tokio::spawn(async move { l2.wait_seen(3, Duration::from_secs(5)).await });
        ledger.observe(1, "a", b"A");
        ledger.observe_other(3);
        assert!(waiter.await.unwrap());
        assert!(!ledger.wait_seen(4, Duration::from_millis(20)).await);
    }
}
