//! What the admin page shows about the running system, learnt by listening:
//! heartbeats (`tagpoll.heartbeat.>`) say which services and reader devices
//! are alive, and outcomes (`tagpoll.outcomes.>`, core NATS) give each
//! reader's last tap and the unknown-tag counts.
//!
//! Counts start when the web service starts: they are for the people at the
//! desk ("someone keeps tapping an unlinked card at coffee-left"), not a
//! record; the vote stream is the record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use prost_types::Timestamp;
use serde::Serialize;
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::{subjects, v1};

use crate::metrics::Metrics;

/// A sender is offline after 3 missed intervals or 15 s, whichever is shorter.
pub fn offline_after(interval_secs: u32) -> Duration {
    let cap = Duration::from_secs(15);
    if interval_secs == 0 {
        return cap;
    }
    cap.min(Duration::from_secs(3 * u64::from(interval_secs)))
}

/// Senders silent this long are forgotten (an old instance after a restart).
const FORGET_AFTER: Duration = Duration::from_secs(600);

struct Seen {
    hb: v1::Heartbeat,
    at: Instant,
    wall: SystemTime,
}

struct ReaderSeen {
    read_at: Option<Timestamp>,
    kind: &'static str,
    device: String,
}

#[derive(Default)]
struct State {
    senders: BTreeMap<(String, String, String), Seen>,
    unknown_total: u64,
    unknown_by_reader: BTreeMap<String, u64>,
    unknown_by_poll: BTreeMap<String, u64>,
    readers: HashMap<String, ReaderSeen>,
}

/// Shared, cheaply clonable.
#[derive(Clone)]
pub struct Monitor {
    state: Arc<Mutex<State>>,
    since: Timestamp,
    metrics: Arc<Metrics>,
}

#[derive(Serialize, Debug)]
pub struct ReaderHealthJson {
    pub id: String,
    pub state: String,
    pub protocol: String,
    pub path: String,
    pub last_tap_at: Option<String>,
    pub taps: u64,
    pub frame_errors: u64,
}

/// One service instance or reader device, from its latest heartbeat.
#[derive(Serialize, Debug)]
pub struct SenderJson {
    pub kind: String,
    pub name: String,
    pub instance: String,
    pub online: bool,
    /// RFC 3339 (this service's clock) of the latest heartbeat received.
    pub last_seen: String,
    pub seconds_since: f64,
    pub interval_secs: u32,
    pub offline_after_secs: u64,
    pub version: String,
    pub started_at: Option<String>,
    pub nats_connected: bool,
    pub handled: u64,
    /// Work waiting for the service (e.g. reads the tally has not decided).
    pub lag: u64,
    /// Work started and not finished (e.g. publishes awaiting their ack).
    pub in_flight: u64,
    pub last_error: String,
    pub spool_depth: u64,
    pub frame_errors: u64,
    pub last_tap_at: Option<String>,
    pub readers: Vec<ReaderHealthJson>,
}

/// One reader: its mapping, what its device last said and its last tap.
#[derive(Serialize, Debug)]
pub struct ReaderStatusJson {
    pub id: String,
    pub mapped: bool,
    pub poll: Option<String>,
    pub answer: Option<String>,
    pub location: String,
    /// The device whose heartbeat lists this reader, if any does.
    pub device: Option<String>,
    /// The device is online and does not report the reader disconnected.
    pub online: bool,
    /// As the device reports it ("connected", "disconnected", "simulated"), or "unknown".
    pub state: String,
    pub last_tap_at: Option<String>,
    /// Kind of the last outcome seen ("accepted", "changed", "duplicate", "rejected").
    pub last_outcome: Option<String>,
    pub frame_errors: u64,
    pub unknown_tags: u64,
}

#[derive(Serialize, Debug)]
pub struct UnknownTagsJson {
    pub total: u64,
    pub by_reader: BTreeMap<String, u64>,
    pub by_poll: BTreeMap<String, u64>,
    /// RFC 3339: counting started when the web service did.
    pub since: String,
}

pub struct Snapshot {
    pub readers: Vec<ReaderStatusJson>,
    pub devices: Vec<SenderJson>,
    pub services: Vec<SenderJson>,
    pub unknown_tags: UnknownTagsJson,
}

fn ts(t: Option<&Timestamp>) -> Option<String> {
    t.filter(|t| t.seconds > 0).map(Timestamp::to_string)
}

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (a.seconds, a.nanos) >= (b.seconds, b.nanos) {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    }
}

/// Lower-case outcome kind, as in JSON.
pub fn kind_name(kind: v1::OutcomeKind) -> &'static str {
    match kind {
        v1::OutcomeKind::Accepted => "accepted",
        v1::OutcomeKind::Changed => "changed",
        v1::OutcomeKind::Duplicate => "duplicate",
        v1::OutcomeKind::Rejected => "rejected",
        v1::OutcomeKind::Unspecified => "unknown",
    }
}

impl Monitor {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Monitor {
            state: Arc::default(),
            since: tagpoll_proto::now(),
            metrics,
        }
    }

    /// Starts listening; the subscriptions survive reconnects (async-nats
    /// re-subscribes by itself). Senders that went quiet before this service
    /// started are learnt from stream `TAGPOLL_HEARTBEATS` (last one per
    /// sender), so the admin page shows them offline rather than not at all.
    pub fn spawn(client: async_nats::Client, metrics: Arc<Metrics>) -> Self {
        let monitor = Monitor::new(metrics);
        let m = monitor.clone();
        let c = client.clone();
        tokio::spawn(async move {
            let mut sub = match c.subscribe(subjects::HEARTBEAT_ALL).await {
                Ok(s) => s,
                Err(e) => return tracing::error!(error = %e, "cannot follow heartbeats"),
            };
            let js = async_nats::jetstream::new(c);
            let seeded = tagpoll_bus::replay::replay(
                &js,
                tagpoll_proto::names::STREAM_HEARTBEATS,
                None,
                |_, subject, payload| {
                    if let Ok(hb) = tagpoll_bus::decode::<v1::Heartbeat>(subject, payload) {
                        m.seed_heartbeat(hb);
                    }
                },
            )
            .await;
            if let Err(e) = seeded {
                tracing::warn!(error = %e, "no earlier heartbeats; showing live ones only");
            }
            while let Some(msg) = sub.next().await {
                match tagpoll_bus::decode::<v1::Heartbeat>(&msg.subject, &msg.payload) {
                    Ok(hb) => m.record_heartbeat(hb, Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "ignoring bad heartbeat"),
                }
            }
        });
        let m = monitor.clone();
        tokio::spawn(async move {
            let mut sub = match client.subscribe(subjects::OUTCOMES_ALL).await {
                Ok(s) => s,
                Err(e) => return tracing::error!(error = %e, "cannot follow outcomes"),
            };
            while let Some(msg) = sub.next().await {
                match tagpoll_bus::decode::<v1::VoteOutcome>(&msg.subject, &msg.payload) {
                    Ok(o) => m.record_outcome(&o),
                    Err(e) => tracing::debug!(error = %e, "ignoring bad outcome"),
                }
            }
        });
        monitor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_heartbeat(&self, hb: v1::Heartbeat, at: Instant) {
        self.metrics.heartbeats.inc();
        let key = (hb.kind.clone(), hb.name.clone(), hb.instance.clone());
        let mut st = self.lock();
        st.senders
            .retain(|_, s| at.saturating_duration_since(s.at) < FORGET_AFTER);
        st.senders.insert(
            key,
            Seen {
                hb,
                at,
                wall: SystemTime::now(),
            },
        );
    }

    /// A stored heartbeat: its age comes from its own `sent_at`, and it
    /// never replaces one received live.
    pub fn seed_heartbeat(&self, hb: v1::Heartbeat) {
        let wall = tagpoll_proto::to_system_time(hb.sent_at.as_ref()).unwrap_or(UNIX_EPOCH);
        let age = SystemTime::now().duration_since(wall).unwrap_or_default();
        let Some(at) = Instant::now().checked_sub(age) else {
            return;
        };
        if age >= FORGET_AFTER {
            return;
        }
        let key = (hb.kind.clone(), hb.name.clone(), hb.instance.clone());
        self.lock()
            .senders
            .entry(key)
            .or_insert(Seen { hb, at, wall });
    }

    pub fn record_outcome(&self, o: &v1::VoteOutcome) {
        self.metrics.outcomes.inc();
        let mut st = self.lock();
        if o.kind() == v1::OutcomeKind::Rejected
            && o.reject_reason() == v1::RejectReason::UnknownTag
        {
            self.metrics.unknown_tags.inc();
            st.unknown_total += 1;
            *st.unknown_by_reader.entry(o.reader_id.clone()).or_default() += 1;
            let poll = if o.poll_id.is_empty() {
                subjects::NO_POLL
            } else {
                &o.poll_id
            };
            *st.unknown_by_poll.entry(poll.to_string()).or_default() += 1;
        }
        st.readers.insert(
            o.reader_id.clone(),
            ReaderSeen {
                read_at: o.read_at.or(o.decided_at),
                kind: kind_name(o.kind()),
                device: o.device_id.clone(),
            },
        );
    }

    pub fn snapshot(&self, config: &EventConfig) -> Snapshot {
        self.snapshot_at(config, Instant::now())
    }

    pub fn snapshot_at(&self, config: &EventConfig, now: Instant) -> Snapshot {
        let st = self.lock();
        let mut devices = Vec::new();
        let mut services = Vec::new();
        // reader id → (device, online, health)
        let mut health: BTreeMap<String, (String, bool, &v1::ReaderHealth)> = BTreeMap::new();
        for seen in st.senders.values() {
            let hb = &seen.hb;
            let since = now.saturating_duration_since(seen.at);
            if since >= FORGET_AFTER {
                continue;
            }
            let limit = offline_after(hb.interval_secs);
            let online = since < limit;
            let json = SenderJson {
                kind: hb.kind.clone(),
                name: hb.name.clone(),
                instance: hb.instance.clone(),
                online,
                last_seen: tagpoll_proto::timestamp(seen.wall).to_string(),
                seconds_since: (since.as_secs_f64() * 10.0).round() / 10.0,
                interval_secs: hb.interval_secs,
                offline_after_secs: limit.as_secs(),
                version: hb.version.clone(),
                started_at: ts(hb.started_at.as_ref()),
                nats_connected: hb.nats_connected,
                handled: hb.handled,
                lag: hb.lag,
                in_flight: hb.in_flight,
                last_error: hb.last_error.clone(),
                spool_depth: hb.spool_depth,
                frame_errors: hb.frame_errors,
                last_tap_at: ts(hb.last_tap_at.as_ref()),
                readers: hb
                    .readers
                    .iter()
                    .map(|r| ReaderHealthJson {
                        id: r.reader_id.clone(),
                        state: r.state.clone(),
                        protocol: r.protocol.clone(),
                        path: r.path.clone(),
                        last_tap_at: ts(r.last_tap_at.as_ref()),
                        taps: r.taps,
                        frame_errors: r.frame_errors,
                    })
                    .collect(),
            };
            if hb.kind == "device" {
                for r in &hb.readers {
                    // An online instance wins over a stale one of the same reader.
                    let keep = health
                        .get(&r.reader_id)
                        .is_some_and(|(_, o, _)| *o && !online);
                    if !keep {
                        health.insert(r.reader_id.clone(), (hb.name.clone(), online, r));
                    }
                }
                devices.push(json);
            } else {
                services.push(json);
            }
        }
        // A reader without health of its own (simulated readers send none)
        // is as online as the device its last tap came through.
        let mut device_online: HashMap<&str, bool> = HashMap::new();
        for d in &devices {
            *device_online.entry(d.name.as_str()).or_default() |= d.online;
        }
        let mut ids: Vec<&String> = config.readers.keys().collect();
        ids.extend(health.keys());
        ids.extend(st.readers.keys());
        ids.sort();
        ids.dedup();
        let readers = ids
            .into_iter()
            .map(|id| {
                let mapping = config.readers.get(id);
                let h = health.get(id);
                let seen = st.readers.get(id);
                let state = h.map_or("unknown".to_string(), |(_, _, r)| r.state.clone());
                ReaderStatusJson {
                    id: id.clone(),
                    mapped: mapping.is_some(),
                    poll: mapping.map(|m| m.poll_id.clone()),
                    answer: mapping.map(|m| m.answer_id.clone()),
                    location: mapping.map(|m| m.location.clone()).unwrap_or_default(),
                    device: h
                        .map(|(d, _, _)| d.clone())
                        .or_else(|| seen.map(|s| s.device.clone())),
                    online: match (h, seen) {
                        (Some((_, online, _)), _) => *online && state != "disconnected",
                        (None, Some(s)) => device_online.get(s.device.as_str()) == Some(&true),
                        (None, None) => false,
                    },
                    state,
                    last_tap_at: ts(later(
                        h.and_then(|(_, _, r)| r.last_tap_at),
                        seen.and_then(|s| s.read_at),
                    )
                    .as_ref()),
                    last_outcome: seen.map(|s| s.kind.to_string()),
                    frame_errors: h.map_or(0, |(_, _, r)| r.frame_errors),
                    unknown_tags: st.unknown_by_reader.get(id).copied().unwrap_or(0),
                }
            })
            .collect();
        Snapshot {
            readers,
            devices,
            services,
            unknown_tags: UnknownTagsJson {
                total: st.unknown_total,
                by_reader: st.unknown_by_reader.clone(),
                by_poll: st.unknown_by_poll.clone(),
                since: self.since.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_after_three_intervals_or_fifteen_seconds() {
        assert_eq!(offline_after(2), Duration::from_secs(6));
        assert_eq!(offline_after(5), Duration::from_secs(15));
        assert_eq!(offline_after(60), Duration::from_secs(15));
        assert_eq!(offline_after(0), Duration::from_secs(15));
    }

    fn device_hb(reader_state: &str) -> v1::Heartbeat {
        v1::Heartbeat {
            kind: "device".into(),
            name: "box1".into(),
            instance: "box1-1".into(),
            interval_secs: 2,
            spool_depth: 3,
            readers: vec![v1::ReaderHealth {
                reader_id: "r1".into(),
                state: reader_state.into(),
                frame_errors: 4,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn devices_go_offline_and_take_their_readers_along() {
        let m = Monitor::new(Arc::default());
        let t0 = Instant::now();
        m.record_heartbeat(device_hb("connected"), t0);
        m.record_heartbeat(
            v1::Heartbeat {
                kind: "service".into(),
                name: "tally".into(),
                instance: "t-1".into(),
                interval_secs: 2,
                ..Default::default()
            },
            t0,
        );
        let config = EventConfig::default();
        let s = m.snapshot_at(&config, t0 + Duration::from_secs(1));
        assert!(s.devices[0].online && s.services[0].online);
        assert_eq!(s.devices[0].spool_depth, 3);
        assert!(s.readers[0].online);
        assert_eq!(
            (s.readers[0].device.as_deref(), s.readers[0].frame_errors),
            (Some("box1"), 4)
        );
        let s = m.snapshot_at(&config, t0 + Duration::from_secs(7));
        assert!(!s.devices[0].online && !s.services[0].online && !s.readers[0].online);

        m.record_heartbeat(device_hb("disconnected"), t0 + Duration::from_secs(8));
        let s = m.snapshot_at(&config, t0 + Duration::from_secs(8));
        assert!(s.devices[0].online && !s.readers[0].online);
        assert_eq!(s.readers[0].state, "disconnected");
    }

    #[test]
    fn stored_heartbeats_age_by_their_send_time_and_yield_to_live_ones() {
        let m = Monitor::new(Arc::default());
        let mut old = device_hb("connected");
        old.sent_at = Some(tagpoll_proto::timestamp(
            SystemTime::now() - Duration::from_secs(10),
        ));
        m.seed_heartbeat(old.clone());
        let s = m.snapshot(&EventConfig::default());
        assert!(!s.devices[0].online && s.devices[0].seconds_since >= 9.9);
        m.record_heartbeat(device_hb("connected"), Instant::now());
        m.seed_heartbeat(old);
        assert!(m.snapshot(&EventConfig::default()).devices[0].online);
    }

    #[test]
    fn counts_unknown_tags_per_reader_and_poll() {
        let m = Monitor::new(Arc::default());
        let unknown = v1::VoteOutcome {
            reader_id: "r1".into(),
            poll_id: "p".into(),
            kind: v1::OutcomeKind::Rejected as i32,
            reject_reason: v1::RejectReason::UnknownTag as i32,
            ..Default::default()
        };
        m.record_outcome(&unknown);
        m.record_outcome(&unknown);
        m.record_outcome(&v1::VoteOutcome {
            reader_id: "r2".into(),
            kind: v1::OutcomeKind::Accepted as i32,
            read_at: Some(tagpoll_proto::now()),
            ..Default::default()
        });
        let s = m.snapshot(&EventConfig::default());
        assert_eq!(s.unknown_tags.total, 2);
        assert_eq!(s.unknown_tags.by_reader["r1"], 2);
        assert_eq!(s.unknown_tags.by_poll["p"], 2);
        let r2 = s.readers.iter().find(|r| r.id == "r2").unwrap();
        assert_eq!(r2.last_outcome.as_deref(), Some("accepted"));
        assert!(r2.last_tap_at.is_some() && !r2.mapped);
    }
}
