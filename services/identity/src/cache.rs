//! The shared lookup cache: anyMeta's answers in JetStream KV bucket `tagpoll_identity_cache`,
//! so every identity instance (and a restarted one) profits from every lookup.
//!
//! - Key: `anymeta.{h}` where `h` is HMAC-SHA256 (the voter key) of the entry point and the tag
//!   UID, 128 bits in hex. Raw UIDs never reach the bucket, and a different anyMeta site gives
//!   different keys.
//! - Value: JSON `{"exp": <unix ms>, "person": {...} | null}`. KV `max_age` is per bucket, so
//!   the two lifetimes (a known tag for [`CacheTtl::known`], an unknown one for the much
//!   shorter [`CacheTtl::unknown`], so a freshly linked tag works soon) are expiry timestamps in
//!   the value; an expired entry counts as missing. The bucket's own `max_age`
//!   ([`BUCKET_MAX_AGE`]) only cleans up.
//! - Best effort: a failing KV read is a miss and a failing write is logged; neither ever
//!   decides a read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tagpoll_bus::BusError;
use tagpoll_proto::names;

use crate::anymeta::Person;

/// How long the bucket keeps any entry, whatever its expiry says (longer TTLs are capped).
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Bucket size limit; when full, new entries are not cached (lookups still work).
pub const BUCKET_MAX_BYTES: i64 = 64 * 1024 * 1024;

/// Lifetimes of cached answers; zero disables caching that kind of answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl {
    pub known: Duration,
    pub unknown: Duration,
}

impl Default for CacheTtl {
    fn default() -> Self {
        CacheTtl {
            known: Duration::from_secs(3600),
            unknown: Duration::from_secs(60),
        }
    }
}

/// One cached anyMeta answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// Expiry, milliseconds since the Unix epoch.
    exp: u64,
    /// `None`: anyMeta said no person has the tag.
    person: Option<Person>,
}

/// Handle to the cache; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    kv: Option<kv::Store>,
    secret: Vec<u8>,
    scope: String,
    ttl: CacheTtl,
}

/// Creates (or finds) the cache bucket: memory storage (a cache need not survive a server
/// restart), history 1, [`BUCKET_MAX_AGE`].
pub async fn ensure_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    tagpoll_bus::topology::ensure_identity_cache(js, BUCKET_MAX_AGE, BUCKET_MAX_BYTES).await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Cache {
    /// `secret` keys the hash (the voter key); `scope` separates sites (the entry point).
    pub fn new(kv: Option<kv::Store>, secret: &[u8], scope: &str, ttl: CacheTtl) -> Self {
        Cache {
            kv,
            secret: secret.to_vec(),
            scope: scope.to_string(),
            ttl,
        }
    }

    /// A cache that never hits (no bucket).
    pub fn disabled() -> Self {
        Cache::new(None, b"", "", CacheTtl::default())
    }

    /// The KV key for a tag: never contains the UID.
    pub fn key(&self, uid: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"tagpoll-identity-cache/v1\0");
        mac.update(self.scope.as_bytes());
        mac.update(b"\0");
        mac.update(uid);
        format!(
            "{}{}",
            names::identity_cache_keys::ANYMETA_PREFIX,
            hex::encode(&mac.finalize().into_bytes()[..16])
        )
    }

    /// `Some(answer)` for a live entry; `None` for a miss, an expired entry or a KV error.
    pub async fn get(&self, uid: &[u8]) -> Option<Option<Person>> {
        let kv = self.kv.as_ref()?;
        let key = self.key(uid);
        match kv.get(key.as_str()).await {
            Ok(Some(bytes)) => decode(&bytes, now_ms()),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "identity cache read failed; treating as a miss");
                None
            }
        }
    }

    /// Stores an answer with the lifetime of its kind.
    pub async fn put(&self, uid: &[u8], person: Option<&Person>) {
        let Some(kv) = &self.kv else { return };
        let ttl = if person.is_some() {
            self.ttl.known
        } else {
            self.ttl.unknown
        };
        if ttl.is_zero() {
            return;
        }
        let value = encode(person, now_ms().saturating_add(ttl.as_millis() as u64));
        if let Err(e) = kv.put(self.key(uid), value).await {
            tracing::warn!(error = %e, "identity cache write failed; the next lookup asks anyMeta again");
        }
    }
}

fn encode(person: Option<&Person>, exp: u64) -> Bytes {
    let entry = Entry {
        exp,
        person: person.cloned(),
    };
    serde_json::to_vec(&entry)
        .expect("cache entries serialise")
        .into()
}

fn decode(bytes: &[u8], now_ms: u64) -> Option<Option<Person>> {
    let entry: Entry = serde_json::from_slice(bytes).ok()?;
    (entry.exp > now_ms).then_some(entry.person)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> Person {
        Person {
            rsc_id: "1234".into(),
            display_name: "Jan".into(),
            profile_url: "http://site/id/1234".into(),
        }
    }

    #[test]
    fn entries_expire_and_unknown_is_distinct_from_a_miss() {
        let known = encode(Some(&person()), 2_000);
        assert_eq!(decode(&known, 1_999), Some(Some(person())));
        assert_eq!(decode(&known, 2_000), None);
        let unknown = encode(None, 2_000);
        assert_eq!(decode(&unknown, 1_000), Some(None));
        assert_eq!(decode(b"garbage", 0), None);
    }

    #[test]
    fn keys_hide_the_uid_and_depend_on_secret_and_site() {
        let uid = [0x04, 0xA1, 0xB2, 0xC3];
        let a = Cache::new(
            None,
            b"0123456789abcdef",
            "http://a/services/rest/",
            CacheTtl::default(),
        );
        let b = Cache::new(
            None,
            b"fedcba9876543210",
            "http://a/services/rest/",
            CacheTtl::default(),
        );
        let c = Cache::new(
            None,
            b"0123456789abcdef",
            "http://c/services/rest/",
            CacheTtl::default(),
        );
        let k = a.key(&uid);
        assert!(k.starts_with("anymeta."), "{k}");
        assert_eq!(k.len(), "anymeta.".len() + 32);
        assert!(!k.to_uppercase().contains("04A1B2C3"));
        assert_eq!(k, a.key(&uid));
        assert_ne!(k, b.key(&uid));
        assert_ne!(k, c.key(&uid));
        assert_ne!(k, a.key(&[0x04, 0xA1, 0xB2, 0xC4]));
    }
}
