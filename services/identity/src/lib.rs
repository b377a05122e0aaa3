//! The identity service: tag → voter.
//!
//! # Layout
//! - [`anymeta`]: the anyMeta REST API client (OAuth 1.0 signed) and its config.
//! - [`backend`]: the backend chain: anyMeta, file (event file + CSV), anonymous.
//! - [`anymeta_backend`]: anyMeta behind the shared [`cache`], [`singleflight`] and a
//!   [`breaker`], with retries.
//! - [`people_csv`]: the CSV people file (`TAGPOLL_IDENTITY_CSV`).
//! - [`order`]: the ledger that keeps taps of one tag in order across retries and instances.
//! - [`intake`]: reads taken from the shared consumer one pull batch at a time, so a stop
//!   can end cleanly.
//! - [`tap_moment`]: the one trusted time of each tap (stored time, or the device clock for a
//!   spooled tap), pure; [`device_clocks`]: its I/O (device clocks from heartbeats, the
//!   device's previous stored tap).
//! - [`service`]: the pipeline: reads stream → lookups → identified stream.
//! - [`settings`]: the environment contract (`TAGPOLL_IDENTITY_*`, `TAGPOLL_ANYMETA_*`).
//! - [`counters`]: what one instance did, for the heartbeat and the logs.
//! - [`fake_anymeta`]: a fake anyMeta server for tests and the benchmark (not used by the
//!   service).
//!
//! `docs/identity.md` describes the behaviour and the settings.
pub mod anymeta;
pub mod anymeta_backend;
pub mod backend;
pub mod breaker;
pub mod cache;
pub mod counters;
pub mod device_clocks;
pub mod fake_anymeta;
pub mod intake;
pub mod order;
pub mod people_csv;
pub mod service;
pub mod settings;
pub mod singleflight;
pub mod tap_moment;
