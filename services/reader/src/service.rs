//! Wiring: reader sources → spool → JetStream, plus feedback and heartbeats.
//!
//! A tap is appended (fsync'd) to the spool before anything else happens,
//! and leaves it only when JetStream acknowledged its publish. Publishing is
//! in spool order; on any failure the same record is retried with backoff,
//! and `Nats-Msg-Id` = read id makes a re-send after a lost ack harmless.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prost::Message;
use tagpoll_proto::subjects;
use tagpoll_proto::v1::{self, TagTechnology};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::{DeviceConfig, ReaderPath};
use crate::protocol::Feedback;
use crate::serial::{self, SerialEvent};
use crate::spool::{Spool, SpoolError, SpoolLimits, SpoolRecord};

/// A tap before it has a read id.
#[derive(Debug, Clone)]
pub struct NewTap {
    pub reader_id: String,
    pub uid: Vec<u8>,
    pub technology: TagTechnology,
    /// A read id chosen by the source (planned simulations); else a fresh UUIDv7.
    pub read_id: Option<String>,
}

/// Errors that stop the reader service.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("NATS: {0}")]
    Bus(#[from] tagpoll_bus::BusError),
    /// A task that should run forever ended (a bug, or a panic).
    #[error("internal task ended: {0}")]
    TaskEnded(String),
}

/// Live state reported in heartbeats.
#[derive(Default)]
pub struct DeviceState {
    pub readers: BTreeMap<String, v1::ReaderHealth>,
    pub spool_depth: u64,
    /// The spool is over its warning threshold (80% of its size limit).
    pub spool_warning: bool,
    /// A publish is awaiting its JetStream ack.
    pub publishing: bool,
    pub frame_errors: u64,
    pub last_tap_at: Option<SystemTime>,
    /// The last publish attempt failed (logged once per outage).
    pub publish_failing: bool,
    pub last_error: String,
}

type Shared = Arc<Mutex<DeviceState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, DeviceState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceState {
    /// Records the spool's depth and alarm state, logging alarm changes.
    fn note_spool(&mut self, depth: u64, warning: bool) {
        self.spool_depth = depth;
        if warning && !self.spool_warning {
            tracing::warn!(depth, "spool alarm: over 80% full; is NATS reachable?");
        } else if !warning && self.spool_warning {
            tracing::info!(depth, "spool alarm over: back under 80% full");
        }
        self.spool_warning = warning;
    }

    /// `last_error` for the heartbeat, led by the spool alarm while it is on.
    pub fn health_error(&self) -> String {
        if !self.spool_warning {
            return self.last_error.clone();
        }
        let alarm = format!("spool over 80% full ({} taps waiting)", self.spool_depth);
        if self.last_error.is_empty() {
            alarm
        } else {
            format!("{alarm}; {}", self.last_error)
        }
    }
}

/// Runs the device until a shutdown signal or a fatal error.
pub async fn run(
    cfg: DeviceConfig,
    spool_dir: PathBuf,
    client: async_nats::Client,
    sim: Option<crate::sim::SimOptions>,
) -> Result<(), ReaderError> {
    let limits = SpoolLimits {
        max_bytes: cfg.spool_max_bytes,
        warn_ratio: 0.8,
    };
    let (spool, pending) = {
        let dir = spool_dir.clone();
        tokio::task::spawn_blocking(move || Spool::open(&dir, limits))
            .await
            .expect("spool open task panicked")?
    };
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "re-sending taps left in the spool");
    }
    let warning = spool.is_warning();
    let spool = Arc::new(Mutex::new(spool));
    let state: Shared = Arc::new(Mutex::new(DeviceState::default()));
    lock(&state).note_spool(pending.len() as u64, warning);
    let js = async_nats::jetstream::new(client.clone());
    // Not awaited: a reader box must take taps into its spool even when it
    // starts while the network or NATS is down.
    tokio::spawn(ensure_topology(js.clone()));
    for spec in &cfg.readers {
        if crate::protocol::poll_command(&spec.protocol).is_some()
            && cfg.quiet <= 2 * serial::POLL_INTERVAL
        {
            tracing::warn!(reader = %spec.id, quiet_ms = cfg.quiet.as_millis() as u64,
                "quiet time is not well above the reader's poll interval: a resting tag may tap twice");
        }
    }

    let (taps_tx, taps_rx) = mpsc::channel::<NewTap>(4096);
    let (spooled_tx, spooled_rx) = mpsc::unbounded_channel::<SpoolRecord>();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(append_loop(
        cfg.device_id.clone(),
        spool.clone(),
        state.clone(),
        taps_rx,
        spooled_tx,
    ));
    tasks.spawn(publish_loop(
        js.clone(),
        spool.clone(),
        state.clone(),
        pending,
        spooled_rx,
    ));

    let mut feedback_senders: BTreeMap<String, mpsc::Sender<Feedback>> = BTreeMap::new();
    for spec in &cfg.readers {
        let (fb_tx, fb_rx) = mpsc::channel(16);
        feedback_senders.insert(spec.id.clone(), fb_tx);
        let path = match &spec.path {
            ReaderPath::Path(p) => p.display().to_string(),
            // Resolved by the serial task at every (re-)open.
            ReaderPath::UsbSerial(s) => format!("{}{s}", serial::USB_SERIAL_PREFIX),
        };
        lock(&state).readers.insert(
            spec.id.clone(),
            v1::ReaderHealth {
                reader_id: spec.id.clone(),
                state: "disconnected".into(),
                protocol: spec.protocol.to_string(),
                path: path.clone(),
                ..Default::default()
            },
        );
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let port = serial::ReaderPort {
            reader_id: spec.id.clone(),
            path,
            protocol: spec.protocol,
            baud: spec.baud,
        };
        tasks.spawn(serial::run_reader(port, ev_tx, fb_rx, cfg.quiet));
        tasks.spawn(serial_events(
            spec.protocol.technology(),
            ev_rx,
            taps_tx.clone(),
            state.clone(),
        ));
    }

    if let Some(sim) = sim {
        let buckets = tagpoll_bus::topology::ensure(&js).await?;
        let config = tagpoll_bus::config::follow(&js, buckets.config).await?;
        tasks.spawn(crate::sim::run(
            sim,
            cfg.device_id.clone(),
            spool_dir.clone(),
            config,
            taps_tx.clone(),
        ));
    }
    drop(taps_tx);

    if !cfg.readers.is_empty() {
        tasks.spawn(feedback_loop(
            client.clone(),
            cfg.device_id.clone(),
            feedback_senders,
            cfg.feedback_command.clone(),
        ));
    }
    tasks.spawn(heartbeat_loop(client, cfg.device_id.clone(), state.clone()));

    let result = tokio::select! {
        _ = tagpoll_bus::shutdown_signal() => {
            tracing::info!("shutting down; unsent taps stay in the spool");
            Ok(())
        }
        Some(r) = tasks.join_next() => {
            let why = match r {
                Ok(()) => "a task returned".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(error = %why, "a reader service task ended; exiting so the supervisor restarts us");
            Err(ReaderError::TaskEnded(why))
        }
    };
    tasks.abort_all();
    result
}

/// Checks that stream TAGPOLL_READS exists, retrying until NATS answers;
/// creates the whole topology only when it is missing (a fresh development
/// server). Never fatal and never blocking the taps: a reader device only
/// needs to publish, and its least-privilege NATS user may look up the
/// streams but not create them (deploy/nats/add-device.sh).
async fn ensure_topology(js: async_nats::jetstream::Context) {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    let mut wait = Duration::from_secs(1);
    let mut warned = false;
    loop {
        let looked_up = tokio::time::timeout(
            Duration::from_secs(10),
            js.get_stream(tagpoll_proto::names::STREAM_READS),
        )
        .await;
        let problem = match looked_up {
            Ok(Ok(_)) => return,
            Ok(Err(e))
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    tagpoll_bus::topology::ensure(&js),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        tracing::info!("created the JetStream streams");
                        return;
                    }
                    Ok(Err(e)) => format!(
                        "stream {} is missing and: {e}",
                        tagpoll_proto::names::STREAM_READS
                    ),
                    Err(_) => "creating the streams timed out".to_string(),
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 10 s".to_string(),
        };
        if warned {
            tracing::debug!(error = %problem, "still cannot look up the tap stream");
        } else {
            tracing::warn!(error = %problem, "cannot look up the tap stream yet; taps wait in the spool");
            warned = true;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Gives each tap a read id and makes it durable. The "tap" log line (with
/// the read id and spool seq) is written once the tap is fsync'd in the spool:
/// from then on it is accepted and will reach JetStream exactly once.
async fn append_loop(
    device_id: String,
    spool: Arc<Mutex<Spool>>,
    state: Shared,
    mut taps: mpsc::Receiver<NewTap>,
    spooled: mpsc::UnboundedSender<SpoolRecord>,
) {
    // Taps that did not fit in a full spool wait here, in order; never dropped
    // (but not durable either: the spool alarm and the log say so).
    let mut overflow: VecDeque<v1::TagRead> = VecDeque::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        let tap = tokio::select! {
            t = taps.recv() => match t { Some(t) => Some(t), None => return },
            _ = retry.tick() => None,
        };
        if let Some(tap) = tap {
            let read = v1::TagRead {
                read_id: tap
                    .read_id
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                device_id: device_id.clone(),
                reader_id: tap.reader_id.clone(),
                tag_uid: tap.uid,
                technology: tap.technology as i32,
                read_at: Some(tagpoll_proto::now()),
                device_seq: 0,
            };
            {
                let mut st = lock(&state);
                st.last_tap_at = Some(SystemTime::now());
                if let Some(r) = st.readers.get_mut(&read.reader_id) {
                    r.taps += 1;
                    r.last_tap_at = read.read_at;
                }
            }
            overflow.push_back(read);
        }
        while let Some(mut read) = overflow.front().cloned() {
            let s = spool.clone();
            let appended = tokio::task::spawn_blocking(move || {
                let mut s = lock_spool(&s);
                // The spool seq is the device seq: increasing across restarts.
                read.device_seq = s.next_seq();
                let payload = read.encode_to_vec();
                let r = s.append(&payload).map(|seq| SpoolRecord { seq, payload });
                (r, read, s.depth(), s.is_warning())
            })
            .await;
            let Ok((result, read, depth, warning)) = appended else {
                return;
            };
            lock(&state).note_spool(depth, warning);
            match result {
                Ok(record) => {
                    overflow.pop_front();
                    tracing::info!(read_id = %read.read_id, reader = %read.reader_id, seq = record.seq, "tap");
                    if spooled.send(record).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, waiting = overflow.len(), "cannot spool taps; holding them in memory");
                    lock(&state).last_error = e.to_string();
                    break;
                }
            }
        }
    }
}

fn lock_spool(s: &Arc<Mutex<Spool>>) -> std::sync::MutexGuard<'_, Spool> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes spooled taps in order, each until JetStream acknowledges it.
async fn publish_loop(
    js: async_nats::jetstream::Context,
    spool: Arc<Mutex<Spool>>,
    state: Shared,
    pending: Vec<SpoolRecord>,
    mut spooled: mpsc::UnboundedReceiver<SpoolRecord>,
) {
    let mut queue: VecDeque<SpoolRecord> = pending.into();
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Ok(r) = spooled.try_recv() {
            queue.push_back(r);
        }
        let Some(record) = queue.front() else {
            match spooled.recv().await {
                Some(r) => queue.push_back(r),
                None => return,
            }
            continue;
        };
        let seq = record.seq;
        let read = match v1::TagRead::decode(record.payload.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(seq, error = %e, "spool record is not a tap; dropping it");
                queue.pop_front();
                let s = spool.clone();
                let _ = tokio::task::spawn_blocking(move || lock_spool(&s).ack(seq)).await;
                continue;
            }
        };
        let span =
            tracing::info_span!("publish", read_id = %read.read_id, reader = %read.reader_id);
        let subject = subjects::read(&read.device_id, &read.reader_id);
        lock(&state).publishing = true;
        let published = tokio::time::timeout(
            Duration::from_secs(10),
            tagpoll_bus::publish::publish_for_read(
                &js,
                subject,
                &read.read_id,
                record.payload.clone().into(),
            ),
        )
        .instrument(span.clone())
        .await;
        lock(&state).publishing = false;
        match published {
            Ok(Ok((stream_seq, duplicate))) => {
                // `parent:` rather than `span.enter()`: an entered guard held
                // across the awaits below can leave the span on another
                // thread, and tracing-subscriber then panics.
                tracing::debug!(parent: &span, stream_seq, duplicate, "tap stored in JetStream");
                queue.pop_front();
                let s = spool.clone();
                let acked = tokio::task::spawn_blocking(move || {
                    let mut s = lock_spool(&s);
                    s.ack(seq).map(|_| (s.depth(), s.is_warning()))
                })
                .await;
                let mut st = lock(&state);
                if st.publish_failing {
                    tracing::info!(parent: &span, depth = queue.len(), "publishing taps again");
                }
                st.publish_failing = false;
                match acked {
                    Ok(Ok((depth, warning))) => st.note_spool(depth, warning),
                    Ok(Err(e)) => {
                        tracing::error!(parent: &span, error = %e, "could not record the ack in the spool; the tap may be re-sent (harmless)");
                        st.last_error = e.to_string();
                    }
                    Err(_) => return,
                }
                backoff = Duration::from_millis(100);
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no ack within 10 s".into(),
                };
                {
                    let mut st = lock(&state);
                    if !st.publish_failing {
                        tracing::warn!(error = %why, depth = queue.len(), "cannot publish taps; they wait in the spool");
                    }
                    st.publish_failing = true;
                    st.last_error = why;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Turns serial events into taps and reader health.
async fn serial_events(
    technology: TagTechnology,
    mut events: mpsc::Receiver<SerialEvent>,
    taps: mpsc::Sender<NewTap>,
    state: Shared,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            SerialEvent::Connected { reader_id } => {
                tracing::info!(reader = %reader_id, "reader connected");
                if let Some(r) = lock(&state).readers.get_mut(&reader_id) {
                    r.state = "connected".into();
                }
            }
            SerialEvent::Disconnected { reader_id, error } => {
                tracing::warn!(reader = %reader_id, %error, "reader disconnected");
                if let Some(r) = lock(&state).readers.get_mut(&reader_id) {
                    r.state = "disconnected".into();
                }
            }
            SerialEvent::FrameError {
                reader_id,
                reason,
                bytes,
            } => {
                tracing::warn!(reader = %reader_id, %reason, bytes = %hex::encode(&bytes), "bad frame");
                let mut st = lock(&state);
                st.frame_errors += 1;
                if let Some(r) = st.readers.get_mut(&reader_id) {
                    r.frame_errors += 1;
                }
            }
            SerialEvent::Tap { reader_id, uid } => {
                if taps
                    .send(NewTap {
                        reader_id,
                        uid,
                        technology,
                        read_id: None,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Maps an outcome to the signal a reader gives.
pub fn feedback_for(kind: v1::OutcomeKind) -> Feedback {
    match kind {
        v1::OutcomeKind::Accepted => Feedback::Accepted,
        v1::OutcomeKind::Changed => Feedback::Changed,
        v1::OutcomeKind::Duplicate => Feedback::Duplicate,
        v1::OutcomeKind::Rejected | v1::OutcomeKind::Unspecified => Feedback::Rejected,
    }
}

/// The lower-case name of an outcome kind for the feedback hook
/// (`accepted`, `changed`, `duplicate`, `rejected`).
pub fn outcome_name(kind: v1::OutcomeKind) -> &'static str {
    match feedback_for(kind) {
        Feedback::Accepted => "accepted",
        Feedback::Changed => "changed",
        Feedback::Duplicate => "duplicate",
        Feedback::Rejected => "rejected",
    }
}

/// The lower-case name of a reject reason (`unknown_tag`, `poll_closed`,
/// ...), empty when there is none.
pub fn reject_reason_name(reason: v1::RejectReason) -> String {
    match reason {
        v1::RejectReason::Unspecified => String::new(),
        r => r
            .as_str_name()
            .trim_start_matches("REJECT_REASON_")
            .to_ascii_lowercase(),
    }
}

/// The environment the feedback hook runs with, for one tap on this device.
pub fn feedback_env(device_id: &str, feedback: &v1::ReaderFeedback) -> Vec<(&'static str, String)> {
    let outcome = feedback.outcome.clone().unwrap_or_default();
    vec![
        ("TAGPOLL_DEVICE", device_id.to_string()),
        ("TAGPOLL_OUTCOME", outcome_name(outcome.kind()).to_string()),
        (
            "TAGPOLL_REASON",
            reject_reason_name(outcome.reject_reason()),
        ),
        ("TAGPOLL_READER", outcome.reader_id),
        ("TAGPOLL_POLL", outcome.poll_id),
        ("TAGPOLL_ANSWER", outcome.answer_id),
        ("TAGPOLL_PREVIOUS_ANSWER", outcome.previous_answer_id),
        ("TAGPOLL_READ_ID", outcome.read_id),
        ("TAGPOLL_MESSAGE", outcome.message),
        ("TAGPOLL_HINT", outcome.hint),
        ("TAGPOLL_VOTER_NAME", feedback.display_name.clone()),
    ]
}

/// How long the feedback hook may run before it is killed.
pub const FEEDBACK_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens to the tally's feedback for taps on this device and signals it
/// to the voter: the reader's own outputs where the protocol has them
/// (SM130), and the feedback hook (`sh -c COMMAND`, see [`feedback_env`])
/// for every tap.
async fn feedback_loop(
    client: async_nats::Client,
    device_id: String,
    readers: BTreeMap<String, mpsc::Sender<Feedback>>,
    command: Option<String>,
) {
    let mut sub = match client
        .subscribe(subjects::feedback_for_device(&device_id))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // Keep the service up for its main job, taking taps.
            tracing::error!(error = %e, "cannot subscribe to feedback; reader feedback is off");
            return std::future::pending::<()>().await;
        }
    };
    while let Some(msg) = sub.next().await {
        let feedback = match v1::ReaderFeedback::decode(msg.payload.as_ref()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "feedback is not a ReaderFeedback");
                continue;
            }
        };
        let Some(outcome) = &feedback.outcome else {
            tracing::warn!(subject = %msg.subject, "feedback without an outcome");
            continue;
        };
        let fb = feedback_for(outcome.kind());
        tracing::debug!(reader = %outcome.reader_id, read_id = %outcome.read_id, ?fb, "feedback");
        if let Some(tx) = readers.get(&outcome.reader_id) {
            let _ = tx.try_send(fb);
        }
        if let Some(cmd) = &command {
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .envs(feedback_env(&device_id, &feedback))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(FEEDBACK_COMMAND_TIMEOUT, status).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => tracing::warn!(%s, "feedback command failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "feedback command could not run"),
                Err(_) => tracing::warn!("feedback command took over 5 s; killed"),
            }
        }
    }
    tracing::error!("feedback subscription ended; reader feedback is off");
    std::future::pending::<()>().await;
}

async fn heartbeat_loop(client: async_nats::Client, device_id: String, state: Shared) {
    let instance = tagpoll_bus::heartbeat::instance_id();
    let started = SystemTime::now();
    let subject = subjects::heartbeat("device", &device_id, &instance);
    let mut tick = tokio::time::interval(tagpoll_bus::heartbeat::INTERVAL);
    let (metrics, latest) = tokio::sync::watch::channel(v1::Heartbeat::default());
    tagpoll_bus::metrics::serve_from_env(latest);
    loop {
        tick.tick().await;
        let hb = {
            let st = lock(&state);
            v1::Heartbeat {
                kind: "device".into(),
                name: device_id.clone(),
                instance: instance.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: Some(tagpoll_proto::timestamp(started)),
                sent_at: Some(tagpoll_proto::now()),
                interval_secs: tagpoll_bus::heartbeat::INTERVAL.as_secs() as u32,
                nats_connected: client.connection_state()
                    == async_nats::connection::State::Connected,
                readers: st.readers.values().cloned().collect(),
                spool_depth: st.spool_depth,
                frame_errors: st.frame_errors,
                last_tap_at: st.last_tap_at.map(tagpoll_proto::timestamp),
                last_error: st.health_error(),
                handled: st.readers.values().map(|r| r.taps).sum(),
                // Taps waiting in the spool are this device's backlog.
                lag: st.spool_depth,
                in_flight: u64::from(st.publishing),
                counters: Default::default(),
                spool_quarantined: 0,
            }
        };
        metrics.send_replace(hb.clone());
        // Bounded: while disconnected the client's queue can fill up.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            client.publish(subject.clone(), hb.encode_to_vec().into()),
        )
        .await;
    }
}
