//! `tagpoll dev`: the whole system from one command, as a user runs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tagpoll_tests::*;

struct Dev {
    child: Child,
    nats_url: String,
}

impl Dev {
    fn start(data: &std::path::Path, http: &str, extra: &[&str]) -> Dev {
        let mut child = Command::new(binary("tagpoll"))
            .args(["dev", "--http", http, "--data"])
            .arg(data)
            .args([
                "--event",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/event.toml"),
            ])
            .args(extra)
            .env_remove("NATS_URL")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tagpoll dev");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut nats_url = String::new();
        let mut url_line = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read tagpoll dev output");
            if let Some(u) = line.trim().strip_prefix("NATS:") {
                nats_url = u.trim().to_string();
            }
            if line.contains("results page:") {
                url_line = line.clone();
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        assert!(
            url_line.contains(&format!("http://{http}/")),
            "no results URL printed: {url_line:?}"
        );
        assert!(
            nats_url.starts_with("nats://127.0.0.1:"),
            "no NATS URL printed"
        );
        std::thread::spawn(move || for _ in lines {});
        Dev { child, nats_url }
    }

    /// Ctrl-C, and the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGINT,
        )
        .unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("tagpoll dev did not stop within 10 s of Ctrl-C");
    }
}

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
    let dev = Dev::start(data.path(), &http, &["--sim-rate", "40"]);
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
    let dev = Dev::start(data.path(), &http, &["--no-sim"]);
    let before = total(&http, "drink").await;
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
