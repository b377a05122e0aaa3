//! Issue #14, second acceptance test: a real `tagpoll-reader` on a pty whose
//! NATS link is cut (a TCP proxy between it and the server; the server stays
//! up) for longer than the streams' `duplicate_window`. While it is offline,
//! people tap, the reader is remapped to another poll, its first poll is
//! closed, and more people tap. Once the link is back every spooled tap is
//! decided exactly once, at its tap moment: the taps made before the remap
//! for the old answer, those after it for the new one; none lost, none
//! doubled, and `tagpoll replay` agrees with the live counts.
//!
//! The duplicate window is shortened to [`DUPLICATE_WINDOW_SECS`] through
//! `TAGPOLL_DUPLICATE_WINDOW_SECS` in the environment of `tagpoll load`,
//! which creates the streams.

mod reader_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use prost::Message;
use reader_support::*;
use tagpoll::dev::ServiceProcess;
use tagpoll_tests::tcp_proxy::TcpProxy;
use tagpoll_tests::*;
use tokio::time::sleep;

const DEVICE: &str = "box1";
const READER: &str = "r1";
/// The streams' duplicate window in this test (seconds).
const DUPLICATE_WINDOW_SECS: u64 = 3;
/// How long the link stays cut, at least: well over the duplicate window.
const CUT_AT_LEAST: Duration = Duration::from_secs(8);
/// Between the taps before the remap, the remap and the taps after it, so
/// the tap moments are well apart from the configuration changes.
const MOMENT_GAP: Duration = Duration::from_millis(1500);
/// Generous bound of every wait for the services.
const LIMIT: Duration = Duration::from_secs(30);

const EVENT: &str = r#"
[event]
id = "offline"
identity = ["file"]

[[polls]]
id = "first"
question = "First?"
mode = "first"
answers = [{ id = "x", label = "Xray" }, { id = "y", label = "Yankee" }]

[[polls]]
id = "second"
question = "Second?"
mode = "first"
answers = [{ id = "u", label = "Uniform" }, { id = "v", label = "Victor" }]

[[readers]]
id = "r1"
poll = "first"
answer = "x"
"#;

/// Person `n`'s one ID-12 tag (5 bytes, distinct per person).
fn tag(n: u8) -> [u8; 5] {
    [0x0A, 0x14, 0x00, n, 0x5C]
}

/// The event file: [`EVENT`] plus people p1..=p`count`, each with [`tag`].
fn event_file(count: u8) -> String {
    let mut text = EVENT.to_string();
    for n in 1..=count {
        text.push_str(&format!(
            "\n[[people]]\nid = \"p{n}\"\nname = \"Person {n}\"\ntags = [\"{}\"]\n",
            hex::encode_upper(tag(n))
        ));
    }
    text
}

/// When a tap was made, relative to the cut and the remap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Link up: decided at once.
    Connected,
    /// Link cut, before the remap: must count for first/x.
    BeforeRemap,
    /// Link cut, after the remap and the close of `first`: second/u.
    AfterRemap,
}

/// One tap the test made at the reader.
#[derive(Debug, Clone)]
struct Tap {
    phase: Phase,
    person: u8,
    read_id: String,
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// JSON log lines of `service` whose message is `message`.
fn log_lines(service: &ServiceProcess, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(service.log_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// Waits until `message` was logged at least `n` times.
async fn logged(service: &ServiceProcess, message: &str, n: usize) {
    eventually(LIMIT, &format!("{n} log lines {message:?}"), || async {
        let got = log_lines(service, message).len();
        if got >= n {
            Ok(())
        } else {
            Err(format!("{got} so far"))
        }
    })
    .await
}

/// Makes `person` tap the reader and waits until the reader spooled the tap
/// (its "tap" log line); returns the tap with its read id.
async fn tap_at_reader(
    master: &mut tokio_serial::SerialStream,
    reader: &ServiceProcess,
    phase: Phase,
    person: u8,
) -> Tap {
    let before = logged_taps(reader).len();
    write(master, &id12_frame(tag(person))).await;
    let read_id = eventually(
        LIMIT,
        &format!("the reader to spool p{person}'s tap"),
        || async {
            let taps = logged_taps(reader);
            match taps.len() {
                n if n == before + 1 => Ok(taps[before].clone()),
                n if n > before + 1 => Err(format!("{} taps for one tag: {taps:?}", n - before)),
                _ => Err("not yet".into()),
            }
        },
    )
    .await;
    Tap {
        phase,
        person,
        read_id,
    }
}

fn decode_all<M: Message + Default>(msgs: &[(u64, bytes::Bytes)]) -> Vec<(u64, M)> {
    msgs.iter()
        .map(|(seq, p)| (*seq, M::decode(p.as_ref()).expect("decodes")))
        .collect()
}

/// Every outcome in TAGPOLL_VOTES, with its stream sequence.
async fn outcomes(js: &async_nats::jetstream::Context) -> Vec<(u64, v1::VoteOutcome)> {
    decode_all(&stream_messages(js, names::STREAM_VOTES).await)
}

/// Waits until every one of `taps` has an outcome.
async fn wait_decided(js: &async_nats::jetstream::Context, taps: &[Tap]) {
    let wanted: BTreeSet<&str> = taps.iter().map(|t| t.read_id.as_str()).collect();
    eventually(LIMIT, "an outcome for every tap", || async {
        let have: BTreeSet<String> = outcomes(js)
            .await
            .into_iter()
            .map(|(_, o)| o.read_id)
            .collect();
        let missing: Vec<&&str> = wanted.iter().filter(|id| !have.contains(**id)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no outcome yet for {missing:?}"))
        }
    })
    .await
}

/// Whether the `identity` consumer has delivered and had acknowledged every read.
async fn identity_idle(js: &async_nats::jetstream::Context) -> Result<(), String> {
    let stream = js
        .get_stream(names::STREAM_READS)
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(names::CONSUMER_IDENTITY)
        .await
        .map_err(|e| e.to_string())?;
    let info = consumer.info().await.map_err(|e| e.to_string())?;
    if info.num_pending == 0 && info.num_ack_pending == 0 {
        Ok(())
    } else {
        Err(format!(
            "identity: {} pending, {} unacknowledged",
            info.num_pending, info.num_ack_pending
        ))
    }
}

/// Heartbeats of one subject with the moment each arrived, collected in the
/// background (to see what the reader's client buffered during the cut).
type Beats = Arc<Mutex<Vec<(SystemTime, v1::Heartbeat)>>>;

fn collect_beats(mut sub: async_nats::Subscriber) -> Beats {
    let beats: Beats = Arc::default();
    let b = beats.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(hb) = v1::Heartbeat::decode(m.payload.as_ref()) {
                b.lock().unwrap().push((SystemTime::now(), hb));
            }
        }
    });
    beats
}

/// When the device sent a heartbeat (device clock).
fn sent(h: &v1::Heartbeat) -> SystemTime {
    tagpoll_proto::to_system_time(h.sent_at.as_ref()).expect("heartbeat has sent_at")
}

/// Reads the votes of `label` from a `tagpoll replay` results table.
fn table_votes(table: &str, label: &str) -> Option<u64> {
    table.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(label))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_spooled_across_a_remap_while_cut_off_are_decided_once_at_their_moments() {
    let started = Instant::now();
    let bus = TestBus::start();
    let window = DUPLICATE_WINDOW_SECS.to_string();
    let window_env = [(topology_env(), window.as_str())];
    let mut load_env = bus.env();
    load_env.push((topology_env().into(), window.clone()));
    let event = write_file(&bus, "event.toml", &event_file(12));
    stdout(&cli_with_env(&["load", &event], &load_env));

    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    for name in [
        names::STREAM_READS,
        names::STREAM_IDENTIFIED,
        names::STREAM_VOTES,
    ] {
        let mut s = js.get_stream(name).await.expect("stream");
        let w = s.info().await.expect("stream info").config.duplicate_window;
        assert_eq!(
            w,
            Duration::from_secs(DUPLICATE_WINDOW_SECS),
            "{name}'s duplicate window"
        );
    }

    let _identity = bus.service("tagpoll-identity", &[], &window_env);
    let _tally = bus.service("tagpoll-tally", &[], &window_env);
    let mut tally_hb = client
        .subscribe(subjects::heartbeat("service", "tally", "*"))
        .await
        .expect("subscribe to the tally's heartbeats");

    let target = format!("127.0.0.1:{}", bus.server.port())
        .parse()
        .expect("server address");
    let proxy = TcpProxy::start(target).await.expect("start the TCP proxy");
    let beats = collect_beats(
        client
            .subscribe(subjects::heartbeat("device", DEVICE, "*"))
            .await
            .expect("subscribe to heartbeats"),
    );
    let mut hb = heartbeats(&client, DEVICE).await;
    let mut p = pty();
    let spec = format!("{READER}={},protocol=id12", p.path);
    let spool = bus.path().join("spool");
    let proxy_url = proxy.nats_url();
    let reader = bus.service(
        "tagpoll-reader",
        &[
            "--device",
            DEVICE,
            "--reader",
            &spec,
            "--spool",
            spool.to_str().unwrap(),
            "--quiet-ms",
            "100",
        ],
        &[
            ("NATS_URL", proxy_url.as_str()),
            ("TAGPOLL_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,async_nats=warn"),
            window_env[0],
        ],
    );
    // Connected through the proxy, with a few heartbeats behind it (the
    // identity service measures the device's clock offset from them).
    heartbeat_where(&mut hb, LIMIT, "r1 connected over NATS", |h| {
        h.nats_connected
            && h.readers
                .iter()
                .any(|r| r.reader_id == READER && r.state == "connected")
    })
    .await;
    assert_eq!(
        proxy.live(),
        1,
        "the reader's one connection goes through the proxy"
    );

    // Phase 1: link up.
    let mut taps = Vec::new();
    for person in 1..=3 {
        taps.push(tap_at_reader(&mut p.master, &reader, Phase::Connected, person).await);
    }
    wait_decided(&js, &taps).await;
    heartbeat_where(&mut hb, LIMIT, "another heartbeat while connected", |h| {
        h.nats_connected
    })
    .await;

    // Phase 2: link cut; taps wait in the spool.
    let lost_before = log_lines(&reader, "NATS link lost").len();
    let up_before = log_lines(&reader, "NATS link up").len();
    let cut_at = Instant::now();
    let cut_wall = SystemTime::now();
    proxy.cut().await;
    logged(&reader, "NATS link lost", lost_before + 1).await;
    let noticed = cut_at.elapsed();
    for person in 4..=6 {
        taps.push(tap_at_reader(&mut p.master, &reader, Phase::BeforeRemap, person).await);
    }
    let last_before = SystemTime::now();
    sleep(MOMENT_GAP).await;

    // The reader stands for second/u now, and its first poll closes.
    let remap_wall = SystemTime::now();
    stdout(&bus.cli(&["reader", "map", READER, "second", "u"]));
    stdout(&bus.cli(&["poll", "close", "first"]));
    let close_wall = SystemTime::now();
    sleep(MOMENT_GAP).await;

    // Phase 3: more taps, still cut off; p4 votes again, in the other poll.
    let first_after = SystemTime::now();
    for person in [7, 8, 9, 4] {
        taps.push(tap_at_reader(&mut p.master, &reader, Phase::AfterRemap, person).await);
    }
    let last_tap = Instant::now();
    assert_eq!(stored_count(&js).await, 3, "a tap got through the cut link");
    // Keep the link cut for longer than the duplicate window, also after
    // the last tap.
    let until =
        (cut_at + CUT_AT_LEAST).max(last_tap + Duration::from_secs(DUPLICATE_WINDOW_SECS + 1));
    tokio::time::sleep_until(until.into()).await;
    let cut_for = cut_at.elapsed();
    let refused = proxy.refused();
    let restored_at = Instant::now();
    let restored_wall = SystemTime::now();
    proxy.restore();
    logged(&reader, "NATS link up", up_before + 1).await;
    let reconnect = restored_at.elapsed();

    // Everything spooled was sent and acknowledged, identity has nothing
    // left, and the tally decided through the last identified read.
    let sent_from = SystemTime::now();
    heartbeat_where(&mut hb, LIMIT, "an empty spool after the cut", |h| {
        h.nats_connected && h.spool_depth == 0 && h.in_flight == 0 && sent(h) > sent_from
    })
    .await;
    wait_decided(&js, &taps).await;
    eventually(LIMIT, "identity to have handled every read", || {
        identity_idle(&js)
    })
    .await;
    let checked_from = SystemTime::now();
    let at_last = eventually(LIMIT, "the tally to catch up", || async {
        let identified: Vec<(u64, v1::IdentifiedRead)> =
            decode_all(&stream_messages(&js, names::STREAM_IDENTIFIED).await);
        let last_seq = identified.last().map_or(0, |(s, _)| *s);
        let votes = outcomes(&js).await;
        let decided_seq = votes
            .iter()
            .map(|(_, o)| o.identified_seq)
            .max()
            .unwrap_or(0);
        let decided: BTreeSet<&str> = votes.iter().map(|(_, o)| o.read_id.as_str()).collect();
        let undecided = identified
            .iter()
            .filter(|(_, r)| !decided.contains(r.read_id.as_str()))
            .count();
        match (decided_seq >= last_seq, undecided) {
            (true, _) => Ok(true),
            (false, 0) => Ok(false),
            _ => Err(format!(
                "identified up to seq {last_seq}, decided up to {decided_seq}, \
                 {undecided} identified reads without an outcome"
            )),
        }
    })
    .await;
    if !at_last {
        // The last identified read is a second copy of a decided one (it
        // would be skipped without an outcome): wait until the tally says
        // it has nothing left.
        heartbeat_where(&mut tally_hb, LIMIT, "the tally with nothing left", |h| {
            sent(h) > checked_from && h.lag == 0 && h.in_flight == 0
        })
        .await;
    }
    let quiet = restored_at.elapsed();

    // ----- what arrived -----------------------------------------------------
    let reads = stored_reads(&js).await;
    let identified: Vec<(u64, v1::IdentifiedRead)> =
        decode_all(&stream_messages(&js, names::STREAM_IDENTIFIED).await);
    let votes = outcomes(&js).await;
    let mut reads_per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &reads {
        *reads_per_id.entry(r.read.read_id.as_str()).or_default() += 1;
    }
    let mut identified_by_id: BTreeMap<&str, Vec<&v1::IdentifiedRead>> = BTreeMap::new();
    for (_, r) in &identified {
        identified_by_id
            .entry(r.read_id.as_str())
            .or_default()
            .push(r);
    }
    let mut votes_by_id: BTreeMap<&str, Vec<&v1::VoteOutcome>> = BTreeMap::new();
    for (_, o) in &votes {
        votes_by_id.entry(o.read_id.as_str()).or_default().push(o);
    }

    // The reader's client buffered heartbeats while cut off: they arrive
    // late, in a burst, after the link is back.
    let late: Vec<f64> = beats
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, h)| sent(h) >= cut_wall)
        .map(|(arrived, h)| {
            arrived
                .duration_since(sent(h))
                .unwrap_or_default()
                .as_secs_f64()
        })
        .filter(|late| *late > 1.0)
        .collect();
    let since_cut = |t: SystemTime| match t.duration_since(cut_wall) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let last_decided = votes
        .iter()
        .filter_map(|(_, o)| tagpoll_proto::to_system_time(o.decided_at.as_ref()))
        .max()
        .expect("outcomes have decided_at");
    eprintln!(
        "the reader saw the link down {noticed:?} after the cut; cut for {cut_for:?} (duplicate \
         window {DUPLICATE_WINDOW_SECS} s), {refused} reconnect attempts closed by the proxy; \
         reconnected {reconnect:?} after the restore; last outcome decided {:.2} s after it \
         (all quiet, checked: {quiet:?}).\n\
         since the cut: last tap before the remap {:.2} s, remap {:.2} s, close {:.2} s, \
         first tap after {:.2} s.\n\
         heartbeats sent while cut off that arrived late: {} (seconds late: {late:.1?})\n\
         TAGPOLL_READS {} messages, TAGPOLL_IDENTIFIED {}, TAGPOLL_VOTES {}",
        since_cut(last_decided) - since_cut(restored_wall),
        since_cut(last_before),
        since_cut(remap_wall),
        since_cut(close_wall),
        since_cut(first_after),
        late.len(),
        reads.len(),
        identified.len(),
        votes.len(),
    );
    eprintln!(
        "phase        person read id                               stored identified moment                         outcome"
    );
    for t in &taps {
        let id = t.read_id.as_str();
        let moment = identified_by_id
            .get(id)
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "{}@{:+.2}s",
                            r.tap_moment().as_str_name(),
                            tagpoll_proto::to_system_time(r.tapped_at.as_ref())
                                .map_or(f64::NAN, since_cut)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let decided = votes_by_id
            .get(id)
            .map(|os| {
                os.iter()
                    .map(|o| {
                        format!(
                            "{} {}/{}{}",
                            tagpoll::show::kind_label(o.kind()),
                            o.poll_id,
                            o.answer_id,
                            if o.correction { " (correction)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" + ")
            })
            .unwrap_or_default();
        eprintln!(
            "{:<12} p{:<5} {id:<37} {:>6} {:>10} {moment:<32} {decided}",
            format!("{:?}", t.phase),
            t.person,
            reads_per_id.get(id).copied().unwrap_or(0),
            identified_by_id.get(id).map_or(0, Vec::len),
        );
    }

    // ----- none lost, none doubled --------------------------------------------
    let tapped: BTreeSet<&str> = taps.iter().map(|t| t.read_id.as_str()).collect();
    assert_eq!(
        tapped.len(),
        taps.len(),
        "the reader gave two taps one read id"
    );
    assert_eq!(taps.len(), 10);
    let decided: BTreeSet<&str> = votes_by_id.keys().copied().collect();
    assert_eq!(decided, tapped, "outcomes for exactly the taps made");
    let doubled: Vec<_> = votes_by_id.iter().filter(|(_, os)| os.len() != 1).collect();
    assert!(
        doubled.is_empty(),
        "read ids with more than one outcome: {doubled:#?}"
    );
    for t in &taps {
        let r = identified_by_id
            .get(t.read_id.as_str())
            .and_then(|rs| rs.first())
            .unwrap_or_else(|| panic!("{t:?} has no identified read"));
        let voter = match &r.identity {
            Some(v1::identified_read::Identity::Voter(v)) => v.voter_id.as_str(),
            other => panic!("{t:?} was not identified as a person: {other:?}"),
        };
        assert_eq!(voter, format!("file:p{}", t.person), "{t:?}");
    }

    // ----- each tap decided at its moment ---------------------------------------
    let decision = |t: &Tap| {
        let o = votes_by_id[t.read_id.as_str()][0];
        (o.kind(), o.poll_id.clone(), o.answer_id.clone())
    };
    let accepted = v1::OutcomeKind::Accepted;
    let old: Vec<String> = taps
        .iter()
        .filter(|t| t.phase <= Phase::BeforeRemap)
        .filter(|t| decision(t) != (accepted, "first".into(), "x".into()))
        .map(|t| {
            format!(
                "{:?} p{} {}: {:?}",
                t.phase,
                t.person,
                t.read_id,
                votes_by_id[t.read_id.as_str()][0]
            )
        })
        .collect();
    assert!(
        old.is_empty(),
        "taps made before the remap must be ACCEPTED for first/x (the reader's mapping and \
         the poll's state at their tap moment), but {} of 6 were not:\n{}",
        old.len(),
        old.join("\n")
    );
    let new: Vec<String> = taps
        .iter()
        .filter(|t| t.phase == Phase::AfterRemap)
        .filter(|t| decision(t) != (accepted, "second".into(), "u".into()))
        .map(|t| {
            format!(
                "p{} {}: {:?}",
                t.person,
                t.read_id,
                votes_by_id[t.read_id.as_str()][0]
            )
        })
        .collect();
    assert!(
        new.is_empty(),
        "taps made after the remap must be ACCEPTED for second/u, but {} of 4 were not:\n{}",
        new.len(),
        new.join("\n")
    );

    // ----- the tap moments of spooled taps come from the device's clock -------
    let moments: Vec<String> = taps
        .iter()
        .filter(|t| t.phase != Phase::Connected)
        .flat_map(|t| {
            identified_by_id[t.read_id.as_str()]
                .iter()
                .map(move |r| (t, r))
        })
        .filter(|(_, r)| r.tap_moment() != v1::TapMoment::DeviceClock)
        .map(|(t, r)| format!("{:?} p{}: {:?}", t.phase, t.person, r.tap_moment()))
        .collect();
    assert!(
        moments.is_empty(),
        "taps spooled during the cut must have tap moment DEVICE_CLOCK:\n{}",
        moments.join("\n")
    );

    // ----- the audit agrees -------------------------------------------------------
    for (poll, outcomes_n, label, votes_n) in [("first", 6, "Xray", 6), ("second", 4, "Uniform", 4)]
    {
        let out = bus.cli(&["replay", poll]);
        let text = stdout(&out);
        assert!(
            text.contains("live counts are equal to the recount"),
            "replay {poll}: {text}"
        );
        assert!(
            text.contains(&format!("recount of {outcomes_n} outcomes")),
            "replay {poll}: {text}"
        );
        assert_eq!(
            table_votes(&text, label),
            Some(votes_n),
            "replay {poll}: {text}"
        );
    }
    eprintln!("test took {:?}", started.elapsed());
    drop(p.slave);
}

/// The variable that sets the streams' duplicate window.
fn topology_env() -> &'static str {
    tagpoll_bus::topology::DUPLICATE_WINDOW_ENV
}
