//! The backend chain through the real identity binary: the CSV people file, anyMeta put first
//! when it is configured, and a broken CSV file stopping the service at start.

mod identity_support;

use std::time::Duration;

use identity_support::*;
use tagpoll_identity::fake_anymeta::FakeAnyMeta;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "backends"
identity = ["file", "anonymous"]

[[polls]]
id = "p"
question = "?"
allow_anonymous = true
answers = [{ id = "a", label = "A" }]

[[readers]]
id = "ra"
poll = "p"
answer = "a"

[[people]]
id = "alice"
name = "Alice"
tags = ["04A1B2C3"]
"#;

const ALICE: &[u8] = &[0x04, 0xA1, 0xB2, 0xC3];
const BOB: &[u8] = &[0x7E, 0x6F, 0xD7, 0xA0];
const CAROL: &[u8] = &[0x0A, 0x0B, 0x0C, 0x0D];
const STRANGER: &[u8] = &[0xDE, 0xAD, 0xBE, 0xEF];

const CSV: &str = "tag_uid,person_id,name\n\
                   7e:6f:d7:a0,bob,\"Bouwer, Bob\"\n\
                   04A1B2C3,not-alice,Not Alice\n";

async fn identify_all(
    bus: &TestBus,
    taps: &[(&[u8], &str)],
) -> std::collections::HashMap<String, v1::IdentifiedRead> {
    let js = async_nats::jetstream::new(bus.client().await);
    for (uid, id) in taps {
        tap_at(&js, "ra", uid, id).await;
    }
    wait_len(
        &js,
        names::STREAM_IDENTIFIED,
        taps.len() as u64,
        Duration::from_secs(20),
    )
    .await;
    identified(&js)
        .await
        .into_iter()
        .map(|r| (r.read_id.clone(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_people_follow_the_event_files_people() {
    let bus = TestBus::start();
    load(&bus, EVENT);
    let csv = write_file(&bus, "people.csv", CSV);
    let _identity = identity(&bus, &[], &[("TAGPOLL_IDENTITY_CSV", &csv)]);
    let got = identify_all(&bus, &[(ALICE, "alice"), (BOB, "bob"), (STRANGER, "x")]).await;
    assert_eq!(
        voter_of(&got["alice"]),
        "file:alice",
        "the event file is asked first"
    );
    assert_eq!(voter_of(&got["bob"]), "file:bob");
    let Some(v1::identified_read::Identity::Voter(bob)) = &got["bob"].identity else {
        panic!()
    };
    assert_eq!(
        (bob.display_name.as_str(), bob.backend.as_str()),
        ("Bouwer, Bob", "file")
    );
    assert!(voter_of(&got["x"]).starts_with("anon:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_anymeta_is_asked_first_even_when_the_event_does_not_name_it() {
    let bus = TestBus::start();
    load(&bus, EVENT);
    let fake = FakeAnyMeta::start().await;
    fake.add_person("04A1B2C3", 77, "Alice on anyMeta");
    let csv = write_file(&bus, "people.csv", CSV);
    let _identity = identity(&bus, &fake.service_env(), &[("TAGPOLL_IDENTITY_CSV", &csv)]);
    let got = identify_all(&bus, &[(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")]).await;
    assert_eq!(voter_of(&got["alice"]), "anymeta:77");
    // Unknown to anyMeta: on down the event's chain.
    assert_eq!(voter_of(&got["bob"]), "file:bob");
    assert!(voter_of(&got["carol"]).starts_with("anon:"));
    assert_eq!(fake.answered("7E6FD7A0"), 1);
    assert_eq!(fake.answered("0A0B0C0D"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_csv_file_stops_the_service_with_line_numbers() {
    let bus = TestBus::start();
    let csv = write_file(
        &bus,
        "people.csv",
        "tag_uid,person_id,name\n04A1B2C3,alice,Alice\nnot-hex,bob,Bob\n04:a1:b2:c3,carol,Carol\n",
    );
    let out = std::process::Command::new(binary("tagpoll-identity"))
        .envs(bus.env())
        .env("TAGPOLL_IDENTITY_CSV", &csv)
        .output()
        .expect("run tagpoll-identity");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("people.csv:3: tag \"not-hex\""), "{err}");
    assert!(
        err.contains("people.csv:4: tag 04A1B2C3 is already listed on line 2"),
        "{err}"
    );
}

/// A tap whose body names another device (or reader) than the subject it
/// was published on: the subject, which NATS permissions check, wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subject_not_the_body_says_which_device_tapped() {
    let bus = TestBus::start();
    load(&bus, EVENT);
    let _identity = identity(&bus, &[], &[]);
    let js = async_nats::jetstream::new(bus.client().await);
    let forged = v1::TagRead {
        read_id: "forged".into(),
        device_id: "someone-else".into(),
        reader_id: "elsewhere".into(),
        tag_uid: ALICE.to_vec(),
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: 0,
    };
    tagpoll_bus::publish::publish_for_read(
        &js,
        subjects::read("dev", "ra"),
        "forged",
        prost::Message::encode_to_vec(&forged).into(),
    )
    .await
    .unwrap();
    wait_len(&js, names::STREAM_IDENTIFIED, 1, Duration::from_secs(20)).await;
    let got = identified(&js).await;
    assert_eq!(
        (got[0].device_id.as_str(), got[0].reader_id.as_str()),
        ("dev", "ra")
    );
    assert_eq!(voter_of(&got[0]), "file:alice");
}
