//! The JetStream streams and KV buckets tagpoll relies on.
//!
//! Every service calls [`ensure`] at start; creation is idempotent, so the
//! first one up creates them and the rest find them.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tagpoll_proto::{names, subjects};

use crate::BusError;

/// How long JetStream remembers a `Nats-Msg-Id`. Covers a reader re-sending
/// its spool after a publish whose ack was lost.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Replicas for streams and buckets: `TAGPOLL_REPLICAS` (1 on one box, 3 on a cluster).
pub fn replicas() -> usize {
    std::env::var("TAGPOLL_REPLICAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| (1..=5).contains(n))
        .unwrap_or(1)
}

fn stream_config(name: &str, subject: &str, description: &str) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        description: Some(description.to_string()),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas(),
        ..Default::default()
    }
}

/// The three streams a tap flows through, in order.
pub fn stream_configs() -> Vec<stream::Config> {
    vec![
        stream_config(
            names::STREAM_READS,
            subjects::READS_ALL,
            "Taps from reader devices, de-duplicated by read id",
        ),
        stream_config(
            names::STREAM_IDENTIFIED,
            subjects::IDENTIFIED_ALL,
            "Taps with their voter resolved",
        ),
        stream_config(
            names::STREAM_VOTES,
            subjects::OUTCOMES_ALL,
            "The vote stream: one outcome per identified read",
        ),
    ]
}

/// Last heartbeat per sender, in memory: no fsync for liveness data.
pub fn heartbeat_stream_config() -> stream::Config {
    stream::Config {
        name: names::STREAM_HEARTBEATS.to_string(),
        description: Some("Last heartbeat of every service and reader device".into()),
        subjects: vec![subjects::HEARTBEAT_ALL.to_string()],
        storage: stream::StorageType::Memory,
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(24 * 3600),
        num_replicas: replicas(),
        ..Default::default()
    }
}

/// Handles to the KV buckets.
#[derive(Clone)]
pub struct Buckets {
    pub config: kv::Store,
    pub results: kv::Store,
}

/// Creates (or finds) every stream and KV bucket, waiting up to
/// [`ENSURE_PATIENCE`] for JetStream to be ready.
/// How long [`ensure`] keeps trying while JetStream is not ready (a server
/// starting, a cluster electing its leader).
pub const ENSURE_PATIENCE: Duration = Duration::from_secs(60);

pub async fn ensure(js: &jetstream::Context) -> Result<Buckets, BusError> {
    let deadline = tokio::time::Instant::now() + ENSURE_PATIENCE;
    let mut wait = Duration::from_millis(200);
    loop {
        match ensure_once(js).await {
            Ok(b) => return Ok(b),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "JetStream not ready; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(BusError::js(
                    "setting up streams and buckets",
                    format!(
                        "{e} (for {} s; is JetStream enabled, and may this user create them? \
                         With per-role users, run `tagpoll load` as the admin role first)",
                        ENSURE_PATIENCE.as_secs()
                    ),
                ));
            }
        }
    }
}

/// Streams and buckets kept in memory vanish when a server restarts; this
/// recreates them (and only them) if they are missing.
pub async fn ensure_memory_stores(js: &jetstream::Context) -> Result<(), BusError> {
    js.get_or_create_stream(heartbeat_stream_config())
        .await
        .map_err(|e| BusError::js("re-creating the heartbeat stream", e))?;
    results_bucket(js).await.map(|_| ())
}

async fn results_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    // Results are derived from the vote stream (the tally republishes them
    // after every rebuild and every few seconds), so they need no fsync.
    bucket(
        js,
        names::KV_RESULTS,
        "Latest results per poll",
        1,
        stream::StorageType::Memory,
    )
    .await
}

async fn ensure_once(js: &jetstream::Context) -> Result<Buckets, BusError> {
    for cfg in stream_configs()
        .into_iter()
        .chain([heartbeat_stream_config()])
    {
        let name = cfg.name.clone();
        js.get_or_create_stream(cfg)
            .await
            .map_err(|e| BusError::js(format!("creating stream {name}"), e))?;
    }
    let config = bucket(
        js,
        names::KV_CONFIG,
        "Event configuration",
        5,
        stream::StorageType::File,
    )
    .await?;
    let results = results_bucket(js).await?;
    Ok(Buckets { config, results })
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    history: i64,
    storage: stream::StorageType,
) -> Result<kv::Store, BusError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history,
        storage,
        num_replicas: replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::js(format!("creating KV bucket {name}"), e))
}

/// Creates (or finds) the identity service's lookup cache, KV bucket
/// [`names::KV_IDENTITY_CACHE`]: history 1, memory storage (a cache need not
/// survive a server restart), entries dropped after `max_age`, at most
/// `max_bytes` (further puts fail until old entries age out). Only identity
/// uses it, so [`ensure`] leaves it alone.
pub async fn ensure_identity_cache(
    js: &jetstream::Context,
    max_age: Duration,
    max_bytes: i64,
) -> Result<kv::Store, BusError> {
    let name = names::KV_IDENTITY_CACHE;
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: "Identity lookup cache (keyed hashes of tag UIDs)".to_string(),
        history: 1,
        max_age,
        max_bytes,
        storage: stream::StorageType::Memory,
        num_replicas: replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::js(format!("creating KV bucket {name}"), e))
}
