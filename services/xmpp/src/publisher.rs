//! Publishing to pubsub nodes: an outbox where the latest results per node
//! win, and one task that drains it through the XMPP client, creating
//! missing nodes and retrying with backoff while the server is away.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tagpoll_bus::heartbeat::Stats;
use tokio::sync::Notify;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;

use crate::pubsub::{self, ErrorKind, NodeConfig};
use crate::xml::to_xml;
use crate::xmpp::{IqError, XmppHandle};

/// At most this many vote notifications wait; the oldest are dropped beyond.
pub const MAX_QUEUED_VOTES: usize = 10_000;

/// What a node is for; decides its configuration at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// One item per poll, the latest results: `max_items` 1.
    Results,
    /// ikPoll vote notifications: the last 20 votes.
    Votes,
}

impl NodeKind {
    fn config(self, node: &str) -> NodeConfig {
        match self {
            NodeKind::Results => NodeConfig {
                title: format!("tagpoll results {node}"),
                max_items: 1,
            },
            NodeKind::Votes => NodeConfig {
                title: format!("tagpoll votes {node}"),
                max_items: 20,
            },
        }
    }
}

/// One item to publish.
#[derive(Debug, Clone)]
pub struct Job {
    pub node: String,
    pub item_id: String,
    pub payload: Element,
    pub kind: NodeKind,
}

#[derive(Default)]
struct State {
    /// Latest results job per node, and the order nodes were queued in.
    results: HashMap<String, Job>,
    order: VecDeque<String>,
    votes: VecDeque<Job>,
    /// Nodes known to exist on the server (since the last reconnect).
    created: HashSet<String>,
    /// Last payload published per results node (since the last reconnect).
    published: HashMap<String, String>,
}

/// The queue between the bridge and the publishing task.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    reset: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the results item of a node, replacing one not yet sent.
    pub fn put_results(&self, job: Job) {
        let mut s = self.lock();
        if s.results.insert(job.node.clone(), job.clone()).is_none() {
            s.order.push_back(job.node);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Queues a vote notification.
    pub fn put_vote(&self, job: Job) {
        let mut s = self.lock();
        s.votes.push_back(job);
        while s.votes.len() > MAX_QUEUED_VOTES {
            if let Some(old) = s.votes.pop_front() {
                tracing::warn!(node = %old.node, item = %old.item_id, "vote notification dropped: too many queued");
            }
        }
        drop(s);
        self.wake.notify_one();
    }

    /// After a reconnect: nodes and items may be gone, so forget what was
    /// created and published, and cut short any retry delay.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.created.clear();
        s.published.clear();
        drop(s);
        self.reset.notify_one();
    }

    /// Jobs waiting (results nodes + votes).
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.results.len() + s.votes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self) -> Option<Job> {
        let mut s = self.lock();
        if let Some(node) = s.order.pop_front() {
            return s.results.remove(&node);
        }
        s.votes.pop_front()
    }

    async fn next(&self) -> Job {
        loop {
            if let Some(j) = self.take() {
                return j;
            }
            self.wake.notified().await;
        }
    }

    /// Puts a failed job back, unless newer results for its node came in.
    fn retry(&self, job: Job) {
        let mut s = self.lock();
        match job.kind {
            NodeKind::Results => {
                if !s.results.contains_key(&job.node) {
                    s.order.push_front(job.node.clone());
                    s.results.insert(job.node.clone(), job);
                }
            }
            NodeKind::Votes => s.votes.push_front(job),
        }
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    /// The server refuses (not an admin, not a publisher): retrying will not help.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// Link down, timeout, transient error: retry later.
    #[error("{0}")]
    Retry(String),
}

fn classify(what: &str, e: IqError) -> (Option<ErrorKind>, PublishError) {
    match e {
        IqError::Stanza(se) => {
            let kind = pubsub::classify(&se);
            let text = format!("{what}: {}", pubsub::describe(&se));
            match kind {
                ErrorKind::Refused => (Some(kind), PublishError::Refused(text)),
                _ => (Some(kind), PublishError::Retry(text)),
            }
        }
        other => (None, PublishError::Retry(format!("{what}: {other}"))),
    }
}

/// Drains the outbox forever.
pub async fn run(outbox: Arc<Outbox>, xmpp: XmppHandle, service: Jid, stats: Arc<Stats>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let job = outbox.next().await;
        match publish(&outbox, &xmpp, &service, &job).await {
            Ok(sent) => {
                backoff = Duration::from_millis(500);
                if sent {
                    stats.handled_one();
                    tracing::debug!(node = %job.node, item = %job.item_id, "published");
                }
            }
            Err(PublishError::Refused(e)) => {
                stats.error(&e);
                tracing::error!(
                    node = %job.node,
                    error = %e,
                    "publish refused; dropped (is the bridge's JID allowed to create and publish nodes \
                     on {service}? On Prosody 0.12 it must be listed in `admins`)"
                );
            }
            Err(PublishError::Retry(e)) => {
                stats.error(&e);
                tracing::warn!(node = %job.node, error = %e, retry_in = ?backoff, "publish failed; will retry");
                outbox.retry(job);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = outbox.reset.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Publishes one job; Ok(false) when it was skipped as unchanged.
async fn publish(
    outbox: &Outbox,
    xmpp: &XmppHandle,
    service: &Jid,
    job: &Job,
) -> Result<bool, PublishError> {
    let xml = to_xml(&job.payload);
    if job.kind == NodeKind::Results && outbox.lock().published.get(&job.node) == Some(&xml) {
        return Ok(false);
    }
    let mut tried_create = false;
    if !outbox.lock().created.contains(&job.node) {
        create(outbox, xmpp, service, job).await?;
        tried_create = true;
    }
    let request = pubsub::publish_item(&job.node, &job.item_id, job.payload.clone());
    match xmpp.set(service, request.clone()).await {
        Ok(_) => {}
        Err(e) => {
            let (kind, err) = classify("publish", e);
            if kind != Some(ErrorKind::NoNode) || tried_create {
                return Err(err);
            }
            // The node vanished (server data wiped, node deleted): create it again.
            outbox.lock().created.remove(&job.node);
            create(outbox, xmpp, service, job).await?;
            xmpp.set(service, request)
                .await
                .map_err(|e| classify("publish", e).1)?;
        }
    }
    if job.kind == NodeKind::Results {
        outbox.lock().published.insert(job.node.clone(), xml);
    }
    Ok(true)
}

async fn create(
    outbox: &Outbox,
    xmpp: &XmppHandle,
    service: &Jid,
    job: &Job,
) -> Result<(), PublishError> {
    let request = pubsub::create_node(&job.node, &job.kind.config(&job.node));
    match xmpp.set(service, request).await {
        Ok(_) => tracing::info!(node = %job.node, %service, "created node"),
        Err(e) => match classify("create node", e) {
            (Some(ErrorKind::Exists), _) => {}
            (_, err) => return Err(err),
        },
    }
    outbox.lock().created.insert(job.node.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::element;

    fn job(node: &str, item: &str, kind: NodeKind) -> Job {
        let mut payload = element("x", "urn:t");
        crate::xml::set_attr(&mut payload, "v", item);
        Job {
            node: node.into(),
            item_id: item.into(),
            payload,
            kind,
        }
    }

    #[test]
    fn latest_results_per_node_win_votes_keep_order() {
        let o = Outbox::default();
        o.put_results(job("a", "1", NodeKind::Results));
        o.put_vote(job("v", "r1", NodeKind::Votes));
        o.put_results(job("b", "1", NodeKind::Results));
        o.put_results(job("a", "2", NodeKind::Results));
        o.put_vote(job("v", "r2", NodeKind::Votes));
        assert_eq!(o.len(), 4);
        let order: Vec<(String, String)> = std::iter::from_fn(|| o.take())
            .map(|j| (j.node, j.item_id))
            .collect();
        assert_eq!(
            order,
            [
                ("a".into(), "2".into()),
                ("b".into(), "1".into()),
                ("v".into(), "r1".into()),
                ("v".into(), "r2".into())
            ]
        );
    }

    #[test]
    fn retry_does_not_overwrite_newer_results() {
        let o = Outbox::default();
        o.put_results(job("a", "new", NodeKind::Results));
        o.retry(job("a", "old", NodeKind::Results));
        assert_eq!(o.take().unwrap().item_id, "new");
        assert!(o.take().is_none());
        o.retry(job("a", "old", NodeKind::Results));
        assert_eq!(o.take().unwrap().item_id, "old");
    }
}
