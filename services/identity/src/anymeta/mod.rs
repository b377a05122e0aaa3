//! anyMeta (Mediamatic's CMS) as an identity source: resolves an RFID tag UID to the person it was
//! linked to, over anyMeta's OAuth 1.0-signed RPC API (`{site}/services/rest/`).
//!
//! [`AnyMetaClient`] is the entry point; its errors say whether a retry can help
//! ([`AnyMetaError::is_transient`]). [`AnyMetaConfig`] reads credentials from the environment or
//! from anyMeta's own `~/.anymeta` registry file. The [`oauth`] module is the RFC 5849 signer the
//! client uses, public for tests and fakes.

mod args;
mod client;
mod config;
mod error;
mod ini;
pub mod oauth;
mod person;

pub use args::{ArgsError, flatten_args};
pub use client::{AnyMetaClient, StampSource, rfid_urn};
pub use config::{
    AnyMetaConfig, ConfigError, ENV_CONSUMER_KEY, ENV_CONSUMER_SECRET, ENV_ENTRYPOINT, ENV_FILE,
    ENV_SITE, ENV_TOKEN, ENV_TOKEN_SECRET,
};
pub use error::{AnyMetaError, CODE_NOT_LOGGED_ON};
pub use ini::{IniEntry, IniError, IniSection, parse_ini};
pub use person::{Person, html_to_text, profile_url};
