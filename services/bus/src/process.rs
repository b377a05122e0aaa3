//! Child processes: services started by `tagpoll dev`, tests, benchmarks
//! and fault runs. Children are asked to die with their parent
//! (`PR_SET_PDEATHSIG`), so a killed parent leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0} not found next to {1}: build every binary first (`cargo build --workspace`)")]
    MissingBinary(String, String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Nats(#[from] crate::nats_server::NatsServerError),
}

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
pub fn sibling_binary(name: &str) -> Result<PathBuf, ProcessError> {
    let exe =
        std::env::current_exe().map_err(|e| ProcessError::Io("current executable".into(), e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level deeper, in target/*/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ProcessError::MissingBinary(
        name.into(),
        dir.display().to_string(),
    ))
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
    ) -> Result<Self, ProcessError> {
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
    pub fn start(&mut self) -> Result<(), ProcessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ProcessError::Io(self.log.display().to_string(), e))?;
        let err = log
            .try_clone()
            .map_err(|e| ProcessError::Io(self.log.display().to_string(), e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        die_with_parent(&mut cmd);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| ProcessError::Io(self.binary.display().to_string(), e))?,
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
