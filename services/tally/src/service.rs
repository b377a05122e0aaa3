//! Wiring: TAGPOLL_IDENTIFIED → rules → TAGPOLL_VOTES, plus results snapshots.
//!
//! Exactly-once counting, in stream order:
//! - at start the counts are rebuilt from the vote stream alone, and this
//!   partition's last outcomes say where to resume ([`ResumePoint`]);
//! - identified reads are consumed with an ordered consumer from there, so
//!   every restart decides the same reads in the same order (a durable
//!   consumer would re-deliver unacknowledged reads after newer ones, and
//!   "first vote stands" depends on order);
//! - each outcome is published with `Nats-Msg-Id` = read id; publishes are
//!   pipelined, and any failure (or an ack saying another decision was
//!   stored) makes the service rebuild from the vote stream and resume;
//! - once an outcome is stored, it goes with the voter's name (which the
//!   vote stream never carries) to the tapping reader as core-NATS
//!   `ReaderFeedback`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, kv};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use tagpoll_bus::{BusError, config::EventConfig, heartbeat::Stats, publish};
use tagpoll_proto::{names, subjects, v1};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::{ballots::Ballots, config_log::ConfigLog, partition::Partition, rules};

/// How often every poll's snapshot is republished even without changes.
pub const RESULTS_REFRESH: Duration = Duration::from_secs(5);

/// Tunables.
#[derive(Debug, Clone)]
pub struct TallyOptions {
    /// Minimum time between two results snapshots of one poll: bursts coalesce.
    pub snapshot_interval: Duration,
    /// Which polls this instance owns.
    pub partition: Partition,
    /// Outcome publishes awaiting their ack at once.
    pub max_in_flight: usize,
}

impl Default for TallyOptions {
    fn default() -> Self {
        TallyOptions {
            snapshot_interval: Duration::from_millis(5),
            partition: Partition::default(),
            max_in_flight: 256,
        }
    }
}

/// State shared by the decision loop and the snapshot publisher.
struct Shared {
    ballots: Mutex<Ballots>,
    dirty: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl Shared {
    fn mark_dirty(&self, poll_id: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(poll_id.to_string());
        self.wake.notify_one();
    }

    fn ballots(&self) -> std::sync::MutexGuard<'_, Ballots> {
        self.ballots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts rebuilt from the vote stream, and where this partition resumes.
pub struct Rebuilt {
    pub ballots: Ballots,
    /// The identified read to resume after: see [`ResumePoint`].
    pub resume_after: u64,
    /// Outcomes that did not decode (logged, skipped).
    pub undecodable: u64,
}

/// Where a partition resumes deciding identified reads.
///
/// Outcomes are published pipelined, up to `window` awaiting their acks, so
/// one whose publish failed (a reconnect lost it) can sit below later ones
/// that were stored. Resuming after the highest `identified_seq` would skip
/// it for good; resuming after the lowest among the partition's last
/// `window` stored outcomes cannot, because fewer than `window` outcomes
/// can have been stored after it. Reads re-read from there that are already
/// decided are skipped by read id.
#[derive(Debug)]
pub struct ResumePoint {
    window: usize,
    recent: VecDeque<u64>,
}

impl ResumePoint {
    pub fn new(window: usize) -> Self {
        ResumePoint {
            window: window.max(1),
            recent: VecDeque::new(),
        }
    }

    /// One of this partition's stored outcomes, in vote stream order.
    pub fn observe(&mut self, identified_seq: u64) {
        self.recent.push_back(identified_seq);
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
    }

    /// The identified read to resume after (0: from the start).
    pub fn resume_after(&self) -> u64 {
        if self.recent.len() < self.window {
            return 0;
        }
        self.recent.iter().copied().min().unwrap_or(0)
    }
}

/// Whether a stored outcome counts for this partition's [`ResumePoint`].
/// Corrections do not: they are stored only with nothing else in flight
/// (and before their late read's own outcome), so they take no part in
/// the pipeline window the resume point covers. Counting them could move
/// the resume point past a late read whose own outcome failed.
pub fn marks_resume(partition: Partition, o: &v1::VoteOutcome) -> bool {
    partition.owns(&o.poll_id) && !o.correction
}

/// Replays the vote stream into fresh counts; `window` is the most outcomes
/// the partition keeps awaiting acks ([`TallyOptions::max_in_flight`]).
pub async fn rebuild(
    js: &jetstream::Context,
    partition: Partition,
    window: usize,
) -> Result<Rebuilt, BusError> {
    let mut r = Rebuilt {
        ballots: Ballots::default(),
        resume_after: 0,
        undecodable: 0,
    };
    let mut resume = ResumePoint::new(window);
    tagpoll_bus::replay::replay(js, names::STREAM_VOTES, None, |seq, subject, payload| {
        match tagpoll_bus::decode::<v1::VoteOutcome>(subject, payload) {
            Ok(o) => {
                if marks_resume(partition, &o) {
                    resume.observe(o.identified_seq);
                }
                r.ballots.apply(&o, seq);
            }
            Err(e) => {
                r.undecodable += 1;
                tracing::error!(error = %e, seq, "skipping undecodable outcome in the vote stream");
            }
        }
    })
    .await?;
    r.resume_after = resume.resume_after();
    tracing::info!(
        votes_seq = r.ballots.last_seq,
        resume_after = r.resume_after,
        undecodable = r.undecodable,
        "counts rebuilt from the vote stream"
    );
    Ok(r)
}

/// Runs the tally until shut down, rebuilding after any bus failure.
pub async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    results_kv: kv::Store,
    config: watch::Receiver<Arc<EventConfig>>,
    options: TallyOptions,
    stats: Arc<Stats>,
) -> Result<(), BusError> {
    let shared = Arc::new(Shared {
        ballots: Mutex::new(Ballots::default()),
        dirty: Mutex::new(BTreeSet::new()),
        wake: Notify::new(),
    });
    let log = loop {
        let started = tokio::time::timeout(Duration::from_secs(60), ConfigLog::start(&js))
            .await
            .unwrap_or_else(|_| {
                Err(BusError::js(
                    "loading the config history",
                    "not done within 60 s",
                ))
            });
        match started {
            Ok(log) => break log,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the config history yet; retrying");
                stats.error(&e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let watcher = tokio::spawn(mark_config_changes(
        config.clone(),
        shared.clone(),
        options.partition,
    ));
    // Started after the first rebuild: before it, the counts are empty, and a
    // snapshot of them would show every poll at zero on the projector.
    let mut publisher = None;
    let mut backoff = Duration::from_millis(200);
    let result = loop {
        let rebuilt = match rebuild(&js, options.partition, options.max_in_flight).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild yet; retrying");
                stats.error(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let resume_after = rebuilt.resume_after;
        *shared.ballots() = rebuilt.ballots;
        if publisher.is_none() {
            publisher = Some(tokio::spawn(publish_snapshots(
                client.clone(),
                js.clone(),
                results_kv.clone(),
                config.clone(),
                shared.clone(),
                options.clone(),
            )));
        }
        for poll in config.borrow().polls.keys() {
            if options.partition.owns(poll) {
                shared.mark_dirty(poll);
            }
        }
        match decide_loop(&js, &log, &shared, &options, &stats, resume_after).await {
            Ok(()) => break Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "tally interrupted; rebuilding from the vote stream");
                stats.error(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    watcher.abort();
    if let Some(p) = publisher {
        p.abort();
    }
    result
}

/// An outcome whose publish ack has come back (or failed).
struct Acked {
    outcome: v1::VoteOutcome,
    /// The voter's name, for the reader's feedback only (never stored).
    display_name: String,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
}

/// Outcomes on their way into the vote stream, settled in publish order.
/// Each entry owns its ack future, so waiting for the front one can be
/// abandoned (a `select!` that takes the next read instead) and resumed
/// without losing it.
type InFlight = FuturesOrdered<BoxFuture<'static, Acked>>;

/// Most identified reads held while the config history is proved complete.
const MAX_WAITING: usize = 4096;

/// A read waiting until the config history is known to cover its moment.
struct Waiting {
    seq: u64,
    read: v1::IdentifiedRead,
    moment: SystemTime,
}

/// What a pending barrier proves: the history is complete up to this
/// server time.
type Barrier = BoxFuture<'static, Result<SystemTime, BusError>>;

async fn wait_barrier(b: &mut Option<Barrier>) -> Result<SystemTime, BusError> {
    match b {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn decide_loop(
    js: &jetstream::Context,
    log: &ConfigLog,
    shared: &Shared,
    options: &TallyOptions,
    stats: &Stats,
    resume_after: u64,
) -> Result<(), BusError> {
    let stream = js
        .get_stream(names::STREAM_IDENTIFIED)
        .await
        .map_err(|e| BusError::js("looking up identified stream", e))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: resume_after + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js("ordered consumer on identified reads", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::js("consuming identified reads", e))?;
    tracing::info!(partition = %options.partition, from = resume_after + 1, "deciding identified reads");
    let mut in_flight: InFlight = FuturesOrdered::new();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    // Server time up to which every config change is known.
    let mut complete_until = SystemTime::UNIX_EPOCH;
    let mut barrier: Option<Barrier> = None;
    // The latest time TAGPOLL_IDENTIFIED stored a read we have received.
    let mut stored_up_to = SystemTime::UNIX_EPOCH;
    loop {
        while waiting.front().is_some_and(|w| w.moment <= complete_until) {
            let Some(w) = waiting.pop_front() else { break };
            decide_one(js, log, shared, options, stats, &mut in_flight, w).await?;
            while in_flight.len() >= options.max_in_flight {
                let acked = in_flight.next().await.expect("non-empty");
                settle(js, shared, stats, acked).await?;
            }
        }
        if !waiting.is_empty() && barrier.is_none() {
            // Every read waiting was stored (server clock) at or before
            // `stored_up_to`, and its moment is no later than that; the
            // barrier's question is asked after they arrived, so every config
            // change stored before them is at or below the sequence it finds.
            let covers = stored_up_to;
            let log = log.clone();
            barrier = Some(async move { log.barrier().await.map(|()| covers) }.boxed());
        }
        stats
            .in_flight
            .store(in_flight.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Every branch is cancel-safe: whichever loses keeps its item.
        tokio::select! {
            biased;
            proved = wait_barrier(&mut barrier) => {
                barrier = None;
                complete_until = complete_until.max(proved?);
            }
            acked = in_flight.next(), if !in_flight.is_empty() => {
                settle(js, shared, stats, acked.expect("non-empty")).await?;
            }
            next = messages.next(), if waiting.len() < MAX_WAITING => {
                let Some(msg) = next else { return Ok(()) };
                let msg = msg.map_err(|e| BusError::js("reading identified reads", e))?;
                let (seq, pending, stored) = {
                    let info = msg
                        .info()
                        .map_err(|e| BusError::js("identified read metadata", e))?;
                    (info.stream_sequence, info.pending, SystemTime::from(info.published))
                };
                stored_up_to = stored_up_to.max(stored);
                stats.lag.store(pending, std::sync::atomic::Ordering::Relaxed);
                let read: v1::IdentifiedRead = match tagpoll_bus::decode(&msg.subject, &msg.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, seq, "skipping undecodable identified read");
                        stats.error(&e);
                        continue;
                    }
                };
                // Reads identified before tap moments existed: the time this
                // stream stored them (never the device's clock). A moment
                // after that is impossible (identity bounds it by the time
                // TAGPOLL_READS stored the read): clamp it, so no read can
                // wait for a future that the barrier never proves.
                let moment = match tagpoll_proto::to_system_time(read.tapped_at.as_ref()) {
                    Some(t) if t > stored => {
                        stats.count("moment_after_stored");
                        stored
                    }
                    Some(t) => t,
                    None => stored,
                };
                waiting.push_back(Waiting { seq, read, moment });
            }
        }
    }
}

/// Decides one read at its tap moment and starts storing the outcome;
/// corrections it causes are stored first, each awaited.
async fn decide_one(
    js: &jetstream::Context,
    log: &ConfigLog,
    shared: &Shared,
    options: &TallyOptions,
    stats: &Stats,
    in_flight: &mut InFlight,
    w: Waiting,
) -> Result<(), BusError> {
    let span = tracing::info_span!("tally", read_id = %w.read.read_id, reader = %w.read.reader_id);
    if shared.ballots().is_decided(&w.read.read_id) {
        tracing::debug!(parent: &span, "already decided");
        return Ok(());
    }
    let as_of = log.lock().as_of(w.moment);
    let placement = rules::decide_at(
        &as_of.config,
        &shared.ballots(),
        &w.read,
        w.moment,
        |poll_id, m| log.lock().as_of(m).config.polls.get(poll_id).cloned(),
    );
    let rules::Placement {
        mut outcome,
        mut corrections,
    } = placement;
    if !options.partition.owns(&outcome.poll_id) {
        return Ok(());
    }
    if as_of.before_history {
        stats.count("moment_before_history");
        tracing::warn!(parent: &span, moment = ?w.moment,
            "tap moment older than the kept config history: decided against the oldest kept state");
    }
    let partition = options.partition.to_string();
    outcome.identified_seq = w.seq;
    outcome.partition = partition.clone();
    if !corrections.is_empty() {
        // Stored before the late tap's own outcome, each awaited: if any of
        // them fails, the late read is still undecided and is decided again
        // (against what was stored) after the rebuild.
        while let Some(acked) = in_flight.next().await {
            settle(js, shared, stats, acked).await?;
        }
        for c in &mut corrections {
            c.identified_seq = w.seq;
            c.partition = partition.clone();
            shared.ballots().apply(c, 0);
            // The decision is part of the id: the same correction sent again
            // is stored once, a different one (never expected) is stored
            // as a newer outcome instead of looking like a conflict.
            let msg_id = format!(
                "{}~{}~{}~{}",
                c.read_id, c.corrected_by, c.kind, c.previous_answer_id
            );
            let ack = publish::send_with_id(
                js,
                subjects::outcome(&c.poll_id, &c.reader_id),
                &msg_id,
                &c.read_id,
                c.encode_to_vec().into(),
            )
            .await?;
            tracing::info!(parent: &span, corrected = %c.read_id, kind = ?c.kind(), "correcting a later tap");
            stats.count("corrections");
            let acked = Acked {
                outcome: c.clone(),
                display_name: String::new(),
                ack: ack.await,
            };
            settle(js, shared, stats, acked).await?;
        }
    }
    // Applied now so the next read sees it. A snapshot taken before its
    // ack may already include it (as before tap moments); the dirty mark
    // that triggers one waits for the ack.
    shared.ballots().apply(&outcome, 0);
    if tagpoll_proto::to_system_time(w.read.stored_at.as_ref())
        .and_then(|s| s.duration_since(w.moment).ok())
        .is_some_and(|held| held > Duration::from_secs(2))
    {
        stats.count("late_taps");
    }
    let subject = subjects::outcome(&outcome.poll_id, &outcome.reader_id);
    let ack = publish::send_for_read(
        js,
        subject,
        &outcome.read_id,
        outcome.encode_to_vec().into(),
    )
    .await?;
    tracing::debug!(parent: &span, seq = w.seq, kind = ?outcome.kind(), "decided");
    let display_name = match w.read.identity {
        Some(v1::identified_read::Identity::Voter(v)) => v.display_name,
        _ => String::new(),
    };
    in_flight.push_back(
        async move {
            Acked {
                outcome,
                display_name,
                ack: ack.await,
            }
        }
        .boxed(),
    );
    Ok(())
}

/// Waits for one outcome's ack. A duplicate ack means an outcome for this
/// read was stored before (another partition during a remap, or our own
/// earlier attempt); if it is not the same decision, counts must be rebuilt.
async fn settle(
    js: &jetstream::Context,
    shared: &Shared,
    stats: &Stats,
    f: Acked,
) -> Result<(), BusError> {
    // Instrumented, never `span.enter()`: an entered guard held across an
    // await can leave the span on another thread (tracing-subscriber panics).
    let span =
        tracing::info_span!("tally", read_id = %f.outcome.read_id, reader = %f.outcome.reader_id);
    settle_in_span(js, shared, stats, f).instrument(span).await
}

async fn settle_in_span(
    js: &jetstream::Context,
    shared: &Shared,
    stats: &Stats,
    f: Acked,
) -> Result<(), BusError> {
    let ack = f
        .ack
        .map_err(|e| BusError::js(format!("ack of outcome {}", f.outcome.read_id), e))?;
    if ack.duplicate {
        let stored = js
            .get_stream(names::STREAM_VOTES)
            .await
            .map_err(|e| BusError::js("looking up vote stream", e))?
            .get_raw_message(ack.sequence)
            .await
            .map_err(|e| BusError::js("reading a stored outcome", e))?;
        let stored: v1::VoteOutcome = tagpoll_bus::decode(&stored.subject, &stored.payload)?;
        if !same_decision(&stored, &f.outcome) {
            return Err(BusError::js(
                "reconciling a duplicate outcome",
                format!("read {} was already decided differently", f.outcome.read_id),
            ));
        }
    }
    if f.outcome.correction {
        // A correction changes what an earlier tap meant; the voter was told
        // about the late tap itself. No feedback.
        {
            let mut ballots = shared.ballots();
            ballots.last_seq = ballots.last_seq.max(ack.sequence);
        }
        shared.mark_dirty(&f.outcome.poll_id);
        return Ok(());
    }
    // Only now, so a reader never signals a vote that is not stored, and
    // before the snapshot is due, so the XMPP bridge (personal mode) has the
    // name before the results that release the vote. Core NATS, at most
    // once: a lost feedback costs a blink, not a vote.
    let subject = subjects::feedback(&f.outcome.device_id, &f.outcome.reader_id);
    let feedback = v1::ReaderFeedback {
        outcome: Some(f.outcome),
        display_name: f.display_name,
    };
    if let Err(e) = js
        .client()
        .publish(subject, feedback.encode_to_vec().into())
        .await
    {
        tracing::warn!(error = %e, "cannot send reader feedback");
    }
    let outcome = feedback.outcome.as_ref().expect("set above");
    {
        let mut ballots = shared.ballots();
        ballots.last_seq = ballots.last_seq.max(ack.sequence);
    }
    if !outcome.poll_id.is_empty() {
        shared.mark_dirty(&outcome.poll_id);
    }
    stats.handled_one();
    tracing::info!(
        kind = ?outcome.kind(),
        poll = %outcome.poll_id,
        answer = %outcome.answer_id,
        votes_seq = ack.sequence,
        "outcome stored"
    );
    Ok(())
}

fn same_decision(a: &v1::VoteOutcome, b: &v1::VoteOutcome) -> bool {
    (
        a.kind,
        a.poll_id.as_str(),
        a.answer_id.as_str(),
        a.previous_answer_id.as_str(),
        a.voter_id.as_str(),
        a.run,
        a.correction,
        a.reject_reason,
    ) == (
        b.kind,
        b.poll_id.as_str(),
        b.answer_id.as_str(),
        b.previous_answer_id.as_str(),
        b.voter_id.as_str(),
        b.run,
        b.correction,
        b.reject_reason,
    )
}

async fn mark_config_changes(
    mut config: watch::Receiver<Arc<EventConfig>>,
    shared: Arc<Shared>,
    partition: Partition,
) {
    while config.changed().await.is_ok() {
        let ids: Vec<String> = config.borrow_and_update().polls.keys().cloned().collect();
        for id in ids.iter().filter(|id| partition.owns(id)) {
            shared.mark_dirty(id);
        }
    }
}

async fn publish_snapshots(
    client: async_nats::Client,
    js: jetstream::Context,
    results_kv: kv::Store,
    config: watch::Receiver<Arc<EventConfig>>,
    shared: Arc<Shared>,
    options: TallyOptions,
) {
    // Results live in a memory bucket: a restarted server has none until we
    // republish, so every poll is refreshed now and then even when idle.
    let mut refresh = tokio::time::interval(RESULTS_REFRESH);
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = refresh.tick() => {
                for id in config.borrow().polls.keys().filter(|id| options.partition.owns(id)) {
                    shared.dirty.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
                }
            }
        }
        let dirty: Vec<String> =
            std::mem::take(&mut *shared.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        let cfg = config.borrow().clone();
        for poll_id in dirty {
            let Some(poll) = cfg.polls.get(&poll_id) else {
                continue;
            };
            if !options.partition.owns(&poll_id) {
                continue;
            }
            let results = shared.ballots().results(poll);
            let bytes: bytes::Bytes = results.encode_to_vec().into();
            if let Err(e) = results_kv
                .put(names::results_key(&poll_id), bytes.clone())
                .await
            {
                tracing::warn!(error = %e, poll = %poll_id, "could not store results; will retry");
                shared.mark_dirty(&poll_id);
                // The memory bucket is gone if the server restarted: put it back.
                let _ = tagpoll_bus::topology::ensure_memory_stores(&js).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = client.publish(subjects::results(&poll_id), bytes).await;
        }
        tokio::time::sleep(options.snapshot_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::ResumePoint;

    #[test]
    fn corrections_do_not_move_the_resume_point_past_their_late_read() {
        use tagpoll_proto::v1;
        // Window 3: late read 10 stored two corrections, then its own
        // outcome failed while 11 and 12 were stored.
        let p = super::Partition::default();
        let outcome = |seq: u64, correction: bool| v1::VoteOutcome {
            poll_id: "p".into(),
            identified_seq: seq,
            correction,
            ..Default::default()
        };
        let mut r = ResumePoint::new(3);
        for o in [
            outcome(7, false),
            outcome(8, false),
            outcome(10, true),
            outcome(10, true),
            outcome(11, false),
            outcome(12, false),
        ] {
            if super::marks_resume(p, &o) {
                r.observe(o.identified_seq);
            }
        }
        assert!(r.resume_after() < 10, "resumes after {}", r.resume_after());
    }

    #[test]
    fn resume_point_reaches_below_a_failed_pipelined_outcome() {
        // Window 3: outcomes for identified reads 1..=5 were published; 4's
        // publish failed, 5 was stored. Resuming after the highest (5) would
        // lose 4; the resume point must be below it.
        let mut r = ResumePoint::new(3);
        for seq in [1, 2, 3, 5] {
            r.observe(seq);
        }
        assert_eq!(r.resume_after(), 2);
        assert!(r.resume_after() < 4);
        // Fewer stored outcomes than the window: from the start.
        let mut few = ResumePoint::new(3);
        few.observe(7);
        few.observe(9);
        assert_eq!(few.resume_after(), 0);
        assert_eq!(ResumePoint::new(3).resume_after(), 0);
    }
}
