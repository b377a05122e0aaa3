//! Two identity instances share the durable consumer: the load is shared, no read is handled
//! twice, and taps of one tag stay in order across instances.

mod identity_support;

use std::collections::HashMap;
use std::time::Duration;

use identity_support::*;
use prost::Message;
use tagpoll_identity::fake_anymeta::FakeAnyMeta;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "scale"
identity = ["anymeta"]

[[polls]]
id = "p"
question = "Last tap counts"
mode = "change"
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }, { id = "c", label = "C" }]

[[readers]]
id = "ra"
poll = "p"
answer = "a"

[[readers]]
id = "rb"
poll = "p"
answer = "b"

[[readers]]
id = "rc"
poll = "p"
answer = "c"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_and_keep_per_tag_order() {
    const TAGS: u32 = 40;
    const ROUNDS: u32 = 8;
    let bus = TestBus::start();
    load(&bus, EVENT);
    let fake = FakeAnyMeta::start().await;
    fake.set_latency(Duration::from_millis(30));
    let uid = |t: u32| (0x5C00_0000u32 + t).to_be_bytes();
    for t in 0..TAGS {
        fake.add_person(&hex::encode_upper(uid(t)), 500 + t, &format!("Person {t}"));
    }
    let env = fake.service_env();
    // Small batches and concurrency, so both instances get reads to work on.
    let small = [("TAGPOLL_IDENTITY_CONCURRENCY", "16")];
    let _one = identity(&bus, &env, &small);
    let _two = identity(&bus, &env, &small);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());
    // Both instances are up (they send a heartbeat every 2 s).
    eventually(
        Duration::from_secs(20),
        "two identity heartbeats",
        || async {
            let beats = identity_heartbeats(&client, Duration::from_millis(2100)).await;
            if beats.len() == 2 {
                Ok(())
            } else {
                Err(format!("{} instances", beats.len()))
            }
        },
    )
    .await;

    // Round r taps every tag once, at reader a, b, c, a, b: the answer a tag ends on depends
    // on the order of its taps ("last tap counts").
    let readers = ["ra", "rb", "rc"];
    let mut read_ids = Vec::new();
    let mut acks = Vec::new();
    for round in 0..ROUNDS {
        for t in 0..TAGS {
            let id = format!("s{t}-{round}");
            let reader = readers[(round % 3) as usize];
            let read = v1::TagRead {
                read_id: id.clone(),
                device_id: "dev".into(),
                reader_id: reader.into(),
                tag_uid: uid(t).to_vec(),
                technology: v1::TagTechnology::Simulated as i32,
                read_at: Some(tagpoll_proto::now()),
                device_seq: (round * TAGS + t) as u64,
            };
            acks.push(
                tagpoll_bus::publish::send_for_read(
                    &js,
                    subjects::read("dev", reader),
                    &id,
                    read.encode_to_vec().into(),
                )
                .await
                .unwrap(),
            );
            read_ids.push(id);
        }
    }
    for a in acks {
        a.await.expect("tap stored");
    }
    let n = read_ids.len() as u64;
    wait_len(&js, names::STREAM_IDENTIFIED, n, Duration::from_secs(60)).await;
    wait_len(&js, names::STREAM_VOTES, n, Duration::from_secs(60)).await;

    // Shared: both instances handled reads, and together exactly one per read.
    let beats = identity_heartbeats(&client, Duration::from_millis(4200)).await;
    assert_eq!(beats.len(), 2, "{beats:?}");
    let handled: Vec<u64> = beats.values().map(|h| h.handled).collect();
    assert!(
        handled.iter().all(|h| *h > 0),
        "load not shared: {handled:?}"
    );
    assert_eq!(handled.iter().sum::<u64>(), n, "handled: {handled:?}");
    eprintln!("handled per instance: {handled:?}");

    // Exactly one identified read and one outcome per read.
    let ids = identified(&js).await;
    assert_once_each(&ids, &read_ids);
    let decided = by_read(&outcomes(&js).await);
    assert_eq!(decided.len(), read_ids.len());

    // Per tag, identified reads are in tap order; and the final answer is the last tap's.
    let mut per_tag: HashMap<String, Vec<u32>> = HashMap::new();
    for r in &ids {
        let (tag, round) = r.read_id[1..].split_once('-').unwrap();
        per_tag
            .entry(tag.to_string())
            .or_default()
            .push(round.parse().unwrap());
    }
    for t in 0..TAGS {
        assert_eq!(
            per_tag[&t.to_string()],
            (0..ROUNDS).collect::<Vec<_>>(),
            "taps of tag {t} reordered"
        );
        assert!(
            fake.answered(&hex::encode_upper(uid(t))) <= 2,
            "tag {t}: at most one lookup per instance (shared cache, single-flight)"
        );
    }
    let kv = js.get_key_value(names::KV_RESULTS).await.unwrap();
    let last_answer = ["a", "b", "c"][((ROUNDS - 1) % 3) as usize];
    eventually(Duration::from_secs(10), "final counts", || async {
        let Some(b) = kv
            .get(names::results_key("p"))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err("no results".into());
        };
        let res = v1::PollResults::decode(b.as_ref()).unwrap();
        let of = |id: &str| {
            res.answers
                .iter()
                .find(|a| a.answer_id == id)
                .unwrap()
                .votes
        };
        if of(last_answer) == TAGS as u64 && res.total == TAGS as u64 {
            Ok(())
        } else {
            Err(format!("{res:?}"))
        }
    })
    .await;
}
