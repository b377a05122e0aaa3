//! Writing the event configuration into KV bucket `tagpoll_config`.
//!
//! Services follow that bucket live, so every change here takes effect
//! without a restart. Updates of one poll use compare-and-set on the KV
//! revision, so two organisers changing the same poll never lose a change.

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;
use tagpoll_proto::names::config_keys;
use tagpoll_proto::v1;

/// A validated event, ready to be stored (parsed by `tagpoll check/load`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub settings: v1::EventSettings,
    pub polls: Vec<v1::PollDefinition>,
    pub readers: Vec<v1::ReaderMapping>,
    pub tags: Vec<v1::TagOwner>,
}

/// Errors writing configuration.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("KV {op} of {key} failed: {message}")]
    Kv {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("no poll {0:?} is loaded (see `tagpoll load`)")]
    UnknownPoll(String),
    #[error("poll {poll:?} has no answer {answer:?}; it has {answers}")]
    UnknownAnswer {
        poll: String,
        answer: String,
        answers: String,
    },
    #[error("{0}")]
    Invalid(String),
}

fn kv_err(op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Kv {
        op,
        key: key.to_string(),
        message: e.to_string(),
    }
}

async fn put(store: &kv::Store, key: String, msg: &impl Message) -> Result<(), StoreError> {
    store
        .put(&key, Bytes::from(msg.encode_to_vec()))
        .await
        .map(|_| ())
        .map_err(|e| kv_err("put", &key, e))
}

/// What `load` did, for the user.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub polls_new: usize,
    pub polls_updated: usize,
    pub readers: usize,
    pub readers_removed: usize,
    pub tags: usize,
    pub tags_removed: usize,
}

/// Stores an event. Polls already loaded keep their live state (open or
/// closed, run, hidden) so reloading a corrected file during an event does
/// not reopen or reset anything; readers and tags no longer in the file are
/// removed.
pub async fn load(store: &kv::Store, event: &Event) -> Result<LoadReport, StoreError> {
    let mut report = LoadReport::default();
    put(store, config_keys::EVENT.into(), &event.settings).await?;
    for poll in &event.polls {
        let key = config_keys::poll(&poll.poll_id);
        let mut poll = poll.clone();
        match current::<v1::PollDefinition>(store, &key).await? {
            Some((live, _)) => {
                poll.state = live.state;
                poll.run = live.run;
                poll.results_hidden = live.results_hidden;
                report.polls_updated += 1;
            }
            None => report.polls_new += 1,
        }
        put(store, key, &poll).await?;
    }
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| kv_err("keys", "*", e))?
        .try_collect()
        .await
        .map_err(|e| kv_err("keys", "*", e))?;
    let readers: std::collections::HashSet<_> = event
        .readers
        .iter()
        .map(|r| config_keys::reader(&r.reader_id))
        .collect();
    let tags: std::collections::HashSet<_> = event
        .tags
        .iter()
        .map(|t| config_keys::tag(&t.tag_uid_hex))
        .collect();
    for key in keys {
        let stale_reader = key.starts_with(config_keys::READER_PREFIX) && !readers.contains(&key);
        let stale_tag = key.starts_with(config_keys::TAG_PREFIX) && !tags.contains(&key);
        if stale_reader || stale_tag {
            store
                .delete(&key)
                .await
                .map_err(|e| kv_err("delete", &key, e))?;
            report.readers_removed += stale_reader as usize;
            report.tags_removed += stale_tag as usize;
        }
    }
    for r in &event.readers {
        put(store, config_keys::reader(&r.reader_id), r).await?;
        report.readers += 1;
    }
    for t in &event.tags {
        put(store, config_keys::tag(&t.tag_uid_hex), t).await?;
        report.tags += 1;
    }
    Ok(report)
}

async fn current<M: Message + Default>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(M, u64)>, StoreError> {
    match store.entry(key).await.map_err(|e| kv_err("get", key, e))? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let m = M::decode(entry.value.as_ref()).map_err(|e| {
                StoreError::Invalid(format!("{key} holds an undecodable value: {e}"))
            })?;
            Ok(Some((m, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Changes one poll with compare-and-set, retrying on a concurrent change.
pub async fn update_poll(
    store: &kv::Store,
    poll_id: &str,
    mut change: impl FnMut(&mut v1::PollDefinition),
) -> Result<v1::PollDefinition, StoreError> {
    let key = config_keys::poll(poll_id);
    loop {
        let (mut poll, revision) = current::<v1::PollDefinition>(store, &key)
            .await?
            .ok_or_else(|| StoreError::UnknownPoll(poll_id.to_string()))?;
        change(&mut poll);
        match store
            .update(&key, Bytes::from(poll.encode_to_vec()), revision)
            .await
        {
            Ok(_) => return Ok(poll),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(kv_err("update", &key, e)),
        }
    }
}

/// Points a reader at a poll answer (creating the mapping if needed).
pub async fn map_reader(
    store: &kv::Store,
    reader_id: &str,
    poll_id: &str,
    answer_id: &str,
) -> Result<(), StoreError> {
    tagpoll_proto::ids::check_id(reader_id)
        .map_err(|e| StoreError::Invalid(format!("reader id {reader_id:?} {e}")))?;
    let (poll, _) = current::<v1::PollDefinition>(store, &config_keys::poll(poll_id))
        .await?
        .ok_or_else(|| StoreError::UnknownPoll(poll_id.to_string()))?;
    if !poll.answers.iter().any(|a| a.id == answer_id) {
        return Err(StoreError::UnknownAnswer {
            poll: poll_id.into(),
            answer: answer_id.into(),
            answers: poll
                .answers
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let key = config_keys::reader(reader_id);
    let location = current::<v1::ReaderMapping>(store, &key)
        .await?
        .map(|(m, _)| m.location)
        .unwrap_or_default();
    put(
        store,
        key,
        &v1::ReaderMapping {
            reader_id: reader_id.into(),
            poll_id: poll_id.into(),
            answer_id: answer_id.into(),
            location,
        },
    )
    .await
}
