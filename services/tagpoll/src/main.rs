//! `tagpoll`: the command-line tool. Argument parsing and wiring only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use prost::Message;
use tagpoll::{dev, event, show, store};
use tagpoll_proto::{names, subjects, v1};

#[derive(Parser)]
#[command(
    version,
    about = "tagpoll: RFID polls at events — run, load, tap, follow."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole system on this machine (private nats-server unless NATS_URL is set).
    Dev {
        /// Event file to load.
        #[arg(long, default_value = "examples/event.toml")]
        event: PathBuf,
        /// Address of the web service.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Do not start simulated readers.
        #[arg(long)]
        no_sim: bool,
        /// Simulated taps per second (all readers together).
        #[arg(long, default_value_t = 2.0)]
        sim_rate: f64,
        /// Folder for the server's store, logs and secrets.
        #[arg(long, default_value = ".tagpoll-dev")]
        data: PathBuf,
    },
    /// Validate an event file; errors name line and column.
    Check { file: PathBuf },
    /// Validate an event file and store it in NATS for the services.
    Load { file: PathBuf },
    /// Publish one tap as a reader would, and print its outcome.
    Tap {
        #[arg(long)]
        reader: String,
        /// Tag UID in hex, e.g. 04A1B2C3.
        #[arg(long)]
        tag: String,
        #[arg(long, default_value = "cli")]
        device: String,
        /// Do not wait for the outcome.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the outcome (services just started may need longer).
        #[arg(long, default_value_t = 10, conflicts_with = "no_wait",
              value_parser = clap::value_parser!(u64).range(1..))]
        wait: u64,
    },
    /// Print outcomes as they happen, one line each.
    Tail {
        /// Start from the beginning of the vote stream.
        #[arg(long)]
        all: bool,
    },
    /// Print a poll's results as a table.
    Results {
        poll: String,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Recount a poll from the vote stream and compare with the live counts.
    Replay { poll: String },
    /// Write a poll's results and vote log (pseudonymous voter ids by default).
    Export {
        poll: String,
        #[arg(long, value_parser = ["csv", "json"], default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Keep the voter ids as stored (file:alice, anymeta:123) instead of voter-1, voter-2, …
        #[arg(long)]
        voter_ids: bool,
    },
    /// Measure the pipeline against the bus's own limit on this machine.
    Bench {
        /// Small counts; finishes within a minute on 2 cores.
        #[arg(long)]
        quick: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Run the server with its lazy default fsync instead of `sync_interval: always`.
        #[arg(long)]
        lazy_sync: bool,
        /// Taps per second for the latency run.
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
    /// Inject faults while simulated devices tap, then check nothing was lost or doubled.
    Chaos {
        /// Taps in total, spread over the devices.
        #[arg(long, default_value_t = 20_000)]
        taps: u64,
        /// Simulated reader devices.
        #[arg(long, default_value_t = 4)]
        devices: u32,
        /// Taps per second, all devices together.
        #[arg(long, default_value_t = 600.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Nodes: 1 for one nats-server, 3 for a 3-node JetStream cluster (3 replicas).
        #[arg(long, default_value_t = 1)]
        cluster: usize,
        /// Print one JSON object (taps, expected_votes, counted_votes, lost, doubled, faults, …).
        #[arg(long)]
        json: bool,
    },
    /// Forget a person: their tags, cached identity, and their id in exports.
    Forget {
        /// file:ID, anymeta:ID, or a bare ID (both).
        person: String,
    },
    /// Show services, devices, readers and streams at a glance.
    Status {
        /// One JSON object (a contract: "services" and "devices" lists).
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Open or close a poll.
    Poll {
        #[command(subcommand)]
        action: PollAction,
    },
    /// Change reader mappings.
    Reader {
        #[command(subcommand)]
        action: ReaderAction,
    },
}

#[derive(Subcommand)]
enum PollAction {
    Open { poll: String },
    Close { poll: String },
}

#[derive(Subcommand)]
enum ReaderAction {
    /// Point READER at ANSWER of POLL.
    Map {
        reader: String,
        poll: String,
        answer: String,
    },
}

fn read_event(file: &PathBuf) -> anyhow::Result<event::Event> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    event::parse(&text).map_err(|errs| {
        let lines: Vec<String> = errs
            .0
            .iter()
            .map(|d| format!("{}:{d}", file.display()))
            .collect();
        anyhow::anyhow!(
            "{} has {} problem(s):\n{}",
            file.display(),
            lines.len(),
            lines.join("\n")
        )
    })
}

struct Bus {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    buckets: tagpoll_bus::topology::Buckets,
}

async fn bus() -> anyhow::Result<Bus> {
    let opts = tagpoll_bus::BusOptions::from_env("tagpoll")?;
    let client = tokio::time::timeout(Duration::from_secs(10), tagpoll_bus::connect(&opts, false))
        .await
        .with_context(|| format!("connecting to {} timed out", opts.url))??;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    Ok(Bus {
        client,
        js,
        buckets,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init_with_default("warn");
    match Cli::parse().command {
        Cmd::Check { file } => {
            let e = read_event(&file)?;
            println!(
                "{}: ok ({} polls, {} readers, {} tags)",
                file.display(),
                e.polls.len(),
                e.readers.len(),
                e.tags.len()
            );
        }
        Cmd::Load { file } => {
            let e = read_event(&file)?;
            let bus = bus().await?;
            let r = store::load(&bus.buckets.config, &e).await?;
            let retention = tagpoll_bus::topology::Retention::from_env()?;
            for c in tagpoll_bus::topology::apply_retention(&bus.js, &retention).await? {
                println!(
                    "retention of {}: {} (was {})",
                    c.stream,
                    show::retention(c.now),
                    show::retention(c.was)
                );
            }
            println!(
                "loaded {}: {} new and {} updated polls, {} readers ({} removed), {} tags ({} removed)",
                file.display(),
                r.polls_new,
                r.polls_updated,
                r.readers,
                r.readers_removed,
                r.tags,
                r.tags_removed
            );
        }
        Cmd::Tap {
            reader,
            tag,
            device,
            no_wait,
            wait,
        } => {
            let wait = (!no_wait).then(|| Duration::from_secs(wait));
            tap(reader, tag, device, wait).await?
        }
        Cmd::Tail { all } => tail(all).await?,
        Cmd::Results { poll, json } => results(poll, json).await?,
        Cmd::Bench {
            quick,
            json,
            lazy_sync,
            rate,
        } => {
            let opts = tagpoll::bench::BenchOptions {
                quick,
                lazy_sync,
                rate,
            };
            let report = tagpoll::bench::run(&opts, |step| eprintln!("bench: {step}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", tagpoll::bench::render(&report));
            }
        }
        Cmd::Chaos {
            taps,
            devices,
            rate,
            seed,
            cluster,
            json,
        } => {
            if devices == 0 || taps < u64::from(devices) {
                bail!("--taps must be at least --devices, and --devices at least 1");
            }
            if !(cluster == 1 || cluster == 3 || cluster == 5) {
                bail!("--cluster must be 1, 3 or 5 (JetStream needs an odd number of nodes)");
            }
            // Streams and buckets this process creates get one replica per node.
            // SAFETY: set before any task that reads the environment runs.
            unsafe { std::env::set_var("TAGPOLL_REPLICAS", cluster.to_string()) };
            let opts = tagpoll::chaos::ChaosOptions {
                taps,
                devices,
                rate,
                seed,
                // About four taps per person: repeats exercise the rules,
                // and new tags keep arriving during the anyMeta outage.
                crowd: ((taps / u64::from(devices)) / 4).max(50) as usize,
                cluster,
            };
            let report = tagpoll::chaos::run(&opts, |line| eprintln!("chaos: {line}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", tagpoll::chaos::render(&report));
            }
            if !report.passed() {
                bail!(
                    "chaos run failed: {} lost, {} doubled, counts match: {}",
                    report.lost,
                    report.doubled,
                    report.counts_match
                );
            }
        }
        Cmd::Forget { person } => {
            let who = tagpoll::forget::Person::parse(&person).map_err(|e| anyhow::anyhow!(e))?;
            let bus = bus().await?;
            let done = tagpoll::forget::forget(&bus.js, &bus.buckets.config, &who)
                .await
                .map_err(|e| anyhow::anyhow!("forgetting {person}: {e}"))?;
            println!(
                "forgot {}: {} tag(s) unlinked, {} cached identit(y/ies) removed; exports show them as \"forgotten\"",
                who.voter_ids.join(" and "),
                done.tags,
                done.cache_entries
            );
        }
        Cmd::Status { json, watch } => status(json, watch).await?,
        Cmd::Replay { poll } => replay(poll).await?,
        Cmd::Export {
            poll,
            format,
            output,
            voter_ids,
        } => export(poll, format, output, voter_ids).await?,
        Cmd::Poll { action } => {
            let bus = bus().await?;
            let (poll, state) = match action {
                PollAction::Open { poll } => (poll, v1::PollState::Open),
                PollAction::Close { poll } => (poll, v1::PollState::Closed),
            };
            let p = store::update_poll(&bus.buckets.config, &poll, |p| {
                p.state = state as i32;
                // An explicit open/close overrides any automatic window.
                if let Some(r) = p.rules.as_mut() {
                    r.opens_at = None;
                    r.closes_at = None;
                }
            })
            .await?;
            println!("poll {} is {}", p.poll_id, show::state_label(p.state()));
        }
        Cmd::Reader {
            action:
                ReaderAction::Map {
                    reader,
                    poll,
                    answer,
                },
        } => {
            let bus = bus().await?;
            store::map_reader(&bus.buckets.config, &reader, &poll, &answer).await?;
            println!("reader {reader} now votes {answer} in poll {poll}");
        }
        Cmd::Dev {
            event,
            http,
            no_sim,
            sim_rate,
            data,
        } => {
            run_dev(dev::DevOptions {
                event_file: event,
                http,
                simulate: !no_sim,
                sim_rate,
                data_dir: data,
            })
            .await?
        }
    }
    Ok(())
}

/// Stores a tap; with `wait`, prints its outcome (or fails after that long).
async fn tap(
    reader: String,
    tag: String,
    device: String,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    for (what, id) in [("--reader", &reader), ("--device", &device)] {
        tagpoll_proto::ids::check_id(id).map_err(|e| anyhow::anyhow!("{what} {id:?} {e}"))?;
    }
    let uid = event::normalize_uid(&tag).map_err(|e| anyhow::anyhow!("--tag: {e}"))?;
    let bus = bus().await?;
    let read_id = format!("{device}-{}", dev::random_secret());
    let read = v1::TagRead {
        read_id: read_id.clone(),
        device_id: device.clone(),
        reader_id: reader.clone(),
        tag_uid: hex::decode(&uid)?,
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: 0,
    };
    let mut outcomes = bus
        .client
        .subscribe(subjects::outcomes_for_reader(&reader))
        .await?;
    bus.client.flush().await?;
    let (seq, _) = tagpoll_bus::publish::publish_for_read(
        &bus.js,
        subjects::read(&device, &reader),
        &read_id,
        read.encode_to_vec().into(),
    )
    .await?;
    println!("tap {read_id} stored as read #{seq}");
    let Some(limit) = wait else {
        return Ok(());
    };
    let outcome = async {
        while let Some(msg) = outcomes.next().await {
            if let Ok(o) = v1::VoteOutcome::decode(msg.payload.as_ref())
                && o.read_id == read_id
            {
                return Some(o);
            }
        }
        None
    };
    match tokio::time::timeout(limit, outcome).await {
        Ok(Some(o)) => println!("{}", show::outcome_line(&o)),
        _ => bail!(
            "no outcome for {read_id} within {} s (--wait): are the identity and tally services running?",
            limit.as_secs()
        ),
    }
    Ok(())
}

async fn tail(all: bool) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer;
    let bus = bus().await?;
    let stream = bus.js.get_stream(names::STREAM_VOTES).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: if all {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::New
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { break };
                let m = m?;
                match tagpoll_bus::decode::<v1::VoteOutcome>(&m.subject, &m.payload) {
                    Ok(o) => println!("{}", show::outcome_line(&o)),
                    Err(e) => eprintln!("skipping: {e}"),
                }
            }
            _ = tagpoll_bus::shutdown_signal() => break,
        }
    }
    Ok(())
}

async fn results(poll_id: String, json: bool) -> anyhow::Result<()> {
    let bus = bus().await?;
    let poll = load_poll(&bus, &poll_id).await?;
    let stored = match bus
        .buckets
        .results
        .get(names::results_key(&poll_id))
        .await?
    {
        Some(b) => Some(v1::PollResults::decode(b.as_ref())?),
        None => None,
    };
    let counts: show::Counts = stored
        .filter(|r| r.run == poll.run)
        .map(|r| {
            r.answers
                .into_iter()
                .map(|a| (a.answer_id, a.votes))
                .collect()
        })
        .unwrap_or_default();
    if json {
        let answers: Vec<_> = poll
            .answers
            .iter()
            .map(|a| serde_json::json!({"id": a.id, "label": a.label, "votes": counts.get(&a.id).copied().unwrap_or(0)}))
            .collect();
        let total: u64 = counts.values().sum();
        println!(
            "{}",
            serde_json::json!({"poll": poll.poll_id, "question": poll.question, "state": show::state_label(poll.state()), "total": total, "answers": answers})
        );
    } else {
        print!("{}", show::results_table(&poll, &counts));
    }
    Ok(())
}

async fn status(json: bool, watch: bool) -> anyhow::Result<()> {
    let bus = bus().await?;
    loop {
        let s = tagpoll::status::gather(&bus.client, &bus.js).await?;
        if json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", tagpoll::status::render(&s));
        }
        if !watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tagpoll_bus::shutdown_signal() => return Ok(()),
        }
    }
}

async fn load_poll(bus: &Bus, poll_id: &str) -> anyhow::Result<v1::PollDefinition> {
    match bus
        .buckets
        .config
        .get(names::config_keys::poll(poll_id))
        .await?
    {
        Some(b) => Ok(v1::PollDefinition::decode(b.as_ref())?),
        None => bail!("no poll {poll_id:?} is loaded"),
    }
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A poll's definition and every outcome of it, with a progress bar.
async fn poll_log(
    poll_id: &str,
) -> anyhow::Result<(Bus, v1::PollDefinition, tagpoll::audit::PollLog)> {
    let bus = bus().await?;
    let poll = load_poll(&bus, poll_id).await?;
    let bar = progress_bar("reading the vote stream");
    let log = tagpoll::audit::read_poll_log(&bus.js, poll_id, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    Ok((bus, poll, log))
}

async fn replay(poll_id: String) -> anyhow::Result<()> {
    let (bus, poll, log) = poll_log(&poll_id).await?;
    let recounted = tagpoll::audit::recount(&log, &poll);
    // The live snapshot may trail by one coalescing interval: give it a moment.
    let mut live = show::Counts::new();
    for _ in 0..20 {
        let stored = match bus
            .buckets
            .results
            .get(names::results_key(&poll_id))
            .await?
        {
            Some(b) => Some(v1::PollResults::decode(b.as_ref())?),
            None => None,
        };
        live = stored
            .filter(|r| r.run == poll.run)
            .map(|r| {
                r.answers
                    .into_iter()
                    .map(|a| (a.answer_id, a.votes))
                    .collect()
            })
            .unwrap_or_default();
        live.retain(|_, v| *v > 0);
        let mut r = recounted.clone();
        r.retain(|_, v| *v > 0);
        if live == r {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "recount of {} outcomes from {}:",
        log.outcomes.len(),
        names::STREAM_VOTES
    );
    print!("{}", show::results_table(&poll, &recounted));
    let mut r = recounted.clone();
    r.retain(|_, v| *v > 0);
    if live == r {
        println!("live counts are equal to the recount");
        Ok(())
    } else {
        println!("live counts differ:");
        print!("{}", show::results_table(&poll, &live));
        bail!("live counts of {poll_id} differ from the recount")
    }
}

async fn export(
    poll_id: String,
    format: String,
    output: Option<PathBuf>,
    voter_ids: bool,
) -> anyhow::Result<()> {
    let (bus, poll, log) = poll_log(&poll_id).await?;
    let voters = if voter_ids {
        tagpoll::audit::VoterIds::AsStored
    } else {
        tagpoll::audit::VoterIds::Pseudonymous
    };
    let json = format == "json";
    let forgotten = tagpoll::forget::forgotten_voters(&bus.buckets.config)
        .await
        .map_err(|e| anyhow::anyhow!("reading forgotten people: {e}"))?;
    match output {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("--output {}", path.display()))?,
            );
            tagpoll::audit::export(&mut f, &poll, &log, json, voters, &forgotten)?;
            use std::io::Write;
            f.flush()?;
            eprintln!(
                "wrote {} outcomes of {poll_id} to {}",
                log.outcomes.len(),
                path.display()
            );
        }
        None => tagpoll::audit::export(
            &mut std::io::stdout().lock(),
            &poll,
            &log,
            json,
            voters,
            &forgotten,
        )?,
    }
    Ok(())
}

async fn run_dev(opts: dev::DevOptions) -> anyhow::Result<()> {
    let event = read_event(&opts.event_file)?;
    let (nats_url, server) = dev::start_bus(&opts)?;
    // SAFETY: single-threaded at this point of start-up? No: tokio runs other
    // threads, but none of ours reads the environment concurrently.
    unsafe { std::env::set_var("NATS_URL", &nats_url) };
    let bus = bus().await?;
    let report = store::load(&bus.buckets.config, &event).await?;
    let mut system = dev::start_services(&opts, nats_url, server)?;
    let health = format!("{}healthz", system.web_url);
    let http = reqwest_lite(&health).await;
    if let Err(e) = http {
        system.shutdown();
        bail!(
            "the web service did not come up ({e}); see {}",
            opts.data_dir.join("logs").display()
        );
    }
    println!("tagpoll dev is running");
    println!("  results page:  {}", system.web_url);
    println!("  admin token:   {}", system.admin_token);
    println!("  NATS:          {}", system.nats_url);
    println!(
        "  event:         {} ({} polls, {} readers)",
        opts.event_file.display(),
        report.polls_new + report.polls_updated,
        report.readers
    );
    println!("  logs:          {}", opts.data_dir.join("logs").display());
    println!(
        "  simulated taps: {}",
        if opts.simulate {
            format!("{} per second", opts.sim_rate)
        } else {
            "off".into()
        }
    );
    println!("Press Ctrl-C to stop.");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tagpoll_bus::shutdown_signal() => break,
            _ = tick.tick() => {
                for line in system.supervise() {
                    eprintln!("{line}");
                }
            }
        }
    }
    println!("stopping…");
    drop(bus);
    system.shutdown();
    Ok(())
}

/// Waits until `url` answers 200 (a tiny HTTP/1.0 GET; avoids a client dependency).
async fn reqwest_lite(url: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(host).await {
            let req = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200") {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not answer 200 within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
