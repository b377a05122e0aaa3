//! The identity service against the fake anyMeta server: real nats-server, real
//! `tagpoll-identity` (and `tagpoll-tally`) binaries, real HTTP on 127.0.0.1.

mod identity_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use identity_support::*;
use prost::Message;
use tagpoll_identity::fake_anymeta::FakeAnyMeta;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "anymeta"
identity = ["anymeta"]
unknown_tag_hint = "Link your tag at the info desk."

[[polls]]
id = "p"
question = "A or B?"
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

const JAN_1: &[u8] = &[0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6];
const JAN_1_HEX: &str = "04A1B2C3D4E5F6";
const JAN_2: &[u8] = &[0x7E, 0x6F, 0xD7, 0xA0];
const JAN_2_HEX: &str = "7E6FD7A0";
const NOBODY: &[u8] = &[0xDE, 0xAD, 0xBE, 0xEF];
const NOBODY_HEX: &str = "DEADBEEF";

struct Rig {
    bus: TestBus,
    fake: FakeAnyMeta,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

async fn rig() -> Rig {
    let bus = TestBus::start();
    load(&bus, EVENT);
    let fake = FakeAnyMeta::start().await;
    fake.add_person(JAN_1_HEX, 1234, "<b>Jan</b> Jansen");
    fake.add_person(JAN_2_HEX, 1234, "<b>Jan</b> Jansen");
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    Rig {
        bus,
        fake,
        client,
        js,
    }
}

/// The tally's feedback for `read_id` (a subscription on
/// `tagpoll.feedback.>`): the outcome and the voter's name.
async fn next_feedback(
    sub: &mut async_nats::Subscriber,
    read_id: &str,
    limit: Duration,
) -> (v1::VoteOutcome, String) {
    tokio::time::timeout(limit, async {
        loop {
            let m = sub.next().await.expect("feedback subscription ended");
            let f = v1::ReaderFeedback::decode(m.payload.as_ref()).expect("feedback decodes");
            let o = f.outcome.expect("feedback carries its outcome");
            if o.read_id == read_id {
                return (o, f.display_name);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome for {read_id} within {limit:?}"))
}

/// Acceptance: one person with two tags votes once, as the person anyMeta names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_with_two_tags_votes_once() {
    let r = rig().await;
    let _identity = identity(&r.bus, &r.fake.service_env(), &[]);
    let _tally = r.bus.service("tagpoll-tally", &[], &[]);
    let mut sub = r.client.subscribe(subjects::FEEDBACK_ALL).await.unwrap();
    r.client.flush().await.unwrap();

    tap_at(&r.js, "ra", JAN_1, "jan-1").await;
    let (first, name) = next_feedback(&mut sub, "jan-1", Duration::from_secs(20)).await;
    assert_eq!(first.kind(), v1::OutcomeKind::Accepted, "{first:?}");
    assert_eq!(first.voter_id, "anymeta:1234");
    assert_eq!(name, "Jan Jansen", "the reader greets the person");

    tap_at(&r.js, "rb", JAN_2, "jan-2").await;
    let (second, _) = next_feedback(&mut sub, "jan-2", Duration::from_secs(20)).await;
    assert_eq!(second.kind(), v1::OutcomeKind::Duplicate, "{second:?}");
    assert_eq!(second.voter_id, "anymeta:1234", "the person, not the tag");

    let kv = r.js.get_key_value(names::KV_RESULTS).await.unwrap();
    eventually(Duration::from_secs(10), "results of p", || async {
        let Some(b) = kv
            .get(names::results_key("p"))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err("no results yet".into());
        };
        let res = v1::PollResults::decode(b.as_ref()).unwrap();
        let counts: Vec<u64> = res.answers.iter().map(|a| a.votes).collect();
        if res.total == 1 && counts == [1, 0] {
            Ok(())
        } else {
            Err(format!("{res:?}"))
        }
    })
    .await;
}

/// Happy path: the identified read carries anyMeta's person and no raw UID; a second tap of
/// the same tag is answered from the shared cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_person_profile_and_cache() {
    let r = rig().await;
    let _identity = identity(&r.bus, &r.fake.service_env(), &[]);
    tap_at(&r.js, "ra", JAN_1, "h-1").await;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 1, Duration::from_secs(20)).await;
    tap_at(&r.js, "rb", JAN_1, "h-2").await;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 2, Duration::from_secs(20)).await;

    let raw = stream_messages(&r.js, names::STREAM_IDENTIFIED).await;
    for (_, payload) in &raw {
        assert!(
            !payload.windows(JAN_1.len()).any(|w| w == JAN_1),
            "raw UID bytes in an identified read"
        );
        assert!(!String::from_utf8_lossy(payload).contains(JAN_1_HEX));
    }
    let ids = identified(&r.js).await;
    assert_eq!(
        ids.iter().map(|r| r.read_id.as_str()).collect::<Vec<_>>(),
        ["h-1", "h-2"]
    );
    let Some(v1::identified_read::Identity::Voter(v)) = &ids[0].identity else {
        panic!("{:?}", ids[0])
    };
    assert_eq!(v.voter_id, "anymeta:1234");
    assert_eq!(v.backend, "anymeta");
    assert_eq!(v.display_name, "Jan Jansen");
    assert_eq!(v.profile_url, format!("{}/id/1234", r.fake.site()));
    assert!(!v.anonymous);
    assert_eq!(voter_of(&ids[1]), "anymeta:1234");
    assert_eq!(
        r.fake.answered(JAN_1_HEX),
        1,
        "the second tap came from the cache"
    );

    // The cache bucket holds keyed hashes, never the UID.
    let kv =
        r.js.get_key_value(names::KV_IDENTITY_CACHE)
            .await
            .expect("cache bucket");
    let keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("anymeta."));
    assert!(!keys[0].to_uppercase().contains(JAN_1_HEX));
}

/// A tag nobody owns, with no anonymous backend: rejected with the event's hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_is_rejected_with_the_hint() {
    let r = rig().await;
    let _identity = identity(&r.bus, &r.fake.service_env(), &[]);
    let _tally = r.bus.service("tagpoll-tally", &[], &[]);
    let mut sub = r.client.subscribe(subjects::FEEDBACK_ALL).await.unwrap();
    r.client.flush().await.unwrap();
    tap_at(&r.js, "ra", NOBODY, "who").await;
    let (o, name) = next_feedback(&mut sub, "who", Duration::from_secs(20)).await;
    assert_eq!(name, "");
    assert_eq!(o.kind(), v1::OutcomeKind::Rejected);
    assert_eq!(o.reject_reason(), v1::RejectReason::UnknownTag);
    assert_eq!(o.hint, "Link your tag at the info desk.");
    assert_eq!(o.voter_id, "");
    let ids = identified(&r.js).await;
    assert!(matches!(
        ids[0].identity,
        Some(v1::identified_read::Identity::Unknown(_))
    ));
    assert_eq!(r.fake.answered(NOBODY_HEX), 1);
}

/// Bad credentials (code 99): reads stay unacknowledged, the heartbeat says why, and once the
/// configuration is fixed (identity restarted with the right token) they are resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_keep_reads_until_the_config_is_fixed() {
    let r = rig().await;
    let mut env = r.fake.service_env();
    for (k, v) in env.iter_mut() {
        if k == "TAGPOLL_ANYMETA_TOKEN_SECRET" {
            *v = "not the secret".into();
        }
    }
    let mut wrong = identity(&r.bus, &env, &[]);
    for i in 0..3 {
        tap_at(&r.js, "ra", JAN_1, &format!("cred-{i}")).await;
    }
    let hb = wait_identity_heartbeat(&r.client, Duration::from_secs(30), |hb| {
        hb.last_error.contains("credentials") && hb.last_error.contains("99")
    })
    .await;
    assert_eq!(hb.handled, 0);
    assert_eq!(stream_len(&r.js, names::STREAM_IDENTIFIED).await, 0);
    assert_eq!(
        unacked_reads(&r.js).await,
        3,
        "reads must stay unacknowledged"
    );
    // The breaker keeps us from hammering anyMeta with every retry.
    assert!(
        r.fake.total_requests() < 25,
        "{} requests",
        r.fake.total_requests()
    );
    let log = plain_log(wrong.log_path());
    assert!(
        log.contains("ERROR") && log.contains("anyMeta refuses our calls"),
        "{log}"
    );
    wrong.stop();

    let _fixed = identity(&r.bus, &r.fake.service_env(), &[]);
    wait_len(&r.js, names::STREAM_IDENTIFIED, 3, Duration::from_secs(20)).await;
    let ids = identified(&r.js).await;
    let want: Vec<String> = (0..3).map(|i| format!("cred-{i}")).collect();
    assert_once_each(&ids, &want);
    assert_eq!(
        ids.iter().map(|r| r.read_id.clone()).collect::<Vec<_>>(),
        want,
        "same-tag taps keep their order"
    );
    eventually(
        Duration::from_secs(10),
        "all reads acknowledged",
        || async {
            match unacked_reads(&r.js).await {
                0 => Ok(()),
                n => Err(format!("{n} unacked")),
            }
        },
    )
    .await;
    assert_eq!(r.fake.answered(JAN_1_HEX), 1);
}

/// A stopped instance hands its reads back at once (lookups in flight are cancelled), so the
/// next instance resolves them now instead of after the consumer's 30 s ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_hands_its_reads_back_at_once() {
    let r = rig().await;
    // Lookups hang far beyond this test's patience while the first instance runs.
    r.fake.set_latency(Duration::from_secs(60));
    let mut first = identity(
        &r.bus,
        &r.fake.service_env(),
        &[("TAGPOLL_ANYMETA_TIMEOUT_MS", "120000")],
    );
    let uids = [JAN_1, JAN_2, NOBODY];
    for (i, uid) in uids.iter().enumerate() {
        tap_at(&r.js, "ra", uid, &format!("stop-{i}")).await;
    }
    eventually(
        Duration::from_secs(30),
        "every tag's lookup in flight",
        || async {
            match r.fake.total_requests() {
                n if n >= uids.len() => Ok(()),
                n => Err(format!("{n} requests")),
            }
        },
    )
    .await;
    first.stop();
    let log = plain_log(first.log_path());
    assert!(log.contains("stopping: handing back reads"), "{log}");
    assert_eq!(stream_len(&r.js, names::STREAM_IDENTIFIED).await, 0);

    r.fake.set_latency(Duration::ZERO);
    let _second = identity(&r.bus, &r.fake.service_env(), &[]);
    // Half the ack wait: reads left unacknowledged by the first instance would miss it.
    let patience = tagpoll_identity::service::ACK_WAIT / 2;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 3, patience).await;
    let want: Vec<String> = (0..3).map(|i| format!("stop-{i}")).collect();
    assert_once_each(&identified(&r.js).await, &want);
}

/// Truncated JSON is transient: retried, then resolved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_retried() {
    let r = rig().await;
    r.fake.malformed_next(3);
    let _identity = identity(&r.bus, &r.fake.service_env(), &[]);
    tap_at(&r.js, "ra", JAN_1, "mal-1").await;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 1, Duration::from_secs(20)).await;
    let ids = identified(&r.js).await;
    assert_once_each(&ids, &["mal-1".to_string()]);
    assert_eq!(voter_of(&ids[0]), "anymeta:1234");
    assert_eq!(
        r.fake.lookups(JAN_1_HEX),
        4,
        "three malformed answers, then the real one"
    );
    assert_eq!(r.fake.answered(JAN_1_HEX), 1);
}

/// A batch of taps published while anyMeta fails or is down: nothing identified, nothing
/// acknowledged, anyMeta not hammered; after recovery every read is resolved exactly once, one
/// successful lookup per tag, and taps of one tag keep their order.
async fn outage_then_recovery(down: bool) {
    const TAGS: u32 = 8;
    let r = rig().await;
    let _identity = identity(&r.bus, &r.fake.service_env(), &[]);
    let _tally = r.bus.service("tagpoll-tally", &[], &[]);
    let uid = |t: u32| (0xA000_0000u32 + t).to_be_bytes();
    for t in 0..TAGS {
        r.fake
            .add_person(&hex::encode_upper(uid(t)), 100 + t, &format!("Person {t}"));
    }
    // Let identity warm up (consumer, ledger) before the outage starts.
    tap_at(&r.js, "ra", JAN_1, "warm-up").await;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 1, Duration::from_secs(20)).await;
    if down {
        r.fake.go_down().await;
    } else {
        r.fake.fail_next(1_000_000);
    }
    let before = r.fake.total_requests();
    let mut read_ids = vec!["warm-up".to_string()];
    // Two taps per tag: first at answer a, then at b.
    for (round, reader) in ["ra", "rb"].iter().enumerate() {
        for t in 0..TAGS {
            let id = format!("o{t}-{round}");
            tap_at(&r.js, reader, &uid(t), &id).await;
            read_ids.push(id);
        }
    }
    let outage = Duration::from_secs(4);
    tokio::time::sleep(outage).await;
    assert_eq!(
        stream_len(&r.js, names::STREAM_IDENTIFIED).await,
        1,
        "nothing may be identified during the outage"
    );
    assert_eq!(unacked_reads(&r.js).await, 2 * TAGS as u64);
    if !down {
        let during = r.fake.total_requests() - before;
        // Without the breaker every read would be tried (2 attempts) every ~0.2-1 s.
        assert!(during <= 30, "{during} requests during a 4 s outage");
    }
    if down {
        r.fake.come_up().await;
    } else {
        r.fake.fail_next(0);
    }
    let n = read_ids.len() as u64;
    wait_len(&r.js, names::STREAM_IDENTIFIED, n, Duration::from_secs(30)).await;
    wait_len(&r.js, names::STREAM_VOTES, n, Duration::from_secs(30)).await;
    // A little longer: anything identified twice would show up now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids = identified(&r.js).await;
    assert_once_each(&ids, &read_ids);
    let outs = outcomes(&r.js).await;
    let decided = by_read(&outs);
    assert_eq!(decided.len(), read_ids.len());
    for t in 0..TAGS {
        assert_eq!(
            r.fake.answered(&hex::encode_upper(uid(t))),
            1,
            "successful lookups of tag {t}"
        );
        let pos = |id: &str| ids.iter().position(|r| r.read_id == id).unwrap();
        assert!(
            pos(&format!("o{t}-0")) < pos(&format!("o{t}-1")),
            "tag {t} reordered"
        );
        assert_eq!(
            decided[&format!("o{t}-0")].kind(),
            v1::OutcomeKind::Accepted
        );
        assert_eq!(
            decided[&format!("o{t}-1")].kind(),
            v1::OutcomeKind::Duplicate
        );
        assert_eq!(
            decided[&format!("o{t}-1")].voter_id,
            format!("anymeta:{}", 100 + t)
        );
    }
    assert_eq!(unacked_reads(&r.js).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_recovery_lose_nothing() {
    outage_then_recovery(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anymeta_down_then_back_loses_nothing() {
    outage_then_recovery(true).await;
}

/// A tap whose lookup failed (and went back to JetStream) is not overtaken by a later tap of
/// the same tag that resolves at once: the later one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_tap_is_not_overtaken_by_a_later_tap_of_the_same_tag() {
    let r = rig().await;
    let identity = identity(
        &r.bus,
        &r.fake.service_env(),
        &[
            ("TAGPOLL_ANYMETA_RETRIES", "0"),
            ("TAGPOLL_ANYMETA_BREAKER_FAILURES", "100"),
            // Long enough (4-6 s with jitter) that the second tap surely
            // arrives and is looked up while the first waits, even under load.
            ("TAGPOLL_IDENTITY_RETRY_MS", "5000"),
            ("TAGPOLL_IDENTITY_RETRY_MAX_MS", "8000"),
        ],
    );
    let _tally = r.bus.service("tagpoll-tally", &[], &[]);
    tap_at(&r.js, "ra", NOBODY, "warm-up").await;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 1, Duration::from_secs(20)).await;

    r.fake.fail_next(1);
    let started = Instant::now();
    tap_at(&r.js, "ra", JAN_1, "first").await;
    eventually(Duration::from_secs(10), "the failed lookup", || async {
        if r.fake.lookups(JAN_1_HEX) >= 1 {
            Ok(())
        } else {
            Err("no lookup yet".to_string())
        }
    })
    .await;
    tap_at(&r.js, "rb", JAN_1, "second").await;
    wait_len(&r.js, names::STREAM_IDENTIFIED, 3, Duration::from_secs(20)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the first tap must have been retried after its nak delay"
    );
    let ids = identified(&r.js).await;
    let order: Vec<&str> = ids.iter().map(|r| r.read_id.as_str()).collect();
    assert_eq!(order, ["warm-up", "first", "second"]);
    wait_len(&r.js, names::STREAM_VOTES, 3, Duration::from_secs(20)).await;
    let decided = by_read(&outcomes(&r.js).await);
    assert_eq!(decided["first"].kind(), v1::OutcomeKind::Accepted);
    assert_eq!(decided["first"].answer_id, "a");
    assert_eq!(decided["second"].kind(), v1::OutcomeKind::Duplicate);
    assert_eq!(r.fake.answered(JAN_1_HEX), 1);
    // The later tap was resolved (from anyMeta) while the first waited, and held back.
    let log = plain_log(identity.log_path());
    assert!(
        log.lines()
            .any(|l| l.contains("read_id=second") && l.contains("earlier tap of this tag")),
        "the second tap was never held back:\n{log}"
    );
}
