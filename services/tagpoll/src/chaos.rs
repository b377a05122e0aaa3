//! `tagpoll chaos`: break things while votes flow, then prove that no vote
//! was lost or doubled.
//!
//! Everything runs on loopback: a private nats-server (or a 3-node cluster),
//! identity, tally, web, and several simulated reader devices in planned
//! mode (`--sim-taps`), so the driver knows exactly which taps each device
//! makes, and a fake anyMeta that knows two thirds of the tags (pairs of
//! them belong to one person; the rest vote anonymously). While they tap,
//! the driver SIGKILLs and restarts each service in turn, a reader device,
//! and the nats-server (or one cluster node), and takes the fake anyMeta
//! down for a while. At the end it compares:
//! - the taps in `TAGPOLL_READS` with the planned ones (lost: missing;
//!   doubled: stored twice),
//! - the outcomes in `TAGPOLL_VOTES` with the stored reads (exactly one each),
//! - the counts in KV with a reference count of what was tapped.
//!
//! The event's polls let every voter pick every answer (multiple choice), so
//! the reference count — distinct (voter, poll, answer) — does not depend on
//! the order in which crashes made the services decide reads.
//! Voters are what identity would make of each tag: the anyMeta person
//! owning it, or the tag itself (anonymous).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use prost::Message;
use serde::Serialize;
use tagpoll_bus::nats_server::{NatsCluster, NatsServer, ServerOptions};
use tagpoll_bus::process::ServiceProcess;
use tagpoll_identity::fake_anymeta::FakeAnyMeta;
use tagpoll_proto::{names, v1};
use tagpoll_tally::reference::{Model, ModelRules};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub taps: u64,
    pub devices: u32,
    /// Taps per second, all devices together.
    pub rate: f64,
    pub seed: u64,
    /// People per device crowd.
    pub crowd: usize,
    /// 1: a single nats-server; 3: a 3-node cluster with 3 replicas.
    pub cluster: usize,
}

/// The bus under test: one server or a cluster.
enum Bus {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Bus {
    fn url(&self) -> String {
        match self {
            Bus::Single(s) => s.url(),
            Bus::Cluster(c) => c.url(),
        }
    }

    /// The bus fault: SIGKILL the server (or one node), restart it later.
    async fn crash(&mut self, down: Duration, k: usize) -> Result<String, ChaosError> {
        match self {
            Bus::Single(s) => {
                s.kill();
                tokio::time::sleep(down).await;
                s.restart().map_err(err)?;
                Ok(format!(
                    "SIGKILL nats-server, restarted after {} ms",
                    down.as_millis()
                ))
            }
            Bus::Cluster(c) => {
                let node = k % c.size();
                c.kill(node);
                tokio::time::sleep(down).await;
                c.restart(node).map_err(err)?;
                Ok(format!(
                    "SIGKILL nats-server node {}, restarted after {} ms",
                    node + 1,
                    down.as_millis()
                ))
            }
        }
    }

    fn stop(&mut self) {
        match self {
            Bus::Single(s) => s.stop(),
            Bus::Cluster(c) => c.stop(),
        }
    }
}

/// The verdict. Field names are a contract (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub taps: u64,
    pub devices: u32,
    pub reads_stored: u64,
    pub outcomes_stored: u64,
    pub expected_votes: u64,
    pub counted_votes: u64,
    pub lost: u64,
    pub doubled: u64,
    /// Outcomes that correct an earlier decision of the same read (a late
    /// earlier tap of the same voter): part of `outcomes_stored`.
    pub corrections: u64,
    pub counts_match: bool,
    pub faults: Vec<String>,
    /// Lookups the fake anyMeta answered (tags seen for the first time, and
    /// again after the cache's answer expired).
    pub anymeta_answers: u64,
    pub duration_s: f64,
    pub cluster_nodes: u32,
}

impl ChaosReport {
    /// Whether the run proved what it should.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.counts_match
            && self.counted_votes == self.expected_votes
    }
}

/// Errors that stop a run (as opposed to a failed verdict).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChaosError(String);

fn err(e: impl std::fmt::Display) -> ChaosError {
    ChaosError(e.to_string())
}

const EVENT: &str = r#"
[event]
id = "chaos"
identity = ["anymeta", "anonymous"]

[[polls]]
id = "pick2"
question = "Pick any of two"
max_choices = 2
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[polls]]
id = "pick3"
question = "Pick any of three"
max_choices = 3
allow_anonymous = true
answers = [{ id = "x", label = "X" }, { id = "y", label = "Y" }, { id = "z", label = "Z" }]

[[polls]]
id = "one"
question = "First vote stands"
mode = "first"
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[polls]]
id = "swap"
question = "Last vote counts"
mode = "change"
allow_anonymous = true
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[readers]]
id = "ra"
poll = "pick2"
answer = "a"

[[readers]]
id = "r1a"
poll = "one"
answer = "a"

[[readers]]
id = "r1b"
poll = "one"
answer = "b"

[[readers]]
id = "rsa"
poll = "swap"
answer = "a"

[[readers]]
id = "rsb"
poll = "swap"
answer = "b"

[[readers]]
id = "rb"
poll = "pick2"
answer = "b"

[[readers]]
id = "rx"
poll = "pick3"
answer = "x"

[[readers]]
id = "ry"
poll = "pick3"
answer = "y"

[[readers]]
id = "rz"
poll = "pick3"
answer = "z"
"#;

/// One planned tap.
#[derive(Debug, Clone)]
struct Planned {
    reader: String,
    uid: Vec<u8>,
}

fn device_id(d: u32) -> String {
    format!("chaos-{d}")
}

/// Who anyMeta says owns each tag of every device's crowd (hex UID →
/// person id): of every three tags, two belong to one person and the third
/// is unknown to anyMeta (an anonymous voter).
fn people(opts: &ChaosOptions) -> HashMap<String, u64> {
    let mut owners = HashMap::new();
    let mut n = 0u64;
    for d in 0..opts.devices {
        for uid in tagpoll_reader::sim::crowd(opts.seed + u64::from(d), opts.crowd) {
            if n % 3 != 2 {
                owners.insert(hex::encode_upper(&uid), 1000 + n / 3);
            }
            n += 1;
        }
    }
    owners
}

/// The voter identity would make of a tag, for the reference count.
fn voter_of(owners: &HashMap<String, u64>, uid: &[u8]) -> String {
    let hex = hex::encode_upper(uid);
    match owners.get(&hex) {
        Some(person) => format!("anymeta:{person}"),
        None => format!("anon:{hex}"),
    }
}

fn plan(opts: &ChaosOptions, readers: &[String]) -> HashMap<String, Planned> {
    let per = opts.taps / u64::from(opts.devices);
    let mut planned = HashMap::new();
    for d in 0..opts.devices {
        let seed = opts.seed + u64::from(d);
        let crowd = tagpoll_reader::sim::crowd(seed, opts.crowd);
        for i in 0..per {
            let (reader, uid) = tagpoll_reader::sim::planned_tap(seed, i, readers, &crowd);
            planned.insert(
                tagpoll_reader::sim::planned_read_id(&device_id(d), seed, i),
                Planned { reader, uid },
            );
        }
    }
    planned
}

struct Services {
    identity: ServiceProcess,
    tally: ServiceProcess,
    web: ServiceProcess,
    readers: Vec<ServiceProcess>,
}

/// Runs the whole thing against a single nats-server.
pub async fn run(
    opts: &ChaosOptions,
    mut say: impl FnMut(&str),
) -> Result<ChaosReport, ChaosError> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-chaos-")
        .tempdir()
        .map_err(err)?;
    let mut server = if opts.cluster > 1 {
        Bus::Cluster(NatsCluster::start(&dir.path().join("nats"), opts.cluster).map_err(err)?)
    } else {
        Bus::Single(
            NatsServer::start(ServerOptions {
                dir: dir.path().join("nats"),
                port: 0,
                sync_always: true,
            })
            .map_err(err)?,
        )
    };
    let url = server.url();
    let event = crate::event::parse(EVENT).map_err(err)?;
    let config_kv = {
        let client = async_nats::connect(url.split(',').collect::<Vec<_>>())
            .await
            .map_err(err)?;
        let js = jetstream::new(client);
        // A fresh cluster elects its JetStream leader first: retry a while.
        let mut tries = 0;
        let buckets = loop {
            match tagpoll_bus::topology::ensure(&js).await {
                Ok(b) => break b,
                Err(e) if tries < 30 => {
                    tries += 1;
                    say(&format!("waiting for JetStream: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(err(e)),
            }
        };
        tagpoll_bus::store::load(&buckets.config, &event)
            .await
            .map_err(err)?;
        buckets.config
    };
    let readers: Vec<String> = {
        let mut r: Vec<String> = event.readers.iter().map(|r| r.reader_id.clone()).collect();
        r.sort();
        r
    };
    let per_device = opts.taps / u64::from(opts.devices);
    let taps = per_device * u64::from(opts.devices);
    let planned = plan(opts, &readers);
    let owners = people(opts);
    let anymeta = FakeAnyMeta::start().await;
    anymeta.set_latency(Duration::from_millis(2));
    for (uid, person) in &owners {
        anymeta.add_person(uid, *person, &format!("Person {person}"));
    }

    let mut env = vec![
        ("NATS_URL".to_string(), url.clone()),
        (
            "TAGPOLL_REPLICAS".to_string(),
            opts.cluster.max(1).to_string(),
        ),
        (
            "TAGPOLL_VOTER_KEY".to_string(),
            "chaos-voter-key-0123456789abcdef".to_string(),
        ),
        // The services' log filter (`TAGPOLL_CHAOS_LOG`, default warn): the
        // logs are kept when a run fails.
        (
            "RUST_LOG".to_string(),
            std::env::var("TAGPOLL_CHAOS_LOG").unwrap_or_else(|_| "warn".to_string()),
        ),
        // Notice an anyMeta outage and its end within a second.
        ("TAGPOLL_ANYMETA_TIMEOUT_MS".to_string(), "1000".to_string()),
        ("TAGPOLL_ANYMETA_RETRIES".to_string(), "1".to_string()),
        (
            "TAGPOLL_ANYMETA_BREAKER_COOLDOWN_MS".to_string(),
            "500".to_string(),
        ),
        ("TAGPOLL_IDENTITY_RETRY_MS".to_string(), "200".to_string()),
        (
            "TAGPOLL_IDENTITY_RETRY_MAX_MS".to_string(),
            "1000".to_string(),
        ),
    ];
    env.extend(anymeta.service_env());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).map_err(err)?;
    let web_port = tagpoll_bus::nats_server::free_port().map_err(err)?;
    let start =
        |name: &str, args: Vec<String>, log_name: &str| -> Result<ServiceProcess, ChaosError> {
            let log_dir = logs.join(log_name);
            std::fs::create_dir_all(&log_dir).map_err(err)?;
            let mut p = ServiceProcess::new(name, &args, &env, &log_dir).map_err(err)?;
            p.start().map_err(err)?;
            Ok(p)
        };
    let mut services = Services {
        identity: start("tagpoll-identity", vec![], "identity")?,
        tally: start("tagpoll-tally", vec![], "tally")?,
        web: start(
            "tagpoll-web",
            vec!["--http".into(), format!("127.0.0.1:{web_port}")],
            "web",
        )?,
        readers: Vec::new(),
    };
    for d in 0..opts.devices {
        let args = vec![
            "--device".into(),
            device_id(d),
            "--simulate".into(),
            "--sim-taps".into(),
            per_device.to_string(),
            "--sim-rate".into(),
            (opts.rate / f64::from(opts.devices)).to_string(),
            "--sim-seed".into(),
            (opts.seed + u64::from(d)).to_string(),
            "--sim-crowd".into(),
            opts.crowd.to_string(),
            "--spool".into(),
            dir.path().join(format!("spool-{d}")).display().to_string(),
        ];
        services
            .readers
            .push(start("tagpoll-reader", args, &device_id(d))?);
    }
    say(&format!(
        "{taps} planned taps from {} devices at {:.0}/s",
        opts.devices, opts.rate
    ));

    // Faults, spread over the time the devices need to tap.
    let planned_secs = taps as f64 / opts.rate;
    let kinds = [
        "tally",
        "identity",
        "reader",
        "web",
        "anymeta",
        "nats-server",
        "tally",
        "identity",
    ];
    let mut faults = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let at = Duration::from_secs_f64(planned_secs * (k as f64 + 0.5) / kinds.len() as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + at)).await;
        let down = Duration::from_millis(300 + (opts.seed.wrapping_mul(k as u64 + 1) % 700));
        let fault = match *kind {
            "tally" => restart("tally", &mut services.tally, down).await?,
            "identity" => restart("identity", &mut services.identity, down).await?,
            "web" => restart("web", &mut services.web, down).await?,
            "anymeta" => {
                let outage = down * 4;
                anymeta.go_down().await;
                tokio::time::sleep(outage).await;
                anymeta.come_up().await;
                format!("anyMeta down for {} ms", outage.as_millis())
            }
            "reader" => {
                let d = (k as u32) % opts.devices;
                restart(&device_id(d), &mut services.readers[d as usize], down).await?
            }
            _ => server.crash(down * 3, k).await?,
        };
        let fault = format!("{fault} at {:.1}s", at.as_secs_f64());
        say(&fault);
        faults.push(fault);
        // And the evening moves on meanwhile: readers remapped between
        // polls, polls closed and opened again.
        // An organiser tries again when the admin page says no (a cluster
        // electing a leader just after a node restart).
        let mut tries = 0;
        let change = loop {
            match reconfigure(&config_kv, k).await {
                Ok(c) => break c,
                Err(e) if tries < 30 => {
                    tries += 1;
                    say(&format!("config change failed ({e}); trying again"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        say(&change);
        faults.push(change);
    }

    say("waiting for every tap to be decided");
    let client = async_nats::connect(url.split(',').collect::<Vec<_>>())
        .await
        .map_err(err)?;
    let js = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs_f64(planned_secs * 4.0 + 300.0);
    let mut stable_since: Option<(u64, u64, Instant)> = None;
    loop {
        let reads = messages(&js, names::STREAM_READS).await?;
        let votes = messages(&js, names::STREAM_VOTES).await?;
        match stable_since {
            Some((r, v, t))
                if r == reads
                    && v == votes
                    && reads >= taps
                    && votes >= reads
                    && t.elapsed() > Duration::from_secs(2) =>
            {
                break;
            }
            Some((r, v, _)) if r == reads && v == votes => {}
            _ => stable_since = Some((reads, votes, Instant::now())),
        }
        if Instant::now() > deadline {
            say(&format!(
                "gave up waiting: {reads} reads, {votes} outcomes stored"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut report = verdict(&js, opts, taps, &planned, &owners, &event, faults, started).await?;
    report.anymeta_answers = anymeta.total_answered() as u64;
    drop(services);
    server.stop();
    if !report.passed() {
        keep_logs(dir.path(), &mut say);
    }
    Ok(report)
}

/// The `k`-th live change of the evening, made while taps go on (and while
/// services are down): the reference decides every tap against the
/// configuration in force at its tap moment, so these must not move a vote.
async fn reconfigure(
    config: &async_nats::jetstream::kv::Store,
    k: usize,
) -> Result<String, ChaosError> {
    use tagpoll_bus::store;
    let set_state = |state: v1::PollState| {
        move |p: &mut v1::PollDefinition| {
            p.state = state as i32;
            if let Some(r) = p.rules.as_mut() {
                r.opens_at = None;
                r.closes_at = None;
            }
        }
    };
    let what = match k % 4 {
        0 => {
            store::map_reader(config, "ra", "one", "b")
                .await
                .map_err(err)?;
            "remapped ra to one/b"
        }
        1 => {
            store::update_poll(config, "swap", set_state(v1::PollState::Closed))
                .await
                .map_err(err)?;
            "closed swap"
        }
        2 => {
            store::map_reader(config, "ra", "pick2", "a")
                .await
                .map_err(err)?;
            store::map_reader(config, "r1b", "swap", "b")
                .await
                .map_err(err)?;
            "remapped ra back to pick2/a and r1b to swap/b"
        }
        _ => {
            store::update_poll(config, "swap", set_state(v1::PollState::Open))
                .await
                .map_err(err)?;
            store::map_reader(config, "r1b", "one", "b")
                .await
                .map_err(err)?;
            "opened swap again and remapped r1b back to one/b"
        }
    };
    Ok(what.to_string())
}

/// A config change as the tally sees it: key, value (None: removed), and
/// when the server stored it.
struct ConfigChange {
    at: std::time::SystemTime,
    key: String,
    value: Option<Vec<u8>>,
}

/// Every change in TAGPOLL_CONFIG_HISTORY, in order.
async fn config_changes(js: &jetstream::Context) -> Result<Vec<ConfigChange>, ChaosError> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let mut stream = js
        .get_stream(names::STREAM_CONFIG_HISTORY)
        .await
        .map_err(err)?;
    let last = stream.info().await.map_err(err)?.state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .map_err(err)?
        .messages()
        .await
        .map_err(err)?;
    let prefix = format!("$KV.{}.", names::KV_CONFIG);
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(err)?;
        let info = msg.info().map_err(err)?;
        let (seq, at) = (
            info.stream_sequence,
            std::time::SystemTime::from(info.published),
        );
        let removed = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        out.push(ConfigChange {
            at,
            key: msg
                .subject
                .strip_prefix(prefix.as_str())
                .unwrap_or(&msg.subject)
                .to_string(),
            value: (!removed).then(|| msg.payload.to_vec()),
        });
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// Each read's tap moment, from TAGPOLL_IDENTIFIED (identity's word).
async fn tap_moments(
    js: &jetstream::Context,
) -> Result<HashMap<String, std::time::SystemTime>, ChaosError> {
    let mut moments = HashMap::new();
    tagpoll_bus::replay::replay(js, names::STREAM_IDENTIFIED, None, |_, subject, payload| {
        if let Ok(r) = tagpoll_bus::decode::<v1::IdentifiedRead>(subject, payload)
            && let Some(t) = tagpoll_proto::to_system_time(r.tapped_at.as_ref())
        {
            moments.entry(r.read_id).or_insert(t);
        }
    })
    .await
    .map_err(err)?;
    Ok(moments)
}

fn keep_logs(dir: &Path, say: &mut impl FnMut(&str)) {
    let keep = std::env::temp_dir().join(format!("tagpoll-chaos-failed-{}", std::process::id()));
    if std::fs::rename(dir.join("logs"), &keep).is_ok() {
        say(&format!("logs kept in {}", keep.display()));
    }
}

async fn restart(what: &str, p: &mut ServiceProcess, down: Duration) -> Result<String, ChaosError> {
    p.kill();
    tokio::time::sleep(down).await;
    p.start().map_err(err)?;
    Ok(format!(
        "SIGKILL {what}, restarted after {} ms",
        down.as_millis()
    ))
}

async fn messages(js: &jetstream::Context, stream: &str) -> Result<u64, ChaosError> {
    // The server may still be coming back: retry a little.
    for _ in 0..40 {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
        {
            return Ok(info.state.messages);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(err(format!("stream {stream} unreachable")))
}

#[allow(clippy::too_many_arguments)]
async fn verdict(
    js: &jetstream::Context,
    opts: &ChaosOptions,
    taps: u64,
    planned: &HashMap<String, Planned>,
    owners: &HashMap<String, u64>,
    event: &crate::event::Event,
    faults: Vec<String>,
    started: Instant,
) -> Result<ChaosReport, ChaosError> {
    let mut stored_reads: HashMap<String, u32> = HashMap::new();
    let mut mismatched = 0u64;
    tagpoll_bus::replay::replay(js, names::STREAM_READS, None, |_, subject, payload| {
        if let Ok(r) = tagpoll_bus::decode::<v1::TagRead>(subject, payload) {
            // A stored tap must be the one its device planned.
            if planned
                .get(&r.read_id)
                .is_some_and(|p| p.reader != r.reader_id || p.uid != r.tag_uid)
            {
                mismatched += 1;
            }
            *stored_reads.entry(r.read_id).or_default() += 1;
        }
    })
    .await
    .map_err(err)?;
    // A read's first outcome; corrections (a later tap decided again after
    // a late earlier one) are the same read's decision, not a double.
    let mut outcomes: HashMap<String, u32> = HashMap::new();
    let mut corrections = 0u64;
    tagpoll_bus::replay::replay(js, names::STREAM_VOTES, None, |_, subject, payload| {
        if let Ok(o) = tagpoll_bus::decode::<v1::VoteOutcome>(subject, payload) {
            if o.correction {
                corrections += 1;
            } else {
                *outcomes.entry(o.read_id).or_default() += 1;
            }
        }
    })
    .await
    .map_err(err)?;

    // Lost: planned and never stored, or stored and never decided.
    // Doubled: stored or decided more than once, or stored but never planned.
    let mut lost = 0u64;
    let mut doubled = 0u64;
    lost += planned
        .keys()
        .filter(|id| !stored_reads.contains_key(*id))
        .count() as u64;
    doubled += mismatched;
    for (id, n) in &stored_reads {
        doubled += u64::from(n.saturating_sub(1));
        if !planned.contains_key(id) {
            doubled += 1;
        }
        match outcomes.get(id) {
            None => lost += 1,
            Some(k) => doubled += u64::from(k.saturating_sub(1)),
        }
    }
    // The reference: what was planned (and stored), counted plainly, in
    // the order the taps were made (their tap moments, from identity),
    // with every config change applied at the moment the server stored it.
    let mut model = Model::default();
    for p in &event.polls {
        let rules = p.rules.unwrap_or_default();
        model.rules.insert(
            p.poll_id.clone(),
            ModelRules {
                change: rules.mode() == v1::VoteMode::LastCounts,
                max: rules.max_choices.max(1) as usize,
                anon: rules.allow_anonymous,
            },
        );
    }
    let moments = tap_moments(js).await?;
    let changes = config_changes(js).await?;
    enum Step<'a> {
        Config(&'a ConfigChange),
        Tap(&'a String, &'a Planned),
    }
    let mut timeline: Vec<(std::time::SystemTime, u8, String, Step)> = Vec::new();
    for c in &changes {
        // A change stored at a tap's moment is in force for it.
        timeline.push((c.at, 0, String::new(), Step::Config(c)));
    }
    for (id, p) in planned {
        if let Some(t) = moments.get(id) {
            timeline.push((*t, 1, id.clone(), Step::Tap(id, p)));
        }
    }
    timeline.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    for (_, _, _, step) in &timeline {
        match step {
            Step::Config(c) => apply_to_model(&mut model, c),
            Step::Tap(id, p) => model.tap(id, &p.reader, Some(&voter_of(owners, &p.uid))),
        }
    }
    let kv = js.get_key_value(names::KV_RESULTS).await.map_err(err)?;
    let mut counts_match = true;
    let mut expected_votes = 0;
    let mut counted_votes = 0;
    for p in &event.polls {
        let want: BTreeMap<String, u64> = model.counts(&p.poll_id).into_iter().collect();
        expected_votes += want.values().sum::<u64>();
        // The tally republishes within a few seconds; wait for the final one.
        let mut got = BTreeMap::new();
        for _ in 0..60 {
            got = match kv.get(names::results_key(&p.poll_id)).await.map_err(err)? {
                Some(b) => v1::PollResults::decode(b.as_ref())
                    .map_err(err)?
                    .answers
                    .into_iter()
                    .filter(|a| a.votes > 0)
                    .map(|a| (a.answer_id, a.votes))
                    .collect(),
                None => BTreeMap::new(),
            };
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        counted_votes += got.values().sum::<u64>();
        counts_match &= got == want;
    }
    Ok(ChaosReport {
        taps,
        devices: opts.devices,
        reads_stored: stored_reads.values().map(|n| u64::from(*n)).sum(),
        outcomes_stored: outcomes.values().map(|n| u64::from(*n)).sum::<u64>() + corrections,
        corrections,
        expected_votes,
        counted_votes,
        lost,
        doubled,
        counts_match,
        faults,
        anymeta_answers: 0,
        duration_s: started.elapsed().as_secs_f64(),
        cluster_nodes: opts.cluster.max(1) as u32,
    })
}

/// A config change as the plain model knows it: poll open or not, reader
/// mappings.
fn apply_to_model(model: &mut Model, c: &ConfigChange) {
    use prost::Message as _;
    if let Some(id) = c.key.strip_prefix(names::config_keys::POLL_PREFIX) {
        let open = c
            .value
            .as_deref()
            .and_then(|v| v1::PollDefinition::decode(v).ok())
            .is_some_and(|p| p.state() == v1::PollState::Open);
        model.open.insert(id.to_string(), open);
    } else if let Some(id) = c.key.strip_prefix(names::config_keys::READER_PREFIX) {
        match c
            .value
            .as_deref()
            .and_then(|v| v1::ReaderMapping::decode(v).ok())
        {
            Some(m) => {
                model.map.insert(id.to_string(), (m.poll_id, m.answer_id));
            }
            None => {
                model.map.remove(id);
            }
        }
    }
}

/// A human summary.
pub fn render(r: &ChaosReport) -> String {
    let mut out = String::new();
    out.push_str(&format!("taps sent       {}\n", r.taps));
    out.push_str(&format!("reads stored    {}\n", r.reads_stored));
    out.push_str(&format!("outcomes stored {}\n", r.outcomes_stored));
    out.push_str(&format!("expected votes  {}\n", r.expected_votes));
    out.push_str(&format!("votes counted   {}\n", r.counted_votes));
    out.push_str(&format!("lost            {}\n", r.lost));
    out.push_str(&format!("doubled         {}\n", r.doubled));
    out.push_str(&format!("corrections     {}\n", r.corrections));
    out.push_str(&format!("counts match    {}\n", r.counts_match));
    out.push_str(&format!("anyMeta answers {}\n", r.anymeta_answers));
    out.push_str("faults:\n");
    for f in &r.faults {
        out.push_str(&format!("  {f}\n"));
    }
    out.push_str(&format!(
        "{} in {:.1} s\n",
        if r.passed() { "PASSED" } else { "FAILED" },
        r.duration_s
    ));
    out
}
