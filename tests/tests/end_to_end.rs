//! One tap travels end to end: reader → identity → tally → web, against a
//! real nats-server and the real service binaries.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "e2e"
identity = ["file", "anonymous"]
unknown_tag_hint = "Link your tag at the desk."

[[polls]]
id = "p1"
question = "Yes or no?"
allow_anonymous = true
answers = [{ id = "yes", label = "Yes" }, { id = "no", label = "No" }]

[[polls]]
id = "p2"
question = "Red or blue?"
answers = [{ id = "red", label = "Red" }, { id = "blue", label = "Blue" }]

# Two readers, far apart, share the answer "yes".
[[readers]]
id = "yes-left"
poll = "p1"
answer = "yes"

[[readers]]
id = "yes-right"
poll = "p1"
answer = "yes"

[[readers]]
id = "no"
poll = "p1"
answer = "no"

[[readers]]
id = "blue"
poll = "p2"
answer = "blue"

[[people]]
id = "alice"
name = "Alice"
tags = ["04A1B2C3", "04112233445566"]

[[people]]
id = "bob"
name = "Bob"
tags = ["7E6FD7A0"]

[[people]]
id = "carol"
name = "Carol"
tags = ["0A0B0C0D"]
"#;

const ALICE_1: &[u8] = &[0x04, 0xA1, 0xB2, 0xC3];
const ALICE_2: &[u8] = &[0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
const BOB: &[u8] = &[0x7E, 0x6F, 0xD7, 0xA0];
const STRANGER: &[u8] = &[0xDE, 0xAD, 0xBE, 0xEF];

fn stdout(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_become_exact_counts_and_outcomes() {
    let bus = TestBus::start();
    let event = write_file(&bus, "event.toml", EVENT);
    let out = bus.cli(&["load", &event]);
    assert!(
        out.status.success(),
        "tagpoll load failed: {}",
        stdout(&out)
    );

    let port = tagpoll::nats_server::free_port().unwrap();
    let http = format!("127.0.0.1:{port}");
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let _web = bus.service("tagpoll-web", &["--http", &http], &[]);
    wait_http_ok(&format!("http://{http}/healthz")).await;

    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut outcomes = client.subscribe(subjects::OUTCOMES_ALL).await.unwrap();
    let mut feedback = client
        .subscribe(subjects::feedback_for_device("dev-a"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    // (read id, device, reader, tag, expected outcome)
    let taps: &[(&str, &str, &str, &[u8], &str)] = &[
        ("t1", "dev-a", "yes-left", ALICE_1, "ACCEPTED"),
        ("t2", "dev-b", "yes-right", ALICE_1, "DUPLICATE"),
        // Alice's second tag is still Alice: the first vote stands.
        ("t3", "dev-a", "no", ALICE_2, "DUPLICATE"),
        ("t4", "dev-a", "no", BOB, "ACCEPTED"),
        ("t5", "dev-b", "yes-right", STRANGER, "ACCEPTED"),
        ("t6", "dev-a", "yes-left", STRANGER, "DUPLICATE"),
        ("t7", "dev-b", "blue", BOB, "ACCEPTED"),
        // p2 does not allow anonymous voters.
        ("t8", "dev-b", "blue", STRANGER, "REJECTED"),
        ("t9", "dev-b", "not-mapped", BOB, "REJECTED"),
    ];
    let mut seen: HashMap<String, v1::VoteOutcome> = HashMap::new();
    for (read_id, device, reader, uid, _) in taps {
        tap(&js, device, reader, uid, read_id).await;
        // Wait for each outcome so the expected kinds are deterministic.
        let o = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let m = outcomes.next().await.expect("outcome subscription ended");
                let o = v1::VoteOutcome::decode(m.payload.as_ref()).expect("outcome decodes");
                if o.read_id == *read_id {
                    return o;
                }
                seen.insert(o.read_id.clone(), o);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no outcome for {read_id}"));
        seen.insert(o.read_id.clone(), o);
    }
    // The same read re-sent (a reader retrying after a lost ack) is stored once.
    tap(&js, "dev-a", "no", BOB, "t4").await;

    // One more vote through the command, as an organiser would.
    let out = bus.cli(&["tap", "--reader", "yes-left", "--tag", "0A0B0C0D"]);
    assert!(out.status.success(), "tagpoll tap failed: {}", stdout(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("ACCEPTED")
            && line.contains("poll=p1 answer=yes")
            && line.contains("voter=file:carol"),
        "{line}"
    );

    for (read_id, _, _, _, expected) in taps {
        let o = &seen[*read_id];
        assert_eq!(
            tagpoll::show::kind_label(o.kind()),
            *expected,
            "outcome of {read_id}: {o:?}"
        );
    }
    assert_eq!(seen["t1"].voter_id, "file:alice");
    assert_eq!(seen["t3"].voter_id, "file:alice", "two tags, one person");
    // The greeting goes to the tapping device only; the vote stream
    // carries pseudonymous voter ids and no names.
    let greeting = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = feedback.next().await.expect("feedback subscription ended");
            let f = v1::ReaderFeedback::decode(m.payload.as_ref()).expect("feedback decodes");
            let o = f.outcome.clone().expect("feedback carries its outcome");
            if o.read_id == "t1" {
                return (m.subject.to_string(), o, f.display_name);
            }
        }
    })
    .await
    .expect("feedback for t1");
    assert_eq!(greeting.0, "tagpoll.feedback.dev-a.yes-left");
    assert_eq!(
        greeting.1, seen["t1"],
        "feedback carries the stored outcome"
    );
    assert_eq!(greeting.2, "Alice");
    assert!(seen["t5"].voter_id.starts_with("anon:"));
    assert!(
        !seen["t5"].voter_id.contains("DEADBEEF"),
        "raw UID must not leave identity"
    );
    assert_eq!(seen["t8"].reject_reason(), v1::RejectReason::UnknownTag);
    assert_eq!(seen["t8"].hint, "");
    assert_eq!(
        seen["t9"].reject_reason(),
        v1::RejectReason::ReaderNotMapped
    );

    let expect_p1 = serde_json::json!({
        "poll": "p1", "question": "Yes or no?", "state": "open", "total": 4,
        "answers": [
            {"id": "yes", "label": "Yes", "votes": 3},
            {"id": "no", "label": "No", "votes": 1}
        ]
    });
    let expect_p2 = serde_json::json!({
        "poll": "p2", "question": "Red or blue?", "state": "open", "total": 1,
        "answers": [
            {"id": "red", "label": "Red", "votes": 0},
            {"id": "blue", "label": "Blue", "votes": 1}
        ]
    });
    for (poll, expected) in [("p1", expect_p1), ("p2", expect_p2)] {
        let url = format!("http://{http}/api/polls/{poll}/results");
        eventually(
            Duration::from_secs(10),
            &format!("results of {poll}"),
            || {
                let url = url.clone();
                let expected = expected.clone();
                async move {
                    let (status, body) = http_json(&url).await;
                    if status == 200 && body == expected {
                        Ok(())
                    } else {
                        Err(format!("{status} {body}"))
                    }
                }
            },
        )
        .await;
    }

    // Exactly one outcome per read, the re-sent one included; no names.
    let stored = stream_messages(&js, names::STREAM_VOTES).await;
    assert_eq!(stored.len(), taps.len() + 1);
    for (seq, payload) in &stored {
        let text = String::from_utf8_lossy(payload);
        assert!(
            !text.contains("Alice") && !text.contains("Bob"),
            "a name in vote #{seq}: {text:?}"
        );
    }

    // The rest of the public API.
    let (status, polls) = http_json(&format!("http://{http}/api/polls")).await;
    assert_eq!(status, 200);
    assert_eq!(polls[0]["id"], "p1");
    assert_eq!(
        polls[1]["answers"][1],
        serde_json::json!({"id": "blue", "label": "Blue"})
    );
    let (status, readers) = http_json(&format!("http://{http}/api/readers")).await;
    assert_eq!(status, 200);
    assert_eq!(readers.as_array().unwrap().len(), 4);
    assert!(
        readers
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"id": "yes-right", "poll": "p1", "answer": "yes"}))
    );
    let (status, body) = http_json(&format!("http://{http}/api/polls/nope/results")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["field"], "poll");

    // `tagpoll results` agrees with the API.
    let out = bus.cli(&["results", "p1"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("Yes") && l.contains(" 3 ")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("total") && l.trim_end().ends_with('4')),
        "{table}"
    );
}
