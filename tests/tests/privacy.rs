//! `tagpoll forget`: a person's tags are unlinked and exports no longer
//! name them, while the counts stay as they were.

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "privacy"
identity = ["file", "anonymous"]

[[polls]]
id = "p"
question = "Q?"
mode = "change"
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

[[people]]
id = "alice"
name = "Alice"
tags = ["04A1B2C3"]
"#;

async fn next(outcomes: &mut async_nats::Subscriber) -> v1::VoteOutcome {
    // Generous: the first tap may come before the services just started are ready.
    let m = tokio::time::timeout(Duration::from_secs(60), outcomes.next())
        .await
        .unwrap()
        .unwrap();
    v1::VoteOutcome::decode(m.payload.as_ref()).unwrap()
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_person_unlinks_their_tags_and_hides_them_in_exports() {
    let bus = TestBus::start();
    ok(&bus.cli(&["load", &write_file(&bus, "event.toml", EVENT)]));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let client = bus.client().await;
    let mut outcomes = client.subscribe(subjects::OUTCOMES_ALL).await.unwrap();
    client.flush().await.unwrap();
    let js = async_nats::jetstream::new(client);

    tap(&js, "d", "ra", &[0x04, 0xA1, 0xB2, 0xC3], "before").await;
    assert_eq!(next(&mut outcomes).await.voter_id, "file:alice");

    let said = ok(&bus.cli(&["forget", "file:alice"]));
    assert!(
        said.contains("forgot file:alice: 1 tag(s) unlinked"),
        "{said}"
    );
    let kv = js.get_key_value(names::KV_CONFIG).await.unwrap();
    assert!(
        kv.get("tag.04A1B2C3").await.unwrap().is_none(),
        "the tag mapping must be gone"
    );

    // The same tag now votes as nobody in particular.
    tap(&js, "d", "rb", &[0x04, 0xA1, 0xB2, 0xC3], "after").await;
    let after = next(&mut outcomes).await;
    assert!(after.voter_id.starts_with("anon:"), "{after:?}");

    let json: serde_json::Value = serde_json::from_str(&ok(&bus.cli(&[
        "export",
        "p",
        "--format",
        "json",
        "--voter-ids",
    ])))
    .unwrap();
    let voters: Vec<&str> = json["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["voter"].as_str().unwrap())
        .collect();
    assert_eq!(voters[0], "forgotten");
    assert!(voters[1].starts_with("anon:"));
    assert_eq!(json["total"], 2, "counts stay reproducible");
    let bad = bus.cli(&["forget", "anon:123"]);
    assert!(!bad.status.success());
}
