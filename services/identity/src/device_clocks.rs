//! The I/O behind tap moments ([`crate::tap_moment`]): device clocks measured from their
//! heartbeats, and the device's previous stored tap.
//!
//! - [`DeviceClocks`] follows `TAGPOLL_HEARTBEATS` (device heartbeats only) with an ordered
//!   consumer, the last heartbeat of every sender first, then new ones, into a
//!   [`ClockBook`]. It retries with backoff when the stream or the consumer fails (the stream
//!   is in memory and vanishes with a server restart until it is put back), and never stops
//!   the service: while it knows nothing, spooled taps count at their arrival.
//! - [`previous_tap`] finds the device's stored tap just below a read with one batch direct
//!   get (`multi_last` over the device's readers, `up_to_seq`), which async-nats has no API
//!   for: a raw request on our own inbox, answered by one message per reader and an
//!   end-of-batch status.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tagpoll_proto::{ids, names, subjects, v1};
use tokio::sync::watch;

use crate::tap_moment::{ClockBook, Nanos, nanos_of, nanos_of_timestamp};

/// First pause after the heartbeat follower failed; doubled per failure up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest pause between attempts of the heartbeat follower.
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// Longest wait for the answer to a previous-tap lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// JetStream's direct get API (no domain: tagpoll uses the default JetStream prefix).
const DIRECT_GET_PREFIX: &str = "$JS.API.DIRECT.GET.";

/// Device clock offsets of one identity instance, kept up to date from heartbeats.
pub struct DeviceClocks {
    book: Mutex<ClockBook>,
    /// True once the heartbeats stored at start have been read.
    caught_up: watch::Sender<bool>,
}

/// Stops the heartbeat follower when dropped.
pub struct Follower(tokio::task::JoinHandle<()>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DeviceClocks {
    /// Clocks that nobody feeds (every device unknown until [`DeviceClocks::record`]).
    pub fn detached() -> Arc<Self> {
        Arc::new(DeviceClocks {
            book: Mutex::new(ClockBook::default()),
            caught_up: watch::channel(false).0,
        })
    }

    /// Starts following the device heartbeats; the follower ends with the returned guard.
    pub fn start(js: jetstream::Context) -> (Arc<Self>, Follower) {
        let clocks = Self::detached();
        let task = tokio::spawn(follow(js, clocks.clone()));
        (clocks, Follower(task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one heartbeat stored on `subject` at `stored`. The device is the one the
    /// subject names (NATS permissions check it), not the body's.
    pub fn record(&self, subject: &str, hb: &v1::Heartbeat, stored: SystemTime) {
        let Some(device) = heartbeat_device(subject) else {
            return;
        };
        self.lock().record(device, hb, nanos_of(stored));
    }

    /// The device's clock offset (server − device), if measured.
    pub fn offset(&self, device: &str) -> Option<Nanos> {
        if ids::check_id(device).is_err() {
            return None;
        }
        self.lock().offset(device)
    }

    /// Waits up to `limit` until the heartbeats stored at start are read; false on time-out.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let mut rx = self.caught_up.subscribe();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|c| *c)).await,
            Ok(Ok(_))
        )
    }

    fn set_caught_up(&self) {
        self.caught_up
            .send_if_modified(|c| !std::mem::replace(c, true));
    }
}

/// The device id in a device heartbeat subject, if it is a valid id.
fn heartbeat_device(subject: &str) -> Option<&str> {
    let prefix = subjects::HEARTBEAT_DEVICES.strip_suffix('>')?;
    let (device, instance) = subject.strip_prefix(prefix)?.split_once('.')?;
    (ids::check_id(device).is_ok() && !instance.is_empty()).then_some(device)
}

/// Follows the heartbeats for ever, starting again (with backoff) after any failure.
async fn follow(js: jetstream::Context, clocks: Arc<DeviceClocks>) {
    let mut pause = RETRY_BASE;
    loop {
        let mut read_any = false;
        let error = follow_once(&js, &clocks, &mut read_any).await;
        if read_any {
            pause = RETRY_BASE;
        }
        tracing::warn!(%error, retry_in = ?pause, "device heartbeat follower stopped; starting again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// One ordered consumer's life; returns why it ended.
async fn follow_once(
    js: &jetstream::Context,
    clocks: &DeviceClocks,
    read_any: &mut bool,
) -> String {
    let stream = match js.get_stream(names::STREAM_HEARTBEATS).await {
        Ok(s) => s,
        Err(e) => return format!("looking up {}: {e}", names::STREAM_HEARTBEATS),
    };
    let consumer = match stream
        .create_consumer(consumer::pull::OrderedConfig {
            // Named, so every create request carries the filter in its subject and the
            // identity role may be allowed to create device-heartbeat consumers only.
            name: Some(format!("identity-clocks-{:016x}", rand::random::<u64>())),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: subjects::HEARTBEAT_DEVICES.to_string(),
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return format!("creating the heartbeat consumer: {e}"),
    };
    if consumer.cached_info().num_pending == 0 {
        clocks.set_caught_up();
    }
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => return format!("reading heartbeats: {e}"),
    };
    while let Some(m) = messages.next().await {
        let msg = match m {
            Ok(m) => m,
            Err(e) => return format!("reading heartbeats: {e}"),
        };
        *read_any = true;
        let Ok(info) = msg.info() else {
            continue;
        };
        let (stored, pending) = (SystemTime::from(info.published), info.pending);
        match tagpoll_bus::decode::<v1::Heartbeat>(&msg.subject, &msg.payload) {
            Ok(hb) => clocks.record(&msg.subject, &hb, stored),
            Err(e) => tracing::debug!(error = %e, "skipping an undecodable heartbeat"),
        }
        if pending == 0 {
            clocks.set_caught_up();
        }
    }
    "the heartbeat consumer ended".into()
}

/// A stored tap of a device, as far as its moment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTap {
    /// Sequence in `TAGPOLL_READS`.
    pub seq: u64,
    /// When `TAGPOLL_READS` stored it.
    pub stored: Nanos,
    /// Its `read_at` (device clock), if it decodes and has one.
    pub read_at: Option<Nanos>,
}

/// Why the device's previous tap could not be found (the read is retried; a lower bound is
/// never guessed).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("device id {0:?} cannot be looked up")]
    BadDevice(String),
    #[error("previous-tap request failed: {0}")]
    Request(String),
    #[error("no answer to the previous-tap request within {0:?}")]
    Timeout(Duration),
    #[error("previous-tap request answered {code} {description}")]
    Status { code: u16, description: String },
    #[error("previous-tap answer unusable: {0}")]
    BadReply(String),
}

/// The device's stored tap with the highest sequence below `seq` (any of its readers), or
/// `None` if it has none.
pub async fn previous_tap(
    client: &async_nats::Client,
    device: &str,
    seq: u64,
    timeout: Duration,
) -> Result<Option<StoredTap>, LookupError> {
    if ids::check_id(device).is_err() {
        return Err(LookupError::BadDevice(device.to_string()));
    }
    let Some(up_to) = seq.checked_sub(1).filter(|s| *s > 0) else {
        return Ok(None);
    };
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| LookupError::Request(e.to_string()))?;
    let body = serde_json::json!({
        "multi_last": [subjects::read(device, "*")],
        "up_to_seq": up_to,
    });
    client
        .publish_with_reply(
            format!("{DIRECT_GET_PREFIX}{}", names::STREAM_READS),
            inbox,
            body.to_string().into(),
        )
        .await
        .map_err(|e| LookupError::Request(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut best: Option<StoredTap> = None;
    loop {
        let msg = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(LookupError::Request("reply subscription ended".into())),
            Err(_) => return Err(LookupError::Timeout(timeout)),
        };
        match msg.status.map(|s| s.as_u16()) {
            // End of batch.
            Some(204) => return Ok(best),
            // Nothing of this device below `seq`.
            Some(404) => return Ok(None),
            Some(code) => {
                return Err(LookupError::Status {
                    code,
                    description: msg.description.unwrap_or_default(),
                });
            }
            None => {
                let tap = parse_stored_tap(device, &msg)?;
                if tap.seq < seq && best.is_none_or(|b| tap.seq > b.seq) {
                    best = Some(tap);
                }
            }
        }
    }
}

/// One message of a batch direct get: sequence and time from its headers, `read_at` from its
/// body (a body that does not decode counts at its stored time).
fn parse_stored_tap(device: &str, msg: &async_nats::Message) -> Result<StoredTap, LookupError> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .ok_or_else(|| LookupError::BadReply(format!("no {name} header")))
    };
    let subject = header("Nats-Subject")?;
    if subjects::parse_read(&subject).is_none_or(|(d, _)| d != device) {
        return Err(LookupError::BadReply(format!(
            "a message of {subject:?} answered for device {device}"
        )));
    }
    let seq = header("Nats-Sequence")?
        .parse::<u64>()
        .map_err(|e| LookupError::BadReply(format!("Nats-Sequence: {e}")))?;
    let stamp = header("Nats-Time-Stamp")?;
    let stored =
        time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
            .map_err(|e| LookupError::BadReply(format!("Nats-Time-Stamp {stamp:?}: {e}")))?
            .unix_timestamp_nanos();
    let read_at = tagpoll_bus::decode::<v1::TagRead>(&subject, &msg.payload)
        .ok()
        .and_then(|r| r.read_at.as_ref().map(nanos_of_timestamp));
    Ok(StoredTap {
        seq,
        stored,
        read_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_comes_from_a_valid_heartbeat_subject_only() {
        let ok = subjects::heartbeat("device", "hall-left", "box-1");
        assert_eq!(heartbeat_device(&ok), Some("hall-left"));
        for bad in [
            subjects::heartbeat("service", "identity", "x"),
            "tagpoll.heartbeat.device.hall".to_string(),
            "tagpoll.heartbeat.device..x".to_string(),
            "tagpoll.heartbeat.device.hall.".to_string(),
        ] {
            assert_eq!(heartbeat_device(&bad), None, "{bad}");
        }
    }

    #[test]
    fn detached_clocks_know_only_what_they_are_told() {
        let clocks = DeviceClocks::detached();
        let now = SystemTime::now();
        let hb = v1::Heartbeat {
            sent_at: Some(tagpoll_proto::timestamp(now - Duration::from_millis(30))),
            nats_connected: true,
            ..Default::default()
        };
        clocks.record(&subjects::heartbeat("device", "a", "i"), &hb, now);
        assert_eq!(clocks.offset("a"), Some(30_000_000));
        assert_eq!(clocks.offset("b"), None);
        assert_eq!(clocks.offset("a.>"), None);
    }
}
