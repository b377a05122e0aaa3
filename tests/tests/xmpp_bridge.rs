//! The XMPP bridge (`tagpoll-xmpp`) against a real Prosody, one shared by
//! every test in this file, with the real identity and tally services.
//! Each test uses its own accounts, event id and nodes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use tagpoll_tests::prosody::{self, PUBSUB, XmppTestClient};
use tagpoll_tests::*;
use tokio_xmpp::minidom::Element;

const NS_RESULTS: &str = "urn:tagpoll:results:1";
const WAIT: Duration = Duration::from_secs(20);

/// An event with an open poll `{poll}` and a poll with hidden results.
fn event(event_id: &str, poll: &str) -> String {
    format!(
        r#"
[event]
id = "{event_id}"
identity = ["file", "anonymous"]

[[polls]]
id = "{poll}"
question = "Tea or coffee?"
mode = "change"
allow_anonymous = true
answers = [{{ id = "tea", label = "Tea" }}, {{ id = "coffee", label = "Coffee & cake" }}]

[[polls]]
id = "{poll}-secret"
question = "Hidden?"
allow_anonymous = true
hide_results = true
answers = [{{ id = "a", label = "A" }}, {{ id = "b", label = "B" }}]

[[readers]]
id = "{poll}-tea"
poll = "{poll}"
answer = "tea"

[[readers]]
id = "{poll}-coffee"
poll = "{poll}"
answer = "coffee"

[[readers]]
id = "{poll}-a"
poll = "{poll}-secret"
answer = "a"

[[people]]
id = "alice"
name = "Alice"
tags = ["04A1B2C3"]

[[people]]
id = "bob"
name = "Bob"
tags = ["7E6FD7A0"]
"#
    )
}

const ALICE: &[u8] = &[0x04, 0xA1, 0xB2, 0xC3];
const BOB: &[u8] = &[0x7E, 0x6F, 0xD7, 0xA0];

fn load(bus: &TestBus, text: &str) {
    let file = write_file(bus, "event.toml", text);
    let out = bus.cli(&["load", &file]);
    assert!(
        out.status.success(),
        "tagpoll load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Environment for a bridge logging in as `user` (password `user-pw`).
fn bridge_env(p: &prosody::Prosody, user: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TAGPOLL_XMPP_JID", prosody::jid(user)),
        ("TAGPOLL_XMPP_PASSWORD", format!("{user}-pw")),
        ("TAGPOLL_XMPP_SERVER", p.c2s_addr()),
        ("TAGPOLL_XMPP_ALLOW_PLAINTEXT", "1".into()),
        ("TAGPOLL_XMPP_PUBSUB", PUBSUB.into()),
        ("RUST_LOG", "info,tagpoll_xmpp=debug,async_nats=warn".into()),
    ]
}

fn start_bridge(bus: &TestBus, env: &[(&'static str, String)]) -> tagpoll::dev::ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    bus.service("tagpoll-xmpp", &[], &env)
}

fn attr_u64(e: &Element, name: &str) -> Option<u64> {
    e.attr(name).and_then(|v| v.parse().ok())
}

/// (answer id, label, votes) of a results payload.
fn answers(e: &Element) -> Vec<(String, String, u64)> {
    e.children()
        .filter(|c| c.is("answer", NS_RESULTS))
        .map(|a| {
            (
                a.attr("id").unwrap_or_default().to_string(),
                a.text(),
                attr_u64(a, "votes").unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn is_results(e: &Element, poll: &str) -> bool {
    e.is("results", NS_RESULTS) && e.attr("poll") == Some(poll)
}

/// Text at a path of child names (ikPoll payloads have no namespace).
fn text_at(e: &Element, path: &[&str]) -> String {
    let mut cur = e;
    for p in path {
        cur = cur
            .children()
            .find(|c| c.name() == *p)
            .unwrap_or_else(|| panic!("no <{p}> in {}", String::from(e)));
    }
    cur.text()
}

/// Waits until `node` holds an item the predicate accepts (the bridge creates
/// nodes and publishes at start); returns it.
async fn wait_stored_item(
    c: &XmppTestClient,
    node: &str,
    mut pred: impl FnMut(&Element) -> bool,
) -> (String, Element) {
    let start = Instant::now();
    let mut last;
    loop {
        match c.items(PUBSUB, node).await {
            Ok(items) => {
                for (id, p) in &items {
                    if let Some(p) = p
                        && pred(p)
                    {
                        return (id.clone(), p.clone());
                    }
                }
                last = format!("{} items: {:?}", items.len(), items);
            }
            Err(e) => last = e,
        }
        if start.elapsed() > WAIT {
            panic!("node {node} never held the expected item; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_ikpoll_votes_reach_a_subscriber() {
    let p = prosody::shared();
    p.register("bridge1", "bridge1-pw");
    p.register("sub1", "sub1-pw");
    let bus = TestBus::start();
    load(&bus, &event("xb1", "drink1"));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let mut env = bridge_env(p, "bridge1");
    env.push(("TAGPOLL_XMPP_INTERVAL_MS", "200".into()));
    env.push(("TAGPOLL_XMPP_IKPOLL", "1".into()));
    env.push(("TAGPOLL_XMPP_IKPOLL_PERSONAL", "1".into()));
    let _bridge = start_bridge(&bus, &env);

    let mut sub = XmppTestClient::connect("sub1", "sub1-pw", &p.c2s_addr()).await;
    // Default node names: tagpoll/{event}/{poll} and vote/{poll}. The bridge
    // creates the nodes and publishes every poll at start (zero votes).
    let node = "tagpoll/xb1/drink1";
    let secret = "tagpoll/xb1/drink1-secret";
    let (id, first) = wait_stored_item(&sub, node, |e| is_results(e, "drink1")).await;
    assert_eq!(id, "drink1", "item id = poll id");
    assert_eq!(first.attr("total"), Some("0"));
    assert_eq!(first.attr("state"), Some("open"));
    assert_eq!(first.attr("event"), Some("xb1"));
    assert_eq!(
        answers(&first),
        [
            ("tea".to_string(), "Tea".to_string(), 0),
            ("coffee".to_string(), "Coffee & cake".to_string(), 0)
        ]
    );
    wait_stored_item(&sub, secret, |e| is_results(e, "drink1-secret")).await;
    for n in [node, secret] {
        sub.subscribe(PUBSUB, n).await.expect("subscribe");
    }
    // Vote nodes appear with the first vote; subscribe once they exist.
    let js = async_nats::jetstream::new(bus.client().await);
    tap(&js, "dev", "drink1-tea", ALICE, "x1-t1").await;

    let item = sub
        .wait_item(node, WAIT, |e| attr_u64(e, "total") == Some(1))
        .await;
    let e = item.payload.unwrap();
    assert_eq!(item.id, "drink1");
    assert_eq!(item.service, PUBSUB);
    assert_eq!(answers(&e)[0], ("tea".into(), "Tea".into(), 1));
    assert!(
        e.attr("updated").is_some_and(|u| u.ends_with('Z')),
        "{}",
        String::from(&e)
    );

    // ikPoll vote node: it holds the last votes; the first one is Alice's.
    let (vid, vote) = wait_stored_item(&sub, "vote/drink1", |e| e.name() == "rsp").await;
    assert_eq!(vid, "x1-t1", "item id = read id");
    assert_eq!(vote.ns(), "", "ikPoll payloads have no namespace");
    assert_eq!(text_at(&vote, &["vote", "id"]), "x1-t1");
    assert_eq!(text_at(&vote, &["vote", "reader_serial"]), "drink1-tea");
    assert_eq!(text_at(&vote, &["vote", "answer_id_ref"]), "tea");
    assert_eq!(text_at(&vote, &["vote", "question_id_ref"]), "drink1");
    assert_eq!(text_at(&vote, &["vote", "user_id_ref"]), "file:alice");
    let ts = text_at(&vote, &["vote", "timestamp"]);
    assert!(
        ts.len() == 19 && ts.as_bytes()[10] == b' ',
        "timestamp {ts:?} is not YYYY-MM-DD HH:MM:SS"
    );
    assert_eq!(text_at(&vote, &["person", "title"]), "Alice", "personal on");
    assert_eq!(text_at(&vote, &["question", "title"]), "Tea or coffee?");
    assert_eq!(text_at(&vote, &["question", "total_votes"]), "1");
    let first_item = vote
        .get_child("question", "")
        .and_then(|q| q.get_child("answers", ""))
        .and_then(|a| a.children().next())
        .expect("answers/item");
    assert_eq!(text_at(first_item, &["answer_id"]), "tea");
    assert_eq!(text_at(first_item, &["count"]), "1");
    assert_eq!(text_at(first_item, &["percentage"]), "100.0");
    sub.subscribe(PUBSUB, "vote/drink1")
        .await
        .expect("subscribe votes");

    // Bob votes coffee, Alice changes to coffee: tea 0, coffee 2.
    tap(&js, "dev", "drink1-coffee", BOB, "x1-t2").await;
    tap(&js, "dev", "drink1-coffee", ALICE, "x1-t3").await;
    let item = sub
        .wait_item(node, WAIT, |e| {
            answers(e).iter().map(|a| a.2).collect::<Vec<_>>() == [0, 2]
        })
        .await;
    assert_eq!(item.payload.unwrap().attr("total"), Some("2"));
    let changed = sub
        .wait_item("vote/drink1", WAIT, |e| {
            e.name() == "rsp" && text_at(e, &["vote", "id"]) == "x1-t3"
        })
        .await
        .payload
        .unwrap();
    assert_eq!(text_at(&changed, &["vote", "answer_id_ref"]), "coffee");
    assert_eq!(text_at(&changed, &["question", "total_votes"]), "2");

    // The results node keeps exactly one item: the latest.
    let items = sub.items(PUBSUB, node).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(attr_u64(items[0].1.as_ref().unwrap(), "total"), Some(2));

    // Hidden results: state only, never counts; the vote counts stay empty.
    tap(&js, "dev", "drink1-a", BOB, "x1-t4").await;
    let hidden_vote = wait_stored_item(&sub, "vote/drink1-secret", |e| e.name() == "rsp")
        .await
        .1;
    assert_eq!(text_at(&hidden_vote, &["question", "total_votes"]), "");
    let (_, h) = wait_stored_item(&sub, secret, |e| is_results(e, "drink1-secret")).await;
    assert_eq!(h.attr("hidden"), Some("true"));
    assert_eq!(h.attr("total"), None);
    assert!(answers(&h).is_empty(), "{}", String::from(&h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_from_listened_nodes_come_out_on_nats() {
    let p = prosody::shared();
    p.register("bridge2", "bridge2-pw");
    p.register("publisher1", "publisher1-pw");
    let bus = TestBus::start();
    let publisher = XmppTestClient::connect("publisher1", "publisher1-pw", &p.c2s_addr()).await;
    // The listened nodes belong to someone else; one has dots in its name.
    for n in ["news/today", "feeds.v1"] {
        publisher.create_node(PUBSUB, n).await.expect("create node");
    }
    let client = bus.client().await;
    let mut notes = client.subscribe(subjects::XMPP_IN_ALL).await.unwrap();
    client.flush().await.unwrap();

    let mut env = bridge_env(p, "bridge2");
    env.push((
        "TAGPOLL_XMPP_LISTEN",
        format!("{PUBSUB}/news/today, xmpp:{PUBSUB}?;node=feeds.v1"),
    ));
    let _bridge = start_bridge(&bus, &env);

    // Publish until the bridge's subscription is in place.
    let payload = "<entry xmlns='http://www.w3.org/2005/Atom'><title>Doors open</title></entry>";
    let first = publish_until_bridged(&publisher, &mut notes, "news/today", "i", payload).await;
    assert_eq!(first.subject.as_str(), "tagpoll.xmpp.in.news/today");
    assert_eq!(first.subject.as_str(), subjects::xmpp_in("news/today"));
    let note = v1::XmppNotification::decode(first.payload.as_ref()).unwrap();
    assert_eq!(note.service, PUBSUB);
    assert_eq!(note.node, "news/today");
    assert!(note.item_id.starts_with('i'), "{note:?}");
    assert_eq!(note.publisher, prosody::jid("publisher1"));
    assert!(note.received_at.is_some());
    let parsed: Element = note.payload_xml.parse().expect("payload_xml is XML");
    assert!(parsed.is("entry", "http://www.w3.org/2005/Atom"));
    assert_eq!(parsed.children().next().unwrap().text(), "Doors open");

    // Malformed and unrelated stanzas are logged and skipped, not fatal.
    let bridge_jid = prosody::jid("bridge2");
    publisher.send_raw(&format!(
        "<message xmlns='jabber:client' to='{bridge_jid}' type='headline'>\
           <event xmlns='http://jabber.org/protocol/pubsub#event'><items><item id='x'/></items></event>\
         </message>"
    ));
    publisher.send_raw(&format!(
        "<message xmlns='jabber:client' to='{bridge_jid}' type='chat'><body>hello</body></message>"
    ));
    // The dotted node: its subscription is made alongside the first one, not necessarily
    // before the first notification came through.
    let m = publish_until_bridged(
        &publisher,
        &mut notes,
        "feeds.v1",
        "f",
        "<x xmlns='urn:example'>1</x>",
    )
    .await;
    assert_eq!(m.subject.as_str(), "tagpoll.xmpp.in.feeds%2Ev1");
    let note = v1::XmppNotification::decode(m.payload.as_ref()).unwrap();
    assert_eq!(note.node, "feeds.v1");
    assert!(note.item_id.starts_with('f'), "{note:?}");
    assert_eq!(note.payload_xml, "<x xmlns='urn:example'>1</x>");
}

/// Publishes items `{prefix}1`, `{prefix}2`, … to `node` until the bridge puts one of them
/// on NATS (its subscription may not be in place yet), and returns that message. Late copies
/// of other nodes' notifications are skipped.
async fn publish_until_bridged(
    publisher: &XmppTestClient,
    notes: &mut async_nats::Subscriber,
    node: &str,
    prefix: &str,
    payload: &str,
) -> async_nats::Message {
    let subject = subjects::xmpp_in(node);
    let start = Instant::now();
    for n in 1.. {
        publisher
            .publish(PUBSUB, node, &format!("{prefix}{n}"), payload)
            .await
            .expect("publish");
        let round = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(m)) = tokio::time::timeout_at(round, notes.next()).await {
            if m.subject.as_str() == subject {
                return m;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "no XmppNotification from {node} on NATS"
        );
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_subscriber_reads_the_results_payload() {
    let p = prosody::shared();
    p.register("bridge3", "bridge3-pw");
    p.register("slix1", "slix1-pw");
    let bus = TestBus::start();
    load(&bus, &event("xb3", "drink3"));
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let mut env = bridge_env(p, "bridge3");
    env.push(("TAGPOLL_XMPP_INTERVAL_MS", "200".into()));
    let _bridge = start_bridge(&bus, &env);

    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup.sh (it installs slixmpp into .venv)",
        python.display()
    );
    let script = workspace_root().join("tests/xmpp/slixmpp_subscriber.py");
    let (host, port) = p
        .c2s_addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            &prosody::jid("slix1"),
            "slix1-pw",
            &host,
            &port,
            PUBSUB,
            "tagpoll/xb3/drink3",
            "2",
            "40",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run slixmpp script");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    let mut tapped = false;
    let js = async_nats::jetstream::new(bus.client().await);
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("script output") {
            seen.push(line.clone());
            if line == "SUBSCRIBED" && !tapped {
                tapped = true;
                tap(&js, "dev", "drink3-tea", ALICE, "x3-t1").await;
                tap(&js, "dev", "drink3-coffee", BOB, "x3-t2").await;
            }
            if let Some(json) = line.strip_prefix("RESULT ") {
                return serde_json::from_str::<serde_json::Value>(json).expect("JSON");
            }
        }
        panic!("script ended without a result: {seen:?}");
    })
    .await;
    let result = match result {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill().await;
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "slixmpp script timed out; stdout {seen:?}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("script exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(result["item_id"], "drink3");
    assert_eq!(result["poll"], "drink3");
    assert_eq!(result["event"], "xb3");
    assert_eq!(result["state"], "open");
    assert_eq!(result["hidden"], false);
    assert_eq!(result["total"], 2);
    assert_eq!(result["question"], "Tea or coffee?");
    assert_eq!(
        result["answers"],
        serde_json::json!([
            {"id": "tea", "label": "Tea", "votes": 1},
            {"id": "coffee", "label": "Coffee & cake", "votes": 1}
        ])
    );
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the bridge binary with `env` only and returns (exit ok, stderr).
fn run_bridge_expecting_exit(env: &[(&str, &str)]) -> (bool, String) {
    let mut child = std::process::Command::new(binary("tagpoll-xmpp"))
        .env_clear()
        .envs(env.iter().copied())
        .env("NATS_URL", "nats://127.0.0.1:1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tagpoll-xmpp");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("tagpoll-xmpp did not exit on a bad configuration ({env:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_is_refused_naming_the_variable() {
    let base = [
        ("TAGPOLL_XMPP_JID", "bridge@localhost"),
        ("TAGPOLL_XMPP_PASSWORD", "pw"),
    ];
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[], "TAGPOLL_XMPP_JID", "not set"),
        (
            &[("TAGPOLL_XMPP_JID", "bridge@localhost")],
            "TAGPOLL_XMPP_PASSWORD",
            "not set",
        ),
        (
            &[
                base[0],
                base[1],
                ("TAGPOLL_XMPP_SERVER", "192.0.2.1:5222"),
                ("TAGPOLL_XMPP_ALLOW_PLAINTEXT", "1"),
            ],
            "TAGPOLL_XMPP_SERVER",
            "not a loopback address",
        ),
        (
            &[base[0], base[1], ("TAGPOLL_XMPP_NODE", "results/{event}")],
            "TAGPOLL_XMPP_NODE",
            "{poll}",
        ),
        (
            &[base[0], base[1], ("TAGPOLL_XMPP_LISTEN", "no-node-here")],
            "TAGPOLL_XMPP_LISTEN",
            "service/node",
        ),
    ];
    for (env, var, words) in cases {
        let (ok, err) = run_bridge_expecting_exit(env);
        assert!(!ok, "{env:?} was accepted");
        assert!(
            err.contains(var) && err.contains(words),
            "{env:?}: error should name {var} and say {words:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_plaintext_allowed_the_bridge_insists_on_starttls() {
    // The test server offers no TLS: a bridge not allowed plaintext must
    // never log in over it (no silent downgrade), and keeps retrying.
    let p = prosody::shared();
    p.register("bridge4", "bridge4-pw");
    let bus = TestBus::start();
    let env: Vec<(&'static str, String)> = bridge_env(p, "bridge4")
        .into_iter()
        .filter(|(k, _)| *k != "TAGPOLL_XMPP_ALLOW_PLAINTEXT")
        .collect();
    let _bridge = start_bridge(&bus, &env);
    let log = bus.path().join("logs/tagpoll-xmpp.log");
    let text = eventually(WAIT, "a failed STARTTLS connect in the log", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Failed to connect") {
                Ok(text)
            } else {
                Err(text)
            }
        }
    })
    .await;
    assert!(!text.contains("XMPP online"), "{text}");
}
