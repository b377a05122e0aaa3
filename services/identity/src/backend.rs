//! The backend chain: who owns a tag?
//!
//! Backends are asked in the event's order (`identity` in the event file). Only a clear
//! "unknown" moves on to the next one; a backend that is unavailable stops the chain, because
//! falling back during an outage could let one person vote twice under two identities. The
//! caller then retries the read later.
//!
//! Backends:
//! - `anymeta`: the anyMeta site configured with `TAGPOLL_ANYMETA_*` (cached, see
//!   [`crate::anymeta_backend`]). When anyMeta is configured and the event's chain does not
//!   name it, it is asked first ([`effective_chain`]).
//! - `file`: the event file's `[[people]]` (KV keys `tag.{UID}`), then the CSV file
//!   `TAGPOLL_IDENTITY_CSV` if one is configured. Both give voter `file:{person}`.
//! - `csv`: only the CSV file (accepted by the service; `tagpoll check` knows `file`).
//! - `anonymous`: everybody: voter `anon:{keyed hash of the UID}`.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::v1;

pub use crate::anymeta_backend::Unavailable;
use crate::anymeta_backend::{AnyMetaAnswer, AnyMetaBackend};
use crate::people_csv::CsvPeople;

/// What one backend (or the whole chain) said about a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(v1::Voter),
    Unknown,
    /// Could not tell right now (outage, timeout, bad answer, bad config): retry later.
    Unavailable(Unavailable),
}

/// Keyed hash of tag UIDs, so raw UIDs never leave the identity service.
#[derive(Clone)]
pub struct VoterKey(Vec<u8>);

impl VoterKey {
    /// At least 16 bytes of secret, usually from `TAGPOLL_VOTER_KEY[_FILE]`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, String> {
        let secret = secret.into();
        if secret.len() < 16 {
            return Err(format!(
                "voter key is {} bytes; at least 16 are needed",
                secret.len()
            ));
        }
        Ok(VoterKey(secret))
    }

    /// Pseudonymous, stable id for a tag: the first 16 hex digits of HMAC-SHA256.
    pub fn pseudonym(&self, uid: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(uid);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// The secret, for deriving other keyed hashes (the cache keys).
    pub fn secret(&self) -> &[u8] {
        &self.0
    }
}

/// Uppercase hex of every UID byte: the form used in KV keys and anyMeta URNs.
pub fn uid_hex(uid: &[u8]) -> String {
    hex::encode_upper(uid)
}

/// The chain actually asked: the event's, with `anymeta` put first when anyMeta is configured
/// and the event does not name it (an explicitly named position is kept).
pub fn effective_chain(event_chain: &[String], anymeta_configured: bool) -> Vec<String> {
    let mut chain = event_chain.to_vec();
    if anymeta_configured && !chain.iter().any(|b| b == "anymeta") {
        chain.insert(0, "anymeta".into());
    }
    chain
}

/// The backends one identity instance can use.
#[derive(Clone)]
pub struct Backends {
    pub voter_key: VoterKey,
    pub anymeta: Option<AnyMetaBackend>,
    pub csv: Option<Arc<CsvPeople>>,
}

impl Backends {
    /// Only the local backends (file, anonymous).
    pub fn local(voter_key: VoterKey) -> Self {
        Backends {
            voter_key,
            anymeta: None,
            csv: None,
        }
    }

    /// The chain this instance asks for `config`'s event.
    pub fn chain(&self, config: &EventConfig) -> Vec<String> {
        effective_chain(&config.identity_chain(), self.anymeta.is_some())
    }

    /// Asks the chain, in order.
    pub async fn resolve(&self, config: &EventConfig, uid: &[u8]) -> Lookup {
        for name in self.chain(config) {
            let answer = match name.as_str() {
                "file" => match file_lookup(config, uid) {
                    Lookup::Unknown => self.csv_lookup(uid),
                    found => found,
                },
                "csv" => match &self.csv {
                    Some(_) => self.csv_lookup(uid),
                    None => Lookup::Unavailable(Unavailable::new(
                        "event asks for the csv backend but TAGPOLL_IDENTITY_CSV is not set",
                    )),
                },
                "anonymous" => Lookup::Found(self.anonymous(uid)),
                "anymeta" => match &self.anymeta {
                    Some(backend) => match backend.lookup(uid).await {
                        AnyMetaAnswer::Person(person) => Lookup::Found(v1::Voter {
                            voter_id: format!("anymeta:{}", person.rsc_id),
                            display_name: person.display_name,
                            backend: "anymeta".into(),
                            profile_url: person.profile_url,
                            anonymous: false,
                        }),
                        AnyMetaAnswer::NoPerson => Lookup::Unknown,
                        AnyMetaAnswer::Unavailable(u) => Lookup::Unavailable(u),
                    },
                    None => Lookup::Unavailable(Unavailable::new(
                        "event asks for the anymeta backend but no TAGPOLL_ANYMETA_ENTRYPOINT is configured",
                    )),
                },
                other => Lookup::Unavailable(Unavailable::new(format!(
                    "unknown identity backend {other:?}"
                ))),
            };
            match answer {
                Lookup::Unknown => continue,
                decided => return decided,
            }
        }
        Lookup::Unknown
    }

    /// The voter a tag is when nobody is known to own it.
    pub fn anonymous(&self, uid: &[u8]) -> v1::Voter {
        v1::Voter {
            voter_id: format!("anon:{}", self.voter_key.pseudonym(uid)),
            display_name: String::new(),
            backend: "anonymous".into(),
            profile_url: String::new(),
            anonymous: true,
        }
    }

    fn csv_lookup(&self, uid: &[u8]) -> Lookup {
        match self.csv.as_ref().and_then(|c| c.tags.get(&uid_hex(uid))) {
            Some(owner) => Lookup::Found(file_voter(owner)),
            None => Lookup::Unknown,
        }
    }
}

fn file_voter(owner: &v1::TagOwner) -> v1::Voter {
    v1::Voter {
        voter_id: format!("file:{}", owner.person_id),
        display_name: owner.display_name.clone(),
        backend: "file".into(),
        profile_url: String::new(),
        anonymous: false,
    }
}

/// Tags listed in the event file (KV keys `tag.{UID}`).
pub fn file_lookup(config: &EventConfig, uid: &[u8]) -> Lookup {
    match config.tags.get(&uid_hex(uid)) {
        Some(owner) => Lookup::Found(file_voter(owner)),
        None => Lookup::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn config_with(chain: &[&str]) -> EventConfig {
        let mut c = EventConfig::default();
        let ev = v1::EventSettings {
            identity_chain: chain.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        c.apply("event", Some(&ev.encode_to_vec()), 1);
        let owner = v1::TagOwner {
            tag_uid_hex: "04A1B2C3".into(),
            person_id: "alice".into(),
            display_name: "Alice".into(),
        };
        c.apply("tag.04A1B2C3", Some(&owner.encode_to_vec()), 2);
        c
    }

    fn backends() -> Backends {
        Backends::local(VoterKey::new(*b"0123456789abcdef").unwrap())
    }

    #[tokio::test]
    async fn file_first_then_anonymous() {
        let c = config_with(&["file", "anonymous"]);
        let b = backends();
        let Lookup::Found(v) = b.resolve(&c, &[0x04, 0xA1, 0xB2, 0xC3]).await else {
            panic!("alice not found")
        };
        assert_eq!(v.voter_id, "file:alice");
        let Lookup::Found(v) = b.resolve(&c, &[1, 2, 3, 4]).await else {
            panic!("anonymous fallback missing")
        };
        assert!(v.anonymous);
        assert!(v.voter_id.starts_with("anon:"));
        assert!(!v.voter_id.contains("01020304"), "raw UID leaked");
    }

    #[tokio::test]
    async fn unknown_without_anonymous_and_unavailable_stops_chain() {
        let b = backends();
        assert_eq!(
            b.resolve(&config_with(&["file"]), &[9, 9, 9, 9]).await,
            Lookup::Unknown
        );
        let r = b
            .resolve(&config_with(&["anymeta", "anonymous"]), &[9, 9, 9, 9])
            .await;
        assert!(
            matches!(r, Lookup::Unavailable(_)),
            "outage must not fall back: {r:?}"
        );
    }

    #[tokio::test]
    async fn file_backend_falls_through_to_the_csv_file() {
        let mut b = backends();
        b.csv = Some(Arc::new(
            CsvPeople::parse("7E6FD7A0,bob,Bob\n04A1B2C3,not-alice,X\n", "p.csv").unwrap(),
        ));
        let c = config_with(&["file"]);
        let Lookup::Found(v) = b.resolve(&c, &[0x7E, 0x6F, 0xD7, 0xA0]).await else {
            panic!("bob not found")
        };
        assert_eq!(
            (v.voter_id.as_str(), v.display_name.as_str()),
            ("file:bob", "Bob")
        );
        // The event file wins where both list a tag.
        let Lookup::Found(v) = b.resolve(&c, &[0x04, 0xA1, 0xB2, 0xC3]).await else {
            panic!("alice not found")
        };
        assert_eq!(v.voter_id, "file:alice");
        let Lookup::Found(v) = b
            .resolve(&config_with(&["csv"]), &[0x04, 0xA1, 0xB2, 0xC3])
            .await
        else {
            panic!("csv-only lookup failed")
        };
        assert_eq!(v.voter_id, "file:not-alice");
        let r = backends()
            .resolve(&config_with(&["csv", "anonymous"]), &[1, 2, 3, 4])
            .await;
        assert!(matches!(r, Lookup::Unavailable(_)), "{r:?}");
    }

    #[test]
    fn configured_anymeta_goes_first_unless_placed() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            effective_chain(&s(&["file", "anonymous"]), true),
            s(&["anymeta", "file", "anonymous"])
        );
        assert_eq!(
            effective_chain(&s(&["file", "anymeta"]), true),
            s(&["file", "anymeta"])
        );
        assert_eq!(
            effective_chain(&s(&["file", "anonymous"]), false),
            s(&["file", "anonymous"])
        );
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = VoterKey::new(*b"0123456789abcdef").unwrap();
        let b = VoterKey::new(*b"fedcba9876543210").unwrap();
        assert_eq!(a.pseudonym(&[1, 2, 3]), a.pseudonym(&[1, 2, 3]));
        assert_ne!(a.pseudonym(&[1, 2, 3]), b.pseudonym(&[1, 2, 3]));
        assert!(VoterKey::new(*b"short").is_err());
    }
}
