//! docker-compose.yml: parsed and checked structurally (services, build,
//! restart policies, health checks, environment, secrets, volumes, every
//! referenced file), validated with `docker compose config` or
//! `docker-compose config` when either tool is on PATH, and its helper
//! scripts (the nats entry point with deploy/nats/nats.conf, the image's
//! entry point and health check, the secrets generator) run for real here,
//! outside docker.
//!
//! Without a compose tool the structural checks are the test: it prints that
//! it did not run the tool and still passes or fails on those checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tagpoll_tests::cluster::{http_get, repo_root, role_password};
use yaml_rust2::{Yaml, YamlLoader};

/// The compose services a complete event needs.
const CORE: [&str; 5] = ["nats", "identity", "tally", "xmpp", "web"];

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml"))
        .expect("docker-compose.yml at the repository root");
    let mut docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn key(y: &Yaml) -> String {
    y.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{y:?}"))
}

/// Resolves `${VAR:-default}` / `${VAR-default}` to the default (and a bare
/// `${VAR}` to ""), as compose would with nothing set.
fn with_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').expect("closed ${");
        let inner = &after[..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map(|(_, d)| d)
            .unwrap_or("");
        out.push_str(default);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        _ => None,
    }
}

/// A service's environment as a map (compose allows a map or a list).
fn env_of(svc: &Yaml) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match &svc["environment"] {
        Yaml::Hash(h) => {
            for (k, v) in h {
                env.insert(key(k), scalar(v).unwrap_or_default());
            }
        }
        Yaml::Array(a) => {
            for item in a {
                let s = item.as_str().unwrap_or_default();
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                env.insert(k.to_string(), v.to_string());
            }
        }
        _ => {}
    }
    env
}

fn strings(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
        Yaml::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

fn secrets_of(svc: &Yaml) -> BTreeSet<String> {
    match &svc["secrets"] {
        Yaml::Array(a) => a
            .iter()
            .map(|s| match s {
                Yaml::Hash(_) => key(&s["source"]),
                other => key(other),
            })
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn uses_our_image(svc: &Yaml) -> bool {
    !svc["build"].is_badvalue()
}

/// Files `deploy/secrets/generate.sh` makes, by running it into a temp folder.
fn generated_secrets(dir: &Path) -> BTreeSet<String> {
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/secrets/generate.sh"))
        .arg(dir)
        .output()
        .expect("run deploy/secrets/generate.sh");
    assert!(
        out.status.success(),
        "generate.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            let name = e.file_name().to_string_lossy().to_string();
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(
                text.len() >= 33 && text.chars().all(|c| c.is_ascii_alphanumeric()),
                "{name}: a long secret of letters and digits"
            );
            assert!(
                text.starts_with(|c: char| c.is_ascii_alphabetic()),
                "{name} must start with a letter (nats-server parses env values)"
            );
            names.insert(name);
        }
    }
    // A second run keeps what exists.
    let before = std::fs::read_to_string(dir.join("voter-key")).unwrap();
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/secrets/generate.sh"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("voter-key")).unwrap(),
        before
    );
    names
}

#[test]
fn compose_file_describes_a_complete_event() {
    let doc = compose();
    let root = repo_root();
    let services = doc["services"].as_hash().expect("services:");
    let names: BTreeSet<String> = services.keys().map(key).collect();
    for s in CORE.iter().chain(&["load", "prosody", "reader-sim"]) {
        assert!(names.contains(*s), "service {s} missing; have {names:?}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let generated = generated_secrets(&tmp.path().join("secrets"));
    let declared_secrets = doc["secrets"].as_hash().expect("top-level secrets:");
    let declared_volumes: BTreeSet<String> = doc["volumes"]
        .as_hash()
        .expect("top-level volumes:")
        .keys()
        .map(key)
        .collect();
    let users_conf = std::fs::read_to_string(root.join("deploy/nats/users.conf")).unwrap();
    let mut roles_used = BTreeSet::new();

    for (name, svc) in services {
        let name = key(name);
        let profiles = strings(&svc["profiles"]);
        // Image or build, restart policy.
        assert!(
            !svc["image"].is_badvalue() || !svc["build"].is_badvalue(),
            "{name}: needs image or build"
        );
        let restart = svc["restart"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no restart policy"));
        assert!(
            ["always", "unless-stopped", "no"].contains(&restart)
                || restart.starts_with("on-failure"),
            "{name}: restart {restart}"
        );
        // Health checks on every long-running service.
        if name != "load" {
            let test = strings(&svc["healthcheck"]["test"]);
            assert!(
                test.len() >= 2 && ["CMD", "CMD-SHELL"].contains(&test[0].as_str()),
                "{name}: healthcheck.test {test:?}"
            );
        }
        let env = env_of(svc);
        let secrets = secrets_of(svc);
        if uses_our_image(svc) {
            assert_eq!(
                svc["build"]
                    .as_str()
                    .or_else(|| svc["build"]["context"].as_str()),
                Some("."),
                "{name}: builds the repository's Dockerfile"
            );
            assert_eq!(
                env.get("NATS_URL").map(String::as_str),
                Some("nats://nats:4222"),
                "{name}: NATS_URL"
            );
            // Logs in as its own role with its own password secret.
            let role = env
                .get("NATS_USER")
                .unwrap_or_else(|| panic!("{name}: NATS_USER"));
            assert!(
                users_conf.contains(&format!("{{user: {role},")),
                "{name}: role {role} is not a user in deploy/nats/users.conf"
            );
            assert_eq!(
                env.get("NATS_PASSWORD_FILE").map(String::as_str),
                Some(format!("/run/secrets/nats-pw-{role}").as_str()),
                "{name}: NATS_PASSWORD_FILE"
            );
            roles_used.insert(role.clone());
            if name != "load" {
                let test = strings(&svc["healthcheck"]["test"]);
                assert_eq!(
                    test.get(1).map(String::as_str),
                    Some("tagpoll-healthcheck"),
                    "{name}: uses the image's tagpoll-healthcheck"
                );
                // It asks the service itself: web's HTTP port, or the
                // /healthz next to /metrics on TAGPOLL_METRICS_ADDR.
                let port = if name == "web" {
                    "8080".to_string()
                } else {
                    let addr = env
                        .get("TAGPOLL_METRICS_ADDR")
                        .unwrap_or_else(|| panic!("{name}: TAGPOLL_METRICS_ADDR"));
                    addr.rsplit_once(':').expect("host:port").1.to_string()
                };
                assert_eq!(
                    test[2..],
                    ["http".to_string(), port, "/healthz".to_string()],
                    "{name}: healthcheck asks the service's own /healthz"
                );
                assert_eq!(
                    key(&svc["depends_on"]["load"]["condition"]),
                    "service_completed_successfully",
                    "{name}: starts after the admin created the streams"
                );
            }
        }
        // Every *_FILE setting is a secret this service has, declared at the
        // top with a file generate.sh makes.
        for (k, v) in &env {
            if k.ends_with("_FILE") {
                let secret = v
                    .strip_prefix("/run/secrets/")
                    .unwrap_or_else(|| panic!("{name}: {k}={v} is not a docker secret"));
                assert!(
                    secrets.contains(secret),
                    "{name}: {k} needs secret {secret}"
                );
            }
            // No secret values in the compose file: secret-looking settings
            // name files.
            let upper = k.to_uppercase();
            if (upper.contains("PASSWORD") || upper.contains("TOKEN") || upper.ends_with("_KEY"))
                && !v.starts_with('/')
            {
                panic!("{name}: {k}={v} carries a secret in the compose file; use a *_FILE secret");
            }
        }
        for secret in &secrets {
            let file = declared_secrets
                .get(&Yaml::String(secret.clone()))
                .unwrap_or_else(|| panic!("{name}: secret {secret} not declared"))["file"]
                .as_str()
                .unwrap_or_else(|| panic!("secret {secret}: no file"));
            let base = file
                .strip_prefix("./deploy/secrets/")
                .unwrap_or_else(|| panic!("secret {secret}: {file} outside deploy/secrets/"));
            assert!(
                generated.contains(base),
                "secret {secret}: generate.sh does not make {base} (makes {generated:?})"
            );
        }
        // Bind mounts come from the repository (secrets excepted); named
        // volumes are declared.
        for v in strings(&svc["volumes"]) {
            let v = with_defaults(&v);
            let source = v.split(':').next().unwrap();
            if source.starts_with("./") {
                if !source.starts_with("./deploy/secrets/") {
                    assert!(
                        root.join(source).exists(),
                        "{name}: mounts {source}, missing from the repository"
                    );
                }
            } else {
                assert!(
                    declared_volumes.contains(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        if name == "prosody" {
            assert!(profiles.iter().any(|p| p == "prosody"), "prosody: profile");
        }
        if name == "reader-sim" {
            assert_eq!(profiles, ["sim"], "reader-sim: profile sim");
        }
        if CORE.contains(&name.as_str()) || name == "load" {
            assert!(profiles.is_empty(), "{name} runs without a profile");
        }
    }

    // nats: JetStream config and store from deploy/, persistent volume,
    // health from the monitoring port, every role's password.
    let nats = &doc["services"]["nats"];
    let vols: Vec<String> = strings(&nats["volumes"]);
    assert!(
        vols.iter()
            .any(|v| v.starts_with("./deploy/nats:/etc/nats")),
        "nats: mounts ./deploy/nats: {vols:?}"
    );
    let env = env_of(nats);
    let store = &env["TAGPOLL_NATS_STORE"];
    assert!(
        vols.iter().any(|v| {
            let (src, dst) = v.split_once(':').unwrap();
            declared_volumes.contains(src) && store.starts_with(dst.trim_end_matches(":rw"))
        }),
        "nats: the JetStream store {store} is on a named volume: {vols:?}"
    );
    let command = strings(&nats["command"]).join(" ");
    let conf = with_defaults(&command)
        .split_whitespace()
        .find_map(|a| a.strip_prefix("/etc/nats/").map(str::to_string))
        .expect("nats: -c /etc/nats/FILE");
    let conf_text = std::fs::read_to_string(root.join("deploy/nats").join(&conf)).unwrap();
    assert!(
        conf_text.contains("sync_interval: always"),
        "{conf}: sync_interval: always"
    );
    assert!(
        conf_text.contains("include ./auth.conf"),
        "{conf}: users and permissions"
    );
    for e in strings(&nats["entrypoint"]) {
        if let Some(f) = e.strip_prefix("/etc/nats/") {
            assert!(
                root.join("deploy/nats").join(f).is_file(),
                "nats entrypoint {f}"
            );
        }
    }
    assert!(
        strings(&nats["healthcheck"]["test"])
            .iter()
            .any(|a| a.contains(":8222/healthz"))
    );
    let nats_secrets = secrets_of(nats);
    for role in &roles_used {
        assert!(
            nats_secrets.contains(&format!("nats-pw-{role}")),
            "nats: needs the password of role {role}"
        );
    }
    for role in tagpoll_tests::cluster::ROLES {
        assert!(
            nats_secrets.contains(&format!("nats-pw-{role}")),
            "nats: role {role}"
        );
    }

    // Role-specific settings.
    let env = |s: &str| env_of(&doc["services"][s]);
    let has = |e: &BTreeMap<String, String>, k: &str| {
        e.contains_key(k) || e.contains_key(&format!("{k}_FILE"))
    };
    assert!(
        has(&env("identity"), "TAGPOLL_VOTER_KEY"),
        "identity: voter key"
    );
    assert!(has(&env("web"), "TAGPOLL_ADMIN_TOKEN"), "web: admin token");
    assert!(
        env("web")["TAGPOLL_HTTP"].starts_with("0.0.0.0:"),
        "web listens beyond loopback"
    );
    for k in ["TAGPOLL_XMPP_JID", "TAGPOLL_XMPP_SERVER"] {
        assert!(env("xmpp").contains_key(k), "xmpp: {k}");
    }
    assert!(has(&env("xmpp"), "TAGPOLL_XMPP_PASSWORD"), "xmpp: password");
    assert!(
        strings(&doc["services"]["web"]["healthcheck"]["test"])
            .iter()
            .any(|a| a == "/healthz"),
        "web: healthcheck on /healthz"
    );
    // The one-shot load: admin, after nats is healthy, with the event file.
    let load = &doc["services"]["load"];
    assert_eq!(
        key(&load["depends_on"]["nats"]["condition"]),
        "service_healthy"
    );
    let cmd = strings(&load["command"]);
    assert_eq!(cmd[..2], ["tagpoll".to_string(), "load".to_string()]);
    let event_dir = with_defaults(&strings(&load["volumes"])[0]);
    let (src, dst) = event_dir.split_once(':').unwrap();
    let event_in_container = Path::new(&cmd[2]);
    let rel = event_in_container
        .strip_prefix(dst.trim_end_matches(":ro"))
        .expect("the event file is inside the mounted folder");
    assert!(
        root.join(src).join(rel).is_file(),
        "default event file {src}/{}",
        rel.display()
    );

    // The Dockerfile's inputs exist.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("FROM rust:1-bookworm AS build"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(
        dockerfile.contains("USER tagpoll"),
        "runs as a non-root user"
    );
    for line in dockerfile.lines() {
        if let Some(rest) = line.strip_prefix("COPY ")
            && !rest.starts_with("--from")
        {
            let src = rest.split_whitespace().next().unwrap();
            if src != "." {
                assert!(root.join(src).exists(), "Dockerfile copies {src}, missing");
            }
        }
    }
    let dockerignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    for must in ["target", "deploy/secrets", ".git"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == must),
            ".dockerignore: {must}"
        );
    }
    for bin in [
        "tagpoll",
        "tagpoll-identity",
        "tagpoll-tally",
        "tagpoll-web",
        "tagpoll-xmpp",
        "tagpoll-reader",
    ] {
        assert!(
            dockerfile.contains(&format!("target/release/{bin} "))
                || dockerfile.contains(&format!("target/release/{bin}\n"))
                || dockerfile.contains(&format!("target/release/{bin} \\")),
            "Dockerfile installs {bin}"
        );
        let in_compose = services
            .values()
            .any(|s| strings(&s["command"]).first().map(String::as_str) == Some(bin));
        if bin != "tagpoll-reader" && bin != "tagpoll" {
            assert!(in_compose, "a compose service runs {bin}");
        }
    }

    run_compose_tool(tmp.path());
}

/// `docker compose config` (v2) or `docker-compose config` (v1), on a copy
/// of the project with generated secrets, if either tool is installed.
fn run_compose_tool(tmp: &Path) {
    let has = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let tool: Option<(&str, Vec<&str>)> = if has("docker", &["compose", "version"]) {
        Some(("docker", vec!["compose"]))
    } else if has("docker-compose", &["version"]) {
        Some(("docker-compose", vec![]))
    } else {
        None
    };
    let Some((cmd, pre)) = tool else {
        println!(
            "no `docker compose` or `docker-compose` on PATH: did not run `config`; the structural checks above are the test"
        );
        return;
    };
    // The project as compose sees it, with secrets in place.
    let root = repo_root();
    let project = tmp.join("project");
    std::fs::create_dir_all(project.join("deploy")).unwrap();
    std::fs::copy(
        root.join("docker-compose.yml"),
        project.join("docker-compose.yml"),
    )
    .unwrap();
    for (from, to) in [
        ("Dockerfile", "Dockerfile"),
        ("examples", "examples"),
        ("deploy/nats", "deploy/nats"),
        ("deploy/docker", "deploy/docker"),
    ] {
        std::os::unix::fs::symlink(root.join(from), project.join(to)).unwrap();
    }
    generated_secrets(&project.join("deploy/secrets"));
    for profiles in [&[][..], &["--profile", "prosody", "--profile", "sim"][..]] {
        // docker-compose v1 has no --profile flag: it checks every service anyway.
        if cmd == "docker-compose" && !profiles.is_empty() {
            continue;
        }
        let out = Command::new(cmd)
            .args(&pre)
            .args(["-f", "docker-compose.yml"])
            .args(profiles)
            .args(["config", "-q"])
            .current_dir(&project)
            .env_remove("COMPOSE_FILE")
            .output()
            .expect("run compose");
        assert!(
            out.status.success(),
            "{cmd} {} config failed:\n{}{}",
            pre.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "`{cmd} {} {} config` accepted docker-compose.yml",
            pre.join(" "),
            profiles.join(" ")
        );
    }
}

fn nats_server_dir() -> PathBuf {
    tagpoll::nats_server::find_binary()
        .unwrap_or_else(|e| panic!("{e}"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_scripts_work_outside_docker() {
    let root = repo_root();
    for script in [
        "deploy/nats/entrypoint.sh",
        "deploy/docker/prosody/entrypoint.sh",
    ] {
        let ok = Command::new("sh")
            .arg("-n")
            .arg(root.join(script))
            .status()
            .unwrap();
        assert!(ok.success(), "sh -n {script}");
    }
    for script in [
        "deploy/docker/healthcheck.sh",
        "deploy/nats/add-device.sh",
        "deploy/secrets/generate.sh",
    ] {
        let ok = Command::new("bash")
            .arg("-n")
            .arg(root.join(script))
            .status()
            .unwrap();
        assert!(ok.success(), "bash -n {script}");
    }

    // The nats container's start: secret files -> TAGPOLL_NATS_PW_*, then
    // nats-server with deploy/nats/nats.conf.
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("run-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for role in tagpoll_tests::cluster::ROLES {
        std::fs::write(
            secrets.join(format!("nats-pw-{role}")),
            role_password(role) + "\n",
        )
        .unwrap();
    }
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let port = tagpoll::nats_server::free_port().unwrap();
    let http_port = tagpoll::nats_server::free_port().unwrap();
    let path = format!("{}:/usr/bin:/bin", nats_server_dir().display());
    let wrapper = dir.path().join("start-nats.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /bin/sh {} -c {}\n",
            root.join("deploy/nats/entrypoint.sh").display(),
            root.join("deploy/nats/nats.conf").display()
        ),
    )
    .unwrap();
    let env = [
        ("PATH".to_string(), path),
        (
            "TAGPOLL_SECRETS_DIR".to_string(),
            secrets.display().to_string(),
        ),
        ("TAGPOLL_NATS_HOST".to_string(), "127.0.0.1".to_string()),
        ("TAGPOLL_NATS_PORT".to_string(), port.to_string()),
        ("TAGPOLL_NATS_HTTP_PORT".to_string(), http_port.to_string()),
        (
            "TAGPOLL_NATS_STORE".to_string(),
            store.canonicalize().unwrap().display().to_string(),
        ),
    ];
    // The entry point execs nats-server from PATH, as in the container.
    let log = dir.path().join("nats.log");
    let mut child = {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&wrapper)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        tagpoll::dev::die_with_parent(&mut cmd);
        cmd.spawn().unwrap()
    };
    let _guard = KillOnDrop(&mut child);
    let healthy = tagpoll_tests::eventually(
        Duration::from_secs(20),
        "nats /healthz via the compose entry point",
        || async {
            match http_get(http_port, "/healthz") {
                Some((200, body)) => Ok(body),
                other => Err(format!(
                    "{other:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
            }
        },
    )
    .await;
    assert!(healthy.contains("ok"), "{healthy}");
    let url = format!("nats://127.0.0.1:{port}");
    // The password from the secret file works; the role cannot do admin things.
    let identity = async_nats::ConnectOptions::new()
        .user_and_password("identity".into(), role_password("identity"))
        .custom_inbox_prefix("_INBOX.identity")
        .connect(&url)
        .await
        .expect("identity logs in with the password from its secret file");
    identity.flush().await.unwrap();

    // The image's health check against a real HTTP endpoint (the monitoring
    // port): 200 passes, 404 fails. Against the services' own /healthz it
    // runs in tests/tests/tally.rs.
    let hc = root.join("deploy/docker/healthcheck.sh");
    let run_hc = |args: &[&str]| Command::new("bash").arg(&hc).args(args).output().unwrap();
    let hp = http_port.to_string();
    assert!(
        run_hc(&["http", &hp, "/healthz"]).status.success(),
        "http mode"
    );
    let nope = run_hc(&["http", &hp, "/nope"]);
    assert!(!nope.status.success(), "http mode, 404");
    assert!(
        String::from_utf8_lossy(&nope.stderr).contains("404"),
        "the failure says why: {}",
        String::from_utf8_lossy(&nope.stderr)
    );
    assert_eq!(run_hc(&["nats"]).status.code(), Some(2), "unknown mode");
    drop(identity);
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
