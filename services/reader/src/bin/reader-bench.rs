//! `reader-bench`: how fast a reader box can take taps.
//!
//! ```sh
//! cargo run --release -p tagpoll-reader --bin reader-bench            # spool in ./target
//! cargo run --release -p tagpoll-reader --bin reader-bench -- --dir /var/lib/tagpoll/bench
//! ```
//!
//! - **Spool append rate**: taps per second through [`Spool::append`] (one
//!   `write` + one `fdatasync` each, as the service does), alone and with the
//!   ack that follows a JetStream publish; latency percentiles. Run it on the
//!   disk the spool will live on: on tmpfs an fsync costs nothing.
//! - **Parser throughput**: MB/s of each protocol's parser fed a long stream
//!   of valid frames in 256-byte reads (the service's read size), and of
//!   random noise (the worst case: resynchronisation after every false start).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use prost::Message;
use rand::{Rng, SeedableRng};
use tagpoll_proto::v1;
use tagpoll_reader::protocol::{self, LineFormat, Protocol, ReaderEvent, id12, parallax, sm130};
use tagpoll_reader::spool::{Spool, SpoolLimits};

#[derive(Parser)]
#[command(about = "Spool append rate (with fsync) and parser throughput of tagpoll-reader")]
struct Args {
    /// Folder for the benchmark spool (created, and emptied afterwards).
    #[arg(long, default_value = "target/reader-bench-spool")]
    dir: PathBuf,
    /// Taps appended per spool run.
    #[arg(long, default_value_t = 2000)]
    taps: u64,
    /// MiB of input per parser run.
    #[arg(long, default_value_t = 32)]
    mib: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("reader-bench {}", env!("CARGO_PKG_VERSION"));
    println!("machine: {}", machine());
    spool_bench(&args)?;
    parser_bench(&args);
    Ok(())
}

/// CPU model, core count and kernel, best effort.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// The file system type and device holding `path` (from /proc/self/mountinfo).
fn filesystem(path: &std::path::Path) -> String {
    let Ok(path) = std::fs::canonicalize(path) else {
        return "?".into();
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "?".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount) = fields.get(4) else { continue };
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(fstype), Some(source)) = (fields.get(sep + 1), fields.get(sep + 2)) else {
            continue;
        };
        if path.starts_with(mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((
                mount.len(),
                format!("{fstype} on {source}, mounted at {mount}"),
            ));
        }
    }
    best.map_or_else(|| "?".into(), |(_, s)| s)
}

/// A tap as the service encodes it: UUIDv7 read id, 7-byte Mifare UID.
fn tap_payload(i: u64) -> Vec<u8> {
    v1::TagRead {
        read_id: uuid::Uuid::now_v7().to_string(),
        device_id: "hall-left".into(),
        reader_id: "coffee-left".into(),
        tag_uid: vec![
            0x04,
            0x52,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
            0x49,
            0x80,
        ],
        technology: v1::TagTechnology::Iso14443a as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: i + 1,
    }
    .encode_to_vec()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn spool_bench(args: &Args) -> anyhow::Result<()> {
    let dir = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!();
    println!("spool: {} ({})", dir.display(), filesystem(&dir));
    println!(
        "tap payload: {} bytes (an encoded TagRead)",
        tap_payload(0).len()
    );
    println!(
        "{:<28} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "run", "taps", "taps/s", "p50", "p99", "max"
    );
    let limits = SpoolLimits {
        max_bytes: 64 << 20,
        warn_ratio: 0.8,
    };
    for (name, ack) in [("append (fdatasync)", false), ("append + ack", true)] {
        let run_dir = dir.join(if ack { "ack" } else { "append" });
        let (mut spool, _) = Spool::open(&run_dir, limits)?;
        let payloads: Vec<Vec<u8>> = (0..args.taps).map(tap_payload).collect();
        let mut lat = Vec::with_capacity(payloads.len());
        let start = Instant::now();
        for p in &payloads {
            let t = Instant::now();
            let seq = spool.append(p)?;
            if ack {
                spool.ack(seq)?;
            }
            lat.push(t.elapsed());
        }
        let total = start.elapsed();
        lat.sort();
        println!(
            "{:<28} {:>8} {:>12.0} {:>10.2?} {:>10.2?} {:>10.2?}",
            name,
            args.taps,
            args.taps as f64 / total.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or_default(),
        );
        drop(spool);
        // Re-opening a spool full of records: what a restart after an outage costs.
        if !ack {
            let t = Instant::now();
            let (_spool, pending) = Spool::open(&run_dir, limits)?;
            println!(
                "{:<28} {:>8} {:>12.0} {:>10.2?}",
                "re-open with pending",
                pending.len(),
                pending.len() as f64 / t.elapsed().as_secs_f64(),
                t.elapsed()
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `mib` MiB of back-to-back valid frames for `p`, and how many tags they hold.
fn frames(p: &Protocol, mib: usize, rng: &mut impl Rng) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(mib << 20);
    let mut n = 0;
    while out.len() < mib << 20 {
        let em: [u8; 5] = rng.random();
        match p {
            Protocol::Id12 => out.extend(id12::frame(em)),
            Protocol::Parallax => out.extend(parallax::frame(em)),
            Protocol::Sm130 => {
                let uid: [u8; 7] = rng.random();
                out.extend(sm130::select_reply(0x01, &uid).unwrap_or_default());
                out.extend(sm130::no_tag_reply());
            }
            Protocol::Line(_) => {
                let uid: [u8; 7] = rng.random();
                out.extend(hex::encode_upper(uid).into_bytes());
                out.extend(b"\r\n");
            }
        }
        n += 1;
    }
    (out, n)
}

/// Feeds `input` in 256-byte reads; returns (seconds, tags, errors).
fn feed(p: &Protocol, input: &[u8]) -> (f64, usize, usize) {
    let mut parser = protocol::parser(p);
    let mut events = Vec::new();
    let (mut tags, mut errors) = (0, 0);
    let start = Instant::now();
    for chunk in input.chunks(256) {
        parser.feed(chunk, &mut events);
        for e in events.drain(..) {
            match e {
                ReaderEvent::Tag { .. } => tags += 1,
                ReaderEvent::FrameError { .. } => errors += 1,
                ReaderEvent::NoTag => {}
            }
        }
    }
    (
        start.elapsed().as_secs_f64(),
        std::hint::black_box(tags),
        errors,
    )
}

fn parser_bench(args: &Args) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    println!();
    println!("parsers: {} MiB per run, fed in 256-byte reads", args.mib);
    println!(
        "{:<10} {:<7} {:>10} {:>14} {:>12}",
        "protocol", "input", "MB/s", "frames/s", "tags"
    );
    let noise: Vec<u8> = (0..args.mib << 20).map(|_| rng.random()).collect();
    for p in [
        Protocol::Id12,
        Protocol::Parallax,
        Protocol::Sm130,
        Protocol::Line(LineFormat::Hex),
    ] {
        let (input, n) = frames(&p, args.mib, &mut rng);
        let (secs, tags, errors) = feed(&p, &input);
        assert_eq!((tags, errors), (n, 0), "{p}: every frame must parse");
        println!(
            "{:<10} {:<7} {:>10.1} {:>14.0} {:>12}",
            p.to_string(),
            "frames",
            input.len() as f64 / secs / 1e6,
            n as f64 / secs,
            tags
        );
        let (secs, tags, _) = feed(&p, &noise);
        println!(
            "{:<10} {:<7} {:>10.1} {:>14} {:>12}",
            p.to_string(),
            "noise",
            noise.len() as f64 / secs / 1e6,
            "-",
            tags
        );
    }
}
