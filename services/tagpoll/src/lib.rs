//! The `tagpoll` command: validate and load events, tap, follow outcomes,
//! show results, and run the whole system on one machine.
//!
//! # Layout
//! - [`audit`]: recounting a poll from the vote stream, and exports.
//! - [`bench`]: `tagpoll bench`, the pipeline measured against the bus's own limit.
//! - [`chaos`]: `tagpoll chaos`, faults injected while votes flow, then a verdict.
//! - [`event`]: the event file format and its validation (pure).
//! - [`show`]: human-readable lines and tables for outcomes and results.
//! - [`status`]: `tagpoll status`, gathered from heartbeats and live answers.
//! - [`forget`]: `tagpoll forget PERSON`.
//! - [`nats_server`]: finding and supervising a private `nats-server`.
//! - [`dev`]: `tagpoll dev`, the whole system as child processes.
pub mod audit;
pub mod bench;
pub mod chaos;
pub mod dev;
pub mod event;
pub mod forget;
/// Running a private nats-server lives in the bus crate (identity's benchmark uses it too).
pub use tagpoll_bus::nats_server;
pub mod show;
pub mod status;

/// Writing configuration to KV lives in the bus crate (the web admin uses it too).
pub use tagpoll_bus::store;
