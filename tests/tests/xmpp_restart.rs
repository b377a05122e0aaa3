//! The XMPP bridge recovers when Prosody restarts: it reconnects, recreates
//! the nodes and republishes the latest results of every poll, including
//! votes cast while the server was away. Then NATS restarts, and the bridge
//! keeps publishing. This file has a Prosody of its own (it restarts it).

use std::time::{Duration, Instant};

use tagpoll_tests::prosody::{PUBSUB, Prosody, XmppTestClient};
use tagpoll_tests::*;
use tokio_xmpp::minidom::Element;

const NS_RESULTS: &str = "urn:tagpoll:results:1";
const WAIT: Duration = Duration::from_secs(30);

const EVENT: &str = r#"
[event]
id = "xr"
identity = ["anonymous"]

[[polls]]
id = "pa"
question = "A or B?"
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[polls]]
id = "pb"
question = "C or D?"
allow_anonymous = true
answers = [{ id = "c", label = "C" }, { id = "d", label = "D" }]

[[readers]]
id = "ra"
poll = "pa"
answer = "a"

[[readers]]
id = "rc"
poll = "pb"
answer = "c"
"#;

fn total(e: &Element) -> Option<u64> {
    if e.is("results", NS_RESULTS) {
        e.attr("total").and_then(|t| t.parse().ok())
    } else {
        None
    }
}

/// Waits until `node` holds results with `want` total.
async fn wait_total(c: &XmppTestClient, node: &str, want: u64, what: &str) {
    let start = Instant::now();
    let mut last;
    loop {
        match c.items(PUBSUB, node).await {
            Ok(items) => {
                if items
                    .iter()
                    .any(|(_, p)| p.as_ref().and_then(total) == Some(want))
                {
                    return;
                }
                last = format!("{items:?}");
            }
            Err(e) => last = e,
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: {node} never showed total {want}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_republishes_after_prosody_and_nats_restarts() {
    let mut p = Prosody::start(&["bridge"]);
    p.register("bridge", "bridge-pw");
    p.register("watcher", "watcher-pw");
    let mut bus = TestBus::start();
    let file = write_file(&bus, "event.toml", EVENT);
    assert!(bus.cli(&["load", &file]).status.success());
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let addr = p.c2s_addr();
    let _bridge = bus.service(
        "tagpoll-xmpp",
        &[],
        &[
            ("TAGPOLL_XMPP_JID", "bridge@localhost"),
            ("TAGPOLL_XMPP_PASSWORD", "bridge-pw"),
            ("TAGPOLL_XMPP_SERVER", &addr),
            ("TAGPOLL_XMPP_ALLOW_PLAINTEXT", "1"),
            ("TAGPOLL_XMPP_PUBSUB", PUBSUB),
            ("TAGPOLL_XMPP_NODE", "results/{event}/{poll}"),
            ("TAGPOLL_XMPP_INTERVAL_MS", "200"),
            ("RUST_LOG", "info,tagpoll_xmpp=debug,async_nats=warn"),
        ],
    );
    let js = async_nats::jetstream::new(bus.client().await);

    let mut watcher = XmppTestClient::connect("watcher", "watcher-pw", &addr).await;
    wait_total(&watcher, "results/xr/pa", 0, "start").await;
    wait_total(&watcher, "results/xr/pb", 0, "start").await;
    watcher
        .subscribe(PUBSUB, "results/xr/pa")
        .await
        .expect("subscribe");
    tap(&js, "dev", "ra", &[1, 1, 1, 1], "r-1").await;
    tap(&js, "dev", "rc", &[1, 1, 1, 1], "r-2").await;
    watcher
        .wait_item("results/xr/pa", WAIT, |e| total(e) == Some(1))
        .await;
    wait_total(&watcher, "results/xr/pb", 1, "before restart").await;
    drop(watcher);

    // Prosody goes away, and comes back without any pubsub data; a vote
    // is cast in between.
    p.stop();
    p.wipe_pubsub();
    tap(&js, "dev", "ra", &[2, 2, 2, 2], "r-3").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.start_again();

    let mut watcher = XmppTestClient::connect("watcher", "watcher-pw", &addr).await;
    // Both nodes are back with the latest counts: pa with the vote cast
    // during the outage, pb unchanged since before it.
    wait_total(&watcher, "results/xr/pa", 2, "after prosody restart").await;
    wait_total(&watcher, "results/xr/pb", 1, "after prosody restart").await;
    watcher
        .subscribe(PUBSUB, "results/xr/pa")
        .await
        .expect("subscribe after restart");
    tap(&js, "dev", "ra", &[3, 3, 3, 3], "r-4").await;
    watcher
        .wait_item("results/xr/pa", WAIT, |e| total(e) == Some(3))
        .await;

    // NATS restarts (same store): the services and the bridge reconnect.
    bus.server.restart().expect("restart nats-server");
    let js = async_nats::jetstream::new(bus.client().await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tap(&js, "dev", "ra", &[4, 4, 4, 4], "r-5").await;
    // Identity and tally need a while to resume their consumers after a
    // server restart; the bridge only has to pass the result on.
    watcher
        .wait_item("results/xr/pa", WAIT * 2, |e| total(e) == Some(4))
        .await;
}
