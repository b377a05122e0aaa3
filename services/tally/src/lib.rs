//! The tally: turns identified reads into votes and counts.
//!
//! # Layout
//! - [`rules`]: pure decision logic: what does this read mean for this poll?
//! - [`ballots`]: the counted state, rebuilt from the vote stream alone.
//! - [`history`]: the configuration as of any tap moment (pure).
//! - [`config_log`]: keeps the history in step with the config bucket, and proves it complete.
//! - [`partition`]: which polls this instance owns when several share an event.
//! - [`reference`]: a deliberately plain model of the rules, for tests and `tagpoll chaos`.
//! - [`service`]: wiring: identified reads → decide → vote stream → results.
pub mod ballots;
pub mod config_log;
pub mod history;
pub mod partition;
pub mod reference;
pub mod rules;
pub mod service;
