//! Periodic liveness messages on `tagpoll.heartbeat.{kind}.{name}.{instance}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prost::Message;
use tagpoll_proto::{subjects, v1};

/// Seconds between heartbeats.
pub const INTERVAL: Duration = Duration::from_secs(2);

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

/// Counters a service updates and the heartbeat reports.
#[derive(Default)]
pub struct Stats {
    pub handled: AtomicU64,
    pub last_error: std::sync::Mutex<String>,
}

impl Stats {
    pub fn handled_one(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, err: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = err.to_string();
    }
}

/// Publishes a service heartbeat every [`INTERVAL`] until the task is dropped.
pub fn spawn_service(
    client: async_nats::Client,
    name: &'static str,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    let instance = instance_id();
    let started = SystemTime::now();
    tokio::spawn(async move {
        let subject = subjects::heartbeat("service", name, &instance);
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let hb = v1::Heartbeat {
                kind: "service".into(),
                name: name.into(),
                instance: instance.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: Some(tagpoll_proto::timestamp(started)),
                sent_at: Some(tagpoll_proto::now()),
                interval_secs: INTERVAL.as_secs() as u32,
                nats_connected: client.connection_state()
                    == async_nats::connection::State::Connected,
                handled: stats.handled.load(Ordering::Relaxed),
                last_error: stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                ..Default::default()
            };
            // Core publish is right here: a lost heartbeat is replaced by the next.
            let _ = client
                .publish(subject.clone(), hb.encode_to_vec().into())
                .await;
        }
    })
}
