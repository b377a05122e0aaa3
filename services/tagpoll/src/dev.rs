//! `tagpoll dev`: the whole system on one machine, as child processes.
//!
//! Starts a private nats-server (unless `NATS_URL` is set), loads the event,
//! starts every service binary (they sit next to this executable), waits
//! until the web service answers, and stops everything on Ctrl-C. Children
//! are asked to die with us (`PR_SET_PDEATHSIG`), so even a SIGKILLed
//! `tagpoll dev` leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Makes the child receive SIGTERM when the spawning thread's process dies.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
}

/// SIGTERM, then SIGKILL if the child is still there after `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Path of a sibling binary (`tagpoll-web` next to `tagpoll`).
pub fn sibling_binary(name: &str) -> Result<PathBuf, DevError> {
    let exe = std::env::current_exe().map_err(|e| DevError::Io("current executable".into(), e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level deeper, in target/*/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DevError::MissingBinary(
        name.into(),
        dir.display().to_string(),
    ))
}

/// Errors of `tagpoll dev`.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0} not found next to {1}: build every binary first (`cargo build --workspace`)")]
    MissingBinary(String, String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Nats(#[from] crate::nats_server::NatsServerError),
}

/// One supervised service process.
pub struct ServiceProcess {
    pub name: String,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    restarts: u32,
}

impl ServiceProcess {
    pub fn new(
        name: &str,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self, DevError> {
        Ok(ServiceProcess {
            name: name.to_string(),
            binary: sibling_binary(name)?,
            args: args.to_vec(),
            env: env.to_vec(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            restarts: 0,
        })
    }

    /// Starts the process, appending its output to `LOGDIR/NAME.log`.
    pub fn start(&mut self) -> Result<(), DevError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| DevError::Io(self.log.display().to_string(), e))?;
        let err = log
            .try_clone()
            .map_err(|e| DevError::Io(self.log.display().to_string(), e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        die_with_parent(&mut cmd);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| DevError::Io(self.binary.display().to_string(), e))?,
        );
        Ok(())
    }

    /// Restarts the process if it exited; returns its exit status if it did.
    pub fn revive_if_dead(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.restarts += 1;
        let _ = self.start();
        Some(format!("{status} (restart #{})", self.restarts))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash or power cut would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random hex secret (for the voter key and admin token).
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Reads `path`, creating it with a fresh secret (mode 0600) if missing.
pub fn secret_file(path: &Path) -> Result<String, DevError> {
    if let Ok(s) = std::fs::read_to_string(path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_string());
    }
    let secret = random_secret();
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DevError::Io(path.display().to_string(), e))?;
    use std::io::Write;
    f.write_all(secret.as_bytes())
        .map_err(|e| DevError::Io(path.display().to_string(), e))?;
    Ok(secret)
}

/// What `tagpoll dev` runs.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub event_file: PathBuf,
    pub http: String,
    pub simulate: bool,
    /// Simulated taps per second, all readers together.
    pub sim_rate: f64,
    pub data_dir: PathBuf,
}

/// Everything `tagpoll dev` started, stopped in reverse order on drop.
pub struct DevSystem {
    pub nats_url: String,
    pub web_url: String,
    pub admin_token: String,
    pub services: Vec<ServiceProcess>,
    pub server: Option<crate::nats_server::NatsServer>,
}

impl DevSystem {
    /// Restarts services that died; returns a line per restart.
    pub fn supervise(&mut self) -> Vec<String> {
        self.services
            .iter_mut()
            .filter_map(|s| {
                s.revive_if_dead()
                    .map(|why| format!("{} exited: {why}; see {}", s.name, s.log_path().display()))
            })
            .collect()
    }

    /// Stops services, then the server.
    pub fn shutdown(&mut self) {
        while let Some(mut s) = self.services.pop() {
            s.stop();
        }
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }
}

impl Drop for DevSystem {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the server (unless `NATS_URL` is set) and every service.
/// The event must already be validated; loading it is the caller's job
/// (it needs a NATS connection), done between [`start_bus`] and [`start_services`].
pub fn start_bus(
    opts: &DevOptions,
) -> Result<(String, Option<crate::nats_server::NatsServer>), DevError> {
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| DevError::Io(opts.data_dir.display().to_string(), e))?;
    match std::env::var("NATS_URL") {
        Ok(url) if !url.is_empty() => Ok((url, None)),
        _ => {
            let server =
                crate::nats_server::NatsServer::start(crate::nats_server::ServerOptions {
                    dir: opts.data_dir.join("nats"),
                    port: 0,
                    sync_always: true,
                })?;
            Ok((server.url(), Some(server)))
        }
    }
}

/// Starts identity, tally, web and (unless disabled) the simulated readers.
pub fn start_services(
    opts: &DevOptions,
    nats_url: String,
    server: Option<crate::nats_server::NatsServer>,
) -> Result<DevSystem, DevError> {
    let logs = opts.data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| DevError::Io(logs.display().to_string(), e))?;
    let voter_key_file = opts.data_dir.join("voter.key");
    secret_file(&voter_key_file)?;
    let admin_token = match std::env::var("TAGPOLL_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => secret_file(&opts.data_dir.join("admin.token"))?,
    };
    let mut env = vec![
        ("NATS_URL".to_string(), nats_url.clone()),
        ("TAGPOLL_ADMIN_TOKEN".to_string(), admin_token.clone()),
    ];
    if std::env::var_os("TAGPOLL_VOTER_KEY").is_none()
        && std::env::var_os("TAGPOLL_VOTER_KEY_FILE").is_none()
    {
        env.push((
            "TAGPOLL_VOTER_KEY_FILE".into(),
            voter_key_file.display().to_string(),
        ));
    }
    let mut system = DevSystem {
        nats_url,
        web_url: format!("http://{}/", opts.http),
        admin_token,
        services: Vec::new(),
        server,
    };
    let mut specs: Vec<(&str, Vec<String>)> = vec![
        ("tagpoll-identity", vec![]),
        ("tagpoll-tally", vec![]),
        ("tagpoll-web", vec!["--http".into(), opts.http.clone()]),
    ];
    if opts.simulate {
        specs.push((
            "tagpoll-reader",
            vec![
                "--device".into(),
                "sim".into(),
                "--simulate".into(),
                "--sim-rate".into(),
                opts.sim_rate.to_string(),
                "--spool".into(),
                opts.data_dir.join("spool").display().to_string(),
            ],
        ));
    }
    for (name, args) in specs {
        let mut p = ServiceProcess::new(name, &args, &env, &logs)?;
        p.start()?;
        system.services.push(p);
    }
    Ok(system)
}
