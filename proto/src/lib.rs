//! tagpoll's wire contract.
//!
//! # Layout
//! - [`v1`]: the protobuf messages generated from `proto/tagpoll/v1/tagpoll.proto`.
//! - [`subjects`]: every NATS subject, built in one place.
//! - [`names`]: JetStream stream, consumer and KV bucket names, and headers.
//! - [`ids`]: validated identifiers that are safe to embed in a subject.
//!
//! Nothing here does I/O: outside tools can depend on this crate alone.

pub mod ids;
pub mod names;
pub mod subjects;

/// Generated protobuf types, package `tagpoll.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tagpoll.v1.rs"));
}

pub use prost::Message;

/// Converts a system time to a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    timestamp(std::time::SystemTime::now())
}

/// Converts a protobuf timestamp back, `None` if unset or out of range.
pub fn to_system_time(t: Option<&prost_types::Timestamp>) -> Option<std::time::SystemTime> {
    t.and_then(|t| std::time::SystemTime::try_from(*t).ok())
}
