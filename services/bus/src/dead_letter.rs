//! Dead letters: a copy of every message a service gave up on for good.
//!
//! A message that can never be processed (undecodable, a read id that is not
//! header-safe, a subject outside the grammar) is copied to
//! [`names::STREAM_DEAD`] with why and where it came from, and only then
//! terminated at its consumer: nothing accepted vanishes without a trace,
//! and nothing blocks the messages behind it. The copy's `Nats-Msg-Id` is
//! its origin (`{stream}.{sequence}`), so a re-delivered message, or two
//! instances giving up on the same one, is dead-lettered once.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tagpoll_proto::{names, subjects};

use crate::BusError;

/// Longest reason kept in [`names::HEADER_DEAD_REASON`].
pub const MAX_REASON: usize = 1000;
/// Most payload bytes copied; a longer payload is cut (and
/// [`names::HEADER_DEAD_TRUNCATED`] says how long it was), so the copy
/// with its headers always fits the server's `max_payload`.
pub const MAX_COPIED_PAYLOAD: usize = 64 * 1024;

/// A message given up on, and where it was stored.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The service giving up (its role may publish only `tagpoll.dead.{service}`).
    pub service: &'a str,
    /// The stream the message was in.
    pub stream: &'a str,
    /// Its subject there.
    pub subject: &'a str,
    /// Its sequence there.
    pub sequence: u64,
    /// Its payload.
    pub payload: &'a [u8],
    /// Why it can never be processed.
    pub reason: &'a str,
}

/// `s` as a header value: visible ASCII and spaces only (anything else
/// becomes `\xNN`), at most `max` bytes. Header values with `\r` or `\n`
/// make the NATS client panic, so no outside text goes into a header
/// without this.
pub fn header_safe(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for b in s.bytes() {
        let piece = if (0x20..=0x7e).contains(&b) {
            (b as char).to_string()
        } else {
            format!("\\x{b:02x}")
        };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    out.trim().to_string()
}

impl DeadLetter<'_> {
    /// The headers of the copy.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let safe = |s: &str| header_safe(s, MAX_REASON);
        h.insert(
            names::HEADER_MSG_ID,
            format!("{}.{}", safe(self.stream), self.sequence).as_str(),
        );
        let reason = safe(self.reason);
        let reason = if reason.is_empty() {
            "unknown".to_string()
        } else {
            reason
        };
        h.insert(names::HEADER_DEAD_REASON, reason.as_str());
        h.insert(names::HEADER_DEAD_STREAM, safe(self.stream).as_str());
        h.insert(names::HEADER_DEAD_SUBJECT, safe(self.subject).as_str());
        h.insert(
            names::HEADER_DEAD_SEQUENCE,
            self.sequence.to_string().as_str(),
        );
        h.insert(names::HEADER_DEAD_SERVICE, safe(self.service).as_str());
        if self.payload.len() > MAX_COPIED_PAYLOAD {
            h.insert(
                names::HEADER_DEAD_TRUNCATED,
                self.payload.len().to_string().as_str(),
            );
        }
        h
    }

    /// Stores the copy in [`names::STREAM_DEAD`] and waits for JetStream's
    /// ack: only then may the caller terminate the original.
    pub async fn send(&self, js: &jetstream::Context) -> Result<(), BusError> {
        let body = &self.payload[..self.payload.len().min(MAX_COPIED_PAYLOAD)];
        js.publish_with_headers(
            subjects::dead(self.service),
            self.headers(),
            Bytes::copy_from_slice(body),
        )
        .await
        .map_err(|e| BusError::js(format!("dead-lettering {}", names::STREAM_DEAD), e))?
        .await
        .map_err(|e| BusError::js(format!("dead-lettering {}", names::STREAM_DEAD), e))?;
        Ok(())
    }
}

/// How many messages [`names::STREAM_DEAD`] holds (`None` when it does not
/// exist yet): what `tagpoll status` and the admin page show.
pub async fn count(js: &jetstream::Context) -> Result<Option<u64>, BusError> {
    match js.get_stream(names::STREAM_DEAD).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| BusError::js(format!("looking up {}", names::STREAM_DEAD), e))?;
            Ok(Some(info.state.messages))
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(BusError::js(
            format!("looking up {}", names::STREAM_DEAD),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reasons_with_newlines_become_safe_header_values() {
        assert_eq!(header_safe("bad\nid\r", 100), "bad\\x0aid\\x0d");
        assert_eq!(header_safe("é", 100), "\\xc3\\xa9");
        assert_eq!(header_safe(&"x".repeat(5000), MAX_REASON).len(), MAX_REASON);
    }

    proptest! {
        /// Any text at all gives headers the NATS client accepts (its
        /// `HeaderValue::from` panics on `\r` and `\n`).
        #[test]
        fn any_origin_gives_headers_that_do_not_panic(
            reason in ".*", subject in ".*", stream in ".*", service in ".*",
            seq in any::<u64>(), len in 0usize..(MAX_COPIED_PAYLOAD * 2)
        ) {
            let payload = vec![0u8; len];
            let d = DeadLetter {
                service: &service, stream: &stream, subject: &subject,
                sequence: seq, payload: &payload, reason: &reason,
            };
            let h = d.headers();
            let r = h.get(names::HEADER_DEAD_REASON).unwrap().as_str();
            prop_assert!(!r.is_empty() && r.len() <= MAX_REASON);
            prop_assert!(r.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }
}
