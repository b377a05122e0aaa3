//! The tally against a real nats-server: live poll control through the
//! `tagpoll` command, and exact counts while the tally is SIGKILLed.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use rand::{Rng, SeedableRng};
use tagpoll_tests::reference::{Model, ModelRules};
use tagpoll_tests::*;

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Counts per answer of a poll from KV `tagpoll_results` (zeros left out).
async fn stored_counts(js: &async_nats::jetstream::Context, poll: &str) -> HashMap<String, u64> {
    let kv = js
        .get_key_value(names::KV_RESULTS)
        .await
        .expect("results bucket");
    match kv.get(names::results_key(poll)).await.expect("results get") {
        Some(b) => v1::PollResults::decode(b.as_ref())
            .expect("results decode")
            .answers
            .into_iter()
            .filter(|a| a.votes > 0)
            .map(|a| (a.answer_id, a.votes))
            .collect(),
        None => HashMap::new(),
    }
}

const CONTROL_EVENT: &str = r#"
[event]
id = "control"
identity = ["file", "anonymous"]

[[polls]]
id = "p"
question = "Which?"
allow_anonymous = true
answers = [{ id = "yes", label = "Yes" }, { id = "no", label = "No" }]

[[readers]]
id = "r1"
poll = "p"
answer = "yes"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_close_and_remap_take_effect_live_through_commands() {
    let mut bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", CONTROL_EVENT)]));
    let metrics_addr = format!("127.0.0.1:{}", tagpoll::nats_server::free_port().unwrap());
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service(
        "tagpoll-tally",
        &[],
        &[("TAGPOLL_METRICS_ADDR", metrics_addr.as_str())],
    );

    // Generous: the first tap may come before the services just started are ready.
    let tap = |tag: &str| bus.cli(&["tap", "--reader", "r1", "--tag", tag, "--wait", "60"]);
    assert!(ok(&tap("01020304")).contains("ACCEPTED  poll=p answer=yes"));

    assert_eq!(
        ok(&bus.cli(&["poll", "close", "p"])).trim(),
        "poll p is closed"
    );
    let line = ok(&tap("01020305"));
    assert!(
        line.contains("REJECTED") && line.contains("reason=poll_closed"),
        "{line}"
    );

    assert_eq!(
        ok(&bus.cli(&["poll", "open", "p"])).trim(),
        "poll p is open"
    );
    assert!(ok(&tap("01020306")).contains("ACCEPTED  poll=p answer=yes"));

    assert_eq!(
        ok(&bus.cli(&["reader", "map", "r1", "p", "no"])).trim(),
        "reader r1 now votes no in poll p"
    );
    assert!(ok(&tap("01020307")).contains("ACCEPTED  poll=p answer=no"));

    // Errors name what was wrong.
    let bad = bus.cli(&["reader", "map", "r1", "p", "maybe"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("poll \"p\" has no answer \"maybe\"; it has yes, no")
    );
    let bad = bus.cli(&["poll", "open", "nope"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no poll \"nope\" is loaded"));

    let js = async_nats::jetstream::new(bus.client().await);
    let want: HashMap<String, u64> = [("yes".to_string(), 2), ("no".to_string(), 1)].into();
    eventually(Duration::from_secs(10), "results", || {
        let js = js.clone();
        let want = want.clone();
        async move {
            let got = stored_counts(&js, "p").await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    let table = ok(&bus.cli(&["results", "p"]));
    assert!(table.contains("Which? (p, open)"), "{table}");

    // The tally's /metrics reports what it handled (4 decisions so far).
    let url = format!("http://{metrics_addr}/metrics");
    eventually(Duration::from_secs(10), "tally metrics", || {
        let url = url.clone();
        async move {
            let r = http_client()
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let text = r.text().await.map_err(|e| e.to_string())?;
            let line = text
                .lines()
                .find(|l| l.starts_with("tagpoll_handled_total{kind=\"service\",name=\"tally\""));
            match line {
                Some(l) if l.ends_with(" 4") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // Audit: the recount from the vote stream equals the live counts.
    let replay = ok(&bus.cli(&["replay", "p"]));
    assert!(replay.contains("recount of 4 outcomes"), "{replay}");
    assert!(
        replay.contains("live counts are equal to the recount"),
        "{replay}"
    );
    let csv = ok(&bus.cli(&["export", "p", "--format", "csv"]));
    assert!(
        csv.starts_with("id,label,votes\nyes,Yes,2\nno,No,1\n\nseq,decided_at,read_id,"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.contains(",voter-")).count(),
        4,
        "{csv}"
    );
    assert!(
        !csv.contains("anon:"),
        "voter ids are pseudonymous by default: {csv}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&bus.cli(&[
        "export",
        "p",
        "--format",
        "json",
        "--voter-ids",
    ])))
    .unwrap();
    assert_eq!(json["total"], 3);
    assert_eq!(json["votes"].as_array().unwrap().len(), 4);
    assert!(
        json["votes"][0]["voter"]
            .as_str()
            .unwrap()
            .starts_with("anon:")
    );
    assert_eq!(json["votes"][1]["reason"], "poll_closed");
    let bad = bus.cli(&["export", "p", "--format", "xml"]);
    assert!(!bad.status.success());

    // The container health check: /healthz is 200 while the tally is
    // connected, 503 naming the cause once NATS is gone.
    let health = |addr: String| async move {
        let r = http_client()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((r.status().as_u16(), r.text().await.unwrap_or_default()))
    };
    assert_eq!(
        health(metrics_addr.clone()).await.unwrap(),
        (200, "ok\n".to_string())
    );
    // The image's health check script, as docker-compose.yml runs it.
    let port = metrics_addr.rsplit_once(':').unwrap().1.to_string();
    let hc = || {
        std::process::Command::new("bash")
            .arg(tagpoll_tests::cluster::repo_root().join("deploy/docker/healthcheck.sh"))
            .args(["http", &port, "/healthz"])
            .output()
            .unwrap()
    };
    assert!(hc().status.success(), "healthcheck.sh passes");
    bus.server.stop();
    eventually(
        Duration::from_secs(15),
        "tally unhealthy without NATS",
        || {
            let addr = metrics_addr.clone();
            async move {
                match health(addr).await? {
                    (503, body) if body.contains("not connected to NATS") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let out = hc();
    assert!(!out.status.success(), "healthcheck.sh fails without NATS");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not connected to NATS"),
        "and says why: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A restarted tally publishes its first snapshot only once the counts are rebuilt: the
/// projector never flashes every answer at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tally_never_shows_zero_counts() {
    let bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", CONTROL_EVENT)]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let mut tally = bus.service("tagpoll-tally", &[], &[]);
    for tag in ["0A0B0C01", "0A0B0C02"] {
        let out = bus.cli(&["tap", "--reader", "r1", "--tag", tag, "--wait", "60"]);
        assert!(ok(&out).contains("ACCEPTED"));
    }
    tally.stop();

    let client = bus.client().await;
    let mut snapshots = client.subscribe(subjects::results("p")).await.unwrap();
    client.flush().await.unwrap();
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    // The first snapshots after the start (an idle tally refreshes every 5 s).
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(20), snapshots.next())
            .await
            .expect("a results snapshot from the restarted tally")
            .unwrap();
        let r = v1::PollResults::decode(m.payload.as_ref()).unwrap();
        assert_eq!(r.total, 2, "snapshot after restart: {r:?}");
    }
}

const CRASH_EVENT: &str = r#"
[event]
id = "crash"
identity = ["file", "anonymous"]

[[polls]]
id = "first"
question = "First vote stands"
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }, { id = "c", label = "C" }]

[[polls]]
id = "change"
question = "Last vote counts, two choices"
mode = "change"
max_choices = 2
allow_anonymous = true
answers = [{ id = "x", label = "X" }, { id = "y", label = "Y" }, { id = "z", label = "Z" }]

[[readers]]
id = "ra"
poll = "first"
answer = "a"

[[readers]]
id = "rb"
poll = "first"
answer = "b"

[[readers]]
id = "rc"
poll = "first"
answer = "c"

[[readers]]
id = "rx"
poll = "change"
answer = "x"

[[readers]]
id = "ry"
poll = "change"
answer = "y"

[[readers]]
id = "rz"
poll = "change"
answer = "z"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_when_the_tally_is_killed_during_5000_taps() {
    const TAPS: usize = 5000;
    const VOTERS: usize = 400;
    let bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", CRASH_EVENT)]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let mut tally = bus.service("tagpoll-tally", &[], &[]);

    let mut model = Model::default();
    for (poll, change, max) in [("first", false, 1), ("change", true, 2)] {
        model.open.insert(poll.into(), true);
        model.rules.insert(
            poll.into(),
            ModelRules {
                change,
                max,
                anon: true,
            },
        );
    }
    let readers = [
        ("ra", "first", "a"),
        ("rb", "first", "b"),
        ("rc", "first", "c"),
        ("rx", "change", "x"),
        ("ry", "change", "y"),
        ("rz", "change", "z"),
    ];
    for (r, p, a) in readers {
        model.map.insert(r.into(), (p.into(), a.into()));
    }

    // Taps are published in this order over one connection; identity and the
    // tally keep stream order, so the model sees the same order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261126);
    let taps: Vec<(String, &str, Vec<u8>)> = (0..TAPS)
        .map(|i| {
            let voter = rng.random_range(0..VOTERS) as u32;
            let reader = readers[rng.random_range(0..readers.len())].0;
            (format!("crash-{i}"), reader, voter.to_be_bytes().to_vec())
        })
        .collect();

    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let publisher = {
        let js = js.clone();
        let taps = taps.clone();
        tokio::spawn(async move {
            let mut acks = std::collections::VecDeque::new();
            for (read_id, reader, uid) in &taps {
                let read = v1::TagRead {
                    read_id: read_id.clone(),
                    device_id: "crashdev".into(),
                    reader_id: reader.to_string(),
                    tag_uid: uid.clone(),
                    technology: v1::TagTechnology::Simulated as i32,
                    read_at: Some(tagpoll_proto::now()),
                    device_seq: 0,
                };
                let ack = tagpoll_bus::publish::send_for_read(
                    &js,
                    subjects::read("crashdev", reader),
                    read_id,
                    read.encode_to_vec().into(),
                )
                .await
                .expect("publish tap");
                acks.push_back(ack);
                if acks.len() >= 128 {
                    acks.pop_front().unwrap().await.expect("tap ack");
                }
            }
            for a in acks {
                a.await.expect("tap ack");
            }
        })
    };

    // Kill the tally at random moments while taps flow, and bring it back.
    let votes = js.get_stream(names::STREAM_VOTES).await.unwrap();
    let mut kills = 0;
    while kills < 6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        tally.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        tally.start().unwrap();
        let decided = votes.clone().info().await.unwrap().state.messages;
        if decided as usize >= TAPS {
            break;
        }
    }
    publisher.await.unwrap();
    assert!(
        kills >= 3,
        "the tally must have been killed a few times mid-run ({kills})"
    );

    for (read_id, reader, uid) in &taps {
        let voter = format!("anon:{}", hex::encode(uid));
        model.tap(read_id, reader, Some(&voter));
    }

    eventually(Duration::from_secs(60), "one outcome per tap", || {
        let votes = votes.clone();
        async move {
            let n = votes
                .clone()
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages;
            if n as usize == TAPS {
                Ok(())
            } else {
                Err(format!("{n} outcomes"))
            }
        }
    })
    .await;
    for poll in ["first", "change"] {
        let want = model.counts(poll);
        eventually(
            Duration::from_secs(20),
            &format!("counts of {poll}"),
            || {
                let js = js.clone();
                let want = want.clone();
                async move {
                    let got = stored_counts(&js, poll).await;
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("got {got:?}, want {want:?}"))
                    }
                }
            },
        )
        .await;
    }
    // And no read was decided twice: every outcome's read id is distinct.
    let mut ids = std::collections::HashSet::new();
    let consumer = votes
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap().take(TAPS);
    while let Some(m) = msgs.next().await {
        let o = v1::VoteOutcome::decode(m.unwrap().payload.as_ref()).unwrap();
        assert!(
            ids.insert(o.read_id.clone()),
            "read {} decided twice",
            o.read_id
        );
    }
    assert_eq!(ids.len(), TAPS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tally_partitions_share_an_event_without_sharing_a_poll() {
    let (poll_a, poll_b) = polls_of_two_partitions();
    let event = two_poll_event(
        "parts",
        "first",
        &poll_a,
        &poll_b,
        &[("ra", &poll_a), ("rb", &poll_b)],
    );
    let bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", &event)]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _t0 = bus.service("tagpoll-tally", &["--partition", "0/2"], &[]);
    let _t1 = bus.service("tagpoll-tally", &[], &[("TAGPOLL_TALLY_PARTITION", "1/2")]);
    let js = async_nats::jetstream::new(bus.client().await);
    for i in 0u32..40 {
        let reader = if i % 2 == 0 { "ra" } else { "rb" };
        tap(
            &js,
            "d",
            reader,
            &(i / 4).to_be_bytes(),
            &format!("part-{i}"),
        )
        .await;
    }
    // 10 voters per poll, each tapping twice: 10 votes per poll.
    for poll in [&poll_a, &poll_b] {
        eventually(Duration::from_secs(20), "partitioned counts", || {
            let js = js.clone();
            async move {
                let got = stored_counts(&js, poll).await;
                if got.get("y") == Some(&10) {
                    Ok(())
                } else {
                    Err(format!("{poll}: {got:?}"))
                }
            }
        })
        .await;
    }
    // Exactly one outcome per read, each decided by its poll's owner.
    let votes = js.get_stream(names::STREAM_VOTES).await.unwrap();
    let consumer = votes
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap().take(40);
    let mut ids = std::collections::HashSet::new();
    while let Some(m) = msgs.next().await {
        let o = v1::VoteOutcome::decode(m.unwrap().payload.as_ref()).unwrap();
        let owner = if o.poll_id == poll_a { "0/2" } else { "1/2" };
        assert_eq!(o.partition, owner, "{o:?}");
        assert!(ids.insert(o.read_id));
    }
    assert_eq!(ids.len(), 40);
    assert_eq!(votes.clone().info().await.unwrap().state.messages, 40);
}

const GAP_EVENT: &str = r#"
[event]
id = "gap"
identity = ["anonymous"]

[[polls]]
id = "p"
question = "A or B?"
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[readers]]
id = "ra"
poll = "p"
answer = "a"

[[readers]]
id = "rb"
poll = "p"
answer = "b"
"#;

/// Sets how many outcomes the vote stream takes per subject (0: no limit);
/// with a limit, a further outcome on a full subject is refused.
async fn limit_votes_per_subject(js: &async_nats::jetstream::Context, limit: i64) {
    let mut cfg = js
        .get_stream(names::STREAM_VOTES)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    if limit > 0 {
        cfg.max_messages_per_subject = limit;
        cfg.discard = async_nats::jetstream::stream::DiscardPolicy::New;
        cfg.discard_new_per_subject = true;
    } else {
        cfg.max_messages_per_subject = -1;
        cfg.discard = async_nats::jetstream::stream::DiscardPolicy::Old;
        cfg.discard_new_per_subject = false;
    }
    js.update_stream(&cfg)
        .await
        .expect("update the vote stream");
}

/// Outcomes are published pipelined. When one publish fails while a later
/// one is stored (a gap in the vote stream), the tally must decide the
/// failed read again after it recovers, not resume past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_refused_below_a_stored_one_is_decided_again() {
    let bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", GAP_EVENT)]));
    let js = async_nats::jetstream::new(bus.client().await);
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let mut tally = bus.service("tagpoll-tally", &[], &[]);
    tap(&js, "dev", "ra", &[0x01, 0x00, 0x00, 0x01], "gap-1").await;
    eventually(Duration::from_secs(20), "first outcome", || {
        let js = js.clone();
        async move {
            match stream_len(&js, names::STREAM_VOTES).await {
                1 => Ok(()),
                n => Err(format!("{n} outcomes")),
            }
        }
    })
    .await;

    // The tally is down while two more taps are identified: one at "ra"
    // (whose outcome subject is now full, so its publish is refused) and
    // one at "rb" (stored). Started again, the tally reads both before the
    // refusal comes back, so the vote stream gets a gap.
    tally.kill();
    limit_votes_per_subject(&js, 1).await;
    tap(&js, "dev", "ra", &[0x01, 0x00, 0x00, 0x02], "gap-2").await;
    tap(&js, "dev", "rb", &[0x01, 0x00, 0x00, 0x03], "gap-3").await;
    eventually(Duration::from_secs(20), "both taps identified", || {
        let js = js.clone();
        async move {
            let n = stream_len(&js, names::STREAM_IDENTIFIED).await;
            if n == 3 {
                Ok(())
            } else {
                Err(format!("{n} identified"))
            }
        }
    })
    .await;
    tally.start().expect("restart the tally");
    eventually(Duration::from_secs(20), "the outcome at rb stored", || {
        let js = js.clone();
        async move {
            match stream_len(&js, names::STREAM_VOTES).await {
                2 => Ok(()),
                n => Err(format!("{n} outcomes")),
            }
        }
    })
    .await;
    // Let the refusal come back and the tally rebuild (it retries the read
    // at "ra" while the limit holds), then lift the limit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    limit_votes_per_subject(&js, 0).await;

    let want: HashMap<String, u64> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
    eventually(Duration::from_secs(30), "gap-2 decided after all", || {
        let js = js.clone();
        let want = want.clone();
        async move {
            let n = stream_len(&js, names::STREAM_VOTES).await;
            let counts = stored_counts(&js, "p").await;
            if n == 3 && counts == want {
                Ok(())
            } else {
                Err(format!("{n} outcomes, counts {counts:?}"))
            }
        }
    })
    .await;
}

/// The vote log once the outcome of `read_id` (a sentinel tapped after
/// everything else) is in it.
async fn vote_log_through(
    js: &async_nats::jetstream::Context,
    read_id: &str,
    limit: Duration,
) -> Vec<v1::VoteOutcome> {
    eventually(limit, &format!("the outcome of {read_id}"), || async {
        let log = vote_log(js).await;
        if log.iter().any(|o| o.read_id == read_id) {
            Ok(log)
        } else {
            Err(format!("{} outcomes", log.len()))
        }
    })
    .await
}

/// All outcomes in the vote stream, in stream order.
async fn vote_log(js: &async_nats::jetstream::Context) -> Vec<v1::VoteOutcome> {
    stream_messages(js, names::STREAM_VOTES)
        .await
        .into_iter()
        .map(|(_, b)| v1::VoteOutcome::decode(b.as_ref()).expect("outcome"))
        .collect()
}

/// Issue #14's scenario: taps made while identity was down are decided,
/// once it is back, against the poll state and reader mapping at the time
/// they were made, not at the time they are decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_held_by_a_stopped_identity_count_as_of_when_they_were_made() {
    let bus = TestBus::start();
    let event = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/event.toml");
    ok(&bus.cli(&["load", event]));
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client);
    for (reader, tag) in [("coffee-left", "0A0B0C0D"), ("talk-rfid", "0A0B0C0E")] {
        ok(&bus.cli(&["tap", "--reader", reader, "--tag", tag, "--no-wait"]));
    }
    wait_len(&js, names::STREAM_READS, 2, Duration::from_secs(10)).await;
    // Both taps are stored; now the evening moves on before they are decided.
    assert_eq!(
        ok(&bus.cli(&["poll", "close", "drink"])).trim(),
        "poll drink is closed"
    );
    ok(&bus.cli(&["reader", "map", "talk-rfid", "talk", "xmpp"]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    wait_len(&js, names::STREAM_VOTES, 2, Duration::from_secs(60)).await;
    let log = vote_log(&js).await;
    let by_poll: HashMap<&str, &v1::VoteOutcome> =
        log.iter().map(|o| (o.poll_id.as_str(), o)).collect();
    assert_eq!(log.len(), 2, "{log:?}");
    let drink = by_poll["drink"];
    assert_eq!(
        (drink.kind(), drink.answer_id.as_str()),
        (v1::OutcomeKind::Accepted, "coffee"),
        "{drink:?}"
    );
    let talk = by_poll["talk"];
    assert_eq!(
        (talk.kind(), talk.answer_id.as_str()),
        (v1::OutcomeKind::Accepted, "rfid"),
        "{talk:?}"
    );
    for o in &log {
        assert!(
            o.tapped_at.is_some(),
            "outcome without its tap moment: {o:?}"
        );
    }
    eventually(Duration::from_secs(15), "results", || async {
        let (drink, talk) = (
            stored_counts(&js, "drink").await,
            stored_counts(&js, "talk").await,
        );
        if drink == HashMap::from([("coffee".to_string(), 1)])
            && talk == HashMap::from([("rfid".to_string(), 1)])
        {
            Ok(())
        } else {
            Err(format!("drink {drink:?} talk {talk:?}"))
        }
    })
    .await;
    for poll in ["drink", "talk"] {
        let out = ok(&bus.cli(&["replay", poll]));
        assert!(
            out.contains("live counts are equal to the recount"),
            "{out}"
        );
    }
}

/// An identified read as identity stores it, with its tap moment.
fn identified_at(
    read_id: &str,
    reader: &str,
    voter: &str,
    moment: std::time::SystemTime,
) -> v1::IdentifiedRead {
    v1::IdentifiedRead {
        read_id: read_id.into(),
        device_id: "box".into(),
        reader_id: reader.into(),
        read_at: Some(tagpoll_proto::timestamp(moment)),
        identity: Some(v1::identified_read::Identity::Voter(v1::Voter {
            voter_id: voter.into(),
            backend: "file".into(),
            ..Default::default()
        })),
        identified_at: Some(tagpoll_proto::now()),
        tapped_at: Some(tagpoll_proto::timestamp(moment)),
        tap_moment: v1::TapMoment::DeviceClock as i32,
        stored_at: Some(tagpoll_proto::now()),
        ..Default::default()
    }
}

/// A voter's earlier tap that arrives after a later one still counts first
/// ("first vote stands"): the later tap's outcome is corrected in the vote
/// stream, and the counts, the recount and a restarted tally agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_tap_arriving_late_is_counted_first_and_corrects_the_later_one() {
    let bus = TestBus::start();
    let event = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/event.toml");
    ok(&bus.cli(&["load", event]));
    let mut tally = bus.service("tagpoll-tally", &[], &[]);
    let js = async_nats::jetstream::new(bus.client().await);
    // Moments after the event was loaded (before it, no reader was mapped).
    let loaded = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let publish = |read: v1::IdentifiedRead| {
        let js = js.clone();
        async move {
            tagpoll_bus::publish::publish_for_read(
                &js,
                subjects::identified(&read.device_id, &read.reader_id),
                &read.read_id,
                read.encode_to_vec().into(),
            )
            .await
            .expect("publish identified read");
        }
    };
    // Tea arrives first; coffee, tapped before it (spooled on an offline
    // box), arrives after it.
    publish(identified_at(
        "late-tea",
        "tea",
        "file:dana",
        loaded + Duration::from_millis(200),
    ))
    .await;
    wait_len(&js, names::STREAM_VOTES, 1, Duration::from_secs(30)).await;
    publish(identified_at(
        "late-coffee",
        "coffee-left",
        "file:dana",
        loaded + Duration::from_millis(100),
    ))
    .await;
    wait_len(&js, names::STREAM_VOTES, 3, Duration::from_secs(30)).await;
    let log = vote_log(&js).await;
    let summary: Vec<(&str, v1::OutcomeKind, bool)> = log
        .iter()
        .map(|o| (o.read_id.as_str(), o.kind(), o.correction))
        .collect();
    assert_eq!(
        summary,
        [
            ("late-tea", v1::OutcomeKind::Accepted, false),
            ("late-tea", v1::OutcomeKind::Duplicate, true),
            ("late-coffee", v1::OutcomeKind::Accepted, false),
        ]
    );
    assert_eq!(log[1].corrected_by, "late-coffee");
    let want = HashMap::from([("coffee".to_string(), 1)]);
    eventually(Duration::from_secs(15), "corrected results", || async {
        let got = stored_counts(&js, "drink").await;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let out = ok(&bus.cli(&["replay", "drink"]));
    assert!(
        out.contains("live counts are equal to the recount"),
        "{out}"
    );
    // A restarted tally rebuilds the same counts from the stream, corrections included.
    tally.kill();
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    ok(&bus.cli(&["tap", "--reader", "tea", "--tag", "0B0B0B0B", "--no-wait"]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    wait_len(&js, names::STREAM_VOTES, 4, Duration::from_secs(60)).await;
    let want = HashMap::from([("coffee".to_string(), 1), ("tea".to_string(), 1)]);
    eventually(
        Duration::from_secs(15),
        "results after the restart",
        || async {
            let got = stored_counts(&js, "drink").await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

/// Two tally partitions while readers are remapped back and forth between
/// polls of different owners, with taps going on all the while: every read
/// gets exactly one outcome (neither skipped by both owners nor decided by
/// both), each for the poll its reader stood for at the tap moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaps_between_partitions_neither_drop_nor_double_a_read() {
    let (poll_a, poll_b) = polls_of_two_partitions();
    let event = two_poll_event("moving", "change", &poll_a, &poll_b, &[("ra", &poll_a)]);
    let bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", &event)]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _t0 = bus.service("tagpoll-tally", &["--partition", "0/2"], &[]);
    let _t1 = bus.service("tagpoll-tally", &["--partition", "1/2"], &[]);
    let js = async_nats::jetstream::new(bus.client().await);
    let taps = 300u32;
    let tapper = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..taps {
                tap(&js, "d", "ra", &i.to_be_bytes(), &format!("mv-{i:04}")).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut remaps = 0;
    while !tapper.is_finished() {
        let poll = if remaps % 2 == 0 { &poll_b } else { &poll_a };
        ok(&bus.cli(&["reader", "map", "ra", poll, "y"]));
        remaps += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tapper.await.expect("tapper");
    assert!(remaps >= 4, "only {remaps} remaps happened during the taps");
    wait_len(
        &js,
        names::STREAM_VOTES,
        taps as u64,
        Duration::from_secs(60),
    )
    .await;
    // Sentinel: a last tap after everything, decided once it is in, means
    // nothing decided before it is still on its way.
    tap(&js, "d", "ra", &[0xEE], "mv-sentinel").await;
    let log = vote_log_through(&js, "mv-sentinel", Duration::from_secs(30)).await;
    let mut per_read: HashMap<&str, Vec<&v1::VoteOutcome>> = HashMap::new();
    for o in log.iter().filter(|o| !o.correction) {
        per_read.entry(o.read_id.as_str()).or_default().push(o);
    }
    for i in 0..taps {
        let id = format!("mv-{i:04}");
        let got = per_read.get(id.as_str()).map_or(0, Vec::len);
        assert_eq!(got, 1, "read {id} has {got} outcomes");
    }
    assert_eq!(per_read.len(), taps as usize + 1);
    let both: std::collections::HashSet<&str> = log.iter().map(|o| o.partition.as_str()).collect();
    assert!(
        both.contains("0/2") && both.contains("1/2"),
        "both partitions decided: {both:?}"
    );
    for poll in [&poll_a, &poll_b] {
        let out = ok(&bus.cli(&["replay", poll]));
        assert!(
            out.contains("live counts are equal to the recount"),
            "{out}"
        );
    }
}

/// Two poll ids, the first owned by tally partition 0/2, the second by 1/2.
fn polls_of_two_partitions() -> (String, String) {
    use tagpoll_tally::partition::Partition;
    let owned_by = |index| {
        let p = Partition { index, count: 2 };
        (0..100)
            .map(|i| format!("poll{i}"))
            .find(|id| p.owns(id))
            .expect("a poll id for each partition")
    };
    (owned_by(0), owned_by(1))
}

/// An event with polls `a` and `b` (one answer `y`, anonymous voters,
/// `mode`) and `readers` as (reader, poll) pairs.
fn two_poll_event(id: &str, mode: &str, a: &str, b: &str, readers: &[(&str, &str)]) -> String {
    let mut event = format!("[event]\nid = \"{id}\"\nidentity = [\"anonymous\"]\n");
    for (poll, question) in [(a, "A?"), (b, "B?")] {
        event += &format!(
            "[[polls]]\nid = \"{poll}\"\nquestion = \"{question}\"\nallow_anonymous = true\n\
             mode = \"{mode}\"\nanswers = [{{ id = \"y\", label = \"Y\" }}]\n"
        );
    }
    for (reader, poll) in readers {
        event += &format!("[[readers]]\nid = \"{reader}\"\npoll = \"{poll}\"\nanswer = \"y\"\n");
    }
    event
}

/// Issue #15's first finding: a read id with a newline made identity panic
/// in the NATS client's header code at every re-delivery. It is dropped at
/// intake now, and the next tap is decided as usual by the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_id_holds_a_newline_is_dropped_and_identity_stays_up() {
    let bus = TestBus::start();
    let event = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/event.toml");
    ok(&bus.cli(&["load", event]));
    let mut identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let js = async_nats::jetstream::new(bus.client().await);
    let bad = v1::TagRead {
        read_id: "bad\nid".into(),
        device_id: "cli".into(),
        reader_id: "coffee-left".into(),
        tag_uid: vec![1, 2, 3, 4],
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: 1,
    };
    // No headers from the body: a hostile box can do exactly this.
    js.publish(
        subjects::read("cli", "coffee-left"),
        bad.encode_to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    // More reads that can never be processed: a subject with an extra
    // token (the body names a valid box: it must not be believed), a subject
    // token that is no id, and bytes that are no protobuf.
    let mut other = bad.clone();
    other.read_id = "extra-token".into();
    for (subject, payload) in [
        (
            "tagpoll.reads.cli.coffee-left.extra".to_string(),
            other.encode_to_vec(),
        ),
        ("tagpoll.reads.cli.coffee%left".to_string(), {
            other.read_id = "bad-reader-token".into();
            other.encode_to_vec()
        }),
        (subjects::read("cli", "coffee-left"), vec![0xff, 0xff, 0xff]),
    ] {
        js.publish(subject, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    tap(
        &js,
        "cli",
        "coffee-left",
        &[9, 9, 9, 9],
        "after-the-bad-one",
    )
    .await;
    let log = vote_log_through(&js, "after-the-bad-one", Duration::from_secs(60)).await;
    assert_eq!(log.len(), 1, "only the good tap is decided: {log:?}");
    assert_eq!(
        identity.revive_if_dead(),
        None,
        "identity must not have crashed"
    );
    // Issue #15: the bad read is not just dropped, it is in the dead letters
    // with why and where it came from, once, within 10 s.
    let dead = dead_letters_within(&js, 4, Duration::from_secs(10)).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let r = m.headers.get(names::HEADER_DEAD_REASON).expect("a reason");
            r.as_str().to_string()
        })
        .collect();
    assert!(reasons[1].contains("is not tagpoll.reads."), "{reasons:?}");
    assert!(
        reasons[2].contains("reader id \"coffee%left\""),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("TagRead"), "{reasons:?}");
    let h = &dead[0].headers;
    let header = |name: &str| h.get(name).map(|v| v.as_str().to_string());
    let reason = header(names::HEADER_DEAD_REASON).expect("a reason");
    assert!(reason.contains("read id"), "{reason}");
    assert_eq!(
        header(names::HEADER_DEAD_STREAM).as_deref(),
        Some(names::STREAM_READS)
    );
    assert_eq!(
        header(names::HEADER_DEAD_SUBJECT),
        Some(subjects::read("cli", "coffee-left"))
    );
    assert_eq!(
        v1::TagRead::decode(dead[0].payload.as_ref()).unwrap(),
        bad,
        "the copy is the read as it was stored"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(&bus.cli(&["status", "--json"]))).unwrap();
    assert_eq!(status["dead_letters"], 4, "{status}");
}

/// Every message in `TAGPOLL_DEAD`, once it holds `want` (fails after `within`).
async fn dead_letters_within(
    js: &async_nats::jetstream::Context,
    want: u64,
    within: Duration,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(mut stream) = js.get_stream(names::STREAM_DEAD).await {
            let n = stream.info().await.unwrap().state.messages;
            assert!(n <= want, "{n} dead letters, expected {want}");
            if n == want {
                let mut all = Vec::new();
                for seq in 1..=stream.info().await.unwrap().state.last_sequence {
                    if let Ok(m) = stream.get_raw_message(seq).await {
                        all.push(m);
                    }
                }
                return all;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {want} dead letters within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
