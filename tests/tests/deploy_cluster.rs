//! The 3-node cluster of `deploy/cluster/`: three nats-servers on loopback
//! started from those files, `tagpoll load` with `TAGPOLL_REPLICAS=3`
//! creates every stream and bucket with 3 replicas, and a tap is still
//! acknowledged with one node killed.

use std::time::Duration;

use prost::Message;
use tagpoll_tests::cluster::{Cluster, role_password};
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "cluster"
identity = ["anonymous"]

[[polls]]
id = "p1"
question = "Yes or no?"
allow_anonymous = true
answers = [{ id = "yes", label = "Yes" }, { id = "no", label = "No" }]

[[readers]]
id = "r-yes"
poll = "p1"
answer = "yes"
"#;

async fn admin_client(urls: &[String]) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .user_and_password("admin".into(), role_password("admin"))
        .connect(urls.to_vec())
        .await
        .expect("admin connects to the cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_keeps_three_replicas() {
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-cluster-")
        .tempdir()
        .unwrap();
    let mut cluster = Cluster::start(dir.path());
    assert_eq!(cluster.urls().len(), 3);

    // The organiser loads the event with 3 replicas.
    let event = dir.path().join("event.toml");
    std::fs::write(&event, EVENT).unwrap();
    let mut env = cluster.role_env("admin");
    env.push(("TAGPOLL_REPLICAS".into(), "3".into()));
    let out = cli_with_env(&["load", event.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "tagpoll load on the cluster: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let client = admin_client(&cluster.urls()).await;
    let js = async_nats::jetstream::new(client);
    for stream in [
        names::STREAM_READS,
        names::STREAM_IDENTIFIED,
        names::STREAM_VOTES,
        &format!("KV_{}", names::KV_CONFIG),
        &format!("KV_{}", names::KV_RESULTS),
    ] {
        // Replicas may need a moment to report in after creation.
        eventually(Duration::from_secs(15), stream, || {
            let js = js.clone();
            let stream = stream.to_string();
            async move {
                let info = js
                    .get_stream(&stream)
                    .await
                    .map_err(|e| e.to_string())?
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .clone();
                if info.config.num_replicas != 3 {
                    return Err(format!("num_replicas {}", info.config.num_replicas));
                }
                let c = info.cluster.ok_or("no cluster info")?;
                let current = c.replicas.iter().filter(|r| r.current).count();
                if c.leader.is_some() && c.replicas.len() == 2 && current == 2 {
                    Ok(())
                } else {
                    Err(format!("leader {:?}, replicas {:?}", c.leader, c.replicas))
                }
            }
        })
        .await;
    }

    // One node down: a tap is still stored (2 of 3 is a majority), and the
    // node catches up when it is back.
    cluster.kill(0);
    let survivors: Vec<String> = cluster.urls()[1..].to_vec();
    let client = admin_client(&survivors).await;
    let js = async_nats::jetstream::new(client);
    let read = v1::TagRead {
        read_id: "cluster-t1".into(),
        device_id: "dev".into(),
        reader_id: "r-yes".into(),
        tag_uid: vec![1, 2, 3, 4],
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: 0,
    };
    eventually(
        Duration::from_secs(20),
        "tap acknowledged by 2 of 3 nodes",
        || {
            let js = js.clone();
            let payload = read.encode_to_vec();
            async move {
                tagpoll_bus::publish::publish_for_read(
                    &js,
                    subjects::read("dev", "r-yes"),
                    "cluster-t1",
                    payload.into(),
                )
                .await
                .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    cluster.restart(0);
    cluster.wait_healthy(Duration::from_secs(30));
    let client = admin_client(&cluster.urls()[..1]).await;
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(20), "restarted node caught up", || {
        let js = js.clone();
        async move {
            let mut s = js
                .get_stream(names::STREAM_READS)
                .await
                .map_err(|e| e.to_string())?;
            let info = s.info().await.map_err(|e| e.to_string())?;
            let c = info.cluster.clone().ok_or("no cluster info")?;
            let all_current = c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current);
            if info.state.messages == 1 && all_current {
                Ok(())
            } else {
                Err(format!(
                    "{} messages, replicas {:?}",
                    info.state.messages, c.replicas
                ))
            }
        }
    })
    .await;
}
