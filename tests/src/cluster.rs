//! nats-server processes started from the deployment configurations in
//! `deploy/`, on loopback, for the deployment and chaos tests.
//!
//! - [`DeployServer`]: one server with `deploy/nats/nats.conf` (JetStream,
//!   monitoring port, the per-role users and permissions of `auth.conf`).
//! - [`Cluster`]: three servers with `deploy/cluster/node{1,2,3}.conf`,
//!   routed to each other, JetStream on each.
//! - [`ServerProcess`]: one such process: start, [`ServerProcess::kill`]
//!   (SIGKILL, like a crash), [`ServerProcess::stop`] (SIGTERM),
//!   [`ServerProcess::restart`] on the same ports and store.
//!
//! Every role's password is [`role_password`] (tests only). The binary is
//! found by [`tagpoll::nats_server::find_binary`]; a missing one fails the
//! test with instructions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tagpoll::nats_server::{find_binary, free_port, log_len, wait_for_server};

/// The roles of `deploy/nats/users.conf` whose passwords come from the
/// environment (`TAGPOLL_NATS_PW_<ROLE>`).
pub const ROLES: [&str; 6] = ["admin", "identity", "tally", "web", "xmpp", "sim"];

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The test password of a role (letters and digits, as
/// `deploy/secrets/generate.sh` makes them).
pub fn role_password(role: &str) -> String {
    format!("ptest{}", role.replace(['-', '_'], ""))
}

/// `TAGPOLL_NATS_PW_<ROLE>` for every role, plus the cluster's route password.
pub fn password_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ROLES
        .iter()
        .map(|r| {
            (
                format!("TAGPOLL_NATS_PW_{}", r.to_uppercase()),
                role_password(r),
            )
        })
        .collect();
    env.push(("TAGPOLL_NATS_PW_ROUTE".into(), role_password("route")));
    env
}

/// One nats-server child with a config file and environment, killed when dropped.
pub struct ServerProcess {
    name: String,
    conf: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    port: u16,
    http_port: u16,
    child: Option<Child>,
    /// Where the running child's part of the log begins.
    log_from: u64,
}

impl ServerProcess {
    /// Starts `nats-server -c CONF` with `env` and waits until it serves
    /// clients on `port`.
    pub fn start(
        name: &str,
        conf: &Path,
        env: Vec<(String, String)>,
        log: &Path,
        port: u16,
        http_port: u16,
    ) -> Result<Self, String> {
        let mut p = Self::spawn_only(name, conf, env, log, port, http_port)?;
        p.wait_ready(Duration::from_secs(20))?;
        Ok(p)
    }

    fn spawn_only(
        name: &str,
        conf: &Path,
        env: Vec<(String, String)>,
        log: &Path,
        port: u16,
        http_port: u16,
    ) -> Result<Self, String> {
        let mut p = ServerProcess {
            name: name.to_string(),
            conf: conf.to_path_buf(),
            env,
            log: log.to_path_buf(),
            port,
            http_port,
            child: None,
            log_from: 0,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = find_binary().map_err(|e| e.to_string())?;
        self.log_from = log_len(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("-c")
            .arg(&self.conf)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        tagpoll::dev::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        wait_for_server(
            self.port,
            self.child.as_mut(),
            &self.log,
            self.log_from,
            limit,
        )
        .map_err(|e| {
            format!(
                "nats-server {} ({}): {e}\n{}",
                self.name,
                self.conf.display(),
                self.log_tail(30)
            )
        })
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port (`/healthz`, `/jsz`, `/connz`).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(n).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            tagpoll::dev::terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// Starts the server again (stopping it first if it runs) on the same
    /// ports, store and configuration, and waits until it serves clients.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(20))
    }

    /// Sends SIGHUP: the server re-reads its configuration (users, permissions).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }

    /// GET `path` on the monitoring port: (status, body), or None if it
    /// does not answer.
    pub fn monitor(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of nats-server {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        self.kill();
    }
}

/// A tiny HTTP/1.0 GET on loopback (the monitoring port needs no client library).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

fn io_panic<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn copy_dir(from: &Path, to: &Path) {
    io_panic("creating config folder", std::fs::create_dir_all(to));
    for e in io_panic("reading deploy/nats", std::fs::read_dir(from)) {
        let e = io_panic("reading deploy/nats", e);
        if e.path().is_file() {
            io_panic(
                "copying a config file",
                std::fs::copy(e.path(), to.join(e.file_name())),
            );
        }
    }
}

/// One nats-server with the production configuration of `deploy/nats/`
/// (copied into the test folder first, so [`DeployServer::add_device`]
/// edits the copy).
pub struct DeployServer {
    pub server: ServerProcess,
    /// The copy of `deploy/nats/`.
    pub conf_dir: PathBuf,
    /// Where device passwords go.
    pub secrets_dir: PathBuf,
}

impl DeployServer {
    /// Starts `deploy/nats/{conf}` (e.g. `nats.conf`, `nats-tls.conf`) with
    /// the test passwords and `extra_env` (e.g. the TLS file paths).
    pub fn start(dir: &Path, conf: &str, extra_env: &[(&str, String)]) -> DeployServer {
        let conf_dir = dir.join("conf");
        copy_dir(&repo_root().join("deploy/nats"), &conf_dir);
        let store = dir.join("store");
        io_panic("creating the store", std::fs::create_dir_all(&store));
        let store = io_panic("store path", std::fs::canonicalize(&store));
        let port = io_panic("free port", free_port());
        let http_port = io_panic("free port", free_port());
        let mut env = password_env();
        env.extend([
            ("TAGPOLL_NATS_HOST".to_string(), "127.0.0.1".to_string()),
            ("TAGPOLL_NATS_PORT".to_string(), port.to_string()),
            ("TAGPOLL_NATS_HTTP_PORT".to_string(), http_port.to_string()),
            (
                "TAGPOLL_NATS_STORE".to_string(),
                store.display().to_string(),
            ),
        ]);
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let server = ServerProcess::start(
            "deploy",
            &conf_dir.join(conf),
            env,
            &dir.join("nats-server.log"),
            port,
            http_port,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        DeployServer {
            server,
            conf_dir,
            secrets_dir: dir.join("secrets"),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Runs `deploy/nats/add-device.sh` on the copied `users.conf`, reloads
    /// the server, and returns the device's user and password.
    pub fn add_device(&self, device: &str) -> (String, String) {
        let out = Command::new("bash")
            .arg(repo_root().join("deploy/nats/add-device.sh"))
            .arg("--users")
            .arg(self.conf_dir.join("users.conf"))
            .arg("--secrets")
            .arg(&self.secrets_dir)
            .arg(device)
            .output()
            .expect("run add-device.sh");
        assert!(
            out.status.success(),
            "add-device.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = format!("reader-{device}");
        let password = std::fs::read_to_string(self.secrets_dir.join(format!("{user}.password")))
            .expect("device password file")
            .trim()
            .to_string();
        self.server.reload();
        (user, password)
    }
}

/// Three nats-servers routed into one cluster with
/// `deploy/cluster/node{1,2,3}.conf`, each with JetStream, on loopback.
pub struct Cluster {
    dir: PathBuf,
    nodes: Vec<ServerProcess>,
}

impl Cluster {
    /// Starts the three nodes with their stores under `dir` and waits until
    /// every node reports JetStream healthy (a meta leader is elected).
    /// Panics with the nodes' logs if they do not come up in 30 s.
    pub fn start(dir: &Path) -> Cluster {
        io_panic("creating the cluster folder", std::fs::create_dir_all(dir));
        let dir = io_panic("cluster folder", std::fs::canonicalize(dir));
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| {
                (
                    io_panic("free port", free_port()),
                    io_panic("free port", free_port()),
                    io_panic("free port", free_port()),
                )
            })
            .collect();
        let routes: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, _, cluster))| {
                (
                    format!("TAGPOLL_ROUTE_{}", i + 1),
                    format!(
                        "nats-route://route:{}@127.0.0.1:{cluster}",
                        role_password("route")
                    ),
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, http_port, cluster_port)) in ports.iter().enumerate() {
            let n = i + 1;
            let store = dir.join(format!("n{n}/store"));
            io_panic("creating a node store", std::fs::create_dir_all(&store));
            let mut env = password_env();
            env.extend(routes.iter().cloned());
            env.extend([
                ("TAGPOLL_NATS_HOST".to_string(), "127.0.0.1".to_string()),
                ("TAGPOLL_NATS_PORT".to_string(), port.to_string()),
                ("TAGPOLL_NATS_HTTP_PORT".to_string(), http_port.to_string()),
                ("TAGPOLL_CLUSTER_PORT".to_string(), cluster_port.to_string()),
                (
                    "TAGPOLL_NATS_STORE".to_string(),
                    store.display().to_string(),
                ),
            ]);
            let node = ServerProcess::spawn_only(
                &format!("n{n}"),
                &repo_root().join(format!("deploy/cluster/node{n}.conf")),
                env,
                &dir.join(format!("n{n}/nats-server.log")),
                *port,
                *http_port,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            nodes.push(node);
        }
        let mut cluster = Cluster { dir, nodes };
        for node in &mut cluster.nodes {
            node.wait_ready(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node's `/healthz` answers 200.
    pub fn wait_healthy(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            let mut last = String::new();
            let all = self.nodes.iter_mut().all(|n| {
                if !n.is_running() {
                    return true;
                }
                match n.monitor("/healthz") {
                    Some((200, _)) => true,
                    other => {
                        last = format!("{}: {other:?}", n.name);
                        false
                    }
                }
            });
            if all {
                return;
            }
            if start.elapsed() > limit {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail(20)))
                    .collect();
                panic!(
                    "cluster not healthy within {limit:?}; last: {last}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The client URL of every node, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// All client URLs comma-separated, as `NATS_URL` takes them.
    pub fn nats_url(&self) -> String {
        self.urls().join(",")
    }

    /// Environment for a service or the `tagpoll` command logged in as
    /// `role` (see [`ROLES`]) against the whole cluster.
    pub fn role_env(&self, role: &str) -> Vec<(String, String)> {
        vec![
            ("NATS_URL".into(), self.nats_url()),
            ("NATS_USER".into(), role.into()),
            ("NATS_PASSWORD".into(), role_password(role)),
        ]
    }

    /// Node `node` (0, 1 or 2).
    pub fn node(&mut self, node: usize) -> &mut ServerProcess {
        &mut self.nodes[node]
    }

    /// Kills node `node` (0, 1 or 2) with SIGKILL.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Stops node `node` with SIGTERM.
    pub fn stop(&mut self, node: usize) {
        self.nodes[node].stop();
    }

    /// Starts node `node` again on its ports and store, and waits until it serves clients.
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The folder holding the nodes' stores and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
