//! The NATS edge and the bridge's core loop.
//!
//! Inputs: `PollResults` on `tagpoll.results.*` (plus the KV bucket
//! `tagpoll_results`, read at start, after every XMPP reconnect and after
//! every NATS reconnect), the event config (KV `tagpoll_config`, followed),
//! vote outcomes (an ordered consumer on TAGPOLL_VOTES, only with ikPoll
//! notifications on), voter names from the tally's reader feedback on
//! `tagpoll.feedback.>` (only in ikPoll's personal mode) and the XMPP
//! client's events. Outputs: jobs in the
//! [`Outbox`] and `XmppNotification`s on `tagpoll.xmpp.in.{node}`.
//!
//! One task owns all state; nothing here waits for XMPP answers (the
//! publisher task does), so a slow or absent server never stalls NATS.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use prost::Message as _;
use tagpoll_bus::config::EventConfig;
use tagpoll_bus::heartbeat::Stats;
use tagpoll_proto::{names, subjects, v1};
use tokio::sync::{mpsc, watch};
use tokio_xmpp::jid::{BareJid, Jid};

use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::ikpoll::{self, VoteHold};
use crate::publisher::{self, Job, NodeKind, Outbox};
use crate::pubsub::{self, NotificationError};
use crate::results::{self, PollSnapshot};
use crate::xml::to_xml;
use crate::xmpp::{self, Connect, XmppEvent, XmppHandle, XmppOptions};

/// How long to wait for each IQ answer.
pub const IQ_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between two tries of a failed subscription to a listened node.
pub const SUBSCRIBE_RETRY: Duration = Duration::from_secs(5);

enum Input {
    /// Latest results from the KV bucket.
    Stored(Vec<v1::PollResults>),
    /// A vote outcome and its stream sequence.
    Outcome(u64, Box<v1::VoteOutcome>),
    /// A voter's name for a read id (personal mode).
    Name { read_id: String, name: String },
}

/// Runs the bridge until the XMPP client or a NATS subscription ends for good.
/// `connect` comes from [`Connect::from_config`] (checked before NATS is touched).
pub async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    results_kv: kv::Store,
    config: watch::Receiver<Arc<EventConfig>>,
    cfg: Config,
    connect: Connect,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    tracing::info!(
        jid = %cfg.jid,
        pubsub = %cfg.pubsub,
        node = cfg.node.as_str(),
        ikpoll = cfg.ikpoll.is_some(),
        listen = cfg.listen.len(),
        ?connect,
        "starting XMPP bridge"
    );
    let (xmpp, xmpp_events, _client_task) = xmpp::spawn(XmppOptions {
        jid: cfg.jid.clone(),
        password: cfg.password.clone(),
        connect,
        iq_timeout: IQ_TIMEOUT,
    });
    let outbox = Arc::new(Outbox::default());
    tokio::spawn(publisher::run(
        outbox.clone(),
        xmpp.clone(),
        Jid::from(cfg.pubsub.clone()),
        stats.clone(),
    ));

    let results_sub = client
        .subscribe(subjects::RESULTS_ALL)
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", subjects::RESULTS_ALL))?;
    let (inputs_tx, inputs) = mpsc::channel(1024);
    let reload = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(load_results_loop(
        results_kv,
        reload.clone(),
        inputs_tx.clone(),
    ));
    tokio::spawn(watch_nats_reconnects(client.clone(), reload.clone()));
    if let Some(ik) = &cfg.ikpoll {
        if ik.personal {
            // Subscribed before the vote stream is followed. A vote waits for
            // its feedback as it waits for its results (at most 2 s); the
            // title stays empty only if the feedback never came.
            let names = client
                .subscribe(subjects::FEEDBACK_ALL)
                .await
                .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", subjects::FEEDBACK_ALL))?;
            tokio::spawn(follow_names(names, inputs_tx.clone()));
        }
        // Where "new" votes begin, fixed now: a vote stored from here on is
        // notified even if following the stream needs a retry first.
        let last_stored = match js.get_stream(names::STREAM_VOTES).await {
            Ok(s) => Some(s.cached_info().state.last_sequence),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look at the vote stream yet; votes are notified from when it answers");
                None
            }
        };
        tokio::spawn(follow_outcomes(js, last_stored, inputs_tx.clone()));
    }

    let mut bridge = Bridge {
        own_jid: cfg.jid.to_bare(),
        coalescer: Coalescer::new(cfg.interval),
        cfg,
        client,
        xmpp,
        outbox,
        config: config.borrow().clone(),
        results: HashMap::new(),
        holds: VoteHold::default(),
        names: ikpoll::VoterNames::default(),
        listeners: Vec::new(),
        stats,
        warned_no_event: false,
    };
    bridge.mark_all();
    bridge
        .run(results_sub, inputs, config, xmpp_events, reload)
        .await
}

struct Bridge {
    cfg: Config,
    own_jid: BareJid,
    client: async_nats::Client,
    xmpp: XmppHandle,
    outbox: Arc<Outbox>,
    config: Arc<EventConfig>,
    results: HashMap<String, v1::PollResults>,
    coalescer: Coalescer,
    holds: VoteHold,
    names: ikpoll::VoterNames,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
    warned_no_event: bool,
}

impl Bridge {
    async fn run(
        &mut self,
        mut results_sub: async_nats::Subscriber,
        mut inputs: mpsc::Receiver<Input>,
        mut config: watch::Receiver<Arc<EventConfig>>,
        mut xmpp_events: mpsc::Receiver<XmppEvent>,
        reload: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<()> {
        let mut config_open = true;
        loop {
            let deadline = [self.coalescer.next_deadline(), self.holds.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                m = results_sub.next() => {
                    let Some(m) = m else {
                        anyhow::bail!("results subscription ended");
                    };
                    match tagpoll_bus::decode::<v1::PollResults>(&m.subject, &m.payload) {
                        Ok(r) => self.on_results(r),
                        Err(e) => tracing::warn!(error = %e, "skipping results message"),
                    }
                }
                i = inputs.recv() => match i {
                    Some(Input::Stored(all)) => all.into_iter().for_each(|r| self.on_results(r)),
                    Some(Input::Outcome(seq, o)) => self.holds.push(seq, *o, Instant::now()),
                    Some(Input::Name { read_id, name }) => self.names.insert(read_id, name),
                    None => anyhow::bail!("input tasks ended"),
                },
                changed = config.changed(), if config_open => {
                    if changed.is_err() {
                        config_open = false;
                        tracing::warn!("config watch ended; keeping the last config");
                    } else {
                        self.config = config.borrow_and_update().clone();
                        self.mark_all();
                    }
                }
                ev = xmpp_events.recv() => match ev {
                    None => anyhow::bail!("the XMPP client task ended"),
                    Some(XmppEvent::Online { resumed, .. }) => {
                        self.on_online(resumed);
                        reload.notify_one();
                    }
                    Some(XmppEvent::Message(m)) => self.on_message(&m).await,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            self.flush(Instant::now());
        }
    }

    fn on_results(&mut self, r: v1::PollResults) {
        if tagpoll_proto::ids::check_id(&r.poll_id).is_err() {
            tracing::warn!(poll = %r.poll_id, "skipping results with a bad poll id");
            return;
        }
        tracing::debug!(poll = %r.poll_id, total = r.total, votes_seq = r.votes_seq, "results");
        let mut r = r;
        match self.results.get(&r.poll_id) {
            Some(old) if !results::supersedes(&r, old) => return,
            // A refresh (or a vote elsewhere): keep the time of the last
            // change, so the payload stays the same and is not republished.
            Some(old) if results::same_content(&r, old) => r.updated_at = old.updated_at,
            _ => self.coalescer.mark(&r.poll_id),
        }
        self.results.insert(r.poll_id.clone(), r);
    }

    fn poll_ids(&self) -> HashSet<String> {
        self.config
            .polls
            .keys()
            .chain(self.results.keys())
            .cloned()
            .collect()
    }

    fn mark_all(&mut self) {
        for p in self.poll_ids() {
            self.coalescer.mark(&p);
        }
    }

    fn on_online(&mut self, resumed: bool) {
        if !resumed {
            self.outbox.reset();
        }
        self.mark_all();
        for l in self.listeners.drain(..) {
            l.abort();
        }
        for entry in self.cfg.listen.clone() {
            let xmpp = self.xmpp.clone();
            let jid = self.own_jid.to_string();
            self.listeners.push(tokio::spawn(async move {
                let service = Jid::from(entry.service.clone());
                loop {
                    match xmpp
                        .set(&service, pubsub::subscribe(&entry.node, &jid))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(service = %entry.service, node = %entry.node, "subscribed");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(
                                service = %entry.service, node = %entry.node, error = %e,
                                retry_in = ?SUBSCRIBE_RETRY, "cannot subscribe"
                            );
                            tokio::time::sleep(SUBSCRIBE_RETRY).await;
                        }
                    }
                }
            }));
        }
    }

    async fn on_message(&mut self, m: &tokio_xmpp::parsers::message::Message) {
        let items = match pubsub::parse_notification(m) {
            Ok(items) => items,
            Err(NotificationError::NotAnEvent) => {
                tracing::debug!(from = %pubsub::jid_str(m.from.as_ref()), "ignoring a message that is no pubsub event");
                return;
            }
            Err(e) => {
                tracing::warn!(from = %pubsub::jid_str(m.from.as_ref()), error = %e, "skipping a malformed notification");
                return;
            }
        };
        for n in items {
            let listened = self
                .cfg
                .listen
                .iter()
                .any(|l| l.service.to_string() == n.service && l.node == n.node);
            if !listened {
                tracing::debug!(service = %n.service, node = %n.node, "ignoring a notification from a node not listened to");
                continue;
            }
            let msg = v1::XmppNotification {
                service: n.service,
                node: n.node,
                item_id: n.item_id,
                payload_xml: n.payload.as_ref().map(to_xml).unwrap_or_default(),
                publisher: n.publisher,
                received_at: Some(tagpoll_proto::now()),
            };
            let subject = subjects::xmpp_in(&msg.node);
            match self
                .client
                .publish(subject.clone(), msg.encode_to_vec().into())
                .await
            {
                Ok(()) => {
                    self.stats.handled_one();
                    tracing::debug!(%subject, item = %msg.item_id, "notification forwarded to NATS");
                }
                Err(e) => {
                    self.stats.error(&e);
                    tracing::warn!(%subject, error = %e, "cannot forward notification");
                }
            }
        }
    }

    fn event_id(&self) -> Option<&str> {
        self.config
            .event
            .as_ref()
            .map(|e| e.event_id.as_str())
            .filter(|e| !e.is_empty())
    }

    /// The node for `poll` under `template`, if the event id is known (when needed).
    fn node(&mut self, template: &crate::config::NodeTemplate, poll: &str) -> Option<String> {
        match self.event_id() {
            Some(e) => Some(template.render(e, poll)),
            None if !template.needs_event() => Some(template.render("", poll)),
            None => {
                if !self.warned_no_event {
                    self.warned_no_event = true;
                    tracing::warn!(
                        template = template.as_str(),
                        "no event settings in KV yet (tagpoll load): cannot name nodes; waiting"
                    );
                }
                None
            }
        }
    }

    fn snapshot(&self, poll: &str) -> Option<PollSnapshot> {
        results::snapshot(self.config.polls.get(poll), self.results.get(poll))
    }

    fn flush(&mut self, now: Instant) {
        for poll in self.coalescer.due(now) {
            let Some(s) = self.snapshot(&poll) else {
                continue;
            };
            let template = self.cfg.node.clone();
            let Some(node) = self.node(&template, &poll) else {
                continue;
            };
            let payload = results::results_payload(self.event_id().unwrap_or_default(), &s);
            self.outbox.put_results(Job {
                node,
                item_id: poll,
                payload,
                kind: NodeKind::Results,
            });
        }
        if self.holds.is_empty() {
            return;
        }
        let Some(ik) = self.cfg.ikpoll.clone() else {
            return;
        };
        let results = &self.results;
        let names = &self.names;
        let ready = self.holds.take_ready(
            |poll| results.get(poll).map_or(0, |r| r.votes_seq),
            |read_id| !ik.personal || names.contains(read_id),
            now,
        );
        for (held, included) in ready {
            let o = held.outcome;
            let Some(s) = self.snapshot(&o.poll_id) else {
                continue;
            };
            let Some(node) = self.node(&ik.node, &o.poll_id) else {
                continue;
            };
            let counts = ikpoll::counts_with_vote(&s, &o, included);
            let name = if ik.personal {
                self.names.take(&o.read_id)
            } else {
                String::new()
            };
            let payload = ikpoll::vote_payload(&o, &counts, &name);
            self.outbox.put_vote(Job {
                node,
                item_id: o.read_id.clone(),
                payload,
                kind: NodeKind::Votes,
            });
        }
    }
}

/// Reads every poll's latest results from KV now and whenever `reload` fires.
/// A failing read (e.g. the bucket is gone after a server restart, until
/// the tally recreates it) is retried with backoff; results keep arriving
/// on the subject meanwhile.
async fn load_results_loop(
    kv: kv::Store,
    reload: Arc<tokio::sync::Notify>,
    out: mpsc::Sender<Input>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match load_results(&kv).await {
            Ok(all) => {
                tracing::debug!(polls = all.len(), "read latest results from KV");
                backoff = Duration::from_secs(1);
                if out.send(Input::Stored(all)).await.is_err() {
                    return;
                }
                reload.notified().await;
            }
            Err(e) => {
                if backoff == Duration::from_secs(1) {
                    tracing::warn!(error = %e, "cannot read results from KV; retrying");
                } else {
                    tracing::debug!(error = %e, "cannot read results from KV; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = reload.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn load_results(kv: &kv::Store) -> anyhow::Result<Vec<v1::PollResults>> {
    let mut keys = kv.keys().await?;
    let mut names_ = Vec::new();
    while let Some(k) = keys.next().await {
        names_.push(k?);
    }
    let mut out = Vec::new();
    for key in names_ {
        let Some(value) = kv.get(&key).await? else {
            continue;
        };
        match tagpoll_bus::decode::<v1::PollResults>(&key, &value) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "skipping bad results entry"),
        }
    }
    Ok(out)
}

/// Fires `reload` after each NATS reconnect: results published on the
/// subject while the link was down are only in KV.
async fn watch_nats_reconnects(client: async_nats::Client, reload: Arc<tokio::sync::Notify>) {
    let stats = client.statistics();
    let mut seen = stats.connects.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = stats.connects.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            tracing::info!("NATS reconnected; re-reading results");
            reload.notify_one();
        }
    }
}

/// Passes voter names from the tally's reader feedback to the bridge.
async fn follow_names(mut feedback: async_nats::Subscriber, out: mpsc::Sender<Input>) {
    while let Some(m) = feedback.next().await {
        match tagpoll_bus::decode::<v1::ReaderFeedback>(&m.subject, &m.payload) {
            Ok(v1::ReaderFeedback {
                outcome: Some(o),
                display_name,
            }) if ikpoll::is_notified(&o) => {
                let name = Input::Name {
                    read_id: o.read_id,
                    name: display_name,
                };
                if out.send(name).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping undecodable reader feedback"),
        }
    }
    tracing::warn!("feedback subscription ended; personal votes go out without names");
}

/// Follows the vote stream with an ordered consumer from just after
/// `last_seq` (the stream's last sequence when the bridge started; `None`:
/// when the stream first answers); after an error it resumes right after
/// the last outcome seen.
async fn follow_outcomes(
    js: jetstream::Context,
    mut last_seq: Option<u64>,
    out: mpsc::Sender<Input>,
) {
    loop {
        let messages = async {
            let stream = js.get_stream(names::STREAM_VOTES).await?;
            let state = &stream.cached_info().state;
            let mut after = *last_seq.get_or_insert(state.last_sequence);
            if state.last_sequence < after {
                // Sequences went back: the stream was deleted and made anew.
                tracing::warn!(
                    last_seen = after,
                    stream_last = state.last_sequence,
                    "the vote stream starts over; following it from its beginning"
                );
                after = state.first_sequence.saturating_sub(1);
                last_seq = Some(after);
            }
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    filter_subject: subjects::OUTCOMES_ALL.to_string(),
                    ..Default::default()
                })
                .await?;
            anyhow::Ok(consumer.messages().await?)
        }
        .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the vote stream; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "vote stream error; resuming");
                    break;
                }
            };
            let seq = match m.info() {
                Ok(i) => i.stream_sequence,
                Err(e) => {
                    tracing::warn!(error = %e, "vote without stream info; skipped");
                    continue;
                }
            };
            if last_seq.is_some_and(|l| seq <= l) {
                // The client's ordered consumer, re-made before its first message, starts
                // over from the stream's beginning: what we passed on already stays passed.
                continue;
            }
            last_seq = Some(seq);
            match tagpoll_bus::decode::<v1::VoteOutcome>(&m.subject, &m.payload) {
                Ok(o) if ikpoll::is_notified(&o) => {
                    if out.send(Input::Outcome(seq, Box::new(o))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping undecodable vote outcome"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
