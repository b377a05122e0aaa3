//! Shared helpers of the identity tests (`identity_*.rs`): the fake anyMeta wired to the real
//! `tagpoll-identity` binary, and readers of the streams.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tagpoll_tests::*;

/// Settings that make failures show up and heal within a test's patience.
pub const FAST: &[(&str, &str)] = &[
    // Long enough for a loaded CI machine: a timed-out call that the fake did
    // answer would be asked again and break the tests' exact lookup counts.
    ("TAGPOLL_ANYMETA_TIMEOUT_MS", "5000"),
    ("TAGPOLL_ANYMETA_RETRIES", "1"),
    ("TAGPOLL_ANYMETA_BREAKER_FAILURES", "3"),
    ("TAGPOLL_ANYMETA_BREAKER_COOLDOWN_MS", "500"),
    ("TAGPOLL_IDENTITY_RETRY_MS", "200"),
    ("TAGPOLL_IDENTITY_RETRY_MAX_MS", "1000"),
    ("RUST_LOG", "info,async_nats=warn,tagpoll_identity=debug"),
];

/// Starts `tagpoll-identity` with the fast settings, `env` and then `extra` on top.
pub fn identity(
    bus: &TestBus,
    env: &[(String, String)],
    extra: &[(&str, &str)],
) -> tagpoll::dev::ServiceProcess {
    let mut all: Vec<(&str, &str)> = FAST.to_vec();
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    all.extend_from_slice(extra);
    bus.service("tagpoll-identity", &[], &all)
}

/// Loads an event file's text into the test server.
pub fn load(bus: &TestBus, toml: &str) {
    let path = write_file(bus, "event.toml", toml);
    let out = bus.cli(&["load", &path]);
    assert!(
        out.status.success(),
        "tagpoll load failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Identified reads in `TAGPOLL_IDENTIFIED` order.
pub async fn identified(js: &async_nats::jetstream::Context) -> Vec<v1::IdentifiedRead> {
    stream_messages(js, names::STREAM_IDENTIFIED)
        .await
        .into_iter()
        .map(|(_, p)| v1::IdentifiedRead::decode(p.as_ref()).expect("identified read"))
        .collect()
}

/// Outcomes in `TAGPOLL_VOTES` order.
pub async fn outcomes(js: &async_nats::jetstream::Context) -> Vec<v1::VoteOutcome> {
    stream_messages(js, names::STREAM_VOTES)
        .await
        .into_iter()
        .map(|(_, p)| v1::VoteOutcome::decode(p.as_ref()).expect("outcome"))
        .collect()
}

/// Reads of the `identity` consumer not acknowledged yet (waiting, in flight or to be re-sent).
pub async fn unacked_reads(js: &async_nats::jetstream::Context) -> u64 {
    let stream = js.get_stream(names::STREAM_READS).await.expect("reads");
    let mut c: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(names::CONSUMER_IDENTITY)
        .await
        .expect("identity consumer");
    let info = c.info().await.expect("consumer info");
    info.num_pending + info.num_ack_pending as u64
}

/// Identity heartbeats as they arrive, for `for_how_long` from now.
async fn identity_heartbeat_stream(
    client: &async_nats::Client,
    for_how_long: Duration,
) -> impl futures::Stream<Item = v1::Heartbeat> + Unpin {
    let sub = client
        .subscribe(subjects::heartbeat("service", "identity", "*"))
        .await
        .expect("subscribe heartbeats");
    sub.take_until(Box::pin(tokio::time::sleep(for_how_long)))
        .map(|m| v1::Heartbeat::decode(m.payload.as_ref()).expect("heartbeat"))
}

/// Latest heartbeat of every identity instance, collected for `for_how_long`.
pub async fn identity_heartbeats(
    client: &async_nats::Client,
    for_how_long: Duration,
) -> HashMap<String, v1::Heartbeat> {
    let mut beats = identity_heartbeat_stream(client, for_how_long).await;
    let mut latest = HashMap::new();
    while let Some(hb) = beats.next().await {
        latest.insert(hb.instance.clone(), hb);
    }
    latest
}

/// The first identity heartbeat within `limit` that `wanted` accepts (panics naming the last
/// one seen otherwise): a heartbeat comes every 2 s, and a loaded machine may take a while
/// to start the service.
pub async fn wait_identity_heartbeat(
    client: &async_nats::Client,
    limit: Duration,
    wanted: impl Fn(&v1::Heartbeat) -> bool,
) -> v1::Heartbeat {
    let mut beats = identity_heartbeat_stream(client, limit).await;
    let mut last = None;
    while let Some(hb) = beats.next().await {
        if wanted(&hb) {
            return hb;
        }
        last = Some(hb);
    }
    panic!("no wanted identity heartbeat within {limit:?}; last: {last:?}")
}

/// Publishes a tap with `device_seq` set, waiting for JetStream's ack.
pub async fn tap_at(js: &async_nats::jetstream::Context, reader: &str, uid: &[u8], read_id: &str) {
    tap(js, "dev", reader, uid, read_id).await
}

/// Outcome of each read id (panics on a read decided twice).
pub fn by_read(outcomes: &[v1::VoteOutcome]) -> HashMap<String, v1::VoteOutcome> {
    let mut m = HashMap::new();
    for o in outcomes {
        assert!(
            m.insert(o.read_id.clone(), o.clone()).is_none(),
            "read {} decided twice",
            o.read_id
        );
    }
    m
}

/// Panics unless every read id has exactly one identified read.
pub fn assert_once_each(identified: &[v1::IdentifiedRead], read_ids: &[String]) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in identified {
        *count.entry(r.read_id.as_str()).or_default() += 1;
    }
    for id in read_ids {
        assert_eq!(
            count.get(id.as_str()).copied().unwrap_or(0),
            1,
            "identified reads for {id}"
        );
    }
    assert_eq!(
        identified.len(),
        read_ids.len(),
        "no other identified reads"
    );
}

/// The voter of an identified read ("" for an unknown tag).
pub fn voter_of(r: &v1::IdentifiedRead) -> &str {
    match &r.identity {
        Some(v1::identified_read::Identity::Voter(v)) => &v.voter_id,
        _ => "",
    }
}

/// A service log without ANSI colour codes.
pub fn plain_log(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
