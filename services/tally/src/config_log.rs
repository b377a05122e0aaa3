//! Keeps a [`ConfigHistory`] in step with the config bucket, and proves it
//! complete up to a moment before a tap is decided at that moment.
//!
//! At start the mirror TAGPOLL_CONFIG_HISTORY is read to its end (every
//! change of the hand-off retention), then an ordered consumer follows the
//! bucket's own stream from its start (the latest values of every key,
//! however old, and every later change) for as long as the tally runs.
//!
//! A change stored just before a tap can reach the tally after it: the tap
//! goes through identity, the change through one watch. [`ConfigLog::barrier`]
//! closes that race: it asks the bucket's stream for its last sequence and
//! waits until the follower has delivered it, which proves every change
//! stored before the question was asked is known.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tagpoll_proto::names;
use tokio::sync::watch;

use crate::history::{Change, ConfigHistory};
use tagpoll_bus::BusError;

/// How long a barrier may wait for the follower to catch up.
pub const BARRIER_PATIENCE: Duration = Duration::from_secs(10);
/// How long reading the mirror at start may wait for its next message.
pub const READ_PATIENCE: Duration = Duration::from_secs(10);

/// The shared history and how far the follower has read.
#[derive(Clone)]
pub struct ConfigLog {
    history: Arc<Mutex<ConfigHistory>>,
    delivered: watch::Receiver<u64>,
    js: jetstream::Context,
}

fn bucket_stream() -> String {
    format!("KV_{}", names::KV_CONFIG)
}

/// A bucket stream message as a change: the key from the subject
/// (`$KV.{bucket}.{key}`), deleted or purged when `KV-Operation` says so.
fn change_of(msg: &jetstream::Message) -> Result<Change, BusError> {
    let info = msg
        .info()
        .map_err(|e| BusError::js("config change metadata", e))?;
    let prefix = format!("$KV.{}.", names::KV_CONFIG);
    let key = msg
        .subject
        .strip_prefix(prefix.as_str())
        .unwrap_or(&msg.subject)
        .to_string();
    let removed = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    Ok(Change {
        seq: info.stream_sequence,
        at: SystemTime::from(info.published),
        key,
        value: (!removed).then(|| msg.payload.to_vec()),
    })
}

impl ConfigLog {
    /// Loads the history and starts following; returns once everything
    /// stored at call time is known.
    pub async fn start(js: &jetstream::Context) -> Result<ConfigLog, BusError> {
        let history = Arc::new(Mutex::new(ConfigHistory::default()));
        read_mirror(js, &history).await?;
        let (tx, delivered) = watch::channel(0);
        tokio::spawn(follow(js.clone(), history.clone(), tx));
        let log = ConfigLog {
            history,
            delivered,
            js: js.clone(),
        };
        log.barrier().await?;
        let h = log.lock();
        tracing::info!(
            changes = h.len(),
            last_seq = h.last_seq(),
            "config history loaded"
        );
        drop(h);
        Ok(log)
    }

    /// The history (held briefly: the follower writes to it).
    pub fn lock(&self) -> MutexGuard<'_, ConfigHistory> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once every change stored before this call is in the history.
    pub async fn barrier(&self) -> Result<(), BusError> {
        barrier(&self.js, self.delivered.clone()).await
    }
}

async fn barrier(
    js: &jetstream::Context,
    mut delivered: watch::Receiver<u64>,
) -> Result<(), BusError> {
    let name = bucket_stream();
    // One request: looking a stream up returns its info. Asked again once
    // on failure, so one slow answer does not cost the tally a rebuild.
    let mut tries = 0;
    let last = loop {
        match js.get_stream(&name).await {
            Ok(s) => break s.cached_info().state.last_sequence,
            Err(e) if tries == 0 => {
                tracing::debug!(error = %e, "config barrier: asking again");
                tries += 1;
            }
            Err(e) => return Err(BusError::js(format!("looking up {name}"), e)),
        }
    };
    tokio::time::timeout(BARRIER_PATIENCE, delivered.wait_for(|d| *d >= last))
        .await
        .map_err(|_| {
            BusError::js(
                "waiting for the config history",
                format!(
                    "the follower of {name} did not reach sequence {last} within {} s",
                    BARRIER_PATIENCE.as_secs()
                ),
            )
        })?
        .map_err(|_| BusError::js("waiting for the config history", "the follower stopped"))?;
    Ok(())
}

/// Reads the mirror to its end at call time.
async fn read_mirror(
    js: &jetstream::Context,
    history: &Mutex<ConfigHistory>,
) -> Result<(), BusError> {
    let name = names::STREAM_CONFIG_HISTORY;
    let mut stream = js.get_stream(name).await.map_err(|e| {
        BusError::js(
            format!("looking up {name} (made by `tagpoll load` or any service's start)"),
            e,
        )
    })?;
    let state = stream
        .info()
        .await
        .map_err(|e| BusError::js(format!("info of {name}"), e))?
        .state
        .clone();
    let truncated = state.first_sequence > 1;
    history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_complete_since(truncated.then(|| SystemTime::from(state.first_timestamp)));
    if state.messages == 0 {
        return Ok(());
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js(format!("reading {name}"), e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::js(format!("reading {name}"), e))?;
    loop {
        // Bounded: a stream whose leader is being elected may deliver
        // nothing for a while; the caller starts over rather than hang.
        let next = tokio::time::timeout(READ_PATIENCE, messages.next())
            .await
            .map_err(|_| {
                BusError::js(
                    format!("reading {name}"),
                    format!("no message within {} s", READ_PATIENCE.as_secs()),
                )
            })?;
        let Some(msg) = next else {
            return Err(BusError::js(
                format!("reading {name}"),
                "the consumer ended",
            ));
        };
        let msg = msg.map_err(|e| BusError::js(format!("reading {name}"), e))?;
        let change = change_of(&msg)?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        let seq = change.seq;
        history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(change);
        if pending == 0 || seq >= state.last_sequence {
            break;
        }
    }
    Ok(())
}

/// Follows the bucket's stream for good, re-creating the consumer after a
/// failure from the next sequence it needs.
async fn follow(
    js: jetstream::Context,
    history: Arc<Mutex<ConfigHistory>>,
    delivered: watch::Sender<u64>,
) {
    let name = bucket_stream();
    let mut from = 1;
    let mut backoff = Duration::from_millis(200);
    loop {
        let result: Result<(), BusError> = async {
            let stream = js
                .get_stream(&name)
                .await
                .map_err(|e| BusError::js(format!("looking up {name}"), e))?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| BusError::js(format!("following {name}"), e))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| BusError::js(format!("following {name}"), e))?;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(|e| BusError::js(format!("following {name}"), e))?;
                let change = match change_of(&msg) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a config change without metadata");
                        continue;
                    }
                };
                let seq = change.seq;
                tracing::debug!(seq, key = %change.key, "config change");
                history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(change);
                from = seq + 1;
                delivered.send_replace(seq);
                backoff = Duration::from_millis(200);
            }
            Err(BusError::js(
                format!("following {name}"),
                "the consumer ended",
            ))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, from, "config history follower failed; retrying");
        }
        if delivered.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
