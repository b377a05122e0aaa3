//! The end-to-end test harness: real servers, real service binaries.
//!
//! # Layout
//! - [`TestBus`]: a private `nats-server -js` on a free loopback port with a
//!   temp store, stopped when dropped (also when a test panics).
//! - [`TestBus::service`]: starts a service binary from the build's target
//!   folder against that server, killed when dropped.
//! - [`cli`]: runs the `tagpoll` command.
//! - [`http_json`], [`eventually`]: small helpers for assertions.
//! - [`reference`]: the plain reference model of the poll rules (from the tally crate).
//!
//! A missing `nats-server` fails the test with instructions; nothing here
//! ever skips.

pub mod cluster;
pub use tagpoll_tally::reference;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tagpoll::dev::ServiceProcess;
use tagpoll::nats_server::{NatsServer, ServerOptions};

pub mod prosody;
pub mod tcp_proxy;

pub use tagpoll_proto::{names, subjects, v1};

/// A voter key every test service shares, so anonymous ids are stable.
pub const TEST_VOTER_KEY: &str = "test-voter-key-0123456789abcdef";
/// The admin token test services use.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// A private nats-server plus a temp folder for everything a test writes.
pub struct TestBus {
    pub server: NatsServer,
    pub dir: tempfile::TempDir,
}

impl TestBus {
    /// Starts nats-server with `deploy/nats/dev.conf` (sync_interval: always).
    pub fn start() -> TestBus {
        let dir = tempfile::Builder::new()
            .prefix("tagpoll-test-")
            .tempdir()
            .expect("temp dir");
        let server = NatsServer::start(ServerOptions {
            dir: dir.path().join("nats"),
            port: 0,
            sync_always: true,
        })
        .unwrap_or_else(|e| panic!("cannot start nats-server for the test: {e}"));
        TestBus { server, dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A client connected to the test server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
    }

    /// Environment every service gets.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NATS_URL".into(), self.url()),
            ("TAGPOLL_VOTER_KEY".into(), TEST_VOTER_KEY.into()),
            ("TAGPOLL_ADMIN_TOKEN".into(), TEST_ADMIN_TOKEN.into()),
            ("RUST_LOG".into(), "info,async_nats=warn".into()),
            // An error a service exits with stays one readable line in its
            // log (panics still get their backtrace from RUST_BACKTRACE).
            ("RUST_LIB_BACKTRACE".into(), "0".into()),
        ]
    }

    /// Starts a service binary (e.g. `tagpoll-tally`); its log goes to the
    /// test's temp folder and is printed if the test fails.
    pub fn service(&self, name: &str, args: &[&str], extra_env: &[(&str, &str)]) -> ServiceProcess {
        let logs = self.dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut env = self.env();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut p = ServiceProcess::new(name, &args, &env, &logs).unwrap_or_else(|e| panic!("{e}"));
        p.start().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        p
    }

    /// Runs `tagpoll ARGS` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_env(args, &self.env())
    }

    /// Folder for files a test writes.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.dir.path().join("logs"));
            dump_logs(&self.dir.path().join("nats"));
        }
    }
}

fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("----- last lines of {} -----", p.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Path of a workspace binary built next to the test binary.
pub fn binary(name: &str) -> PathBuf {
    tagpoll::dev::sibling_binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the `tagpoll` command with `env`.
pub fn cli_with_env(args: &[&str], env: &[(String, String)]) -> Output {
    std::process::Command::new(binary("tagpoll"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run tagpoll")
}

/// GET a URL and parse JSON, with the status code.
pub async fn http_json(url: &str) -> (u16, serde_json::Value) {
    let resp = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, json)
}

/// A reqwest client on the one TLS stack (rustls + ring).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Polls `check` until it returns Some or `limit` passes; panics with
/// `what` and the last observation on timeout.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `url` answers 200.
pub async fn wait_http_ok(url: &str) {
    let client = http_client();
    eventually(Duration::from_secs(30), url, || {
        let client = client.clone();
        async move {
            match client.get(url).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Publishes a tap as a reader would and waits for JetStream's ack.
pub async fn tap(
    js: &async_nats::jetstream::Context,
    device: &str,
    reader: &str,
    uid: &[u8],
    read_id: &str,
) {
    use prost::Message;
    let read = v1::TagRead {
        read_id: read_id.into(),
        device_id: device.into(),
        reader_id: reader.into(),
        tag_uid: uid.to_vec(),
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: 0,
    };
    tagpoll_bus::publish::publish_for_read(
        js,
        subjects::read(device, reader),
        read_id,
        read.encode_to_vec().into(),
    )
    .await
    .unwrap_or_else(|e| panic!("publishing tap {read_id}: {e}"));
}

/// Writes `text` to a file in the test folder and returns its path.
pub fn write_file(bus: &TestBus, name: &str, text: &str) -> String {
    let p = bus.path().join(name);
    std::fs::write(&p, text).expect("write test file");
    p.display().to_string()
}

/// A running `tagpoll dev` with its own private nats-server.
pub struct DevProcess {
    pub child: Child,
    pub nats_url: String,
}

impl DevProcess {
    /// Starts `tagpoll dev` on `http` with its data in `data`, waits for its banner.
    pub fn start(data: &std::path::Path, http: &str, extra: &[&str]) -> DevProcess {
        let mut child = Command::new(binary("tagpoll"))
            .args(["dev", "--http", http, "--data"])
            .arg(data)
            .args([
                "--event",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/event.toml"),
            ])
            .args(extra)
            .env_remove("NATS_URL")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tagpoll dev");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut nats_url = String::new();
        let mut url_line = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read tagpoll dev output");
            if let Some(u) = line.trim().strip_prefix("NATS:") {
                nats_url = u.trim().to_string();
            }
            if line.contains("results page:") {
                url_line = line.clone();
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        assert!(
            url_line.contains(&format!("http://{http}/")),
            "no results URL printed: {url_line:?}"
        );
        assert!(
            nats_url.starts_with("nats://127.0.0.1:"),
            "no NATS URL printed"
        );
        std::thread::spawn(move || for _ in lines {});
        DevProcess { child, nats_url }
    }

    /// Ctrl-C, and the exit status.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGINT,
        )
        .unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("tagpoll dev did not stop within 10 s of Ctrl-C");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        // A failing test must not leave `tagpoll dev` running; its own
        // children follow it (PR_SET_PDEATHSIG).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every message of a stream, in stream order, with its sequence.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(u64, bytes::Bytes)> {
    let mut s = js.get_stream(stream).await.expect("stream");
    let last = s.info().await.expect("stream info").state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return out;
    }
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut msgs = consumer.messages().await.expect("messages");
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut msgs)).await
    {
        let m = m.expect("message");
        let seq = m.info().expect("info").stream_sequence;
        out.push((seq, m.payload.clone()));
        if seq >= last {
            break;
        }
    }
    out
}

/// Messages stored in a stream.
///
/// A request that fails (a JetStream API timeout just after a server restart on a loaded
/// machine) is asked again for up to 15 s before the test fails, so callers inside
/// [`eventually`] are not cut short by one slow answer.
pub async fn stream_len(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = async {
            let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            s.info()
                .await
                .map(|i| i.state.messages)
                .map_err(|e| e.to_string())
        };
        match info.await {
            Ok(n) => return n,
            Err(e) if Instant::now() > deadline => panic!("length of stream {stream}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until `stream` holds `n` messages.
pub async fn wait_len(js: &async_nats::jetstream::Context, stream: &str, n: u64, limit: Duration) {
    eventually(limit, &format!("{n} messages in {stream}"), || async {
        let got = stream_len(js, stream).await;
        if got >= n {
            Ok(())
        } else {
            Err(format!("{got}"))
        }
    })
    .await;
}
