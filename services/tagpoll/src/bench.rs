//! `tagpoll bench`: how close the whole pipeline comes to the bus's own limit.
//!
//! Self-contained on loopback: starts a private nats-server (configured as
//! deployed: `sync_interval: always`, or the lazy default with
//! `--lazy-sync`) and the service binaries next to this executable, then
//! measures in one run:
//! - the baseline: a raw JetStream publish + consume loop, tap-sized payload;
//! - the pipeline: taps through identity, tally and results, counted at the
//!   vote stream, and its ratio to the baseline;
//! - latency at a fixed rate: tap publish → outcome, and → results snapshot;
//! - resident memory of each service, idle and loaded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use tagpoll_proto::{names, subjects, v1};

use crate::dev::ServiceProcess;
use crate::nats_server::{NatsServer, ServerOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Small counts, finishes within a minute on 2 cores.
    pub quick: bool,
    /// The server's lazy fsync instead of `sync_interval: always`.
    pub lazy_sync: bool,
    /// Taps per second for the latency run.
    pub rate: u32,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// Resident memory of one service, in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub service: String,
    pub idle_mib: f64,
    pub loaded_mib: f64,
}

/// Everything one run measured. Field names are a contract (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub sync: &'static str,
    pub messages: u64,
    pub payload_bytes: usize,
    pub baseline_per_s: f64,
    pub pipeline_per_s: f64,
    pub ratio: f64,
    pub rate_per_s: u32,
    pub tap_to_outcome: Percentiles,
    pub tap_to_snapshot: Percentiles,
    pub tap_to_outcome_p99_ms: f64,
    pub tap_to_snapshot_p99_ms: f64,
    /// Durable stream appends per vote (each one an fsync with `always`).
    pub appends_per_vote: f64,
    pub snapshots_per_s_under_burst: f64,
    /// Identified reads decided per second by the tally alone, draining a
    /// queue of them (start-up and rebuild included).
    pub tally_alone_per_s: f64,
    /// Results snapshots published per second while the tally drained it.
    pub tally_snapshots_per_s: f64,
    /// Filled by the identity benchmark part (new tags at fake anyMeta latency).
    pub identity_new_tags_per_s: Option<f64>,
    pub identity: Vec<IdentityRun>,
    pub rss: Vec<Rss>,
    pub cores: usize,
}

/// Identity throughput with new tags at one fake anyMeta latency.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityRun {
    pub latency_ms: u64,
    pub tags: u64,
    pub per_s: f64,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Server(#[from] crate::nats_server::NatsServerError),
    #[error(transparent)]
    Dev(#[from] crate::dev::DevError),
    #[error(transparent)]
    Bus(#[from] tagpoll_bus::BusError),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// A tap-sized payload: a realistic encoded `TagRead`.
pub fn sample_tap(i: u64) -> v1::TagRead {
    v1::TagRead {
        read_id: format!("0193a1b2-c3d4-7e5f-8a9b-{i:012x}"),
        device_id: "bench-device".into(),
        reader_id: format!("r{}", i % 4),
        tag_uid: (i as u32)
            .to_be_bytes()
            .iter()
            .chain(&[0x04, 0x11, 0x22])
            .copied()
            .collect(),
        technology: v1::TagTechnology::Iso14443a as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: i,
    }
}

const EVENT: &str = r#"
[event]
id = "bench"
identity = ["anonymous"]

[[polls]]
id = "bench"
question = "Benchmark"
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[readers]]
id = "r0"
poll = "bench"
answer = "a"

[[readers]]
id = "r1"
poll = "bench"
answer = "b"

[[readers]]
id = "r2"
poll = "bench"
answer = "a"

[[readers]]
id = "r3"
poll = "bench"
answer = "b"
"#;

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the whole benchmark.
pub async fn run(
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-bench-")
        .tempdir()
        .map_err(other)?;
    let server = NatsServer::start(ServerOptions {
        dir: dir.path().join("nats"),
        port: 0,
        sync_always: !opts.lazy_sync,
    })?;
    let url = server.url();
    let n: u64 = if opts.quick { 3_000 } else { 20_000 };
    let payload_bytes = sample_tap(1).encoded_len();

    progress("baseline: raw JetStream publish + consume");
    let baseline_per_s = baseline(&url, n, payload_bytes).await?;

    progress("starting services");
    let client = async_nats::connect(&url).await.map_err(other)?;
    let js = jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let event = crate::event::parse(EVENT).map_err(other)?;
    tagpoll_bus::store::load(&buckets.config, &event)
        .await
        .map_err(other)?;
    let env = vec![
        ("NATS_URL".to_string(), url.clone()),
        (
            "TAGPOLL_VOTER_KEY".to_string(),
            "bench-voter-key-0123456789abcdef".to_string(),
        ),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ];
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).map_err(other)?;
    let web_port = crate::nats_server::free_port().map_err(other)?;
    let mut services = Vec::new();
    for (name, args) in [
        ("tagpoll-identity", vec![]),
        ("tagpoll-tally", vec![]),
        (
            "tagpoll-web",
            vec!["--http".to_string(), format!("127.0.0.1:{web_port}")],
        ),
        (
            "tagpoll-reader",
            vec![
                "--device".into(),
                "bench-idle".into(),
                "--simulate".into(),
                "--sim-rate".into(),
                "0.001".into(),
                "--spool".into(),
                dir.path().join("spool").display().to_string(),
            ],
        ),
    ] {
        let mut p = ServiceProcess::new(name, &args, &env, &logs)?;
        p.start()?;
        services.push(p);
    }
    // Let them connect and settle before measuring idle memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = services.iter().map(|s| rss_mib(s.pid())).collect();

    progress("pipeline: taps through identity and tally");
    let (pipeline_per_s, snapshots_per_s) = pipeline(&client, &js, n).await?;
    let loaded: Vec<f64> = services.iter().map(|s| rss_mib(s.pid())).collect();
    // Every tap so far went through the whole pipeline: count its appends now.
    let votes = info(&js, names::STREAM_VOTES).await?;
    let mut appends = 0;
    for stream in [
        names::STREAM_READS,
        names::STREAM_IDENTIFIED,
        names::STREAM_VOTES,
    ] {
        appends += info(&js, stream).await?;
    }

    progress("tally alone: draining queued identified reads");
    let tally_index = services
        .iter()
        .position(|s| s.name == "tagpoll-tally")
        .expect("tally started");
    let (tally_alone_per_s, tally_snapshots_per_s) =
        tally_alone(&client, &js, &mut services[tally_index], n).await?;

    progress("latency at a fixed rate");
    let secs = if opts.quick { 5 } else { 15 };
    let (outcome, snapshot) = latency(&client, &js, opts.rate, secs, n).await?;

    let rss = services
        .iter()
        .zip(idle.iter().zip(&loaded))
        .map(|(s, (i, l))| Rss {
            service: s.name.clone(),
            idle_mib: *i,
            loaded_mib: *l,
        })
        .collect();
    progress("identity: new tags against a fake anyMeta");
    let identity_index = services
        .iter()
        .position(|s| s.name == "tagpoll-identity")
        .expect("identity started");
    services[identity_index].kill();
    let tags = if opts.quick { 1_000 } else { 10_000 };
    let mut identity = Vec::new();
    for (k, latency_ms) in [50u64, 100].into_iter().enumerate() {
        identity.push(
            identity_new_tags(
                &js, &buckets, &event, &env, &logs, latency_ms, tags, k as u64,
            )
            .await?,
        );
    }
    drop(services);
    drop(server);
    Ok(BenchReport {
        sync: if opts.lazy_sync {
            "lazy (server default)"
        } else {
            "always"
        },
        messages: n,
        payload_bytes,
        baseline_per_s,
        pipeline_per_s,
        ratio: if baseline_per_s > 0.0 {
            pipeline_per_s / baseline_per_s
        } else {
            0.0
        },
        rate_per_s: opts.rate,
        tap_to_outcome_p99_ms: outcome.p99_ms,
        tap_to_snapshot_p99_ms: snapshot.p99_ms,
        tap_to_outcome: outcome,
        tap_to_snapshot: snapshot,
        appends_per_vote: appends as f64 / votes.max(1) as f64,
        snapshots_per_s_under_burst: snapshots_per_s,
        tally_alone_per_s,
        tally_snapshots_per_s,
        identity_new_tags_per_s: identity
            .iter()
            .find(|i| i.latency_ms == 100)
            .map(|i| i.per_s),
        identity,
        rss,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

async fn info(js: &jetstream::Context, name: &str) -> Result<u64, BenchError> {
    Ok(js
        .get_stream(name)
        .await
        .map_err(other)?
        .info()
        .await
        .map_err(other)?
        .state
        .messages)
}

/// Raw JetStream: one pipelined publisher (≤ 256 acks in flight), one pull
/// consumer acking every message, each on its own connection.
async fn baseline(url: &str, n: u64, payload_bytes: usize) -> Result<f64, BenchError> {
    let producer = async_nats::connect(url).await.map_err(other)?;
    let reader = async_nats::connect(url).await.map_err(other)?;
    let js = jetstream::new(producer);
    let mut cfg = tagpoll_bus::topology::stream_configs(&Default::default()).remove(0);
    cfg.name = "BENCH_BASELINE".into();
    cfg.subjects = vec!["bench.baseline".into()];
    js.create_stream(cfg).await.map_err(other)?;
    let consumer = jetstream::new(reader)
        .get_stream("BENCH_BASELINE")
        .await
        .map_err(other)?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(other)?;
    let payload = bytes::Bytes::from(vec![0x5a; payload_bytes]);
    let start = Instant::now();
    let consume = tokio::spawn(async move {
        let mut messages = consumer.messages().await.map_err(other)?;
        let mut got = 0;
        while got < n {
            let m = messages
                .next()
                .await
                .ok_or_else(|| other("baseline consumer ended"))?
                .map_err(other)?;
            m.ack().await.map_err(other)?;
            got += 1;
        }
        Ok::<_, BenchError>(start.elapsed())
    });
    let mut acks = VecDeque::new();
    for i in 0..n {
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("base-{i}"));
        acks.push_back(
            js.send_publish("bench.baseline", msg)
                .await
                .map_err(other)?,
        );
        if acks.len() >= 256 {
            acks.pop_front().expect("non-empty").await.map_err(other)?;
        }
    }
    for a in acks {
        a.await.map_err(other)?;
    }
    let elapsed = consume.await.map_err(other)??;
    js.delete_stream("BENCH_BASELINE").await.map_err(other)?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Publishes taps pipelined, like many reader devices at once.
async fn publish_taps(
    js: &jetstream::Context,
    taps: impl Iterator<Item = v1::TagRead>,
) -> Result<(), BenchError> {
    let mut acks = VecDeque::new();
    for t in taps {
        let subject = subjects::read(&t.device_id, &t.reader_id);
        acks.push_back(
            tagpoll_bus::publish::send_for_read(js, subject, &t.read_id, t.encode_to_vec().into())
                .await?,
        );
        if acks.len() >= 256 {
            acks.pop_front().expect("non-empty").await.map_err(other)?;
        }
    }
    for a in acks {
        a.await.map_err(other)?;
    }
    Ok(())
}

/// Taps/s from publish to the last outcome in the vote stream, and the
/// results snapshots seen meanwhile (coalescing under a burst).
async fn pipeline(
    client: &async_nats::Client,
    js: &jetstream::Context,
    n: u64,
) -> Result<(f64, f64), BenchError> {
    let mut snaps = client
        .subscribe(subjects::RESULTS_ALL)
        .await
        .map_err(other)?;
    let snap_count = Arc::new(Mutex::new(0u64));
    let counter = {
        let snap_count = snap_count.clone();
        tokio::spawn(async move {
            while snaps.next().await.is_some() {
                *snap_count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            }
        })
    };
    let before = info(js, names::STREAM_VOTES).await?;
    let start = Instant::now();
    publish_taps(js, (0..n).map(sample_tap)).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if info(js, names::STREAM_VOTES).await? >= before + n {
            break;
        }
        if Instant::now() > deadline {
            return Err(other("pipeline did not finish within 5 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    counter.abort();
    let snaps = *snap_count.lock().unwrap_or_else(|e| e.into_inner());
    Ok((n as f64 / elapsed, snaps as f64 / elapsed))
}

/// Stops the tally, queues `n` identified reads, starts it again and times
/// until every one has its outcome.
async fn tally_alone(
    client: &async_nats::Client,
    js: &jetstream::Context,
    tally: &mut ServiceProcess,
    n: u64,
) -> Result<(f64, f64), BenchError> {
    tally.kill();
    let mut acks = VecDeque::new();
    for i in 0..n {
        let read = v1::IdentifiedRead {
            read_id: format!("tally-alone-{i}"),
            device_id: "bench-device".into(),
            reader_id: format!("r{}", i % 4),
            read_at: Some(tagpoll_proto::now()),
            device_seq: i,
            identity: Some(v1::identified_read::Identity::Voter(v1::Voter {
                voter_id: format!("anon:tally-alone-{i}"),
                backend: "anonymous".into(),
                anonymous: true,
                ..Default::default()
            })),
            identified_at: Some(tagpoll_proto::now()),
            tapped_at: Some(tagpoll_proto::now()),
            tap_moment: v1::TapMoment::Stored as i32,
            stored_at: Some(tagpoll_proto::now()),
        };
        let subject = subjects::identified(&read.device_id, &read.reader_id);
        acks.push_back(
            tagpoll_bus::publish::send_for_read(
                js,
                subject,
                &read.read_id,
                read.encode_to_vec().into(),
            )
            .await?,
        );
        if acks.len() >= 256 {
            acks.pop_front().expect("non-empty").await.map_err(other)?;
        }
    }
    for a in acks {
        a.await.map_err(other)?;
    }
    let before = info(js, names::STREAM_VOTES).await?;
    let mut snaps = client
        .subscribe(subjects::RESULTS_ALL)
        .await
        .map_err(other)?;
    let snap_count = Arc::new(Mutex::new(0u64));
    let counter = {
        let snap_count = snap_count.clone();
        tokio::spawn(async move {
            while snaps.next().await.is_some() {
                *snap_count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            }
        })
    };
    let start = Instant::now();
    tally.start()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while info(js, names::STREAM_VOTES).await? < before + n {
        if Instant::now() > deadline {
            return Err(other("the tally did not drain its queue within 5 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    counter.abort();
    let snaps = *snap_count.lock().unwrap_or_else(|e| e.into_inner());
    Ok((n as f64 / elapsed, snaps as f64 / elapsed))
}

/// Identity alone against a fake anyMeta answering after `latency_ms`:
/// `tags` taps of tags it has never seen, queued first, then timed from the
/// identity service's start until every one is identified.
#[allow(clippy::too_many_arguments)]
async fn identity_new_tags(
    js: &jetstream::Context,
    buckets: &tagpoll_bus::topology::Buckets,
    event: &crate::event::Event,
    env: &[(String, String)],
    logs: &std::path::Path,
    latency_ms: u64,
    tags: u64,
    round: u64,
) -> Result<IdentityRun, BenchError> {
    let fake = tagpoll_identity::fake_anymeta::FakeAnyMeta::start().await;
    fake.set_latency(Duration::from_millis(latency_ms));
    let mut event = event.clone();
    event.settings.identity_chain = vec!["anymeta".into(), "anonymous".into()];
    tagpoll_bus::store::load(&buckets.config, &event)
        .await
        .map_err(other)?;
    for i in 0..tags {
        let mut t = sample_tap(10_000_000 * (round + 1) + i);
        t.read_id = format!("identity-{latency_ms}-{i}");
        // A fresh tag every time: nothing cached, every lookup reaches anyMeta.
        t.tag_uid = [0x08, round as u8]
            .iter()
            .copied()
            .chain((i as u32).to_be_bytes())
            .collect();
        let subject = subjects::read(&t.device_id, &t.reader_id);
        tagpoll_bus::publish::publish_for_read(js, subject, &t.read_id, t.encode_to_vec().into())
            .await?;
    }
    let before = info(js, names::STREAM_IDENTIFIED).await?;
    let mut env = env.to_vec();
    env.extend(fake.service_env());
    let mut p = ServiceProcess::new("tagpoll-identity", &[], &env, logs)?;
    let start = Instant::now();
    p.start()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while info(js, names::STREAM_IDENTIFIED).await? < before + tags {
        if Instant::now() > deadline {
            return Err(other(
                "identity did not resolve the new tags within 5 minutes",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    p.kill();
    Ok(IdentityRun {
        latency_ms,
        tags,
        per_s: tags as f64 / elapsed,
    })
}

/// Taps at a fixed rate, each by a new voter (so each one raises the total),
/// timing the outcome and the first snapshot whose total includes it.
async fn latency(
    client: &async_nats::Client,
    js: &jetstream::Context,
    rate: u32,
    secs: u64,
    offset: u64,
) -> Result<(Percentiles, Percentiles), BenchError> {
    let count = u64::from(rate) * secs;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut outcomes = client
        .subscribe(subjects::OUTCOMES_ALL)
        .await
        .map_err(other)?;
    let mut snaps = client
        .subscribe(subjects::results("bench"))
        .await
        .map_err(other)?;
    client.flush().await.map_err(other)?;
    let base_total = {
        let kv = js.get_key_value(names::KV_RESULTS).await.map_err(other)?;
        kv.get(names::results_key("bench"))
            .await
            .map_err(other)?
            .and_then(|b| v1::PollResults::decode(b.as_ref()).ok())
            .map_or(0, |r| r.total)
    };
    let outcome_hist = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut h =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            while h.len() < count {
                let Some(m) = outcomes.next().await else {
                    break;
                };
                let now = Instant::now();
                let Ok(o) = v1::VoteOutcome::decode(m.payload.as_ref()) else {
                    continue;
                };
                if let Some(t) = sent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&o.read_id)
                {
                    let _ = h.record((now - *t).as_micros() as u64);
                }
            }
            h
        })
    };
    let order: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let snapshot_hist = {
        let order = order.clone();
        tokio::spawn(async move {
            let mut h =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut covered = 0usize;
            while (covered as u64) < count {
                let Some(m) = snaps.next().await else { break };
                let now = Instant::now();
                let Ok(r) = v1::PollResults::decode(m.payload.as_ref()) else {
                    continue;
                };
                let upto = r.total.saturating_sub(base_total) as usize;
                let order = order.lock().unwrap_or_else(|e| e.into_inner());
                while covered < upto.min(order.len()) {
                    let _ = h.record((now - order[covered]).as_micros() as u64);
                    covered += 1;
                }
            }
            h
        })
    };
    let start = tokio::time::Instant::now();
    let mut acks = VecDeque::new();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / f64::from(rate))).await;
        let mut t = sample_tap(offset + 1_000_000 + i);
        t.read_id = format!("lat-{i}");
        t.reader_id = "r0".into();
        let now = Instant::now();
        sent.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t.read_id.clone(), now);
        order.lock().unwrap_or_else(|e| e.into_inner()).push(now);
        let subject = subjects::read(&t.device_id, &t.reader_id);
        acks.push_back(
            tagpoll_bus::publish::send_for_read(js, subject, &t.read_id, t.encode_to_vec().into())
                .await?,
        );
        while acks.len() > 64 {
            acks.pop_front().expect("non-empty").await.map_err(other)?;
        }
    }
    for a in acks {
        a.await.map_err(other)?;
    }
    let wait = Duration::from_secs(60);
    let outcome = tokio::time::timeout(wait, outcome_hist)
        .await
        .map_err(|_| other("outcomes missing"))?
        .map_err(other)?;
    let snapshot = tokio::time::timeout(wait, snapshot_hist)
        .await
        .map_err(|_| other("snapshots missing"))?
        .map_err(other)?;
    Ok((Percentiles::of(&outcome), Percentiles::of(&snapshot)))
}

/// The report as a table.
pub fn render(r: &BenchReport) -> String {
    let pct = |p: &Percentiles| {
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms  ({} samples)",
            p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.samples
        )
    };
    let mut rows: Vec<(String, String)> = vec![
        ("server fsync".into(), r.sync.to_string()),
        ("cores".into(), r.cores.to_string()),
        ("messages per throughput run".into(), r.messages.to_string()),
        (
            "payload (encoded TagRead)".into(),
            format!("{} bytes", r.payload_bytes),
        ),
        (
            "baseline: raw JetStream publish+consume".into(),
            format!("{:.0} msg/s", r.baseline_per_s),
        ),
        (
            "pipeline: tap -> vote stream".into(),
            format!("{:.0} taps/s", r.pipeline_per_s),
        ),
        (
            "ratio pipeline / baseline".into(),
            format!("{:.0} %", r.ratio * 100.0),
        ),
        (
            "durable appends per vote".into(),
            format!("{:.1}", r.appends_per_vote),
        ),
        (
            "results snapshots under the burst".into(),
            format!("{:.0} /s", r.snapshots_per_s_under_burst),
        ),
        (
            "tally alone: queued identified reads".into(),
            format!("{:.0} votes/s", r.tally_alone_per_s),
        ),
        (
            "results snapshots while the tally drains".into(),
            format!("{:.0} /s", r.tally_snapshots_per_s),
        ),
        (
            format!("tap -> outcome at {}/s", r.rate_per_s),
            pct(&r.tap_to_outcome),
        ),
        (
            format!("tap -> results snapshot at {}/s", r.rate_per_s),
            pct(&r.tap_to_snapshot),
        ),
    ];
    rows.extend(r.identity.iter().map(|i| {
        (
            format!("identity, new tags, anyMeta {} ms", i.latency_ms),
            format!("{:.0} tags/s ({} tags)", i.per_s, i.tags),
        )
    }));
    rows.extend(r.rss.iter().map(|s| {
        (
            format!("RSS {}", s.service),
            format!("idle {:.1} MiB, loaded {:.1} MiB", s.idle_mib, s.loaded_mib),
        )
    }));
    rows.iter().map(|(k, v)| format!("{k:<44} {v}\n")).collect()
}
