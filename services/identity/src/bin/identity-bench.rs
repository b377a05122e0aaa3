//! `identity-bench`: how many reads per second one identity instance resolves.
//!
//! Self-contained and loopback only: starts its own `nats-server` (by default as `tagpoll dev`
//! and the tests do, with `sync_interval: always`) and the fake anyMeta with a fixed latency,
//! then for each latency (a fresh server and fake each time):
//!
//! 1. **new tags**: `--tags` reads of distinct tags (each linked to a person in the fake) are
//!    stored in `TAGPOLL_READS`; the identity pipeline is started in-process and timed until
//!    every read is in `TAGPOLL_IDENTIFIED`. Every tag needs one anyMeta call.
//! 2. **cached tags** (first latency only: cache hits never call anyMeta): the pipeline is
//!    stopped, the same number of reads of the same tags is stored, the pipeline is started
//!    again and timed: every lookup is a hit in the KV cache.
//!
//! Run with `cargo run --release -p tagpoll-identity --bin identity-bench` (about 75 s on a
//! 2-core machine with an SSD; `--sync-always false` takes seconds). Exits non-zero if a phase
//! does not finish within its time limit or a tag was looked up more than once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use tagpoll_bus::nats_server::{NatsServer, ServerOptions};
use tagpoll_identity::anymeta::AnyMetaConfig;
use tagpoll_identity::backend::VoterKey;
use tagpoll_identity::counters::Counters;
use tagpoll_identity::fake_anymeta::FakeAnyMeta;
use tagpoll_identity::service::{self, Identity};
use tagpoll_identity::settings::Settings;
use tagpoll_proto::{names, subjects, v1};

/// Measures resolved reads per second against a fake anyMeta with fixed latency.
#[derive(Parser)]
struct Args {
    /// Distinct tags (and reads per phase).
    #[arg(long, default_value_t = 10_000)]
    tags: u32,
    /// Fake anyMeta latencies to measure, in ms.
    #[arg(long, value_delimiter = ',', default_values_t = [50u64, 100])]
    latency_ms: Vec<u64>,
    /// Reads resolved at once (TAGPOLL_IDENTITY_CONCURRENCY).
    #[arg(long, default_value_t = 256)]
    concurrency: u32,
    /// Run nats-server with `sync_interval: always` (one fsync per stored message, as
    /// `tagpoll dev` and the tests do); `false` leaves syncing to the server's default.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sync_always: bool,
    /// Time limit of one phase, seconds.
    #[arg(long, default_value_t = 40)]
    phase_limit_secs: u64,
}

struct Phase {
    reads: u64,
    elapsed: Duration,
    /// How fast the same server stored the phase's reads just before (pipelined publishes):
    /// the store's write rate at that moment, for reference.
    store_rate: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init_with_default("warn");
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, &latency) in args.latency_ms.iter().enumerate() {
        let phases = runtime.block_on(scenario(&args, Duration::from_millis(latency), i == 0))?;
        for (what, phase) in phases {
            rows.push((latency, what, phase));
        }
    }
    println!();
    println!(
        "identity-bench: {} distinct tags, concurrency {}, one instance, {} cores, nats-server sync_interval {}, total {:.1} s",
        args.tags,
        args.concurrency,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if args.sync_always {
            "always"
        } else {
            "default"
        },
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| fake anyMeta latency | tags | reads | time | resolved reads/s | store writes/s just before |"
    );
    println!("|---|---|---|---|---|---|");
    for (latency, what, phase) in rows {
        println!(
            "| {latency} ms | {what} | {} | {:.2} s | **{:.0}** | {:.0} |",
            phase.reads,
            phase.elapsed.as_secs_f64(),
            phase.rate(),
            phase.store_rate,
        );
    }
    Ok(())
}

fn uid(i: u32) -> [u8; 7] {
    let b = i.to_be_bytes();
    [0x04, 0xBE, 0x4C, b[0], b[1], b[2], b[3]]
}

async fn scenario(
    args: &Args,
    latency: Duration,
    with_cached: bool,
) -> anyhow::Result<Vec<(&'static str, Phase)>> {
    let dir = tempfile::Builder::new()
        .prefix("identity-bench-")
        .tempdir()?;
    let server = NatsServer::start(ServerOptions {
        dir: dir.path().join("nats"),
        port: 0,
        sync_always: args.sync_always,
    })?;
    let fake = FakeAnyMeta::start().await;
    fake.set_latency(latency);
    for i in 0..args.tags {
        fake.add_person(&hex::encode_upper(uid(i)), i + 1, &format!("Person {i}"));
    }
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let event = v1::EventSettings {
        event_id: "bench".into(),
        identity_chain: vec!["anymeta".into()],
        ..Default::default()
    };
    buckets
        .config
        .put(
            tagpoll_proto::names::config_keys::EVENT,
            event.encode_to_vec().into(),
        )
        .await?;
    let config = tagpoll_bus::config::follow(&js, buckets.config.clone()).await?;
    let settings = Settings {
        concurrency: args.concurrency,
        ..Settings::default()
    };
    let voter_key = VoterKey::new(*b"identity-bench-voter-key").map_err(anyhow::Error::msg)?;
    let counters = Arc::new(Counters::default());
    let stats = Arc::new(tagpoll_bus::heartbeat::Stats::default());
    let anymeta_config: AnyMetaConfig = fake.config();
    let backends = settings
        .backends(
            &js,
            voter_key,
            Some(anymeta_config),
            None,
            counters.clone(),
            stats.clone(),
        )
        .await?;
    let limit = Duration::from_secs(args.phase_limit_secs);
    let n = u64::from(args.tags);

    let mut phases = Vec::new();
    for phase in 0..(1 + u32::from(with_cached)) {
        let p0 = Instant::now();
        publish_reads(&js, args.tags, phase).await?;
        let publish = p0.elapsed();
        eprintln!(
            "latency {latency:?}: stored {n} reads in {:.2} s = {:.0}/s (the store's own write rate, for reference)",
            publish.as_secs_f64(),
            n as f64 / publish.as_secs_f64()
        );
        let identity = Identity {
            js: js.clone(),
            config: config.clone(),
            backends: backends.clone(),
            stats: stats.clone(),
            counters: counters.clone(),
            options: settings.service_options(),
        };
        let t0 = Instant::now();
        let task = tokio::spawn(service::run(identity, std::future::pending()));
        let want = n * u64::from(phase + 1);
        wait_identified(&js, want, limit)
            .await
            .with_context(|| format!("phase {phase} at {latency:?}; {}", counters.summary()))?;
        let elapsed = t0.elapsed();
        // Let the last acks land before stopping, so nothing is re-delivered later.
        wait_acked(&js, limit).await?;
        task.abort();
        let _ = task.await;
        let what = if phase == 0 { "new" } else { "cached" };
        phases.push((
            what,
            Phase {
                reads: n,
                elapsed,
                store_rate: n as f64 / publish.as_secs_f64(),
            },
        ));
        eprintln!(
            "latency {:?} {what} tags: {n} reads in {:.2} s = {:.0}/s ({})",
            latency,
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            counters.summary()
        );
    }
    let answered = fake.total_answered() as u64;
    if answered != n {
        bail!("anyMeta answered {answered} lookups for {n} tags (want exactly one per tag)");
    }
    drop(server);
    Ok(phases)
}

/// Stores one read per tag in TAGPOLL_READS (pipelined, waiting for every ack).
async fn publish_reads(
    js: &async_nats::jetstream::Context,
    tags: u32,
    phase: u32,
) -> anyhow::Result<()> {
    let mut acks = std::collections::VecDeque::new();
    for i in 0..tags {
        let read_id = format!("bench-{phase}-{i}");
        let reader = format!("r{}", i % 8);
        let read = v1::TagRead {
            read_id: read_id.clone(),
            device_id: "bench".into(),
            reader_id: reader.clone(),
            tag_uid: uid(i).to_vec(),
            technology: v1::TagTechnology::Simulated as i32,
            read_at: Some(tagpoll_proto::now()),
            device_seq: u64::from(i),
        };
        let ack = tagpoll_bus::publish::send_for_read(
            js,
            subjects::read("bench", &reader),
            &read_id,
            read.encode_to_vec().into(),
        )
        .await?;
        acks.push_back(ack);
        if acks.len() >= 512 {
            acks.pop_front().expect("non-empty").await?;
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

async fn wait_identified(
    js: &async_nats::jetstream::Context,
    want: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let mut stream = js.get_stream(names::STREAM_IDENTIFIED).await?;
    let deadline = Instant::now() + limit;
    loop {
        let have = stream.info().await?.state.messages;
        if have >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {have} of {want} reads identified within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_acked(js: &async_nats::jetstream::Context, limit: Duration) -> anyhow::Result<()> {
    let stream = js.get_stream(names::STREAM_READS).await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(names::CONSUMER_IDENTITY)
        .await
        .map_err(|e| anyhow::anyhow!("identity consumer: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        let info = consumer.info().await?;
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} reads still unacknowledged", info.num_ack_pending);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
