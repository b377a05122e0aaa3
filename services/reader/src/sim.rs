//! Simulated readers: a crowd tapping the readers mapped in the event.
//!
//! Used by `tagpoll dev`, `tagpoll bench`, `tagpoll chaos` and tests.
//! Simulated taps go through exactly the same spool and publisher as real
//! ones. Two modes:
//! - open-ended (default): Poisson arrivals, random people and readers;
//! - planned (`--sim-taps N`): tap `i` of the device is a pure function of
//!   the seed and `i` ([`planned_tap`]), with read id [`planned_read_id`],
//!   and progress is remembered next to the spool. A device killed and
//!   restarted resumes where it was; a tap made twice around the crash has
//!   the same read id, so JetStream and the tally count it once. A chaos
//!   driver can therefore compute exactly what every device tapped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::v1::TagTechnology;
use tokio::sync::{mpsc, watch};

use crate::service::NewTap;

/// Planned taps re-made after a restart, to cover taps handed over but not
/// yet spooled when the device died.
pub const RESUME_OVERLAP: u64 = 256;

/// How the simulated crowd behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Taps per second, all readers together.
    pub rate: f64,
    /// Number of distinct people (tags) in the crowd, besides the known tags.
    pub crowd: usize,
    /// Seed for a reproducible crowd.
    pub seed: u64,
    /// Planned mode: exactly this many taps, then idle.
    pub taps: Option<u64>,
}

/// A crowd member's tag: mostly 7-byte Mifare Ultralight UIDs (NXP, first
/// byte 0x04), some 4-byte Mifare Classic ones.
fn crowd_uid(rng: &mut impl Rng) -> Vec<u8> {
    if rng.random_bool(0.7) {
        let mut uid = vec![0x04];
        uid.extend((0..6).map(|_| rng.random::<u8>()));
        uid
    } else {
        (0..4).map(|_| rng.random::<u8>()).collect()
    }
}

/// The crowd of a seed: `size` distinct tags.
pub fn crowd(seed: u64, size: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(size.max(1));
    while out.len() < size.max(1) {
        let uid = crowd_uid(&mut rng);
        if seen.insert(uid.clone()) {
            out.push(uid);
        }
    }
    out
}

fn mix(mut z: u64) -> u64 {
    // splitmix64: a good, stable hash of the tap number.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Planned tap `i`: which reader (of `readers`, sorted) and which tag.
pub fn planned_tap(seed: u64, i: u64, readers: &[String], crowd: &[Vec<u8>]) -> (String, Vec<u8>) {
    let h = mix(seed ^ mix(i));
    let reader = readers[(h % readers.len() as u64) as usize].clone();
    let uid = crowd[((h >> 32) % crowd.len() as u64) as usize].clone();
    (reader, uid)
}

/// The read id of planned tap `i` of `device`.
pub fn planned_read_id(device: &str, seed: u64, i: u64) -> String {
    format!("sim-{device}-{seed}-{i}")
}

fn progress_file(spool_dir: &Path) -> PathBuf {
    spool_dir.join("sim-progress")
}

fn load_progress(spool_dir: &Path) -> u64 {
    std::fs::read_to_string(progress_file(spool_dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Taps until `taps` is closed (or, planned, until all taps are made).
pub async fn run(
    opts: SimOptions,
    device: String,
    spool_dir: PathBuf,
    config: watch::Receiver<Arc<EventConfig>>,
    taps: mpsc::Sender<NewTap>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ mix(std::process::id() as u64));
    let crowd = crowd(opts.seed, opts.crowd);
    let rate = opts.rate.max(0.001);
    // The progress file is written when a tap is handed to the spool writer,
    // not when it is on disk: a crash in between would skip it. Resume a
    // safe margin earlier; taps made again keep their read ids, so JetStream
    // (and the tally) count them once.
    let mut next = if opts.taps.is_some() {
        load_progress(&spool_dir).saturating_sub(RESUME_OVERLAP)
    } else {
        0
    };
    let start = tokio::time::Instant::now();
    let mut made = 0u64;
    loop {
        if let Some(total) = opts.taps {
            if next >= total {
                tracing::info!(total, "planned simulation done");
                std::future::pending::<()>().await;
            }
            // A steady rate keeps planned runs reproducible in duration.
            tokio::time::sleep_until(start + Duration::from_secs_f64(made as f64 / rate)).await;
        } else {
            // Exponential inter-arrival times make a Poisson stream of taps.
            let wait = -(1.0 - rng.random::<f64>()).ln() / rate;
            tokio::time::sleep(Duration::from_secs_f64(wait.min(60.0))).await;
        }
        let tap = {
            let cfg = config.borrow();
            let readers: Vec<String> = cfg.readers.keys().cloned().collect();
            if readers.is_empty() {
                continue;
            }
            match opts.taps {
                Some(_) => {
                    let (reader_id, uid) = planned_tap(opts.seed, next, &readers, &crowd);
                    NewTap {
                        reader_id,
                        uid,
                        technology: TagTechnology::Simulated,
                        read_id: Some(planned_read_id(&device, opts.seed, next)),
                    }
                }
                None => {
                    let reader_id = readers[rng.random_range(0..readers.len())].clone();
                    // One tap in ten comes from a known person, when there are any.
                    let known: Vec<&String> = cfg.tags.keys().collect();
                    let uid = if !known.is_empty() && rng.random_bool(0.1) {
                        hex::decode(known[rng.random_range(0..known.len())]).unwrap_or_default()
                    } else {
                        crowd[rng.random_range(0..crowd.len())].clone()
                    };
                    if uid.is_empty() {
                        continue;
                    }
                    NewTap {
                        reader_id,
                        uid,
                        technology: TagTechnology::Simulated,
                        read_id: None,
                    }
                }
            }
        };
        if taps.send(tap).await.is_err() {
            return;
        }
        made += 1;
        if opts.taps.is_some() {
            next += 1;
            // No fsync: after a crash the progress may lag, and the taps made
            // again carry the same read ids, so they are counted once.
            let _ = std::fs::write(progress_file(&spool_dir), next.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_taps_are_a_pure_function_of_seed_and_number() {
        let readers: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let c = crowd(7, 50);
        assert_eq!(c.len(), 50);
        assert_eq!(c, crowd(7, 50));
        let taps: Vec<_> = (0..100).map(|i| planned_tap(7, i, &readers, &c)).collect();
        assert_eq!(
            taps,
            (0..100)
                .map(|i| planned_tap(7, i, &readers, &c))
                .collect::<Vec<_>>()
        );
        assert_ne!(
            taps,
            (0..100)
                .map(|i| planned_tap(8, i, &readers, &c))
                .collect::<Vec<_>>()
        );
        for r in ["a", "b", "c"] {
            assert!(taps.iter().any(|(x, _)| x == r), "reader {r} never tapped");
        }
        assert_eq!(planned_read_id("dev", 7, 3), "sim-dev-7-3");
    }
}
