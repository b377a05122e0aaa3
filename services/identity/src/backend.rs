//! The backend chain: who owns a tag?
//!
//! Backends are asked in the event's order. Only a clear "unknown" moves on
//! to the next one; a backend that is unavailable stops the chain, because
//! falling back during an outage could let one person vote twice under two
//! identities. The caller then retries the read later.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::v1;

use crate::anymeta::{AnyMetaClient, AnyMetaError};

/// What one backend (or the whole chain) said about a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(v1::Voter),
    Unknown,
    /// Could not tell right now (outage, timeout, bad answer): retry later.
    Unavailable(String),
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
}

/// Uppercase hex of every UID byte: the form used in KV keys and anyMeta URNs.
pub fn uid_hex(uid: &[u8]) -> String {
    hex::encode_upper(uid)
}

/// The backends one identity instance can use.
#[derive(Clone)]
pub struct Backends {
    pub voter_key: VoterKey,
    pub anymeta: Option<AnyMetaClient>,
}

impl Backends {
    /// Asks the chain named in the event settings, in order.
    pub async fn resolve(&self, config: &EventConfig, uid: &[u8]) -> Lookup {
        for name in config.identity_chain() {
            let answer = match name.as_str() {
                "file" => file_lookup(config, uid),
                "anonymous" => Lookup::Found(self.anonymous(uid)),
                "anymeta" => match &self.anymeta {
                    Some(client) => anymeta_lookup(client, uid).await,
                    None => Lookup::Unavailable(
                        "event asks for the anymeta backend but no TAGPOLL_ANYMETA_ENTRYPOINT is configured".into(),
                    ),
                },
                other => Lookup::Unavailable(format!("unknown identity backend {other:?}")),
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
}

/// Tags listed in the event file (KV keys `tag.{UID}`).
pub fn file_lookup(config: &EventConfig, uid: &[u8]) -> Lookup {
    match config.tags.get(&uid_hex(uid)) {
        Some(owner) => Lookup::Found(v1::Voter {
            voter_id: format!("file:{}", owner.person_id),
            display_name: owner.display_name.clone(),
            backend: "file".into(),
            profile_url: String::new(),
            anonymous: false,
        }),
        None => Lookup::Unknown,
    }
}

async fn anymeta_lookup(client: &AnyMetaClient, uid: &[u8]) -> Lookup {
    match client.identify_rfid(uid).await {
        Ok(Some(person)) => Lookup::Found(v1::Voter {
            voter_id: format!("anymeta:{}", person.rsc_id),
            display_name: person.display_name,
            backend: "anymeta".into(),
            profile_url: person.profile_url,
            anonymous: false,
        }),
        Ok(None) => Lookup::Unknown,
        Err(e) => Lookup::Unavailable(describe(&e)),
    }
}

fn describe(e: &AnyMetaError) -> String {
    format!("anyMeta: {e}")
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
        Backends {
            voter_key: VoterKey::new(*b"0123456789abcdef").unwrap(),
            anymeta: None,
        }
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

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = VoterKey::new(*b"0123456789abcdef").unwrap();
        let b = VoterKey::new(*b"fedcba9876543210").unwrap();
        assert_eq!(a.pseudonym(&[1, 2, 3]), a.pseudonym(&[1, 2, 3]));
        assert_ne!(a.pseudonym(&[1, 2, 3]), b.pseudonym(&[1, 2, 3]));
        assert!(VoterKey::new(*b"short").is_err());
    }
}
