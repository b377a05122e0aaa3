//! Durable publishes: a message derived from a tap is only "sent" once
//! JetStream acknowledged it. `Client::publish` returns Ok while
//! disconnected (it buffers), so it is never used for anything durable.

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use tagpoll_proto::names;

use crate::BusError;

/// Starts a publish with `Nats-Msg-Id` = `read_id`; await the returned
/// future for the ack. Re-publishing the same read is stored once.
pub async fn send_for_read(
    js: &jetstream::Context,
    subject: String,
    read_id: &str,
    payload: Bytes,
) -> Result<PublishAckFuture, BusError> {
    send_with_id(js, subject, read_id, read_id, payload).await
}

/// Like [`send_for_read`] with another `Nats-Msg-Id` than the read id: a
/// second message about the same read (the tally's corrections).
pub async fn send_with_id(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    read_id: &str,
    payload: Bytes,
) -> Result<PublishAckFuture, BusError> {
    let msg = PublishMessage::build()
        .payload(payload)
        .message_id(msg_id)
        .header(names::HEADER_READ_ID, read_id);
    js.send_publish(subject.clone(), msg)
        .await
        .map_err(|e| BusError::js(format!("publish to {subject}"), e))
}

/// Publishes and waits for the ack; returns the stream sequence and whether
/// JetStream recognised it as a duplicate.
pub async fn publish_for_read(
    js: &jetstream::Context,
    subject: String,
    read_id: &str,
    payload: Bytes,
) -> Result<(u64, bool), BusError> {
    let ack = send_for_read(js, subject.clone(), read_id, payload)
        .await?
        .await
        .map_err(|e| BusError::js(format!("ack of publish to {subject}"), e))?;
    Ok((ack.sequence, ack.duplicate))
}
