//! `tagpoll dev`: the whole system from one command, as a user runs it.

use std::process::Command;
use std::time::Duration;

use tagpoll_tests::*;

async fn total(http: &str, poll: &str) -> u64 {
    let (status, body) = http_json(&format!("http://{http}/api/polls/{poll}/results")).await;
    assert_eq!(status, 200, "{body}");
    body["total"].as_u64().unwrap()
}

fn children_of(pid: u32) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "ppid=,pid=,comm="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_system_counts_taps_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let port = tagpoll::nats_server::free_port().unwrap();
    let http = format!("127.0.0.1:{port}");

    // With simulated readers, votes grow by themselves.
    let dev = DevProcess::start(data.path(), &http, &["--sim-rate", "40"]);
    let pid = dev.child.id();
    let (status, page) = {
        let r = http_client()
            .get(format!("http://{http}/"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(page.contains("live results"), "results page body");
    let first = total(&http, "drink").await;
    eventually(Duration::from_secs(20), "simulated votes to grow", || {
        let http = http.clone();
        async move {
            let now = total(&http, "drink").await;
            if now > first {
                Ok(())
            } else {
                Err(format!("still {now}"))
            }
        }
    })
    .await;
    assert_eq!(
        children_of(pid).len(),
        5,
        "nats-server + 4 services: {:?}",
        children_of(pid)
    );
    let status = dev.interrupt();
    assert!(status.success(), "tagpoll dev exit: {status}");
    assert!(
        children_of(pid).is_empty(),
        "children left behind: {:?}",
        children_of(pid)
    );

    // Same data folder, no simulator: state survived, and one tap is one vote.
    let dev = DevProcess::start(data.path(), &http, &["--no-sim"]);
    // Taps the first run stored but had not decided yet are decided now: wait
    // until every read has its outcome and the page shows them all.
    let js = async_nats::jetstream::new(
        async_nats::connect(dev.nats_url.as_str())
            .await
            .expect("connect to the dev server"),
    );
    let before = eventually(Duration::from_secs(30), "every stored tap decided", || {
        let (js, http) = (js.clone(), http.clone());
        async move {
            let reads = stream_len(&js, names::STREAM_READS).await;
            let votes = stream_len(&js, names::STREAM_VOTES).await;
            let shown = total(&http, "drink").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let again = total(&http, "drink").await;
            if reads == votes && shown == again && shown > first {
                Ok(shown)
            } else {
                Err(format!(
                    "{reads} reads, {votes} outcomes, page shows {shown} then {again}"
                ))
            }
        }
    })
    .await;
    assert!(before > first, "counts survived the restart ({before})");
    let env = vec![("NATS_URL".to_string(), dev.nats_url.clone())];
    let out = cli_with_env(
        &["tap", "--reader", "tea", "--tag", "01:02:03:04:05:06:07"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = eventually(Duration::from_secs(10), "the tap to be counted", || {
        let http = http.clone();
        async move {
            let now = total(&http, "drink").await;
            if now != before {
                Ok(now)
            } else {
                Err(format!("still {now}"))
            }
        }
    })
    .await;
    assert_eq!(after, before + 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(&http, "drink").await, before + 1, "exactly one vote");
    assert!(dev.interrupt().success());
}
