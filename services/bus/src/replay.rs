//! Reading a stream from the start up to "now": rebuilding state, replays, exports.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::BusError;

/// How long a replay waits for its next message.
pub const REPLAY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Calls `f(stream_seq, subject, payload)` for every message of `stream`
/// (optionally only `filter`) stored when the call began, in order.
/// Returns the last sequence seen (0 for an empty stream).
pub async fn replay<F>(
    js: &jetstream::Context,
    stream: &str,
    filter: Option<&str>,
    mut f: F,
) -> Result<u64, BusError>
where
    F: FnMut(u64, &str, &[u8]),
{
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|e| BusError::js(format!("looking up stream {stream}"), e))?;
    let state = handle
        .info()
        .await
        .map_err(|e| BusError::js(format!("info of stream {stream}"), e))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(state.last_sequence);
    }
    let end = state.last_sequence;
    let consumer = handle
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subject: filter.unwrap_or_default().to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js(format!("replay consumer on {stream}"), e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::js(format!("replaying {stream}"), e))?;
    let mut last = 0;
    // With a filter the last stored message may not match; stop once the
    // consumer has nothing pending instead of waiting for `end`.
    while last < end {
        // Bounded: a consumer that delivers nothing (a cluster electing a
        // leader) fails the replay, and its caller retries, instead of
        // hanging a service silently.
        let msg = tokio::time::timeout(REPLAY_PATIENCE, messages.next())
            .await
            .map_err(|_| {
                BusError::js(
                    format!("replaying {stream}"),
                    format!("no message within {} s", REPLAY_PATIENCE.as_secs()),
                )
            })?
            .ok_or_else(|| BusError::js(format!("replaying {stream}"), "stream ended early"))?
            .map_err(|e| BusError::js(format!("replaying {stream}"), e))?;
        let info = msg
            .info()
            .map_err(|e| BusError::js(format!("replaying {stream}"), e))?;
        last = info.stream_sequence;
        let pending = info.pending;
        f(last, &msg.subject, &msg.payload);
        if pending == 0 {
            break;
        }
    }
    Ok(last.max(if filter.is_none() { end } else { last }))
}
