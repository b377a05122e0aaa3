//! The web service: JSON API and live results pages.
//!
//! # Layout
//! - [`view`]: the service's live view of config and results, fed from KV.
//! - [`api`]: JSON shapes of the public HTTP API (a contract) and their handlers.
//! - [`pages`]: HTML pages and the live event stream (SSE) they use.
//! - [`app`]: the router and server.
pub mod api;
pub mod app;
pub mod pages;
pub mod view;
