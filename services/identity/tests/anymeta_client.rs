//! The anyMeta client against the fake anyMeta server (real HTTP on 127.0.0.1).

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::fake_anymeta::FakeAnyMeta;
use tagpoll_identity::anymeta::oauth::Stamp;
use tagpoll_identity::anymeta::{AnyMetaClient, AnyMetaError, Person};

const UID7: [u8; 7] = [0x04, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6];
const UID7_HEX: &str = "04A1B2C3D4E5F6";
const UID4: [u8; 4] = [0x7e, 0x6f, 0xd7, 0xa0];
const UID4_HEX: &str = "7E6FD7A0";

/// Every test body runs under this so a bug shows up as a failure, not a hung test run.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test took longer than 20 s")
}

fn client(fake: &FakeAnyMeta) -> AnyMetaClient {
    fake.client(Duration::from_secs(5))
}

#[tokio::test]
async fn identifies_seven_byte_uid_with_html_title() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID7_HEX, 1234, "<b>Jan</b> &amp; <i>Piet</i>&nbsp;Jansen");
        let person = client(&fake).identify_rfid(&UID7).await.unwrap();
        assert_eq!(
            person,
            Some(Person {
                rsc_id: "1234".into(),
                display_name: "Jan & Piet Jansen".into(),
                profile_url: format!("{}/id/1234", fake.site()),
            })
        );
        assert_eq!(fake.lookups(UID7_HEX), 1);
        let seen = fake.last_request().unwrap();
        assert_eq!(seen.method.as_deref(), Some("identity.identify"));
        assert_eq!(seen.param("type"), Some("rfid"));
        assert_eq!(seen.param("raw"), Some("urn:rfid:04A1B2C3D4E5F6"));
        assert_eq!(seen.param("format"), Some("json"));
        assert!(seen.oauth_in_body && !seen.oauth_in_header, "{seen:?}");
    })
    .await;
}

#[tokio::test]
async fn identifies_four_byte_uid_with_string_id() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, "5678", "Marie Curie");
        let person = client(&fake).identify_rfid(&UID4).await.unwrap().unwrap();
        assert_eq!(person.rsc_id, "5678");
        assert_eq!(person.display_name, "Marie Curie");
        assert_eq!(person.profile_url, format!("{}/id/5678", fake.site()));
        assert_eq!(fake.lookups(UID4_HEX), 1);
        assert_eq!(fake.lookups(UID7_HEX), 0);
    })
    .await;
}

#[tokio::test]
async fn prefers_first_name_from_richer_answers() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.set_answer(
            UID4_HEX,
            json!({"rsc_id": 9, "title": "Dr. M. Curie", "name": {"first": "Marie", "full": "Marie Curie"}}),
        );
        let person = client(&fake).identify_rfid(&UID4).await.unwrap().unwrap();
        assert_eq!(person.display_name, "Marie");
    })
    .await;
}

#[tokio::test]
async fn unknown_tag_answers_none_for_null_and_false() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID7_HEX, 1, "Someone else");
        let client = client(&fake);
        assert_eq!(client.identify_rfid(&UID4).await, Ok(None));
        fake.set_unknown_answer(json!(false));
        assert_eq!(client.identify_rfid(&UID4).await, Ok(None));
        fake.set_unknown_answer(json!(""));
        assert_eq!(client.identify_rfid(&UID4).await, Ok(None));
        assert_eq!(fake.lookups(UID4_HEX), 3);
    })
    .await;
}

#[tokio::test]
async fn wrong_token_secret_is_bad_credentials() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        let mut config = fake.config();
        config.token_secret.push('x');
        let err = AnyMetaClient::new(config.clone())
            .unwrap()
            .identify_rfid(&UID4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AnyMetaError::BadCredentials { .. }),
            "{err:?}"
        );
        assert!(!err.is_transient());

        let mut config = fake.config();
        config.consumer_key = "someone-else".into();
        let err = AnyMetaClient::new(config.clone())
            .unwrap()
            .identify_rfid(&UID4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AnyMetaError::BadCredentials { .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_json_is_malformed_and_transient() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        fake.malformed_next(1);
        let client = client(&fake);
        let err = client.identify_rfid(&UID4).await.unwrap_err();
        assert!(matches!(err, AnyMetaError::Malformed { .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(client.identify_rfid(&UID4).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn http_500_is_server_error_until_it_recovers() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        fake.fail_next(2);
        let client = client(&fake);
        for _ in 0..2 {
            let err = client.identify_rfid(&UID4).await.unwrap_err();
            assert_eq!(err, AnyMetaError::Server5xx { status: 500 });
            assert!(err.is_transient());
        }
        assert!(client.identify_rfid(&UID4).await.unwrap().is_some());
        assert_eq!(fake.lookups(UID4_HEX), 3);
    })
    .await;
}

#[tokio::test]
async fn down_server_is_unreachable_and_comes_back() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        let client = client(&fake);
        // Leave a pooled keep-alive connection behind: going down must cut it too.
        assert!(client.identify_rfid(&UID4).await.unwrap().is_some());
        fake.go_down().await;
        assert!(fake.is_down());
        // Give the client's pool a moment to see its idle connection closed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            let err = client.identify_rfid(&UID4).await.unwrap_err();
            assert!(matches!(err, AnyMetaError::Unreachable { .. }), "{err:?}");
            assert!(err.is_transient());
        }
        assert_eq!(
            fake.lookups(UID4_HEX),
            1,
            "no request may arrive while down"
        );
        assert_eq!(fake.total_requests(), 1);

        fake.come_up().await;
        assert!(!fake.is_down());
        assert!(client.identify_rfid(&UID4).await.unwrap().is_some());
        assert_eq!(fake.lookups(UID4_HEX), 2);
    })
    .await;
}

#[tokio::test]
async fn going_down_cuts_requests_in_flight() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        fake.set_latency(Duration::from_secs(10));
        let client = client(&fake);
        let pending = tokio::spawn(async move { client.identify_rfid(&UID4).await });
        while fake.lookups(UID4_HEX) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        fake.go_down().await;
        let err = pending.await.unwrap().unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn latency_beyond_timeout_is_timeout() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        fake.set_latency(Duration::from_secs(3));
        let client = fake.client(Duration::from_millis(200));
        let started = Instant::now();
        let err = client.identify_rfid(&UID4).await.unwrap_err();
        assert_eq!(err, AnyMetaError::Timeout);
        assert!(err.is_transient());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        fake.set_latency(Duration::from_millis(20));
        assert!(client.identify_rfid(&UID4).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn authorization_header_mode_works() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        let mut config = fake.config();
        config.auth_in_header = true;
        let person = AnyMetaClient::new(config.clone())
            .unwrap()
            .identify_rfid(&UID4)
            .await
            .unwrap();
        assert!(person.is_some());
        let seen = fake.last_request().unwrap();
        assert!(seen.oauth_in_header && !seen.oauth_in_body, "{seen:?}");
        let auth = seen.authorization.unwrap();
        assert!(
            auth.starts_with("OAuth realm=\"\", oauth_consumer_key=\""),
            "{auth}"
        );
        assert!(!auth.contains("oauth_verifier"), "{auth}");

        // A wrong secret is caught in header mode too.
        config.consumer_secret.push('x');
        let err = AnyMetaClient::new(config.clone())
            .unwrap()
            .identify_rfid(&UID4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AnyMetaError::BadCredentials { .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn replayed_nonce_is_refused() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        let fixed = Stamp::fresh();
        let client = client(&fake).with_stamp_source(Arc::new(move || fixed.clone()));
        assert!(client.identify_rfid(&UID4).await.unwrap().is_some());
        let err = client.identify_rfid(&UID4).await.unwrap_err();
        match err {
            AnyMetaError::BadCredentials { msg } => assert!(msg.contains("nonce"), "{msg}"),
            other => panic!("expected BadCredentials, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn stale_timestamp_is_refused() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        fake.add_person(UID4_HEX, 1, "Jan");
        let client = client(&fake).with_stamp_source(Arc::new(|| {
            let now = Stamp::fresh();
            Stamp::new(now.nonce, now.timestamp - 600)
        }));
        let err = client.identify_rfid(&UID4).await.unwrap_err();
        assert!(
            matches!(err, AnyMetaError::BadCredentials { .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn nested_arguments_survive_signing_and_transport() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        let args = json!({
            "data": {"text": {"title": "Café & <b>bar</b> = 100% +1"}},
            "ids": [65, 94],
            "flag": true,
        });
        let echoed = client(&fake)
            .call("anymeta.test.echo", &args)
            .await
            .unwrap();
        assert_eq!(
            echoed,
            json!({
                "data[text][title]": "Café & <b>bar</b> = 100% +1",
                "ids[0]": "65",
                "ids[1]": "94",
                "flag": "1",
            })
        );
    })
    .await;
}

#[tokio::test]
async fn wrong_entrypoint_path_is_a_permanent_http_error() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        let mut config = fake.config();
        config.entrypoint = format!("{}/services/other/", fake.site());
        let err = AnyMetaClient::new(config.clone())
            .unwrap()
            .identify_rfid(&UID4)
            .await
            .unwrap_err();
        assert_eq!(err, AnyMetaError::HttpStatus { status: 404 });
        assert!(!err.is_transient());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_lookups_share_one_client() {
    within(async {
        let fake = FakeAnyMeta::start().await;
        let uids: Vec<[u8; 4]> = (0u32..50)
            .map(|i| (0x1000_0000 + i).to_be_bytes())
            .collect();
        for (i, uid) in uids.iter().enumerate() {
            fake.add_person(&hex::encode(uid), i as u64, &format!("Person {i}"));
        }
        fake.set_latency(Duration::from_millis(50));
        let client = client(&fake);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for round in 0..10 {
            for (i, uid) in uids.iter().enumerate() {
                let client = client.clone();
                let uid = *uid;
                tasks.spawn(async move { (round, i, client.identify_rfid(&uid).await) });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            let (round, i, result) = joined.unwrap();
            let person = result.unwrap_or_else(|e| panic!("round {round} uid {i}: {e}"));
            assert_eq!(person.map(|p| p.rsc_id), Some(i.to_string()));
        }
        for uid in &uids {
            assert_eq!(fake.lookups(&hex::encode(uid)), 10);
        }
        assert_eq!(fake.total_requests(), 500);
        // 500 requests at 50 ms each, all in parallel: far below 500 × 50 ms serially.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}
