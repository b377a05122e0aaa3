//! Simulated readers: a crowd tapping the readers mapped in the event.
//!
//! Used by `tagpoll dev` and tests. Simulated taps go through exactly the
//! same spool and publisher as real ones.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::v1::TagTechnology;
use tokio::sync::{mpsc, watch};

use crate::service::NewTap;

/// How the simulated crowd behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Taps per second, all readers together (Poisson arrivals).
    pub rate: f64,
    /// Number of distinct people (tags) in the crowd, besides the known tags.
    pub crowd: usize,
    /// Seed for a reproducible crowd.
    pub seed: u64,
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

/// Taps until `taps` is closed.
pub async fn run(
    opts: SimOptions,
    config: watch::Receiver<Arc<EventConfig>>,
    taps: mpsc::Sender<NewTap>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let crowd: Vec<Vec<u8>> = (0..opts.crowd.max(1))
        .map(|_| crowd_uid(&mut rng))
        .collect();
    let rate = opts.rate.max(0.001);
    loop {
        // Exponential inter-arrival times make a Poisson stream of taps.
        let wait = -(1.0 - rng.random::<f64>()).ln() / rate;
        tokio::time::sleep(Duration::from_secs_f64(wait.min(60.0))).await;
        let (reader_id, uid) = {
            let cfg = config.borrow();
            let readers: Vec<&String> = cfg.readers.keys().collect();
            if readers.is_empty() {
                continue;
            }
            let reader = readers[rng.random_range(0..readers.len())].clone();
            // One tap in ten comes from a known person, when there are any.
            let known: Vec<&String> = cfg.tags.keys().collect();
            let uid = if !known.is_empty() && rng.random_bool(0.1) {
                hex::decode(known[rng.random_range(0..known.len())]).unwrap_or_default()
            } else {
                crowd[rng.random_range(0..crowd.len())].clone()
            };
            (reader, uid)
        };
        if uid.is_empty() {
            continue;
        }
        let tap = NewTap {
            reader_id,
            uid,
            technology: TagTechnology::Simulated,
        };
        if taps.send(tap).await.is_err() {
            return;
        }
    }
}
