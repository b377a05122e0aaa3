//! An outside tool in another language can use the vote stream: Python
//! compiles proto/ with a stock protoc (grpcio-tools) and decodes live
//! outcomes from NATS with nats-py.

use std::path::PathBuf;
use std::process::Command;

use tagpoll_tests::*;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} missing: run scripts/setup.sh (installs grpcio-tools and nats-py)",
        p.display()
    );
    p
}

const EVENT: &str = r#"
[event]
id = "outside"
identity = ["file", "anonymous"]

[[polls]]
id = "p"
question = "Q?"
allow_anonymous = true
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_decodes_live_outcomes_with_a_stock_protoc() {
    let bus = TestBus::start();
    let generated = bus.path().join("py");
    std::fs::create_dir_all(&generated).unwrap();
    let out = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo().join("proto"))
        .arg(format!("--python_out={}", generated.display()))
        .arg(repo().join("proto/tagpoll/v1/tagpoll.proto"))
        .output()
        .expect("run grpc_tools.protoc");
    assert!(
        out.status.success(),
        "protoc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(generated.join("tagpoll/v1/tagpoll_pb2.py").is_file());

    let load = bus.cli(&["load", &write_file(&bus, "event.toml", EVENT)]);
    assert!(load.status.success());
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);

    // The tool starts first and sees the votes live (and would see older ones too).
    let follower = Command::new(python())
        .arg(repo().join("tests/python/follow_votes.py"))
        .arg(&generated)
        .arg(bus.url())
        .arg("3")
        .arg("20")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start python follower");

    let js = async_nats::jetstream::new(bus.client().await);
    tap(&js, "d", "ra", &[1, 2, 3, 4], "py-1").await;
    tap(&js, "d", "rb", &[1, 2, 3, 4], "py-2").await;
    tap(&js, "d", "rb", &[9, 9, 9, 9], "py-3").await;

    let out = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "python follower failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let got: Vec<(&str, &str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["read_id"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
                l["poll"].as_str().unwrap(),
                l["answer"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("py-1", "OUTCOME_KIND_ACCEPTED", "p", "a"),
            ("py-2", "OUTCOME_KIND_DUPLICATE", "p", "b"),
            ("py-3", "OUTCOME_KIND_ACCEPTED", "p", "b"),
        ]
    );
    assert_eq!(lines[0]["subject"], "tagpoll.outcomes.p.ra");
    assert!(lines[0]["voter"].as_str().unwrap().starts_with("anon:"));
}
