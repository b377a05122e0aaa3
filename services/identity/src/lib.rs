//! The identity service: tag → voter.
//!
//! # Layout
//! - [`anymeta`]: the anyMeta REST API client (OAuth 1.0 signed) and its config.
//! - [`backend`]: the backend chain: file, anonymous and anyMeta lookups.
//! - [`service`]: wiring: reads stream → lookup → identified stream.
pub mod anymeta;
pub mod backend;
pub mod service;
