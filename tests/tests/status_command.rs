//! `tagpoll status` against a running `tagpoll dev`: services and devices
//! online, then a reader device killed and shown offline.

use std::time::Duration;

use tagpoll_tests::*;

fn status(nats_url: &str) -> serde_json::Value {
    let out = cli_with_env(
        &["status", "--json"],
        &[("NATS_URL".into(), nats_url.into())],
    );
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
}

fn device_state(s: &serde_json::Value, id: &str) -> Option<String> {
    s["devices"]
        .as_array()?
        .iter()
        .find(|d| d["id"] == id)
        .map(|d| d["state"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_services_and_devices_and_a_killed_reader_goes_offline() {
    let data = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", tagpoll::nats_server::free_port().unwrap());
    let dev = DevProcess::start(data.path(), &http, &["--sim-rate", "5"]);

    // A second reader box joins the running system.
    let spool = data.path().join("extra-spool");
    let mut extra = tagpoll::dev::ServiceProcess::new(
        "tagpoll-reader",
        &[
            "--device".into(),
            "extra".into(),
            "--simulate".into(),
            "--sim-rate".into(),
            "2".into(),
            "--spool".into(),
            spool.display().to_string(),
        ],
        &[("NATS_URL".into(), dev.nats_url.clone())],
        data.path(),
    )
    .unwrap();
    extra.start().unwrap();

    let url = dev.nats_url.clone();
    let s = eventually(
        Duration::from_secs(20),
        "services and devices online",
        || {
            let url = url.clone();
            async move {
                let s = tokio::task::spawn_blocking(move || status(&url))
                    .await
                    .unwrap();
                let online = |name: &str| {
                    s["services"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v["name"] == name && v["state"] == "online")
                };
                let ok = online("identity")
                    && online("tally")
                    && device_state(&s, "sim").as_deref() == Some("online")
                    && device_state(&s, "extra").as_deref() == Some("online");
                if ok { Ok(s) } else { Err(s.to_string()) }
            }
        },
    )
    .await;
    let sim = s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "sim")
        .unwrap();
    assert!(sim["readers"].is_array());
    assert!(s["services"][0]["instance"].is_string());

    // Kill the extra reader box: within 15 s it shows offline, the rest stays online.
    extra.kill();
    let killed_at = std::time::Instant::now();
    eventually(
        Duration::from_secs(15),
        "the killed device to show offline",
        || {
            let url = url.clone();
            async move {
                let s = tokio::task::spawn_blocking(move || status(&url))
                    .await
                    .unwrap();
                match (
                    device_state(&s, "extra").as_deref(),
                    device_state(&s, "sim").as_deref(),
                ) {
                    (Some("offline"), Some("online")) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert!(killed_at.elapsed() < Duration::from_secs(15));

    // The human view names the offline device too.
    let out = cli_with_env(&["status"], &[("NATS_URL".into(), url.clone())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("extra") && l.contains("offline")),
        "{text}"
    );
    assert!(text.contains("TAGPOLL_VOTES"), "{text}");
    assert!(dev.interrupt().success());
}
