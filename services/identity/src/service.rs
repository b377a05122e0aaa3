//! Wiring: TAGPOLL_READS → backend chain → TAGPOLL_IDENTIFIED.
//!
//! Each read is acknowledged only after its identified read was stored by
//! JetStream, so a crash at any point re-delivers it; the identified read
//! carries the read id as `Nats-Msg-Id`, so a re-delivery stores nothing new.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, message::Message};
use futures::StreamExt;
use prost::Message as _;
use tagpoll_bus::{BusError, config::EventConfig, heartbeat::Stats, publish};
use tagpoll_proto::{names, subjects, v1};
use tokio::sync::watch;
use tracing::Instrument;

use crate::backend::{Backends, Lookup};

/// How long before an unacknowledged read is re-delivered.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Delay before retrying a read whose backend was unavailable.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Runs the identity loop until the consumer's message stream ends.
pub async fn run(
    js: jetstream::Context,
    config: watch::Receiver<Arc<EventConfig>>,
    backends: Backends,
    stats: Arc<Stats>,
) -> Result<(), BusError> {
    let stream = js
        .get_stream(names::STREAM_READS)
        .await
        .map_err(|e| BusError::js("looking up reads stream", e))?;
    let consumer = stream
        .get_or_create_consumer(
            names::CONSUMER_IDENTITY,
            pull::Config {
                durable_name: Some(names::CONSUMER_IDENTITY.into()),
                description: Some("identity instances resolve taps to voters".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 1000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BusError::js("creating identity consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::js("consuming reads", e))?;
    tracing::info!("identity consuming {}", names::STREAM_READS);
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reads consumer hiccup");
                stats.error(&e);
                continue;
            }
        };
        let config = config.borrow().clone();
        handle(&js, &config, &backends, &stats, msg).await;
    }
    Ok(())
}

async fn handle(
    js: &jetstream::Context,
    config: &EventConfig,
    backends: &Backends,
    stats: &Stats,
    msg: Message,
) {
    let read: v1::TagRead = match tagpoll_bus::decode(&msg.subject, &msg.payload) {
        Ok(r) => r,
        Err(e) => {
            // Poison message: retrying cannot help. Terminate it, loudly.
            tracing::error!(error = %e, "dropping undecodable read");
            stats.error(&e);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::info_span!("identify", read_id = %read.read_id, reader = %read.reader_id);
    async {
        let identity = match backends.resolve(config, &read.tag_uid).await {
            Lookup::Found(voter) => v1::identified_read::Identity::Voter(voter),
            Lookup::Unknown => v1::identified_read::Identity::Unknown(v1::UnknownTag {
                reason: "tag not known to any identity backend".into(),
                hint: config
                    .event
                    .as_ref()
                    .map(|e| e.unknown_tag_hint.clone())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "Link your tag to your account, then tap again.".into()),
            }),
            Lookup::Unavailable(why) => {
                tracing::warn!(%why, "identity unavailable; read stays in the stream for a retry");
                stats.error(&why);
                let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                return;
            }
        };
        let identified = v1::IdentifiedRead {
            read_id: read.read_id.clone(),
            device_id: read.device_id.clone(),
            reader_id: read.reader_id.clone(),
            read_at: read.read_at,
            device_seq: read.device_seq,
            identity: Some(identity),
            identified_at: Some(tagpoll_proto::now()),
        };
        let subject = subjects::identified(&read.device_id, &read.reader_id);
        match publish::publish_for_read(js, subject, &read.read_id, identified.encode_to_vec().into())
            .await
        {
            Ok(_) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack failed; the read will be re-delivered and de-duplicated");
                }
                stats.handled_one();
                tracing::debug!("identified");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store identified read; retrying later");
                stats.error(&e);
                let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }
    .instrument(span)
    .await
}
