//! Liveness: periodic heartbeats on `tagpoll.heartbeat.{kind}.{name}.{instance}`
//! (kept, last one per sender, in stream `TAGPOLL_HEARTBEATS`), and answers
//! to the scatter-gather status request `tagpoll.admin.status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prost::Message;
use tagpoll_proto::{subjects, v1};

/// Seconds between heartbeats.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// How often services check that the memory-backed stores still exist.
pub const STORES_CHECK: Duration = Duration::from_secs(3);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A sender is offline after this many missed heartbeats …
pub const MISSED_BEATS: u32 = 3;
/// … or this long without one, whichever is shorter.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(15);

/// Whether a heartbeat sent at `sent_at` still counts as online at `now`.
pub fn is_online(hb: &v1::Heartbeat, now: SystemTime) -> bool {
    let Some(sent) = tagpoll_proto::to_system_time(hb.sent_at.as_ref()) else {
        return false;
    };
    let interval = Duration::from_secs(u64::from(hb.interval_secs.max(1)));
    let limit = (interval * MISSED_BEATS).min(OFFLINE_AFTER);
    // A sender whose clock runs ahead counts as fresh.
    now.duration_since(sent).map_or(true, |age| age <= limit)
}

/// A process-unique instance name: host name and pid.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Counters a service updates and its heartbeat reports.
#[derive(Default)]
pub struct Stats {
    pub handled: AtomicU64,
    /// Work waiting for the service (reads not yet handled).
    pub lag: AtomicU64,
    /// Work started and not finished (publishes awaiting acks, lookups).
    pub in_flight: AtomicU64,
    pub last_error: std::sync::Mutex<String>,
    /// Named event counters (fixed names), sent in the heartbeat.
    pub counters: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub fn handled_one(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one event of the kind `name` (a fixed name, never input).
    pub fn count(&self, name: &'static str) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_default() += 1;
    }

    /// The counters as sent in the heartbeat.
    pub fn counters(&self) -> std::collections::HashMap<String, u64> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    pub fn error(&self, err: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = err.to_string();
    }
}

/// One service instance's identity, for its heartbeats.
struct Sender {
    name: &'static str,
    instance: String,
    started: SystemTime,
}

impl Sender {
    fn heartbeat(&self, client: &async_nats::Client, stats: &Stats) -> v1::Heartbeat {
        v1::Heartbeat {
            kind: "service".into(),
            name: self.name.into(),
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: Some(tagpoll_proto::timestamp(self.started)),
            sent_at: Some(tagpoll_proto::now()),
            interval_secs: INTERVAL.as_secs() as u32,
            nats_connected: client.connection_state() == async_nats::connection::State::Connected,
            handled: stats.handled.load(Ordering::Relaxed),
            lag: stats.lag.load(Ordering::Relaxed),
            in_flight: stats.in_flight.load(Ordering::Relaxed),
            last_error: stats
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            counters: stats.counters(),
            ..Default::default()
        }
    }
}

/// Publishes a service heartbeat every [`INTERVAL`] and answers status
/// requests, until the returned task is aborted.
pub fn spawn_service(
    client: async_nats::Client,
    name: &'static str,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    let sender = Arc::new(Sender {
        name,
        instance: instance_id(),
        started: SystemTime::now(),
    });
    let replies = {
        let (client, stats, sender) = (client.clone(), stats.clone(), sender.clone());
        tokio::spawn(async move {
            let Ok(mut requests) = client.subscribe(subjects::ADMIN_STATUS).await else {
                tracing::warn!("cannot answer status requests");
                return;
            };
            while let Some(req) = requests.next().await {
                if let Some(reply) = req.reply {
                    let hb = sender.heartbeat(&client, &stats);
                    let _ = client.publish(reply, hb.encode_to_vec().into()).await;
                }
            }
        })
    };
    let stores = {
        let js = async_nats::jetstream::new(client.clone());
        tokio::spawn(async move {
            // Memory-backed stores vanish with a server restart: put them back.
            let mut tick = tokio::time::interval(STORES_CHECK);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = crate::topology::ensure_memory_stores(&js).await {
                    tracing::debug!(error = %e, "cannot check the memory stores");
                }
            }
        })
    };
    tokio::spawn(async move {
        let subject = subjects::heartbeat("service", name, &sender.instance);
        let mut tick = tokio::time::interval(INTERVAL);
        let _stores = AbortOnDrop(stores);
        let (metrics, latest) = tokio::sync::watch::channel(sender.heartbeat(&client, &stats));
        crate::metrics::serve_from_env(latest);
        loop {
            tick.tick().await;
            let hb = sender.heartbeat(&client, &stats);
            metrics.send_replace(hb.clone());
            // Core publish is right here: a lost heartbeat is replaced by the next.
            if client
                .publish(subject.clone(), hb.encode_to_vec().into())
                .await
                .is_err()
            {
                break;
            }
        }
        replies.abort();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_after_three_missed_beats_or_fifteen_seconds() {
        let now = SystemTime::now();
        let hb = |age: u64, interval: u32| v1::Heartbeat {
            sent_at: Some(tagpoll_proto::timestamp(now - Duration::from_secs(age))),
            interval_secs: interval,
            ..Default::default()
        };
        assert!(is_online(&hb(5, 2), now));
        assert!(!is_online(&hb(7, 2), now));
        assert!(is_online(&hb(14, 10), now));
        assert!(!is_online(&hb(16, 10), now));
        assert!(!is_online(&v1::Heartbeat::default(), now));
    }
}
