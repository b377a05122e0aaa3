//! The identity service SIGKILLed again and again while taps flow: no tap is lost or stored
//! twice, and taps of one tag stay in order (the restarted instance must not let a later tap
//! overtake one the dead instance had taken but not stored).

mod identity_support;

use std::collections::HashMap;
use std::time::Duration;

use identity_support::*;
use prost::Message;
use rand::{Rng, SeedableRng};
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "identity-crash"
identity = ["anonymous"]

[[polls]]
id = "p"
question = "Last tap counts"
mode = "change"
allow_anonymous = true
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
async fn taps_stay_exact_and_in_order_when_identity_is_killed() {
    const TAPS: usize = 2000;
    const TAGS: u32 = 120;
    let bus = TestBus::start();
    load(&bus, EVENT);
    let mut identity = identity(&bus, &[], &[("RUST_LOG", "info,async_nats=warn")]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let client = bus.client().await;
    let js = async_nats::jetstream::new(client.clone());

    let mut rng = rand::rngs::StdRng::seed_from_u64(7_2026);
    let readers = ["ra", "rb", "rc"];
    let taps: Vec<(String, &str, u32)> = (0..TAPS)
        .map(|i| {
            (
                format!("k{i}"),
                readers[rng.random_range(0..readers.len())],
                rng.random_range(0..TAGS),
            )
        })
        .collect();
    let publisher = {
        let js = js.clone();
        let taps = taps.clone();
        tokio::spawn(async move {
            let mut acks = std::collections::VecDeque::new();
            for (i, (id, reader, tag)) in taps.iter().enumerate() {
                let read = v1::TagRead {
                    read_id: id.clone(),
                    device_id: "dev".into(),
                    reader_id: reader.to_string(),
                    tag_uid: (0xC0DE_0000u32 + tag).to_be_bytes().to_vec(),
                    technology: v1::TagTechnology::Simulated as i32,
                    read_at: Some(tagpoll_proto::now()),
                    device_seq: 0,
                };
                acks.push_back(
                    tagpoll_bus::publish::send_for_read(
                        &js,
                        subjects::read("dev", reader),
                        id,
                        read.encode_to_vec().into(),
                    )
                    .await
                    .expect("publish tap"),
                );
                if acks.len() >= 64 {
                    acks.pop_front().unwrap().await.expect("tap stored");
                }
                // A steady stream rather than one burst, so the kills land mid-flow.
                if i % 8 == 7 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            for a in acks {
                a.await.expect("tap stored");
            }
        })
    };

    let mut kills = 0;
    while kills < 5 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        identity.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        identity.start().unwrap();
        if publisher.is_finished() {
            break;
        }
    }
    publisher.await.unwrap();
    assert!(
        kills >= 3,
        "identity must have been killed mid-run ({kills})"
    );

    // Reads the dead instances had taken but not stored come back after the ack wait (30 s).
    let n = TAPS as u64;
    wait_len(&js, names::STREAM_IDENTIFIED, n, Duration::from_secs(90)).await;
    wait_len(&js, names::STREAM_VOTES, n, Duration::from_secs(30)).await;
    let ids = identified(&js).await;
    let all: Vec<String> = taps.iter().map(|(id, _, _)| id.clone()).collect();
    assert_once_each(&ids, &all);
    let decided = by_read(&outcomes(&js).await);
    assert_eq!(decided.len(), TAPS);

    // Per tag, the identified order is the tap order.
    let tag_of: HashMap<&str, u32> = taps.iter().map(|(id, _, t)| (id.as_str(), *t)).collect();
    let mut seen: HashMap<u32, Vec<usize>> = HashMap::new();
    for r in &ids {
        let i: usize = r.read_id[1..].parse().unwrap();
        seen.entry(tag_of[r.read_id.as_str()]).or_default().push(i);
    }
    for (tag, order) in &seen {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, &sorted, "taps of tag {tag} reordered");
    }

    // So the counts are those of the last tap per tag.
    let mut last: HashMap<u32, &str> = HashMap::new();
    for (_, reader, tag) in &taps {
        last.insert(*tag, &reader[1..]);
    }
    let mut want: HashMap<String, u64> = HashMap::new();
    for answer in last.values() {
        *want.entry(answer.to_string()).or_default() += 1;
    }
    let kv = js.get_key_value(names::KV_RESULTS).await.unwrap();
    eventually(Duration::from_secs(10), "final counts", || async {
        let Some(b) = kv
            .get(names::results_key("p"))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err("no results".into());
        };
        let res = v1::PollResults::decode(b.as_ref()).unwrap();
        let got: HashMap<String, u64> = res
            .answers
            .iter()
            .filter(|a| a.votes > 0)
            .map(|a| (a.answer_id.clone(), a.votes))
            .collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}, want {want:?}"))
        }
    })
    .await;
}
