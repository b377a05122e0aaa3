//! A live, typed view of the event configuration in KV bucket `tagpoll_config`.
//!
//! Services never read the event file: `tagpoll load` stores polls, reader
//! mappings, file-backend tags and event settings in KV, and [`follow`] keeps
//! an in-memory [`EventConfig`] in step with every later change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tagpoll_proto::names::config_keys;
use tagpoll_proto::v1;
use tokio::sync::watch;

use crate::BusError;

/// Everything configured for the event, as last seen in KV.
#[derive(Debug, Default, Clone)]
pub struct EventConfig {
    pub event: Option<v1::EventSettings>,
    pub polls: BTreeMap<String, v1::PollDefinition>,
    pub readers: BTreeMap<String, v1::ReaderMapping>,
    pub tags: HashMap<String, v1::TagOwner>,
    /// Highest KV revision applied.
    pub revision: u64,
}

/// Where a reader's taps go, resolved against the current polls.
#[derive(Debug, Clone, PartialEq)]
pub enum ReaderTarget<'a> {
    /// The reader has no mapping.
    Unmapped,
    /// Mapped to a poll or answer that does not exist (any more).
    Dangling {
        poll_id: &'a str,
        answer_id: &'a str,
    },
    /// Mapped to an existing answer of an existing poll.
    Answer {
        poll: &'a v1::PollDefinition,
        answer_id: &'a str,
    },
}

impl EventConfig {
    /// Applies one KV entry (a put with its value, or a delete with `None`).
    /// Undecodable values are logged and ignored, never applied half-way.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, revision: u64) {
        self.revision = self.revision.max(revision);
        fn put<M: prost::Message + Default>(
            map_key: &str,
            key: &str,
            value: Option<&[u8]>,
        ) -> Option<Option<M>> {
            match value {
                None => Some(None),
                Some(bytes) => match M::decode(bytes) {
                    Ok(m) => Some(Some(m)),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "ignoring undecodable config entry {map_key}");
                        None
                    }
                },
            }
        }
        if key == config_keys::EVENT {
            if let Some(v) = put::<v1::EventSettings>("event", key, value) {
                self.event = v;
            }
        } else if let Some(id) = key.strip_prefix(config_keys::POLL_PREFIX) {
            if let Some(v) = put::<v1::PollDefinition>("poll", key, value) {
                set(&mut self.polls, id, v);
            }
        } else if let Some(id) = key.strip_prefix(config_keys::READER_PREFIX) {
            if let Some(v) = put::<v1::ReaderMapping>("reader", key, value) {
                set(&mut self.readers, id, v);
            }
        } else if let Some(id) = key.strip_prefix(config_keys::TAG_PREFIX) {
            match put::<v1::TagOwner>("tag", key, value) {
                Some(Some(v)) => {
                    self.tags.insert(id.to_string(), v);
                }
                Some(None) => {
                    self.tags.remove(id);
                }
                None => {}
            }
        }
    }

    /// Polls in the event file's order.
    pub fn polls_in_order(&self) -> Vec<&v1::PollDefinition> {
        let mut polls: Vec<_> = self.polls.values().collect();
        polls.sort_by(|a, b| (a.position, &a.poll_id).cmp(&(b.position, &b.poll_id)));
        polls
    }

    /// What a tap at `reader_id` would vote for right now.
    pub fn target(&self, reader_id: &str) -> ReaderTarget<'_> {
        let Some(mapping) = self.readers.get(reader_id) else {
            return ReaderTarget::Unmapped;
        };
        match self.polls.get(&mapping.poll_id) {
            Some(poll) if poll.answers.iter().any(|a| a.id == mapping.answer_id) => {
                ReaderTarget::Answer {
                    poll,
                    answer_id: &mapping.answer_id,
                }
            }
            _ => ReaderTarget::Dangling {
                poll_id: &mapping.poll_id,
                answer_id: &mapping.answer_id,
            },
        }
    }

    /// Identity backends to ask, in order; defaults to file then anonymous.
    pub fn identity_chain(&self) -> Vec<String> {
        match &self.event {
            Some(e) if !e.identity_chain.is_empty() => e.identity_chain.clone(),
            _ => vec!["file".into(), "anonymous".into()],
        }
    }
}

fn set<M>(map: &mut BTreeMap<String, M>, id: &str, value: Option<M>) {
    match value {
        Some(v) => {
            map.insert(id.to_string(), v);
        }
        None => {
            map.remove(id);
        }
    }
}

/// Loads the whole configuration, then follows changes in the background.
///
/// Returns once the snapshot reflects everything stored at call time, so a
/// service never handles a tap against a half-loaded config.
pub async fn follow(
    js: &jetstream::Context,
    kv: kv::Store,
) -> Result<watch::Receiver<Arc<EventConfig>>, BusError> {
    let stream_name = format!("KV_{}", tagpoll_proto::names::KV_CONFIG);
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| BusError::js(format!("looking up {stream_name}"), e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| BusError::js(format!("info of {stream_name}"), e))?
        .state
        .last_sequence;

    let (tx, rx) = watch::channel(Arc::new(EventConfig::default()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(watch_loop(kv, last, tx, ready_tx));
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| BusError::js("loading config", "timed out after 30 s"))?
        .map_err(|_| BusError::js("loading config", "watch ended before it was loaded"))?;
    Ok(rx)
}

async fn watch_loop(
    kv: kv::Store,
    loaded_at: u64,
    tx: watch::Sender<Arc<EventConfig>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    if loaded_at == 0
        && let Some(r) = ready.take()
    {
        let _ = r.send(());
    }
    let mut config = EventConfig::default();
    loop {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "config watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "config watch error; re-watching");
                    break;
                }
            };
            let value = match entry.operation {
                kv::Operation::Put => Some(entry.value.as_ref()),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            config.apply(&entry.key, value, entry.revision);
            tx.send_replace(Arc::new(config.clone()));
            if entry.revision >= loaded_at
                && let Some(r) = ready.take()
            {
                let _ = r.send(());
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn poll(id: &str, answers: &[&str]) -> v1::PollDefinition {
        v1::PollDefinition {
            poll_id: id.into(),
            answers: answers
                .iter()
                .map(|a| v1::Answer {
                    id: (*a).into(),
                    label: a.to_uppercase(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn applies_puts_and_deletes_and_resolves_targets() {
        let mut c = EventConfig::default();
        c.apply(
            "poll.p",
            Some(&poll("p", &["yes", "no"]).encode_to_vec()),
            1,
        );
        let m = v1::ReaderMapping {
            reader_id: "r1".into(),
            poll_id: "p".into(),
            answer_id: "yes".into(),
            ..Default::default()
        };
        c.apply("reader.r1", Some(&m.encode_to_vec()), 2);
        assert!(matches!(
            c.target("r1"),
            ReaderTarget::Answer {
                answer_id: "yes",
                ..
            }
        ));
        assert_eq!(c.target("r2"), ReaderTarget::Unmapped);
        c.apply("poll.p", None, 3);
        assert!(matches!(c.target("r1"), ReaderTarget::Dangling { .. }));
        assert_eq!(c.revision, 3);
    }

    #[test]
    fn ignores_garbage_values() {
        let mut c = EventConfig::default();
        c.apply("poll.p", Some(&poll("p", &["a"]).encode_to_vec()), 1);
        c.apply("poll.p", Some(&[0xff, 0xff, 0xff]), 2);
        assert_eq!(c.polls["p"].answers.len(), 1);
    }
}
