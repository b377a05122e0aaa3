//! `tagpoll-xmpp`: the XMPP bridge. Publishes each poll's results to a
//! publish-subscribe node, optionally ikPoll-compatible vote notifications,
//! and republishes notifications from listened nodes on NATS.
//! docs/xmpp.md has the configuration contract and the payload formats.
//!
//! # Layout
//! Pure code (no I/O, unit tested):
//! - [`config`]: the environment contract (`TAGPOLL_XMPP_*`), validated, errors name the variable.
//! - [`results`]: the `<results xmlns='urn:tagpoll:results:1'>` payload: build and parse.
//! - [`ikpoll`]: the ikPoll `<rsp>` vote payload, and holding votes until their counts arrive.
//! - [`pubsub`]: XEP-0060 requests (create with config, publish, subscribe, items) and notification parsing.
//! - [`coalesce`]: at most one publish per poll per interval, latest wins.
//! - [`xml`]: small minidom helpers and time formats.
//!
//! Edges:
//! - [`xmpp`]: the task owning the tokio-xmpp client (c2s, STARTTLS or loopback plaintext),
//!   presence, IQ requests with timeouts.
//! - [`publisher`]: the outbox and the task that creates nodes and publishes, with backoff.
//! - [`service`]: the NATS side (results subject + KV, config, vote stream) and the core loop.

pub mod coalesce;
pub mod config;
pub mod ikpoll;
pub mod publisher;
pub mod pubsub;
pub mod results;
pub mod service;
pub mod xml;
pub mod xmpp;
