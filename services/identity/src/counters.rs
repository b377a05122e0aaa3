//! Counters of one identity instance. `handled` and the last error also go out in the
//! heartbeat (`tagpoll_bus::heartbeat::Stats`), and so do the tap-moment counters `held`,
//! `clock_untrusted` and `nak_moment` (heartbeat `counters`, on `/metrics` as
//! `tagpoll_identity_{name}_total`); all are logged every [`LOG_INTERVAL`] while something
//! happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often a summary line is logged (only when a counter moved).
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Counters {
    /// Reads taken from the consumer (re-deliveries included).
    pub received: AtomicU64,
    /// Identified reads stored and acknowledged.
    pub identified: AtomicU64,
    /// ... of which no backend knew the tag.
    pub unknown: AtomicU64,
    /// Reads handed back (nak) because a backend was unavailable.
    pub nak_unavailable: AtomicU64,
    /// Reads handed back so they do not overtake an earlier tap of the same tag.
    pub nak_order: AtomicU64,
    /// Reads handed back because storing the identified read failed.
    pub nak_publish: AtomicU64,
    /// Reads handed back because the device's previous tap could not be looked up.
    pub nak_moment: AtomicU64,
    /// Identified reads of taps that waited in a reader's spool, stored with the device
    /// clock's moment (`TAP_MOMENT_DEVICE_CLOCK`).
    pub held: AtomicU64,
    /// Identified reads that may have waited in a spool but whose device clock is unknown or
    /// untrusted, so they count at arrival (`TAP_MOMENT_STORED_CLOCK_UNTRUSTED`).
    pub clock_untrusted: AtomicU64,
    /// Reads that can never be processed (undecodable, a bad read id).
    pub poison: AtomicU64,
    /// ... of which copied to the dead letters and terminated (heartbeat
    /// counter `dead_lettered`, on `/metrics`).
    pub dead_lettered: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Lookups that joined another lookup of the same tag already under way.
    pub coalesced: AtomicU64,
    /// HTTP calls to anyMeta, and how many of them failed.
    pub anymeta_calls: AtomicU64,
    pub anymeta_failures: AtomicU64,
    /// Calls not made because the circuit breaker was open.
    pub breaker_refusals: AtomicU64,
}

/// Adds one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// `name=value` pairs for a log line.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "received={} identified={} unknown={} held={} clock_untrusted={} nak_unavailable={} \
             nak_order={} nak_publish={} nak_moment={} poison={} dead_lettered={} cache_hits={} cache_misses={} \
             coalesced={} anymeta_calls={} anymeta_failures={} breaker_refusals={}",
            g(&self.received),
            g(&self.identified),
            g(&self.unknown),
            g(&self.held),
            g(&self.clock_untrusted),
            g(&self.nak_unavailable),
            g(&self.nak_order),
            g(&self.nak_publish),
            g(&self.nak_moment),
            g(&self.poison),
            g(&self.dead_lettered),
            g(&self.cache_hits),
            g(&self.cache_misses),
            g(&self.coalesced),
            g(&self.anymeta_calls),
            g(&self.anymeta_failures),
            g(&self.breaker_refusals),
        )
    }

    /// Logs [`Counters::summary`] every `interval` when it changed.
    pub fn spawn_logger(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = me.summary();
                if now != last {
                    tracing::info!("identity counters: {now}");
                    last = now;
                }
            }
        })
    }
}
