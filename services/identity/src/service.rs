//! Wiring: TAGPOLL_READS → backend chain → TAGPOLL_IDENTIFIED.
//!
//! The pipeline of one instance:
//!
//! 1. **Intake.** Reads come from the durable pull consumer `identity` (shared by every
//!    instance), one pull batch at a time ([`crate::intake`]). Up to
//!    [`ServiceOptions::concurrency`] reads are resolved at once, each in its own task
//!    (lookups of one tag share one anyMeta call, see [`crate::anymeta_backend`]).
//! 2. **In order.** Results are taken in the order the reads arrived (a `FuturesOrdered`), so
//!    when nothing fails `TAGPOLL_IDENTIFIED` keeps `TAGPOLL_READS` order.
//! 3. **Per-tag gate.** A read is published only when no earlier read of the same tag is still
//!    waiting anywhere ([`crate::order::Ledger`]); if the earlier one is our own publish in
//!    flight we wait for its ack, otherwise the read is handed back (nak) to come again shortly.
//! 4. **Tap moment.** Each read gets its one trusted time ([`crate::tap_moment`]): when
//!    `TAGPOLL_READS` stored it, or for a tap that waited in its reader box's spool, the
//!    device's `read_at` corrected by the device's clock offset (measured from its heartbeats,
//!    [`crate::device_clocks`]) and bounded by the device's previous stored tap. That lookup
//!    runs alongside the backend lookup; when it fails the read is handed back shortly.
//! 5. **Publish, then ack.** The `IdentifiedRead` goes to `tagpoll.identified.{device}.{reader}`
//!    with `Nats-Msg-Id` = read id (pipelined); the read is acknowledged only after JetStream
//!    acknowledged that publish, so a crash at any point re-delivers it, and a re-delivery
//!    stores nothing new.
//!
//! A backend that is unavailable makes the read go back to JetStream (nak) with a delay that
//! grows with its deliveries (and is at least the anyMeta breaker's cool-down), plus jitter:
//! nothing is dropped and nothing falls back to another backend.
//!
//! **Stopping.** When the shutdown future resolves, no new batch of reads is asked for
//! ([`crate::intake`]); what the current batch still brings is handed back at once (nak
//! without delay), lookups still running are cancelled and their reads handed back too, and
//! publishes in flight are waited for and acked, for at most [`STOP_LIMIT`]. Another
//! instance (or the next start) then gets those reads right away instead of after
//! [`ACK_WAIT`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, consumer::pull, context::PublishAckFuture, message::Message,
};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use tagpoll_bus::dead_letter::DeadLetter;
use tagpoll_bus::{BusError, config::EventConfig, heartbeat::Stats, publish};
use tagpoll_proto::{names, subjects, v1};
use tokio::sync::watch;
use tracing::Instrument;

use crate::backend::{Backends, Lookup};
use crate::counters::{Counters, inc};
use crate::device_clocks::{self, DeviceClocks, LookupError};
use crate::intake::{BATCH_EXPIRES, Intake};
use crate::order::Ledger;
use crate::tap_moment::{self, Moment, Plan};

/// How long before an unacknowledged read is re-delivered.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Most reads the `identity` consumer hands out unacknowledged, all instances together.
pub const MAX_ACK_PENDING: i64 = 1000;
/// Longest a stop waits for the reads it holds (lookups, publishes) before it exits anyway.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Longest nak delay of a read held back for an earlier tap of its tag.
pub const ORDER_RETRY_MAX: Duration = Duration::from_secs(1);
/// Longest wait at start for the device heartbeats already stored (so a spooled tap arriving
/// right after a restart still finds its device's clock).
pub const CLOCKS_CATCH_UP: Duration = Duration::from_secs(10);
/// Shown at the kiosk for an unknown tag when the event has no `unknown_tag_hint`.
pub const DEFAULT_UNKNOWN_HINT: &str = "Link your tag to your account, then tap again.";

/// Tunables of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Reads resolved at once (`TAGPOLL_IDENTITY_CONCURRENCY`).
    pub concurrency: usize,
    /// Nak delay for the first re-try of an unavailable read; doubled per delivery.
    pub retry_base: Duration,
    /// Longest nak delay.
    pub retry_max: Duration,
    /// Nak delay for a read that must let an earlier tap of its tag go first; doubled per
    /// delivery up to `retry_max`.
    pub order_retry: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            concurrency: 256,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            order_retry: Duration::from_millis(200),
        }
    }
}

impl ServiceOptions {
    /// `base · 2^(deliveries-1)`, at least `at_least`, at most `retry_max`, then ±20 % jitter.
    pub fn nak_delay(
        &self,
        base: Duration,
        deliveries: i64,
        at_least: Option<Duration>,
    ) -> Duration {
        let doublings = (deliveries.max(1) - 1).min(10) as u32;
        let d = base
            .saturating_mul(1 << doublings)
            .max(at_least.unwrap_or_default())
            .min(self.retry_max);
        d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }
}

/// Everything one instance needs.
pub struct Identity {
    pub js: jetstream::Context,
    pub config: watch::Receiver<Arc<EventConfig>>,
    pub backends: Backends,
    pub stats: Arc<Stats>,
    pub counters: Arc<Counters>,
    pub options: ServiceOptions,
}

/// Creates (or finds) the shared durable consumer, asking again for up to
/// [`tagpoll_bus::topology::ENSURE_PATIENCE`] while JetStream does not
/// answer (a cluster electing a leader after a node restart): a timeout at
/// start must not end the service.
pub async fn consumer(
    js: &jetstream::Context,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let deadline = tokio::time::Instant::now() + tagpoll_bus::topology::ENSURE_PATIENCE;
    let mut wait = Duration::from_millis(200);
    loop {
        match consumer_once(js).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "identity consumer not ready; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn consumer_once(
    js: &jetstream::Context,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let stream = js
        .get_stream(names::STREAM_READS)
        .await
        .map_err(|e| BusError::js("looking up reads stream", e))?;
    stream
        .get_or_create_consumer(
            names::CONSUMER_IDENTITY,
            pull::Config {
                durable_name: Some(names::CONSUMER_IDENTITY.into()),
                description: Some("identity instances resolve taps to voters".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BusError::js("creating identity consumer", e))
}

/// A read between intake and ack.
struct Ctx {
    msg: Message,
    read: v1::TagRead,
    seq: u64,
    deliveries: i64,
    /// When TAGPOLL_READS stored the read (server clock).
    stored_at: std::time::SystemTime,
    /// No backend knew the tag (for the counters).
    unknown: bool,
    /// The tap moment, once found (set with the lookup's result).
    moment: Option<Moment>,
    span: tracing::Span,
}

type Resolving = FuturesOrdered<BoxFuture<'static, (Ctx, Lookup, Result<Moment, LookupError>)>>;
type Acks = FuturesOrdered<BoxFuture<'static, (Ctx, Result<(), String>)>>;

/// Runs the identity loop until `shutdown` resolves; then the reads this instance holds are
/// acked or handed back (for at most [`STOP_LIMIT`]) before it returns.
pub async fn run(
    identity: Identity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BusError> {
    let consumer = consumer(&identity.js).await?;
    let ledger = Ledger::start(&identity.js, &consumer).await?;
    let (clocks, _follower) = DeviceClocks::start(identity.js.clone());
    if !clocks.wait_caught_up(CLOCKS_CATCH_UP).await {
        tracing::warn!(
            "device heartbeats not read within {CLOCKS_CATCH_UP:?}; until they are, spooled taps \
             count at their arrival"
        );
    }
    let concurrency = identity.options.concurrency.max(1);
    if concurrency as i64 > MAX_ACK_PENDING {
        tracing::warn!(
            concurrency,
            "concurrency exceeds the consumer's max ack pending ({MAX_ACK_PENDING}); \
             JetStream will hand out fewer reads at once"
        );
    }
    tracing::info!(
        concurrency,
        anymeta = identity.backends.anymeta.is_some(),
        csv = identity.backends.csv.is_some(),
        "identity consuming {}",
        names::STREAM_READS
    );
    let (stop, stopping) = watch::channel(false);
    let mut pipe = Pipeline {
        identity: &identity,
        ledger,
        clocks,
        resolving: FuturesOrdered::new(),
        acks: FuturesOrdered::new(),
        in_window: HashSet::new(),
        stopping,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut intake = Intake::new(consumer, concurrency.clamp(1, 500));
    let mut open = true;
    // Set on shutdown: reads still held then come back after the ack wait.
    let mut give_up = None;
    while open || !pipe.resolving.is_empty() || !pipe.acks.is_empty() {
        let can_take = open && pipe.resolving.len() < concurrency && pipe.acks.len() < concurrency;
        let deadline = async {
            match give_up {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut shutdown, if open => {
                tracing::info!(
                    resolving = pipe.resolving.len(),
                    publishing = pipe.acks.len(),
                    "stopping: handing back reads not yet stored"
                );
                open = false;
                give_up = Some(tokio::time::Instant::now() + STOP_LIMIT);
                let _ = stop.send(true);
                hand_back_fetched(&mut intake).await;
            }
            _ = deadline => {
                tracing::warn!(
                    resolving = pipe.resolving.len(),
                    publishing = pipe.acks.len(),
                    "stopping without waiting longer; these reads come again after {ACK_WAIT:?}"
                );
                break;
            }
            Some((ctx, r)) = pipe.acks.next(), if !pipe.acks.is_empty() => pipe.finish(ctx, r).await,
            Some((ctx, lookup, moment)) = pipe.resolving.next(), if !pipe.resolving.is_empty() => {
                pipe.publish_stage(ctx, lookup, moment).await
            }
            Some(m) = intake.next(), if can_take => match m {
                Err(e) => {
                    tracing::warn!(error = %e, "reads consumer hiccup");
                    identity.stats.error(&e);
                }
                Ok(msg) => pipe.intake(msg).await,
            },
        }
    }
    // Acks and naks are buffered by the client; one request answered by the server shows it
    // has read everything sent before (a flush only reaches our own socket).
    let settled = tokio::time::timeout(Duration::from_secs(2), identity.js.query_account()).await;
    if !matches!(settled, Ok(Ok(_))) {
        tracing::warn!(
            "the server did not confirm the last acks; those reads may come again after {ACK_WAIT:?}"
        );
    }
    Ok(())
}

/// Asks for no new batch of reads and hands back (nak, no delay) what the current one still
/// brings. Once that batch has ended the server sends us nothing more, so the reads handed
/// back now and after go to another instance, not to this one again.
async fn hand_back_fetched(intake: &mut Intake) {
    intake.close();
    let drained = tokio::time::timeout(BATCH_EXPIRES + Duration::from_secs(2), async {
        while let Some(m) = intake.next().await {
            if let Ok(msg) = m {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "the last batch of reads did not end; reads still on their way come again after {ACK_WAIT:?}"
        );
    }
}

struct Pipeline<'a> {
    identity: &'a Identity,
    ledger: Arc<Ledger>,
    clocks: Arc<DeviceClocks>,
    resolving: Resolving,
    acks: Acks,
    /// Stream sequences of our publishes awaiting their ack.
    in_window: HashSet<u64>,
    /// Turns true on shutdown: lookups give up and reads go back at once.
    stopping: watch::Receiver<bool>,
}

impl Pipeline<'_> {
    async fn intake(&mut self, msg: Message) {
        let id = self.identity;
        inc(&id.counters.received);
        let (seq, deliveries, stored_at) = match msg.info() {
            Ok(i) => (
                i.stream_sequence,
                i.delivered,
                std::time::SystemTime::from(i.published),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "read without JetStream metadata; leaving it for re-delivery");
                return;
            }
        };
        let mut read: v1::TagRead = match tagpoll_bus::decode(&msg.subject, &msg.payload) {
            Ok(r) => r,
            Err(e) => {
                // Poison message: retrying cannot help.
                self.give_up(&msg, seq, deliveries, &e.to_string()).await;
                return;
            }
        };
        // The read id goes into headers (a newline there makes the NATS
        // client panic) and every later message: a read whose id is not
        // visible ASCII can never be processed. Dead-letter it, loudly,
        // instead of crashing on it at every re-delivery.
        if let Err(why) = tagpoll_proto::ids::check_read_id(&read.read_id) {
            self.give_up(&msg, seq, deliveries, &why).await;
            return;
        }
        // The subject is what NATS permissions check (a reader box may publish
        // only under its own device id); the body is whatever the box wrote.
        // A box must not get votes, or another box's feedback, by writing
        // another device into the body: the subject wins. A subject outside
        // the grammar (`tagpoll.reads.{device}.{reader}`, both valid ids)
        // names no box at all: such a read can never be processed.
        let Some((device, reader)) = subjects::parse_read(&msg.subject) else {
            let why = format!(
                "subject {} is not tagpoll.reads.{{device}}.{{reader}}",
                msg.subject
            );
            self.give_up(&msg, seq, deliveries, &why).await;
            return;
        };
        if let Some(e) = [("device", device), ("reader", reader)]
            .into_iter()
            .find_map(|(what, id)| {
                tagpoll_proto::ids::check_id(id)
                    .err()
                    .map(|e| format!("{what} id {id:?} in subject {} {e}", msg.subject))
            })
        {
            self.give_up(&msg, seq, deliveries, &e).await;
            return;
        }
        if read.device_id != device || read.reader_id != reader {
            tracing::warn!(
                subject = %msg.subject,
                body_device = %read.device_id,
                body_reader = %read.reader_id,
                read_id = %read.read_id,
                "a tap names another device or reader than its subject; using the subject's"
            );
            read.device_id = device.to_string();
            read.reader_id = reader.to_string();
        }
        let span = tracing::info_span!(
            "identify",
            read_id = %read.read_id,
            reader = %read.reader_id,
            seq,
            delivery = deliveries
        );
        let config = id.config.borrow().clone();
        let backends = id.backends.clone();
        let uid = read.tag_uid.clone();
        let mut stopping = self.stopping.clone();
        let moment = self.moment(&read, seq, stored_at);
        let task = tokio::spawn(
            async move {
                let both = futures::future::join(backends.resolve(&config, &uid), moment);
                tokio::select! {
                    both = both => both,
                    _ = stopping.wait_for(|s| *s) => (
                        Lookup::Unavailable(crate::backend::Unavailable::new("shutting down")),
                        Err(LookupError::Request("shutting down".into())),
                    ),
                }
            }
            .instrument(span.clone()),
        );
        let ctx = Ctx {
            msg,
            read,
            seq,
            deliveries,
            stored_at,
            unknown: false,
            moment: None,
            span,
        };
        self.resolving.push_back(
            async move {
                let (lookup, moment) = task.await.unwrap_or_else(|e| {
                    (
                        Lookup::Unavailable(crate::backend::Unavailable::new(format!(
                            "lookup task failed: {e}"
                        ))),
                        Err(LookupError::Request(format!("lookup task failed: {e}"))),
                    )
                });
                (ctx, lookup, moment)
            }
            .boxed(),
        );
    }

    /// A read that can never be processed: copied to the dead letters
    /// (`TAGPOLL_DEAD`, with the reason and origin), then terminated so
    /// nothing behind it waits. When the copy cannot be stored, the read is
    /// handed back to come again later: it is never dropped unseen.
    async fn give_up(&mut self, msg: &Message, seq: u64, deliveries: i64, why: &str) {
        let id = self.identity;
        tracing::error!(subject = %msg.subject, seq, error = %why, "dead-lettering a read that can never be processed");
        id.stats
            .error(format!("read {seq} on {}: {why}", msg.subject));
        inc(&id.counters.poison);
        let letter = DeadLetter {
            service: "identity",
            stream: names::STREAM_READS,
            subject: msg.subject.as_str(),
            sequence: seq,
            payload: &msg.payload,
            reason: why,
        };
        match letter.send(&id.js).await {
            Ok(()) => {
                inc(&id.counters.dead_lettered);
                id.stats.count("dead_lettered");
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "could not store the dead letter; the read comes again");
                let delay = id
                    .options
                    .nak_delay(id.options.retry_base, deliveries, None);
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// The read's tap moment: known at once unless the tap was held in its reader's spool,
    /// then after looking up the device's previous stored tap (the lower bound).
    fn moment(
        &self,
        read: &v1::TagRead,
        seq: u64,
        stored_at: std::time::SystemTime,
    ) -> BoxFuture<'static, Result<Moment, LookupError>> {
        let stored = tap_moment::nanos_of(stored_at);
        let offset = self.clocks.offset(&read.device_id);
        match tap_moment::plan(read.read_at.as_ref(), stored, offset) {
            Plan::Done(m) => futures::future::ready(Ok(m)).boxed(),
            Plan::Held { corrected, offset } => {
                let client = self.identity.js.client();
                let device = read.device_id.clone();
                async move {
                    let previous = device_clocks::previous_tap(
                        &client,
                        &device,
                        seq,
                        device_clocks::LOOKUP_TIMEOUT,
                    )
                    .await?;
                    let lower =
                        previous.map(|p| tap_moment::previous_moment(p.stored, p.read_at, offset));
                    Ok(tap_moment::held(corrected, stored, lower))
                }
                .boxed()
            }
        }
    }

    async fn publish_stage(
        &mut self,
        ctx: Ctx,
        lookup: Lookup,
        moment: Result<Moment, LookupError>,
    ) {
        let span = ctx.span.clone();
        self.publish_stage_inner(ctx, lookup, moment)
            .instrument(span)
            .await
    }

    async fn publish_stage_inner(
        &mut self,
        mut ctx: Ctx,
        lookup: Lookup,
        moment: Result<Moment, LookupError>,
    ) {
        let id = self.identity;
        if *self.stopping.borrow() {
            // Whatever the lookup found, the next instance finds it again (cached).
            let _ = ctx.msg.ack_with(AckKind::Nak(None)).await;
            tracing::debug!("handed back on shutdown");
            return;
        }
        let moment = match moment {
            Ok(m) => m,
            Err(e) => {
                // A held tap's lower bound is never guessed: try again shortly.
                let delay = id
                    .options
                    .nak_delay(id.options.order_retry, ctx.deliveries, None);
                tracing::warn!(error = %e, ?delay, "cannot look up the device's previous tap; retrying the read");
                id.stats.error(&e);
                inc(&id.counters.nak_moment);
                id.stats.count("nak_moment");
                let _ = ctx.msg.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        ctx.moment = Some(moment);
        let identity = match lookup {
            Lookup::Found(voter) => v1::identified_read::Identity::Voter(voter),
            Lookup::Unknown => {
                ctx.unknown = true;
                let config = id.config.borrow().clone();
                v1::identified_read::Identity::Unknown(unknown_tag(&config))
            }
            Lookup::Unavailable(u) => {
                let delay =
                    id.options
                        .nak_delay(id.options.retry_base, ctx.deliveries, u.retry_after);
                tracing::debug!(why = %u.reason, ?delay, "identity unavailable; read stays in the stream for a retry");
                id.stats.error(&u.reason);
                inc(&id.counters.nak_unavailable);
                let _ = ctx.msg.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        // Per-tag order: nothing earlier of this tag may still be on its way.
        if !self.ledger.wait_seen(ctx.seq, Duration::from_secs(5)).await {
            tracing::warn!("reads follower is behind; retrying the read shortly");
            self.nak_for_order(ctx).await;
            return;
        }
        loop {
            let blockers = self.ledger.blockers(&ctx.read.tag_uid, ctx.seq);
            if blockers.is_empty() {
                break;
            }
            if !blockers.iter().all(|b| self.in_window.contains(b)) {
                tracing::debug!(
                    ?blockers,
                    "an earlier tap of this tag is not stored yet; retrying later"
                );
                self.nak_for_order(ctx).await;
                return;
            }
            // Our own earlier publishes: wait for their acks (they come in order).
            while blockers.iter().any(|b| self.in_window.contains(b)) {
                match self.acks.next().await {
                    Some((c, r)) => self.finish(c, r).await,
                    None => break,
                }
            }
        }
        let read = &ctx.read;
        let identified = v1::IdentifiedRead {
            read_id: read.read_id.clone(),
            device_id: read.device_id.clone(),
            reader_id: read.reader_id.clone(),
            read_at: read.read_at,
            device_seq: read.device_seq,
            identity: Some(identity),
            identified_at: Some(tagpoll_proto::now()),
            tapped_at: Some(tap_moment::timestamp_of(moment.at)),
            tap_moment: moment.source as i32,
            stored_at: Some(tagpoll_proto::timestamp(ctx.stored_at)),
        };
        let subject = subjects::identified(&read.device_id, &read.reader_id);
        match publish::send_for_read(
            &id.js,
            subject,
            &read.read_id,
            identified.encode_to_vec().into(),
        )
        .await
        {
            Ok(ack) => {
                self.in_window.insert(ctx.seq);
                self.acks.push_back(wait_ack(ctx, ack).boxed());
            }
            Err(e) => self.nak_publish(ctx, e.to_string()).await,
        }
    }

    async fn finish(&mut self, ctx: Ctx, result: Result<(), String>) {
        self.in_window.remove(&ctx.seq);
        let id = self.identity;
        match result {
            Ok(()) => {
                self.ledger.done_read(&ctx.read.read_id);
                let span = ctx.span.clone();
                async {
                    if let Err(e) = ctx.msg.ack().await {
                        tracing::warn!(error = %e, "ack failed; the read will be re-delivered and de-duplicated");
                    }
                    tracing::debug!(
                        tap_moment = ctx.moment.map_or("", |m| m.source.as_str_name()),
                        "identified"
                    );
                }
                .instrument(span)
                .await;
                id.stats.handled_one();
                inc(&id.counters.identified);
                if ctx.unknown {
                    inc(&id.counters.unknown);
                }
                match ctx.moment.map(|m| m.source) {
                    Some(v1::TapMoment::DeviceClock) => {
                        inc(&id.counters.held);
                        id.stats.count("held");
                    }
                    Some(v1::TapMoment::StoredClockUntrusted) => {
                        inc(&id.counters.clock_untrusted);
                        id.stats.count("clock_untrusted");
                    }
                    _ => {}
                }
            }
            Err(e) => self.nak_publish(ctx, e).await,
        }
    }

    async fn nak_for_order(&mut self, ctx: Ctx) {
        let id = self.identity;
        inc(&id.counters.nak_order);
        // Short and capped: the earlier tap is usually stored within moments.
        let delay = id
            .options
            .nak_delay(id.options.order_retry, ctx.deliveries, None)
            .min(ORDER_RETRY_MAX);
        let _ = ctx.msg.ack_with(AckKind::Nak(Some(delay))).await;
    }

    async fn nak_publish(&mut self, ctx: Ctx, error: String) {
        let id = self.identity;
        tracing::warn!(parent: &ctx.span, %error, "could not store identified read; retrying later");
        id.stats.error(&error);
        inc(&id.counters.nak_publish);
        let delay = id
            .options
            .nak_delay(id.options.retry_base, ctx.deliveries, None);
        let _ = ctx.msg.ack_with(AckKind::Nak(Some(delay))).await;
    }
}

async fn wait_ack(ctx: Ctx, ack: PublishAckFuture) -> (Ctx, Result<(), String>) {
    let r = ack.await.map(|_| ()).map_err(|e| e.to_string());
    (ctx, r)
}

/// The unknown-tag answer, with the event's hint for the kiosk.
pub fn unknown_tag(config: &EventConfig) -> v1::UnknownTag {
    v1::UnknownTag {
        reason: "tag not known to any identity backend".into(),
        hint: config
            .event
            .as_ref()
            .map(|e| e.unknown_tag_hint.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_UNKNOWN_HINT.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_delays_grow_respect_the_breaker_and_are_capped() {
        let o = ServiceOptions::default();
        let within =
            |d: Duration, want: Duration| d >= want.mul_f64(0.79) && d <= want.mul_f64(1.21);
        assert!(within(
            o.nak_delay(o.retry_base, 1, None),
            Duration::from_secs(1)
        ));
        assert!(within(
            o.nak_delay(o.retry_base, 3, None),
            Duration::from_secs(4)
        ));
        assert!(within(
            o.nak_delay(o.retry_base, 50, None),
            Duration::from_secs(10)
        ));
        assert!(within(
            o.nak_delay(o.retry_base, 1, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        ));
        assert!(within(
            o.nak_delay(o.order_retry, 1, None),
            Duration::from_millis(200)
        ));
    }

    #[test]
    fn unknown_tags_carry_the_events_hint() {
        let mut c = EventConfig::default();
        assert_eq!(unknown_tag(&c).hint, DEFAULT_UNKNOWN_HINT);
        c.event = Some(v1::EventSettings {
            unknown_tag_hint: "Go to the desk".into(),
            ..Default::default()
        });
        assert_eq!(unknown_tag(&c).hint, "Go to the desk");
    }
}
