//! Wiring: TAGPOLL_IDENTIFIED → rules → TAGPOLL_VOTES, plus results snapshots.
//!
//! Exactly-once counting rests on three facts: the state is rebuilt from the
//! vote stream at start; an outcome is applied only after JetStream stored it
//! (with the read id as `Nats-Msg-Id`); and an input read is acknowledged
//! only after that. A crash anywhere re-delivers the read, which is then
//! either found already decided or decided identically and de-duplicated.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::pull, kv, message::Message};
use futures::StreamExt;
use prost::Message as _;
use tagpoll_bus::{BusError, config::EventConfig, heartbeat::Stats, publish};
use tagpoll_proto::{names, subjects, v1};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::{ballots::Ballots, rules};

/// Tunables.
#[derive(Debug, Clone)]
pub struct TallyOptions {
    /// Minimum time between two results snapshots of one poll: bursts coalesce.
    pub snapshot_interval: Duration,
}

impl Default for TallyOptions {
    fn default() -> Self {
        TallyOptions {
            snapshot_interval: Duration::from_millis(100),
        }
    }
}

/// State shared by the consumer loop and the snapshot publisher.
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
}

/// Rebuilds the counts from the vote stream.
pub async fn rebuild(js: &jetstream::Context) -> Result<Ballots, BusError> {
    let mut ballots = Ballots::default();
    let mut bad = 0u64;
    tagpoll_bus::replay::replay(js, names::STREAM_VOTES, None, |seq, subject, payload| {
        match tagpoll_bus::decode::<v1::VoteOutcome>(subject, payload) {
            Ok(o) => {
                ballots.apply(&o, seq);
            }
            Err(e) => {
                bad += 1;
                tracing::error!(error = %e, seq, "skipping undecodable outcome in the vote stream");
            }
        }
    })
    .await?;
    tracing::info!(
        last_seq = ballots.last_seq,
        bad,
        "tally rebuilt from the vote stream"
    );
    Ok(ballots)
}

/// Runs the tally until the consumer ends.
pub async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    results_kv: kv::Store,
    mut config: watch::Receiver<Arc<EventConfig>>,
    options: TallyOptions,
    stats: Arc<Stats>,
) -> Result<(), BusError> {
    let shared = Arc::new(Shared {
        ballots: Mutex::new(rebuild(&js).await?),
        dirty: Mutex::new(config.borrow().polls.keys().cloned().collect()),
        wake: Notify::new(),
    });
    shared.wake.notify_one();

    // Config changes (open/close, labels, resets) change snapshots too.
    let watcher = {
        let shared = shared.clone();
        let mut config = config.clone();
        tokio::spawn(async move {
            while config.changed().await.is_ok() {
                let ids: Vec<String> = config.borrow_and_update().polls.keys().cloned().collect();
                for id in ids {
                    shared.mark_dirty(&id);
                }
            }
        })
    };
    let publisher = tokio::spawn(publish_snapshots(
        client,
        results_kv,
        config.clone(),
        shared.clone(),
        options.snapshot_interval,
    ));

    let stream = js
        .get_stream(names::STREAM_IDENTIFIED)
        .await
        .map_err(|e| BusError::js("looking up identified stream", e))?;
    let consumer = stream
        .get_or_create_consumer(
            names::CONSUMER_TALLY,
            pull::Config {
                durable_name: Some(names::CONSUMER_TALLY.into()),
                description: Some("the tally decides each identified read once".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BusError::js("creating tally consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::js("consuming identified reads", e))?;
    tracing::info!("tally consuming {}", names::STREAM_IDENTIFIED);
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "identified consumer hiccup");
                stats.error(&e);
                continue;
            }
        };
        let cfg = config.borrow_and_update().clone();
        handle(&js, &cfg, &shared, &stats, msg).await;
    }
    watcher.abort();
    publisher.abort();
    Ok(())
}

async fn handle(
    js: &jetstream::Context,
    config: &EventConfig,
    shared: &Shared,
    stats: &Stats,
    msg: Message,
) {
    let read: v1::IdentifiedRead = match tagpoll_bus::decode(&msg.subject, &msg.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "dropping undecodable identified read");
            stats.error(&e);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::info_span!("tally", read_id = %read.read_id, reader = %read.reader_id);
    async {
        let outcome = {
            let ballots = shared.ballots.lock().unwrap_or_else(|e| e.into_inner());
            if ballots.is_decided(&read.read_id) {
                None
            } else {
                Some(rules::decide(config, &ballots, &read, SystemTime::now()))
            }
        };
        let Some(outcome) = outcome else {
            tracing::debug!("already decided; acknowledging re-delivery");
            let _ = msg.ack().await;
            return;
        };
        let subject = subjects::outcome(&outcome.poll_id, &outcome.reader_id);
        match publish::publish_for_read(js, subject, &outcome.read_id, outcome.encode_to_vec().into())
            .await
        {
            Ok((seq, duplicate)) => {
                shared
                    .ballots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(&outcome, seq);
                if !outcome.poll_id.is_empty() {
                    shared.mark_dirty(&outcome.poll_id);
                }
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack failed; re-delivery will find the read decided");
                }
                stats.handled_one();
                tracing::info!(kind = ?outcome.kind(), poll = %outcome.poll_id, answer = %outcome.answer_id, duplicate, "decided");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store outcome; retrying");
                stats.error(&e);
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_millis(500)))).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn publish_snapshots(
    client: async_nats::Client,
    results_kv: kv::Store,
    config: watch::Receiver<Arc<EventConfig>>,
    shared: Arc<Shared>,
    interval: Duration,
) {
    loop {
        shared.wake.notified().await;
        let dirty: Vec<String> =
            std::mem::take(&mut *shared.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        let cfg = config.borrow().clone();
        for poll_id in dirty {
            let Some(poll) = cfg.polls.get(&poll_id) else {
                continue;
            };
            let results = shared
                .ballots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .results(poll);
            let bytes: bytes::Bytes = results.encode_to_vec().into();
            if let Err(e) = results_kv
                .put(names::results_key(&poll_id), bytes.clone())
                .await
            {
                tracing::warn!(error = %e, poll = %poll_id, "could not store results; will retry");
                shared.mark_dirty(&poll_id);
            }
            let _ = client.publish(subjects::results(&poll_id), bytes).await;
        }
        tokio::time::sleep(interval).await;
    }
}
