//! Tap moments through the real identity binary: a tap that waited in its reader box's spool
//! counts at its device-clock time when the box's clock (measured from its heartbeats) is
//! trusted, never before the box's previous stored tap; a box whose clock is off, or unknown,
//! gets the stored time and says so; a prompt tap gets the stored time. `tagpoll status`
//! shows each box's clock.

mod identity_support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use identity_support::*;
use prost::Message;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "moments"
identity = ["anonymous"]

[[polls]]
id = "p"
question = "?"
allow_anonymous = true
answers = [{ id = "a", label = "A" }]

[[readers]]
id = "r1"
poll = "p"
answer = "a"
"#;

/// A heartbeat of reader box `device` as it would send it, with its clock at `sent_at`.
async fn device_heartbeat(client: &async_nats::Client, device: &str, sent_at: SystemTime) {
    let hb = v1::Heartbeat {
        kind: "device".into(),
        name: device.into(),
        instance: "box".into(),
        sent_at: Some(tagpoll_proto::timestamp(sent_at)),
        interval_secs: 2,
        nats_connected: true,
        ..Default::default()
    };
    client
        .publish(
            subjects::heartbeat("device", device, "box"),
            hb.encode_to_vec().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// Publishes a tap seen at `read_at` (device clock), waiting for JetStream's ack.
async fn tap_seen_at(
    js: &async_nats::jetstream::Context,
    device: &str,
    reader: &str,
    read_id: &str,
    read_at: SystemTime,
) {
    let read = v1::TagRead {
        read_id: read_id.into(),
        device_id: device.into(),
        reader_id: reader.into(),
        tag_uid: read_id.as_bytes().to_vec(),
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::timestamp(read_at)),
        device_seq: 0,
    };
    tagpoll_bus::publish::publish_for_read(
        js,
        subjects::read(device, reader),
        read_id,
        read.encode_to_vec().into(),
    )
    .await
    .unwrap_or_else(|e| panic!("publishing tap {read_id}: {e}"));
}

/// A timestamp field as a system time.
macro_rules! time {
    ($t:expr) => {
        tagpoll_proto::to_system_time($t.as_ref()).expect("a timestamp")
    };
}

/// `a - b` in seconds (negative when `a` is earlier).
fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn show(r: &v1::IdentifiedRead) -> String {
    format!(
        "{} {:?} tapped_at {:?} stored_at {:?} read_at {:?}",
        r.read_id,
        r.tap_moment(),
        r.tapped_at,
        r.stored_at,
        r.read_at
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_taps_count_at_their_device_time_when_the_clock_is_trusted() {
    let bus = TestBus::start();
    load(&bus, EVENT);
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());

    // Box A's clock is right; box B's runs 30 s behind; box C never sent a heartbeat.
    let now = SystemTime::now();
    device_heartbeat(&client, "A", now).await;
    device_heartbeat(&client, "B", now - Duration::from_secs(30)).await;
    wait_len(&js, names::STREAM_HEARTBEATS, 2, Duration::from_secs(10)).await;
    let _identity = identity(&bus, &[], &[]);

    let minute_ago = SystemTime::now() - Duration::from_secs(60);
    // In stream order: C's and B's spooled taps, A's first tap (spooled), a prompt tap of A on
    // another reader, then another spooled tap of A seen before that prompt one.
    tap_seen_at(&js, "C", "r1", "c-held", minute_ago).await;
    tap_seen_at(&js, "B", "r1", "b-held", minute_ago).await;
    tap_seen_at(&js, "B", "r1", "b-prompt", SystemTime::now()).await;
    tap_seen_at(&js, "A", "r1", "a-held", minute_ago).await;
    tap_seen_at(&js, "A", "r2", "a-prompt", SystemTime::now()).await;
    tap_seen_at(&js, "A", "r1", "a-before-prompt", minute_ago).await;
    wait_len(&js, names::STREAM_IDENTIFIED, 6, Duration::from_secs(30)).await;
    let got: HashMap<String, v1::IdentifiedRead> = identified(&js)
        .await
        .into_iter()
        .map(|r| (r.read_id.clone(), r))
        .collect();
    let all: Vec<String> = got.values().map(show).collect();
    let all = all.join("\n");

    // A held tap of a trusted box: its read_at plus the (tiny) measured offset.
    let a = &got["a-held"];
    assert_eq!(a.tap_moment(), v1::TapMoment::DeviceClock, "{all}");
    let corrected_by = secs(time!(a.tapped_at), time!(a.read_at));
    assert!(
        (-0.05..1.0).contains(&corrected_by),
        "moved by {corrected_by} s\n{all}"
    );
    assert!(secs(time!(a.stored_at), time!(a.tapped_at)) > 50.0, "{all}");

    // A prompt tap: the stored time.
    let p = &got["a-prompt"];
    assert_eq!(p.tap_moment(), v1::TapMoment::Stored, "{all}");
    assert_eq!(p.tapped_at, p.stored_at, "{all}");

    // A held tap seen before the box's previous stored tap (on another reader): moved up to
    // that tap's moment (the earlier of its stored time and its corrected read_at).
    let c = &got["a-before-prompt"];
    assert_eq!(c.tap_moment(), v1::TapMoment::DeviceClock, "{all}");
    let at = time!(c.tapped_at);
    assert!(
        at <= time!(p.stored_at) && secs(at, time!(p.read_at)) > -0.05,
        "not clamped to the previous tap\n{all}"
    );
    assert!(secs(at, time!(c.read_at)) > 50.0, "{all}");
    assert!(at <= time!(c.stored_at), "{all}");

    // B's clock is 30 s off: its spooled tap counts at arrival and says why; a tap whose
    // (untrusted) read_at is close to its storing gives no reason to suspect a spool.
    for id in ["b-held", "c-held"] {
        let r = &got[id];
        assert_eq!(r.tap_moment(), v1::TapMoment::StoredClockUntrusted, "{all}");
        assert_eq!(r.tapped_at, r.stored_at, "{all}");
    }
    let b = &got["b-prompt"];
    assert_eq!(b.tap_moment(), v1::TapMoment::Stored, "{all}");
    assert_eq!(b.tapped_at, b.stored_at, "{all}");
    // Every moment is the same as stored or earlier, and each read says when it was stored.
    for r in got.values() {
        assert!(time!(r.tapped_at) <= time!(r.stored_at), "{all}");
    }

    // The identity heartbeat counts them (and so /metrics).
    wait_identity_heartbeat(&client, Duration::from_secs(20), |hb| {
        hb.counters.get("held") == Some(&2) && hb.counters.get("clock_untrusted") == Some(&2)
    })
    .await;

    // `tagpoll status` shows each box's clock and whether its spooled taps use it.
    let out = bus.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let device = |id: &str| {
        status["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == id).cloned())
            .unwrap_or_else(|| panic!("device {id} in {status}"))
    };
    let a = device("A");
    let a_ms = a["clock_offset_ms"].as_f64().expect("A's offset");
    assert!((-50.0..2000.0).contains(&a_ms), "{a}");
    assert_eq!(a["clock_trusted"], true, "{a}");
    let b = device("B");
    let b_ms = b["clock_offset_ms"].as_f64().expect("B's offset");
    assert!((29_000.0..32_000.0).contains(&b_ms), "{b}");
    assert_eq!(b["clock_trusted"], false, "{b}");
    let out = bus.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("clock off by 30 s: spooled taps count at arrival"),
        "{text}"
    );
}
