//! The reader device service: the only place a vote is born.
//!
//! # Layout
//! - [`config`]: the device configuration (TOML file or command-line flags).
//! - [`protocol`]: pure frame parsers for each supported RFID reader (bytes in, events out).
//! - [`debounce`]: turns a stream of sightings into one tap per tag presence.
//! - [`serial`]: opens serial readers, feeds parsers, re-opens after unplugging.
//! - [`spool`]: the on-disk, fsync'd queue a tap waits in until JetStream acknowledged it.
//! - [`sim`]: simulated readers for demos and tests.
//! - [`service`]: wiring: sources → spool → NATS, feedback and heartbeats.
pub mod config;
pub mod debounce;
pub mod protocol;
pub mod serial;
pub mod service;
pub mod sim;
pub mod spool;
