//! Fan-out benchmark of the live results endpoint (`/api/events`).
//!
//! Starts its own nats-server (sync_interval: always, as in production) and
//! the release builds of identity, tally and web, all on loopback, connects
//! N Server-Sent Events clients (default 1,000), then measures:
//!
//! 1. **fixed rates**: results updates at 20, 100, 200 and 500 per second
//!    (20/s is a busy event: the tally sends at most 10 per poll per
//!    second); the events per second fanned out in total and the share of
//!    updates each client saw (100% = every update reached every client).
//! 2. **saturated**: updates as fast as KV takes them; a client that falls
//!    behind gets the latest state, not a backlog, so the share drops while
//!    the fan-out rate shows the ceiling.
//! 3. **taps**: real taps through identity and tally; the time from the
//!    tap's publish to the updated count at each client (p50/p99).
//!
//! Updates in 1 and 2 are written straight into KV `tagpoll_results` (as
//! the tally would) to load the web service alone; 3 is the whole path.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p tagpoll-web --bench web_fanout -- --clients 1000
//! ```
//! Options: `--clients N`, `--rates 20,100,200,500`, `--steady-secs N`,
//! `--saturate-secs N`, `--taps N`, `--tap-gap-ms N`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use tagpoll::dev::ServiceProcess;
use tagpoll::nats_server::{NatsServer, ServerOptions};
use tagpoll_proto::{names, subjects, v1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct Opts {
    clients: usize,
    rates: Vec<u64>,
    steady_secs: u64,
    saturate_secs: u64,
    taps: u64,
    tap_gap_ms: u64,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        clients: 1000,
        rates: vec![20, 100, 200, 500],
        steady_secs: 5,
        saturate_secs: 10,
        taps: 60,
        tap_gap_ms: 150,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || -> anyhow::Result<u64> {
            args.get(i + 1)
                .with_context(|| format!("{} needs a value", args[i]))?
                .parse()
                .with_context(|| format!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--clients" => o.clients = value()? as usize,
            "--rates" => {
                o.rates = args
                    .get(i + 1)
                    .context("--rates needs a list like 20,100")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--rates needs numbers")?
            }
            "--steady-secs" => o.steady_secs = value()?,
            "--saturate-secs" => o.saturate_secs = value()?,
            "--taps" => o.taps = value()?,
            "--tap-gap-ms" => o.tap_gap_ms = value()?,
            // `cargo bench` passes --bench; anything else is a mistake.
            "--bench" => {
                i += 1;
                continue;
            }
            other => bail!("unknown option {other}"),
        }
        i += 2;
    }
    Ok(o)
}

/// Counters every client adds to.
#[derive(Default)]
struct Shared {
    /// Clients that received their initial events.
    ready: AtomicUsize,
    /// `results` events of poll "fanout" received, over all clients.
    fanout_events: AtomicU64,
    /// Every `results` event received, over all clients.
    events: AtomicU64,
}

/// Decodes `Transfer-Encoding: chunked` as bytes arrive.
#[derive(Default)]
struct Chunked {
    raw: Vec<u8>,
    /// Bytes still to take from the current chunk, its CRLF included.
    left: Option<usize>,
}

impl Chunked {
    fn feed(&mut self, data: &[u8], body: &mut Vec<u8>) {
        self.raw.extend_from_slice(data);
        loop {
            match self.left {
                None => {
                    let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..end]).to_string();
                    let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                    self.raw.drain(..end + 2);
                    self.left = Some(size + 2);
                }
                Some(n) => {
                    if self.raw.len() < n {
                        return;
                    }
                    body.extend_from_slice(&self.raw[..n - 2]);
                    self.raw.drain(..n);
                    self.left = None;
                }
            }
        }
    }
}

fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(key)? + key.len();
    let rest = &json[start..];
    let end = rest.find([',', '"', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// One SSE client; returns the first time it saw each total of poll "bench".
async fn client(
    addr: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let mut s = TcpStream::connect(&addr).await?;
    s.write_all(
        format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut chunked = Chunked::default();
    let mut body = Vec::new();
    let mut in_body = false;
    let mut ready = false;
    let mut bench_total = 0u64;
    let mut seen = Vec::new();
    loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => r?,
            _ = stop.changed() => return Ok(seen),
        };
        if n == 0 {
            bail!("server closed the stream");
        }
        let now = Instant::now();
        if in_body {
            chunked.feed(&buf[..n], &mut body);
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let h = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                if !h.starts_with("http/1.1 200") || !h.contains("chunked") {
                    bail!("unexpected response head: {h}");
                }
                in_body = true;
                let rest = head.split_off(end + 4);
                chunked.feed(&rest, &mut body);
            }
        }
        while let Some(end) = body.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8_lossy(&body[..end]).to_string();
            body.drain(..end + 2);
            if !block.starts_with("event: results") {
                continue;
            }
            shared.events.fetch_add(1, Ordering::Relaxed);
            match field(&block, "\"poll\":\"") {
                // Total 0 is the tally's own snapshot of the idle poll.
                Some("fanout") if field(&block, "\"total\":") != Some("0") => {
                    shared.fanout_events.fetch_add(1, Ordering::Relaxed);
                }
                Some("bench") => {
                    let total: u64 = field(&block, "\"total\":")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    if !ready {
                        ready = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    if total > bench_total {
                        bench_total = total;
                        seen.push((total, now));
                    }
                }
                _ => {}
            }
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((q * sorted.len() as f64) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn poll(id: &str, position: u32) -> v1::PollDefinition {
    v1::PollDefinition {
        poll_id: id.into(),
        question: format!("Benchmark poll {id}?"),
        answers: ["a", "b"]
            .iter()
            .map(|a| v1::Answer {
                id: (*a).into(),
                label: a.to_uppercase(),
            })
            .collect(),
        rules: Some(v1::PollRules {
            mode: v1::VoteMode::FirstStands as i32,
            max_choices: 1,
            allow_anonymous: true,
            ..Default::default()
        }),
        state: v1::PollState::Open as i32,
        position,
        ..Default::default()
    }
}

/// Waits until `counter` stops moving for `quiet`; returns when it last moved.
async fn settle(counter: &AtomicU64, quiet: Duration) -> Instant {
    let mut last = counter.load(Ordering::Relaxed);
    let mut moved = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counter.load(Ordering::Relaxed);
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() >= quiet {
            return moved;
        }
    }
}

/// A results snapshot of poll "fanout", written where the tally writes.
async fn put_update(kv: &async_nats::jetstream::kv::Store, n: u64) -> anyhow::Result<()> {
    let r = v1::PollResults {
        poll_id: "fanout".into(),
        question: "Benchmark poll fanout?".into(),
        state: v1::PollState::Open as i32,
        answers: vec![
            v1::AnswerCount {
                answer_id: "a".into(),
                label: "A".into(),
                votes: n,
            },
            v1::AnswerCount {
                answer_id: "b".into(),
                label: "B".into(),
                votes: 0,
            },
        ],
        total: n,
        ..Default::default()
    };
    kv.put(names::results_key("fanout"), r.encode_to_vec().into())
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = opts()?;
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-bench-")
        .tempdir()?;
    let server = NatsServer::start(ServerOptions {
        dir: dir.path().join("nats"),
        port: 0,
        sync_always: true,
    })?;
    let nats = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(nats);
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    tagpoll_bus::store::load(
        &buckets.config,
        &tagpoll_bus::store::Event {
            settings: v1::EventSettings {
                event_id: "bench".into(),
                identity_chain: vec!["anonymous".into()],
                ..Default::default()
            },
            polls: vec![poll("bench", 0), poll("fanout", 1)],
            readers: vec![v1::ReaderMapping {
                reader_id: "r-a".into(),
                poll_id: "bench".into(),
                answer_id: "a".into(),
                ..Default::default()
            }],
            tags: vec![],
        },
    )
    .await?;

    let port = tagpoll::nats_server::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        ("NATS_URL", server.url()),
        (
            "TAGPOLL_VOTER_KEY",
            "bench-voter-key-0123456789abcdef".into(),
        ),
        ("TAGPOLL_ADMIN_TOKEN", "bench".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut services = Vec::new();
    for (name, args) in [
        ("tagpoll-identity", vec![]),
        ("tagpoll-tally", vec![]),
        ("tagpoll-web", vec!["--http".to_string(), addr.clone()]),
    ] {
        let mut p = ServiceProcess::new(name, &args, &env, &logs).context(
            "the benchmark runs the release binaries: `cargo build --release --workspace --bins` first",
        )?;
        p.start()?;
        services.push(p);
    }
    let start = Instant::now();
    while TcpStream::connect(&addr).await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("tagpoll-web did not start; logs in {}", logs.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Connect the clients, a hundred at a time.
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(o.clients);
    let t_connect = Instant::now();
    for i in 0..o.clients {
        handles.push(tokio::spawn(client(
            addr.clone(),
            shared.clone(),
            stop_rx.clone(),
        )));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while shared.ready.load(Ordering::Relaxed) < o.clients {
        if t_connect.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {} clients got their initial events",
                shared.ready.load(Ordering::Relaxed),
                o.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = t_connect.elapsed();
    println!(
        "{} SSE clients connected and caught up in {}",
        o.clients,
        ms(connect_time)
    );

    // 1 and 2: results updates written straight into KV.
    let results_kv = buckets.results;
    let mut update_no = 0u64;
    let mut phases = Vec::new();
    let fixed = o
        .rates
        .iter()
        .map(|r| (format!("{r}/s"), Some(*r), o.steady_secs));
    for (name, rate, secs) in
        fixed.chain([("as fast as KV takes".to_string(), None, o.saturate_secs)])
    {
        let before = shared.fanout_events.load(Ordering::Relaxed);
        let first = update_no + 1;
        let t0 = Instant::now();
        let mut tick = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r as f64)));
        while t0.elapsed() < Duration::from_secs(secs) {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            update_no += 1;
            put_update(&results_kv, update_no).await?;
        }
        let published = update_no - first + 1;
        let last_delivery = settle(&shared.fanout_events, Duration::from_millis(1000)).await;
        let delivered = shared.fanout_events.load(Ordering::Relaxed) - before;
        let took = last_delivery.duration_since(t0);
        let line = format!(
            "| {name} | {published} in {secs} s ({:.0}/s) | {delivered} | {:.0} events/s | {:.1}% |",
            published as f64 / secs as f64,
            delivered as f64 / took.as_secs_f64(),
            100.0 * delivered as f64 / (published as f64 * o.clients as f64),
        );
        println!("{line}");
        phases.push(line);
    }

    // 3: taps through identity and tally to every client.
    let mut published = Vec::new();
    for i in 0..o.taps {
        let read_id = format!("bench-{i}");
        let read = v1::TagRead {
            read_id: read_id.clone(),
            device_id: "bench".into(),
            reader_id: "r-a".into(),
            tag_uid: (i as u32 + 1).to_be_bytes().to_vec(),
            technology: v1::TagTechnology::Simulated as i32,
            read_at: Some(tagpoll_proto::now()),
            device_seq: i,
        };
        let t = Instant::now();
        tagpoll_bus::publish::publish_for_read(
            &js,
            subjects::read("bench", "r-a"),
            &read_id,
            read.encode_to_vec().into(),
        )
        .await?;
        published.push(t);
        tokio::time::sleep(Duration::from_millis(o.tap_gap_ms)).await;
    }
    settle(&shared.events, Duration::from_millis(1000)).await;
    let _ = stop_tx.send(true);
    let mut samples = Vec::new();
    let mut fastest = vec![Duration::MAX; o.taps as usize];
    let mut missing = 0u64;
    for h in handles {
        let seen = h.await??;
        let mut got = vec![false; o.taps as usize];
        for (total, at) in seen {
            // Total k means tap k-1 was counted (all earlier ones too; a
            // coalesced snapshot covers several taps at once).
            let k = total as usize;
            for (tap, done) in got.iter_mut().enumerate().take(k) {
                if !*done {
                    *done = true;
                    let d = at.saturating_duration_since(published[tap]);
                    samples.push(d);
                    fastest[tap] = fastest[tap].min(d);
                }
            }
        }
        missing += got.iter().filter(|g| !**g).count() as u64;
    }
    samples.sort();
    fastest.retain(|d| *d != Duration::MAX);
    fastest.sort();
    println!();
    println!("## Results");
    println!();
    println!(
        "clients: {}, connect + catch-up: {}",
        o.clients,
        ms(connect_time)
    );
    println!();
    println!(
        "| update rate | updates published | events delivered | fan-out rate | share seen per client |"
    );
    println!("|---|---|---|---|---|");
    for p in &phases {
        println!("{p}");
    }
    println!();
    println!(
        "tap → event at a client ({} taps × {} clients = {} samples, {} missing): p50 {}, p99 {}, max {}; first client to see it: p50 {}, p99 {}",
        o.taps,
        o.clients,
        samples.len(),
        missing,
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
        ms(percentile(&fastest, 0.50)),
        ms(percentile(&fastest, 0.99)),
    );
    drop(services);
    drop(server);
    Ok(())
}
