//! `tagpoll status`: the whole system at a glance.
//!
//! Sources: the last heartbeat of every sender (stream `TAGPOLL_HEARTBEATS`,
//! which also remembers senders that went silent, so they show as offline),
//! live answers of running services to `tagpoll.admin.status`, and stream
//! info. The JSON form (`--json`) is a contract: `services` and `devices`
//! lists whose `state` is `"online"` or `"offline"`; each device has
//! `clock_offset_ms` (server clock − box clock as measured from its last
//! heartbeat, or null) and `clock_trusted` (whether the identity service
//! counts its spooled taps at their device time, see docs/identity.md).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use prost::Message;
use serde::Serialize;
use tagpoll_bus::heartbeat::is_online;
use tagpoll_identity::tap_moment;
use tagpoll_proto::{names, subjects, v1};

/// Offline service instances older than this are no longer listed.
pub const FORGET_OFFLINE_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub instance: String,
    pub state: &'static str,
    pub version: String,
    pub uptime_secs: u64,
    pub last_seen_secs: u64,
    pub handled: u64,
    pub lag: u64,
    pub in_flight: u64,
    pub nats_connected: bool,
    pub last_error: String,
}

#[derive(Debug, Serialize, Clone)]
pub struct ReaderStatus {
    pub id: String,
    pub state: String,
    pub protocol: String,
    pub path: String,
    pub taps: u64,
    pub frame_errors: u64,
}

#[derive(Debug, Serialize, Clone)]
pub struct DeviceStatus {
    pub id: String,
    pub instance: String,
    pub state: &'static str,
    pub last_seen_secs: u64,
    pub readers: Vec<ReaderStatus>,
    pub spool_depth: u64,
    pub frame_errors: u64,
    pub taps: u64,
    pub nats_connected: bool,
    pub last_error: String,
    /// Server clock − box clock in ms from the last heartbeat (its stored time − `sent_at`,
    /// transit included); null when unknown (no stored time, or sent while offline).
    pub clock_offset_ms: Option<i64>,
    /// Whether the offset is within [`tap_moment::CLOCK_TRUST_BOUND`], so taps that waited
    /// in the box's spool count at their device time (else at their arrival).
    pub clock_trusted: bool,
}

#[derive(Debug, Serialize, Clone)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: usize,
}

#[derive(Debug, Serialize, Clone)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub devices: Vec<DeviceStatus>,
    pub streams: Vec<StreamStatus>,
    /// Messages in the dead letters (`TAGPOLL_DEAD`): what services gave up
    /// on for good. Non-zero needs a look (`tagpoll status` says how).
    pub dead_letters: u64,
}

fn secs_since(t: Option<&prost_types::Timestamp>, now: SystemTime) -> u64 {
    tagpoll_proto::to_system_time(t)
        .and_then(|t| now.duration_since(t).ok())
        .map_or(0, |d| d.as_secs())
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

/// A heartbeat and when `TAGPOLL_HEARTBEATS` stored it (none for a live reply).
pub type StoredHeartbeat = (v1::Heartbeat, Option<SystemTime>);

/// Builds the report from stored heartbeats (newest per sender) and live replies.
pub fn assemble(
    heartbeats: Vec<StoredHeartbeat>,
    live: Vec<v1::Heartbeat>,
    streams: Vec<StreamStatus>,
    now: SystemTime,
) -> Status {
    let mut latest: BTreeMap<(String, String, String), StoredHeartbeat> = BTreeMap::new();
    let live = live.into_iter().map(|hb| (hb, None));
    for (hb, stored) in heartbeats.into_iter().chain(live) {
        let key = (hb.kind.clone(), hb.name.clone(), hb.instance.clone());
        let newer = latest.get(&key).is_none_or(|(old, _)| {
            tagpoll_proto::to_system_time(old.sent_at.as_ref())
                <= tagpoll_proto::to_system_time(hb.sent_at.as_ref())
        });
        if newer {
            latest.insert(key, (hb, stored));
        }
    }
    let mut services = Vec::new();
    let mut devices: BTreeMap<String, StoredHeartbeat> = BTreeMap::new();
    for ((kind, _, _), (hb, stored)) in latest {
        if kind == "device" {
            // A device may have restarted under a new instance id: keep its newest.
            let keep = devices.get(&hb.name).is_none_or(|(old, _)| {
                tagpoll_proto::to_system_time(old.sent_at.as_ref())
                    <= tagpoll_proto::to_system_time(hb.sent_at.as_ref())
            });
            if keep {
                devices.insert(hb.name.clone(), (hb, stored));
            }
            continue;
        }
        let online = is_online(&hb, now);
        let seen = secs_since(hb.sent_at.as_ref(), now);
        if !online && seen > FORGET_OFFLINE_AFTER.as_secs() {
            continue;
        }
        services.push(ServiceStatus {
            name: hb.name.clone(),
            instance: hb.instance.clone(),
            state: state(online),
            version: hb.version.clone(),
            uptime_secs: secs_since(hb.started_at.as_ref(), now),
            last_seen_secs: seen,
            handled: hb.handled,
            lag: hb.lag,
            in_flight: hb.in_flight,
            nats_connected: hb.nats_connected,
            last_error: hb.last_error.clone(),
        });
    }
    let devices = devices
        .into_values()
        .map(|(hb, stored)| {
            let online = is_online(&hb, now);
            let offset =
                stored.and_then(|s| tap_moment::clock_sample(&hb, tap_moment::nanos_of(s)));
            DeviceStatus {
                id: hb.name.clone(),
                instance: hb.instance.clone(),
                state: state(online),
                last_seen_secs: secs_since(hb.sent_at.as_ref(), now),
                readers: hb
                    .readers
                    .iter()
                    .map(|r| ReaderStatus {
                        id: r.reader_id.clone(),
                        state: if online {
                            r.state.clone()
                        } else {
                            "unknown".into()
                        },
                        protocol: r.protocol.clone(),
                        path: r.path.clone(),
                        taps: r.taps,
                        frame_errors: r.frame_errors,
                    })
                    .collect(),
                spool_depth: hb.spool_depth,
                frame_errors: hb.frame_errors,
                taps: hb.handled,
                nats_connected: hb.nats_connected,
                last_error: hb.last_error.clone(),
                clock_offset_ms: offset.map(|o| (o as f64 / 1e6).round() as i64),
                clock_trusted: offset.is_some_and(tap_moment::is_trusted),
            }
        })
        .collect();
    Status {
        services,
        devices,
        streams,
        dead_letters: 0,
    }
}

/// Gathers the status from the bus.
pub async fn gather(
    client: &async_nats::Client,
    js: &jetstream::Context,
) -> Result<Status, tagpoll_bus::BusError> {
    let now = SystemTime::now();
    let heartbeats = last_heartbeats(js).await?;
    let live = ask_services(client, Duration::from_millis(300)).await;
    let mut streams = Vec::new();
    for name in [
        names::STREAM_READS,
        names::STREAM_IDENTIFIED,
        names::STREAM_VOTES,
        names::STREAM_HEARTBEATS,
        names::STREAM_DEAD,
    ] {
        if let Ok(mut s) = js.get_stream(name).await
            && let Ok(info) = s.info().await
        {
            streams.push(StreamStatus {
                name: name.to_string(),
                messages: info.state.messages,
                bytes: info.state.bytes,
                consumers: info.state.consumer_count,
            });
        }
    }
    let dead_letters = tagpoll_bus::dead_letter::count(js).await?.unwrap_or(0);
    let mut status = assemble(heartbeats, live, streams, now);
    status.dead_letters = dead_letters;
    Ok(status)
}

async fn last_heartbeats(
    js: &jetstream::Context,
) -> Result<Vec<StoredHeartbeat>, tagpoll_bus::BusError> {
    let stream = js
        .get_stream(names::STREAM_HEARTBEATS)
        .await
        .map_err(|e| tagpoll_bus::BusError::js("looking up heartbeats", e))?;
    let mut stream = stream;
    let count = stream
        .info()
        .await
        .map_err(|e| tagpoll_bus::BusError::js("heartbeat stream info", e))?
        .state
        .messages;
    if count == 0 {
        return Ok(vec![]);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: subjects::HEARTBEAT_ALL.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| tagpoll_bus::BusError::js("heartbeat consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| tagpoll_bus::BusError::js("reading heartbeats", e))?;
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let (pending, stored) = msg
            .info()
            .map(|i| (i.pending, Some(SystemTime::from(i.published))))
            .unwrap_or((0, None));
        if let Ok(hb) = v1::Heartbeat::decode(msg.payload.as_ref()) {
            out.push((hb, stored));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Scatter-gather: every service instance answers `tagpoll.admin.status`.
async fn ask_services(client: &async_nats::Client, wait: Duration) -> Vec<v1::Heartbeat> {
    let inbox = client.new_inbox();
    let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
        return vec![];
    };
    if client
        .publish_with_reply(subjects::ADMIN_STATUS, inbox, bytes::Bytes::new())
        .await
        .is_err()
    {
        return vec![];
    }
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(hb) = v1::Heartbeat::decode(msg.payload.as_ref()) {
            out.push(hb);
        }
    }
    out
}

/// A device's clock as the status line shows it.
fn clock(d: &DeviceStatus) -> String {
    const FALLBACK: &str = "spooled taps count at arrival";
    match d.clock_offset_ms {
        None => format!("clock unknown: {FALLBACK}"),
        Some(ms) if d.clock_trusted => format!("clock {:+.2} s", ms as f64 / 1000.0),
        Some(ms) => {
            let off = (ms as f64 / 1000.0).abs();
            let off = if off >= 10.0 {
                format!("{off:.0}")
            } else {
                format!("{off:.1}")
            };
            format!("clock off by {off} s: {FALLBACK}")
        }
    }
}

/// The human-readable view.
pub fn render(s: &Status) -> String {
    let mut out = String::from("SERVICES\n");
    out.push_str(&format!(
        "  {:<10} {:<24} {:<8} {:>9} {:>8} {:>6} {:>9}  {}\n",
        "name", "instance", "state", "handled", "lag", "busy", "uptime", "last error"
    ));
    for v in &s.services {
        out.push_str(&format!(
            "  {:<10} {:<24} {:<8} {:>9} {:>8} {:>6} {:>8}s  {}\n",
            v.name, v.instance, v.state, v.handled, v.lag, v.in_flight, v.uptime_secs, v.last_error
        ));
    }
    out.push_str("DEVICES\n");
    if s.devices.is_empty() {
        out.push_str("  (none seen)\n");
    }
    for d in &s.devices {
        out.push_str(&format!(
            "  {:<16} {:<8} seen {:>4}s ago  taps {:>6}  spool {:>5}  frame errors {:>4}  {}{}\n",
            d.id,
            d.state,
            d.last_seen_secs,
            d.taps,
            d.spool_depth,
            d.frame_errors,
            clock(d),
            if d.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", d.last_error)
            }
        ));
        for r in &d.readers {
            out.push_str(&format!(
                "    reader {:<14} {:<12} {:<8} taps {:>6}  frame errors {:>4}  {}\n",
                r.id, r.state, r.protocol, r.taps, r.frame_errors, r.path
            ));
        }
    }
    out.push_str("STREAMS\n");
    for st in &s.streams {
        out.push_str(&format!(
            "  {:<20} {:>9} msgs {:>12} bytes {:>3} consumers\n",
            st.name, st.messages, st.bytes, st.consumers
        ));
    }
    out.push_str(&format!("DEAD LETTERS {}\n", s.dead_letters));
    if s.dead_letters > 0 {
        out.push_str(&format!(
            "  messages given up on for good: copies in stream {}, with why in header {} \
             and their origin in the other Tagpoll-Dead-* headers (docs/security.md)\n",
            names::STREAM_DEAD,
            names::HEADER_DEAD_REASON
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(kind: &str, name: &str, instance: &str, age: u64, now: SystemTime) -> v1::Heartbeat {
        v1::Heartbeat {
            kind: kind.into(),
            name: name.into(),
            instance: instance.into(),
            sent_at: Some(tagpoll_proto::timestamp(now - Duration::from_secs(age))),
            interval_secs: 2,
            ..Default::default()
        }
    }

    #[test]
    fn devices_keep_their_newest_instance_and_stale_services_drop_out() {
        let now = SystemTime::now();
        let s = assemble(
            vec![
                hb("device", "hall", "old", 120, now),
                hb("device", "hall", "new", 1, now),
                hb("device", "bar", "x", 30, now),
                hb("service", "tally", "a", 1, now),
                hb("service", "tally", "dead", 60, now),
                hb("service", "tally", "ancient", 3600, now),
            ]
            .into_iter()
            .map(|h| (h, None))
            .collect(),
            vec![],
            vec![],
            now,
        );
        let devices: Vec<_> = s
            .devices
            .iter()
            .map(|d| (d.id.as_str(), d.state, d.instance.as_str()))
            .collect();
        assert_eq!(
            devices,
            [("bar", "offline", "x"), ("hall", "online", "new")]
        );
        let services: Vec<_> = s
            .services
            .iter()
            .map(|v| (v.instance.as_str(), v.state))
            .collect();
        assert_eq!(services, [("a", "online"), ("dead", "offline")]);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["devices"][0]["state"], "offline");
        assert!(json["devices"][0]["readers"].is_array());
        assert_eq!(json["services"][0]["name"], "tally");
    }

    #[test]
    fn each_device_shows_its_clock_from_its_last_heartbeat() {
        let now = SystemTime::now();
        let stored = |mut h: v1::Heartbeat, connected: bool, stored_after_ms: u64| {
            h.nats_connected = connected;
            let sent = tagpoll_proto::to_system_time(h.sent_at.as_ref()).unwrap();
            (h, Some(sent + Duration::from_millis(stored_after_ms)))
        };
        let s = assemble(
            vec![
                stored(hb("device", "good", "i", 1, now), true, 40),
                stored(hb("device", "slow", "i", 1, now), true, 35_000),
                // Sent while offline, flushed later: says nothing about the clock.
                stored(hb("device", "flushed", "i", 1, now), false, 90_000),
                (hb("device", "unstored", "i", 1, now), None),
            ],
            vec![],
            vec![],
            now,
        );
        let clocks: Vec<_> = s
            .devices
            .iter()
            .map(|d| (d.id.as_str(), d.clock_offset_ms, d.clock_trusted))
            .collect();
        assert_eq!(
            clocks,
            [
                ("flushed", None, false),
                ("good", Some(40), true),
                ("slow", Some(35_000), false),
                ("unstored", None, false),
            ]
        );
        let text = render(&s);
        assert!(text.contains("clock +0.04 s"), "{text}");
        assert!(
            text.contains("clock off by 35 s: spooled taps count at arrival"),
            "{text}"
        );
        assert!(
            text.contains("clock unknown: spooled taps count at arrival"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["devices"][1]["clock_offset_ms"], 40);
        assert_eq!(json["devices"][1]["clock_trusted"], true);
        assert!(json["devices"][0]["clock_offset_ms"].is_null());
        assert_eq!(json["devices"][2]["clock_trusted"], false);
    }
}
