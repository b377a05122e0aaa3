//! `tagpoll forget PERSON`: the right to be forgotten, as far as tagpoll can.
//!
//! Removes the person's tag mappings (file backend, KV `tag.*`), their
//! entries in the identity cache (anyMeta answers naming them), and records
//! the person under `forgotten.*` in KV `tagpoll_config`, so exports show
//! their votes as `forgotten` even with `--voter-ids`. The vote stream
//! itself is append-only and keeps the pseudonymous outcome (counts must
//! stay reproducible); it never holds a name or a raw tag UID. Names live
//! only in the hand-off stream TAGPOLL_IDENTIFIED, which expires after
//! `TAGPOLL_READS_RETENTION_HOURS` (docs/security.md).

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;
use tagpoll_proto::names::{self, config_keys};
use tagpoll_proto::v1;

/// KV key prefix of forgotten voters in `tagpoll_config`.
pub const FORGOTTEN_PREFIX: &str = "forgotten.";

/// Who to forget: a voter id (`file:alice`, `anymeta:1234`) or a bare
/// person id, which matches both backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub voter_ids: Vec<String>,
    file_id: Option<String>,
    anymeta_id: Option<String>,
}

impl Person {
    pub fn parse(s: &str) -> Result<Person, String> {
        let (file_id, anymeta_id) = match s.split_once(':') {
            Some(("file", id)) => (Some(id), None),
            Some(("anymeta", id)) => (None, Some(id)),
            Some((other, _)) => {
                return Err(format!(
                    "{s:?}: only file:ID and anymeta:ID people can be forgotten ({other:?} voters are already anonymous)"
                ));
            }
            None => (Some(s), Some(s)),
        };
        if s.is_empty()
            || file_id.is_some_and(str::is_empty)
            || anymeta_id.is_some_and(str::is_empty)
        {
            return Err("empty person id".into());
        }
        let mut voter_ids = Vec::new();
        if let Some(f) = file_id {
            voter_ids.push(format!("file:{f}"));
        }
        if let Some(a) = anymeta_id {
            voter_ids.push(format!("anymeta:{a}"));
        }
        Ok(Person {
            voter_ids,
            file_id: file_id.map(str::to_string),
            anymeta_id: anymeta_id.map(str::to_string),
        })
    }
}

/// KV key under which a forgotten voter id is recorded.
pub fn forgotten_key(voter_id: &str) -> String {
    // KV keys cannot hold ':'; hex keeps every voter id representable.
    format!("{FORGOTTEN_PREFIX}{}", hex::encode(voter_id))
}

/// What was removed.
#[derive(Debug, Default, PartialEq)]
pub struct Forgotten {
    pub tags: usize,
    pub cache_entries: usize,
}

/// Whether a cached identity answer (JSON `{"exp":…,"person":{"rsc_id":…}}`) names `rsc_id`.
pub fn cache_entry_names(value: &[u8], rsc_id: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v.get("person").and_then(|p| p.get("rsc_id")).cloned())
        .is_some_and(|id| match id {
            serde_json::Value::String(s) => s == rsc_id,
            serde_json::Value::Number(n) => n.to_string() == rsc_id,
            _ => false,
        })
}

async fn keys(store: &kv::Store) -> Result<Vec<String>, String> {
    store
        .keys()
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())
}

/// Forgets `person` everywhere tagpoll keeps identities.
pub async fn forget(
    js: &jetstream::Context,
    config: &kv::Store,
    person: &Person,
) -> Result<Forgotten, String> {
    let mut done = Forgotten::default();
    if let Some(file_id) = &person.file_id {
        for key in keys(config)
            .await?
            .into_iter()
            .filter(|k| k.starts_with(config_keys::TAG_PREFIX))
        {
            let Some(value) = config.get(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if v1::TagOwner::decode(value.as_ref()).is_ok_and(|o| &o.person_id == file_id) {
                config
                    .purge(&key)
                    .await
                    .map_err(|e| format!("purging {key}: {e}"))?;
                done.tags += 1;
            }
        }
    }
    if let (Some(rsc_id), Ok(cache)) = (
        &person.anymeta_id,
        js.get_key_value(names::KV_IDENTITY_CACHE).await,
    ) {
        for key in keys(&cache).await? {
            let Some(value) = cache.get(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if cache_entry_names(&value, rsc_id) {
                cache
                    .purge(&key)
                    .await
                    .map_err(|e| format!("purging cache {key}: {e}"))?;
                done.cache_entries += 1;
            }
        }
    }
    for id in &person.voter_ids {
        config
            .put(
                forgotten_key(id),
                Bytes::from(crate::audit::rfc3339(Some(&tagpoll_proto::now()))),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(done)
}

/// Voter ids recorded as forgotten.
pub async fn forgotten_voters(
    config: &kv::Store,
) -> Result<std::collections::HashSet<String>, String> {
    Ok(keys(config)
        .await?
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(FORGOTTEN_PREFIX)
                .and_then(|h| hex::decode(h).ok())
        })
        .filter_map(|b| String::from_utf8(b).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_people() {
        assert_eq!(
            Person::parse("file:alice").unwrap().voter_ids,
            ["file:alice"]
        );
        assert_eq!(
            Person::parse("anymeta:12").unwrap().voter_ids,
            ["anymeta:12"]
        );
        assert_eq!(
            Person::parse("12").unwrap().voter_ids,
            ["file:12", "anymeta:12"]
        );
        assert!(Person::parse("anon:abc").is_err());
        assert!(Person::parse("file:").is_err());
    }

    #[test]
    fn matches_cache_entries_by_rsc_id() {
        assert!(cache_entry_names(
            br#"{"exp":1,"person":{"rsc_id":"12","display_name":"A","profile_url":""}}"#,
            "12"
        ));
        assert!(!cache_entry_names(
            br#"{"exp":1,"person":{"rsc_id":"13"}}"#,
            "12"
        ));
        assert!(!cache_entry_names(br#"{"exp":1,"person":null}"#, "12"));
        assert!(!cache_entry_names(b"garbage", "12"));
        assert!(forgotten_key("anymeta:12").starts_with("forgotten."));
    }
}
