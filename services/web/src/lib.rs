//! The web service: JSON API, live pages (results, kiosk, admin) and metrics.
//!
//! # Layout
//! - [`view`]: the service's live view of config and results, fed from KV.
//! - [`live`]: public results changes, serialised once and fanned out to SSE clients.
//! - [`monitor`]: heartbeats and outcomes seen on NATS, for the admin page.
//! - [`api`]: JSON shapes of the public HTTP API (a contract), exports, errors.
//! - [`kiosk`]: what a reader stands for and each tap's outcome, said to the voter.
//! - [`admin`]: the bearer-token admin API (poll control, remapping, status).
//! - [`metrics`]: request and stream counters in the Prometheus text format.
//! - [`pages`]: HTML pages and assets compiled into the binary, the results stream.
//! - [`app`]: shared state, the route table and the server.
//!
//! `assets/` holds the pages (vanilla JS and CSS, no build step) and
//! `openapi.json`; `docs/web.md` describes routes and JSON shapes.
//! `benches/web_fanout.rs` measures the SSE fan-out to 1,000 clients
//! (`docs/benchmarks.md`, "Web fan-out").
pub mod admin;
pub mod api;
pub mod app;
pub mod kiosk;
pub mod live;
pub mod metrics;
pub mod monitor;
pub mod pages;
pub mod view;
