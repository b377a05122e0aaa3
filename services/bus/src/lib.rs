//! Shared NATS plumbing for every tagpoll service.
//!
//! # Layout
//! - [`connect`]: connection options from the environment (`NATS_URL`, credentials).
//! - [`topology`]: creates the JetStream streams and KV buckets every service relies on.
//! - [`config`]: a live, typed view of the event configuration kept in KV.
//! - [`publish`]: durable publishes that only count once JetStream acknowledged them.
//! - [`heartbeat`]: periodic liveness messages.
//! - [`metrics`]: `/metrics` (Prometheus) from the latest heartbeat, with `TAGPOLL_METRICS_ADDR`.
//! - [`store`]: writing the event and live changes (open/close, remap) into KV.
//! - [`nats_server`], [`process`]: running a private nats-server and service
//!   binaries as children (dev, tests, benchmarks, fault runs).
//! - [`telemetry`]: tracing set-up shared by the binaries.
//!
//! Subject and stream names come from [`tagpoll_proto`]; none are spelled here.

pub mod config;
pub mod connect;
pub mod dead_letter;
pub mod heartbeat;
pub mod metrics;
pub mod nats_server;
pub mod process;
pub mod publish;
pub mod replay;
pub mod store;
pub mod telemetry;
pub mod topology;

pub use connect::{BusOptions, connect};

/// Errors talking to NATS, with enough context to say which operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot read credentials file {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JetStream {what} failed: {message}")]
    JetStream { what: String, message: String },
    #[error("message on {subject} is not a valid {kind}: {source}")]
    Decode {
        subject: String,
        kind: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

impl BusError {
    /// Wraps any JetStream error with the operation it belongs to.
    pub fn js(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            what: what.into(),
            message: err.to_string(),
        }
    }
}

/// Decodes a protobuf payload, naming the subject and type on failure.
pub fn decode<M: prost::Message + Default>(subject: &str, payload: &[u8]) -> Result<M, BusError> {
    M::decode(payload).map_err(|source| BusError::Decode {
        subject: subject.to_string(),
        kind: std::any::type_name::<M>()
            .rsplit("::")
            .next()
            .unwrap_or("message"),
        source,
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, docker, `tagpoll dev`).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
