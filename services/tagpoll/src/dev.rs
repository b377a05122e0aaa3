//! `tagpoll dev`: the whole system on one machine, as child processes.
//!
//! Starts a private nats-server (unless `NATS_URL` is set), loads the event,
//! starts every service binary (they sit next to this executable), waits
//! until the web service answers, and stops everything on Ctrl-C. Children
//! are asked to die with us (`PR_SET_PDEATHSIG`), so even a SIGKILLed
//! `tagpoll dev` leaves no process behind.

use std::path::{Path, PathBuf};

pub use tagpoll_bus::process::ProcessError as DevError;

pub use tagpoll_bus::process::{ServiceProcess, die_with_parent, sibling_binary, terminate};

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
    if std::env::var("TAGPOLL_XMPP_JID").is_ok_and(|j| !j.is_empty()) {
        // The bridge reads every TAGPOLL_XMPP_* variable from the environment.
        specs.push(("tagpoll-xmpp", vec![]));
    }
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
