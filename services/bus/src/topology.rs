//! The JetStream streams and KV buckets tagpoll relies on.
//!
//! Every service calls [`ensure`] at start; creation is idempotent, so the
//! first one up creates them and the rest find them.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tagpoll_proto::{names, subjects};

use crate::BusError;

/// How long JetStream remembers a `Nats-Msg-Id` by default. Covers a reader
/// re-sending its spool after a publish whose ack was lost.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Seconds of [`DUPLICATE_WINDOW`], when set (tests shorten it to prove that
/// a tap re-sent after the window is still decided once).
pub const DUPLICATE_WINDOW_ENV: &str = "TAGPOLL_DUPLICATE_WINDOW_SECS";

/// Replicas for streams and buckets: `TAGPOLL_REPLICAS` (1 on one box, 3 on a cluster).
pub fn replicas() -> usize {
    std::env::var("TAGPOLL_REPLICAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| (1..=5).contains(n))
        .unwrap_or(1)
}

/// Days the vote stream is kept; `0` keeps it until the store is deleted.
pub const RETENTION_DAYS_ENV: &str = "TAGPOLL_RETENTION_DAYS";
/// Hours taps on their way to the tally (raw tag UIDs, voter names) are
/// kept; `0` keeps them forever.
pub const READS_RETENTION_HOURS_ENV: &str = "TAGPOLL_READS_RETENTION_HOURS";

/// How long the streams keep what they store (their `max_age`), so personal
/// data does not outlive the event by accident. [`Duration::ZERO`] = forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The hand-off streams `TAGPOLL_READS` (raw tag UIDs) and
    /// `TAGPOLL_IDENTIFIED` (voter names): a tap is needed there only until
    /// the tally has decided it, plus margin for an outage. Must be at
    /// least [`MIN_RETENTION`] shorter than `votes`: the tally would decide
    /// again an identified read whose decision had expired.
    pub reads: Duration,
    /// `TAGPOLL_VOTES`, the vote log the counts are rebuilt from.
    pub votes: Duration,
    /// Whether `reads` / `votes` were given (not defaulted): only given
    /// settings are applied to streams that exist already, so an upgrade
    /// never shortens a running event's retention by surprise.
    pub reads_given: bool,
    pub votes_given: bool,
    /// The streams' `duplicate_window` ([`DUPLICATE_WINDOW_ENV`]).
    pub duplicate_window: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            reads: Duration::from_secs(48 * 3600),
            votes: Duration::from_secs(30 * 24 * 3600),
            reads_given: false,
            votes_given: false,
            duplicate_window: DUPLICATE_WINDOW,
        }
    }
}

/// The shortest retention allowed: well above the duplicate window, so a
/// re-sent tap is still recognised.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

impl Retention {
    /// From [`RETENTION_DAYS_ENV`] and [`READS_RETENTION_HOURS_ENV`];
    /// unset or empty means the defaults (30 days, 48 hours).
    pub fn from_env() -> Result<Self, BusError> {
        let get = |k| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut r = Self::parse(
            get(RETENTION_DAYS_ENV).as_deref(),
            get(READS_RETENTION_HOURS_ENV).as_deref(),
        )
        .map_err(|message| BusError::js("reading the retention settings", message))?;
        if let Some(v) = get(DUPLICATE_WINDOW_ENV) {
            r.duplicate_window = duplicate_window_of(&v)
                .map_err(|message| BusError::js("reading the retention settings", message))?;
        }
        Ok(r)
    }

    /// Parses the two settings' values (decimal numbers); the error names
    /// the variable and what is wrong with it.
    pub fn parse(days: Option<&str>, reads_hours: Option<&str>) -> Result<Self, String> {
        let mut r = Retention::default();
        if let Some(v) = days {
            r.votes = duration_of(RETENTION_DAYS_ENV, v, 24 * 3600)?;
            r.votes_given = true;
        }
        if let Some(v) = reads_hours {
            r.reads = duration_of(READS_RETENTION_HOURS_ENV, v, 3600)?;
            r.reads_given = true;
        }
        // A margin of an hour: an identified read must expire before the
        // outcome decided from it, even with expiry timers firing late.
        let or_forever = |d: Duration| if d.is_zero() { Duration::MAX } else { d };
        if or_forever(r.reads).saturating_add(MIN_RETENTION) > or_forever(r.votes) {
            return Err(format!(
                "{READS_RETENTION_HOURS_ENV} ({}) must be at least an hour shorter than \
                 {RETENTION_DAYS_ENV} ({}): taps in flight must not outlive the votes \
                 decided from them",
                describe(r.reads),
                describe(r.votes)
            ));
        }
        Ok(r)
    }

    /// The `max_age` of stream `name` (zero for streams it does not govern).
    pub fn max_age_of(&self, name: &str) -> Duration {
        match name {
            n if n == names::STREAM_READS || n == names::STREAM_IDENTIFIED => self.reads,
            n if n == names::STREAM_VOTES => self.votes,
            _ => Duration::ZERO,
        }
    }
}

fn describe(d: Duration) -> String {
    if d.is_zero() {
        "forever".into()
    } else {
        format!("{:.1} hours", d.as_secs_f64() / 3600.0)
    }
}

/// Parses [`DUPLICATE_WINDOW_ENV`]: whole seconds, 1 up to the 1 hour
/// minimum retention (a re-sent tap must still be in the stream).
fn duplicate_window_of(value: &str) -> Result<Duration, String> {
    let var = DUPLICATE_WINDOW_ENV;
    let secs: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{var}={value:?} is not a whole number of seconds"))?;
    if secs == 0 || secs > MIN_RETENTION.as_secs() {
        return Err(format!(
            "{var}={value:?} must be from 1 to {} seconds",
            MIN_RETENTION.as_secs()
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn duration_of(var: &str, value: &str, unit_secs: u64) -> Result<Duration, String> {
    let n: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{var}={value:?} is not a number"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{var}={value:?} must be 0 (keep forever) or more"));
    }
    let d = Duration::from_secs_f64((n * unit_secs as f64).min(1e12));
    if !d.is_zero() && d < MIN_RETENTION {
        return Err(format!(
            "{var}={value:?} is shorter than the minimum of {} minutes (0 keeps forever)",
            MIN_RETENTION.as_secs() / 60
        ));
    }
    Ok(d)
}

fn stream_config(
    name: &str,
    subject: &str,
    description: &str,
    retention: &Retention,
) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        description: Some(description.to_string()),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: retention.max_age_of(name),
        duplicate_window: retention.duplicate_window,
        num_replicas: replicas(),
        // Identity reads a device's previous tap with a batch direct get
        // (the lower bound of a spooled tap's moment).
        allow_direct: name == names::STREAM_READS,
        ..Default::default()
    }
}

/// The config history: a mirror of the config bucket's stream that keeps
/// every change (no per-key limit), with the bucket's sequence numbers and
/// server timestamps, for as long as a tap can wait before it is decided
/// (the hand-off streams' retention plus [`MIN_RETENTION`]). The tally
/// decides a tap against the configuration as of its tap moment from it.
pub fn config_history_config(retention: &Retention) -> stream::Config {
    let max_age = if retention.reads.is_zero() {
        Duration::ZERO
    } else {
        retention.reads.saturating_add(MIN_RETENTION)
    };
    stream::Config {
        name: names::STREAM_CONFIG_HISTORY.to_string(),
        description: Some(
            "Every change of the event configuration, for decisions at tap moments".into(),
        ),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age,
        max_messages_per_subject: -1,
        num_replicas: replicas(),
        mirror: Some(stream::Source {
            name: format!("KV_{}", names::KV_CONFIG),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The three streams a tap flows through, in order.
pub fn stream_configs(retention: &Retention) -> Vec<stream::Config> {
    vec![
        stream_config(
            names::STREAM_READS,
            subjects::READS_ALL,
            "Taps from reader devices, de-duplicated by read id",
            retention,
        ),
        stream_config(
            names::STREAM_IDENTIFIED,
            subjects::IDENTIFIED_ALL,
            "Taps with their voter resolved",
            retention,
        ),
        stream_config(
            names::STREAM_VOTES,
            subjects::OUTCOMES_ALL,
            "The vote stream: one outcome per identified read",
            retention,
        ),
    ]
}

/// Most dead letters kept, and their bytes; beyond that the oldest go (a
/// flood of garbage must not fill the disk the votes are on).
pub const DEAD_MAX_MSGS: i64 = 100_000;
pub const DEAD_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// [`names::STREAM_DEAD`]: copies of messages given up on
/// ([`crate::dead_letter`]). They may hold raw taps, so they are kept no
/// longer than the taps themselves; bounded in count and bytes.
pub fn dead_letter_stream_config(retention: &Retention) -> stream::Config {
    stream::Config {
        name: names::STREAM_DEAD.to_string(),
        description: Some("Messages given up on, with why (Tagpoll-Dead-Reason)".into()),
        subjects: vec![subjects::DEAD_ALL.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: retention.reads,
        max_messages: DEAD_MAX_MSGS,
        max_bytes: DEAD_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: retention.duplicate_window,
        num_replicas: replicas(),
        ..Default::default()
    }
}

/// A stream whose `max_age` [`apply_retention`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionChange {
    pub stream: String,
    pub was: Duration,
    pub now: Duration,
}

/// Brings the existing streams' `max_age` in line with the settings given
/// in `retention` (an admin's job: `tagpoll load` does it). Streams are
/// created with it by [`ensure`]; this covers settings changed later.
/// Defaulted settings change nothing.
pub async fn apply_retention(
    js: &jetstream::Context,
    retention: &Retention,
) -> Result<Vec<RetentionChange>, BusError> {
    let mut changes = Vec::new();
    for wanted in stream_configs(retention) {
        let given = if wanted.name == names::STREAM_VOTES {
            retention.votes_given
        } else {
            retention.reads_given
        };
        if !given {
            continue;
        }
        let mut stream = js
            .get_stream(&wanted.name)
            .await
            .map_err(|e| BusError::js(format!("looking up stream {}", wanted.name), e))?;
        let mut config = stream
            .info()
            .await
            .map_err(|e| BusError::js(format!("stream info of {}", wanted.name), e))?
            .config
            .clone();
        if config.max_age == wanted.max_age {
            continue;
        }
        let was = config.max_age;
        config.max_age = wanted.max_age;
        js.update_stream(&config)
            .await
            .map_err(|e| BusError::js(format!("setting the retention of {}", wanted.name), e))?;
        changes.push(RetentionChange {
            stream: wanted.name,
            was,
            now: wanted.max_age,
        });
    }
    Ok(changes)
}

/// Last heartbeat per sender, in memory: no fsync for liveness data.
pub fn heartbeat_stream_config() -> stream::Config {
    stream::Config {
        name: names::STREAM_HEARTBEATS.to_string(),
        description: Some("Last heartbeat of every service and reader device".into()),
        subjects: vec![subjects::HEARTBEAT_ALL.to_string()],
        storage: stream::StorageType::Memory,
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(24 * 3600),
        num_replicas: replicas(),
        ..Default::default()
    }
}

/// Handles to the KV buckets.
#[derive(Clone)]
pub struct Buckets {
    pub config: kv::Store,
    pub results: kv::Store,
}

/// Creates (or finds) every stream and KV bucket, waiting up to
/// [`ENSURE_PATIENCE`] for JetStream to be ready.
/// How long [`ensure`] keeps trying while JetStream is not ready (a server
/// starting, a cluster electing its leader).
pub const ENSURE_PATIENCE: Duration = Duration::from_secs(60);

pub async fn ensure(js: &jetstream::Context) -> Result<Buckets, BusError> {
    let retention = Retention::from_env()?;
    let deadline = tokio::time::Instant::now() + ENSURE_PATIENCE;
    let mut wait = Duration::from_millis(200);
    loop {
        match ensure_once(js, &retention).await {
            Ok(b) => return Ok(b),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "JetStream not ready; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(BusError::js(
                    "setting up streams and buckets",
                    format!(
                        "{e} (for {} s; is JetStream enabled, and may this user create them? \
                         With per-role users, run `tagpoll load` as the admin role first)",
                        ENSURE_PATIENCE.as_secs()
                    ),
                ));
            }
        }
    }
}

/// Streams and buckets kept in memory vanish when a server restarts; this
/// recreates them (and only them) if they are missing.
pub async fn ensure_memory_stores(js: &jetstream::Context) -> Result<(), BusError> {
    js.get_or_create_stream(heartbeat_stream_config())
        .await
        .map_err(|e| BusError::js("re-creating the heartbeat stream", e))?;
    results_bucket(js).await.map(|_| ())
}

async fn results_bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    // Results are derived from the vote stream (the tally republishes them
    // after every rebuild and every few seconds), so they need no fsync.
    bucket(
        js,
        names::KV_RESULTS,
        "Latest results per poll",
        1,
        stream::StorageType::Memory,
    )
    .await
}

async fn ensure_once(js: &jetstream::Context, retention: &Retention) -> Result<Buckets, BusError> {
    for cfg in stream_configs(retention).into_iter().chain([
        heartbeat_stream_config(),
        dead_letter_stream_config(retention),
    ]) {
        let name = cfg.name.clone();
        js.get_or_create_stream(cfg)
            .await
            .map_err(|e| BusError::js(format!("creating stream {name}"), e))?;
    }
    let config = bucket(
        js,
        names::KV_CONFIG,
        "Event configuration",
        5,
        stream::StorageType::File,
    )
    .await?;
    js.get_or_create_stream(config_history_config(retention))
        .await
        .map_err(|e| {
            BusError::js(
                format!("creating stream {}", names::STREAM_CONFIG_HISTORY),
                e,
            )
        })?;
    upgrade_reads_stream(js).await?;
    let results = results_bucket(js).await?;
    Ok(Buckets { config, results })
}

/// Streams made by earlier versions lack `allow_direct` on TAGPOLL_READS;
/// turn it on (nothing else changes).
async fn upgrade_reads_stream(js: &jetstream::Context) -> Result<(), BusError> {
    let name = names::STREAM_READS;
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| BusError::js(format!("looking up stream {name}"), e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| BusError::js(format!("stream info of {name}"), e))?;
    if info.config.allow_direct {
        return Ok(());
    }
    let mut config = info.config.clone();
    config.allow_direct = true;
    js.update_stream(&config)
        .await
        .map_err(|e| BusError::js(format!("allowing direct gets on {name}"), e))?;
    Ok(())
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    history: i64,
    storage: stream::StorageType,
) -> Result<kv::Store, BusError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history,
        storage,
        num_replicas: replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::js(format!("creating KV bucket {name}"), e))
}

/// Creates (or finds) the identity service's lookup cache, KV bucket
/// [`names::KV_IDENTITY_CACHE`]: history 1, memory storage (a cache need not
/// survive a server restart), entries dropped after `max_age`, at most
/// `max_bytes` (further puts fail until old entries age out). Only identity
/// uses it, so [`ensure`] leaves it alone.
pub async fn ensure_identity_cache(
    js: &jetstream::Context,
    max_age: Duration,
    max_bytes: i64,
) -> Result<kv::Store, BusError> {
    let name = names::KV_IDENTITY_CACHE;
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: "Identity lookup cache (keyed hashes of tag UIDs)".to_string(),
        history: 1,
        max_age,
        max_bytes,
        storage: stream::StorageType::Memory,
        num_replicas: replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::js(format!("creating KV bucket {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn retention_defaults_and_overrides() {
        let d = Retention::parse(None, None).unwrap();
        assert_eq!((d.votes, d.reads), (HOUR * 24 * 30, HOUR * 48));
        assert!(!d.reads_given && !d.votes_given);
        let r = Retention::parse(Some("7"), Some("1.5")).unwrap();
        assert_eq!((r.votes, r.reads), (HOUR * 24 * 7, HOUR * 3 / 2));
        assert!(r.reads_given && r.votes_given);
        let votes_forever = Retention::parse(Some("0"), None).unwrap();
        assert_eq!(votes_forever.reads, HOUR * 48);
        assert!(!votes_forever.reads_given && votes_forever.votes_given);
        let forever = Retention::parse(Some("0"), Some(" 0 ")).unwrap();
        assert_eq!(
            (forever.votes, forever.reads),
            (Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(r.max_age_of(names::STREAM_READS), r.reads);
        assert_eq!(r.max_age_of(names::STREAM_IDENTIFIED), r.reads);
        assert_eq!(r.max_age_of(names::STREAM_VOTES), r.votes);
        assert_eq!(r.max_age_of(names::STREAM_HEARTBEATS), Duration::ZERO);
        let cfgs = stream_configs(&r);
        assert_eq!(
            cfgs.iter().map(|c| c.max_age).collect::<Vec<_>>(),
            [r.reads, r.reads, r.votes]
        );
    }

    #[test]
    fn bad_retention_names_the_variable() {
        for (days, hours, needle) in [
            (
                Some("a month"),
                None,
                "TAGPOLL_RETENTION_DAYS=\"a month\" is not a number",
            ),
            (Some("-1"), None, "TAGPOLL_RETENTION_DAYS=\"-1\" must be 0"),
            (
                Some("NaN"),
                None,
                "TAGPOLL_RETENTION_DAYS=\"NaN\" must be 0",
            ),
            (
                None,
                Some("0.5"),
                "TAGPOLL_READS_RETENTION_HOURS=\"0.5\" is shorter",
            ),
            (
                Some("1"),
                Some("48"),
                "(48.0 hours) must be at least an hour shorter",
            ),
            (
                Some("1"),
                Some("23.5"),
                "(23.5 hours) must be at least an hour shorter",
            ),
            (
                Some("1"),
                Some("0"),
                "(forever) must be at least an hour shorter",
            ),
        ] {
            let e = Retention::parse(days, hours).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
