//! Least privilege on NATS, against a real nats-server started with the
//! production configuration in `deploy/nats/` (users, role permissions,
//! TLS): a reader device may publish taps for its own device only and read
//! only the feedback for its own taps; it cannot publish votes or results,
//! nor read the vote stream's subjects; a
//! wrong password is refused; the services run end to end with their own
//! role credentials and trip no permission; TLS with a private CA works and
//! a client without that CA is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tagpoll_bus::BusOptions;
use tagpoll_bus::connect::{TlsOptions, inbox_prefix_for_user};
use tagpoll_tests::cluster::{DeployServer, role_password};
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "perm"
identity = ["file", "anonymous"]

[[polls]]
id = "p1"
question = "Coffee or tea?"
allow_anonymous = true
answers = [{ id = "coffee", label = "Coffee" }, { id = "tea", label = "Tea" }]

[[readers]]
id = "coffee-left"
poll = "p1"
answer = "coffee"

[[readers]]
id = "tea"
poll = "p1"
answer = "tea"

[[people]]
id = "alice"
name = "Alice"
tags = ["04A1B2C3"]
"#;

fn show(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn role_env(url: &str, role: &str) -> Vec<(String, String)> {
    vec![
        ("NATS_URL".into(), url.into()),
        ("NATS_USER".into(), role.into()),
        ("NATS_PASSWORD".into(), role_password(role)),
        ("RUST_LOG".into(), "info,async_nats=warn".into()),
    ]
}

/// `tagpoll load` as the admin: creates the streams and buckets and stores the event.
fn admin_load(dir: &std::path::Path, url: &str, extra: &[(String, String)]) {
    let event = dir.join("event.toml");
    std::fs::write(&event, EVENT).unwrap();
    let mut env = role_env(url, "admin");
    env.extend(extra.iter().cloned());
    let out = cli_with_env(&["load", event.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "tagpoll load as admin: {}",
        show(&out)
    );
}

/// A client logged in as `user`, with its own inbox prefix, that records
/// every error the server sends it ("Permissions Violation ...").
async fn client_recording_errors(
    url: &str,
    user: &str,
    password: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .custom_inbox_prefix(inbox_prefix_for_user(user))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
    (client, errors)
}

async fn wait_for_error(errors: &Arc<Mutex<Vec<String>>>, needle: &str) {
    eventually(Duration::from_secs(5), needle, || {
        let errors = errors.clone();
        let needle = needle.to_string();
        async move {
            let seen = errors.lock().unwrap().clone();
            if seen.iter().any(|e| e.contains(&needle)) {
                Ok(())
            } else {
                Err(format!("server errors so far: {seen:?}"))
            }
        }
    })
    .await
}

fn tag_read(device: &str, reader: &str, read_id: &str) -> bytes::Bytes {
    v1::TagRead {
        read_id: read_id.into(),
        device_id: device.into(),
        reader_id: reader.into(),
        tag_uid: vec![0x04, 0xA1, 0xB2, 0xC3],
        technology: v1::TagTechnology::Simulated as i32,
        read_at: Some(tagpoll_proto::now()),
        device_seq: 0,
    }
    .encode_to_vec()
    .into()
}

/// Connects as a reader device's user, as tagpoll-reader does (own inbox
/// prefix), waiting for the server's asynchronous reload to accept it.
async fn connect_device(url: &str, user: &str, password: &str) -> async_nats::Client {
    eventually(Duration::from_secs(10), "device user accepted", || {
        let (url, user, password) = (url.to_string(), user.to_string(), password.to_string());
        async move {
            let opts = BusOptions {
                url,
                creds_file: None,
                user_password: Some((user.clone(), password)),
                name: "test-reader".into(),
                tls: TlsOptions::default(),
                inbox_prefix: Some(inbox_prefix_for_user(&user)),
            };
            tagpoll_bus::connect(&opts, false)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_credential_is_confined_to_its_own_device() {
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-perm-")
        .tempdir()
        .unwrap();
    let nats = DeployServer::start(dir.path(), "nats.conf", &[]);
    let url = nats.url();
    admin_load(dir.path(), &url, &[]);
    let (user, password) = nats.add_device("hall-left");
    assert_eq!(user, "reader-hall-left");

    let reader = connect_device(&url, &user, &password).await;

    let admin = async_nats::ConnectOptions::new()
        .user_and_password("admin".into(), role_password("admin"))
        .connect(&url)
        .await
        .expect("admin connects");
    let admin_js = async_nats::jetstream::new(admin.clone());

    // The positive path, exactly as tagpoll-reader runs it: look the streams
    // up (topology::ensure), publish a tap on its own subject, get the ack.
    let mut js = async_nats::jetstream::new(reader.clone());
    js.set_timeout(Duration::from_secs(2));
    tagpoll_bus::topology::ensure(&js)
        .await
        .expect("a reader device may look the streams up");
    let (seq, duplicate) = tagpoll_bus::publish::publish_for_read(
        &js,
        subjects::read("hall-left", "coffee-left"),
        "perm-t1",
        tag_read("hall-left", "coffee-left", "perm-t1"),
    )
    .await
    .expect("a device publishes taps for itself and gets JetStream's ack");
    assert_eq!((seq, duplicate), (1, false));

    // It hears the feedback for its own taps (LED/buzzer, the hook).
    let mut feedback = reader
        .subscribe(subjects::feedback_for_device("hall-left"))
        .await
        .unwrap();
    reader.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = v1::ReaderFeedback {
        outcome: Some(v1::VoteOutcome {
            read_id: "perm-t1".into(),
            device_id: "hall-left".into(),
            reader_id: "coffee-left".into(),
            poll_id: "p1".into(),
            ..Default::default()
        }),
        display_name: "Alice".into(),
    };
    admin
        .publish(
            subjects::feedback("hall-left", "coffee-left"),
            outcome.encode_to_vec().into(),
        )
        .await
        .unwrap();
    admin.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), feedback.next())
        .await
        .expect("the device receives its reader's feedback")
        .unwrap();
    assert_eq!(
        got.subject.as_str(),
        "tagpoll.feedback.hall-left.coffee-left"
    );
    let votes_before = stream_len(&admin_js, names::STREAM_VOTES).await;

    // Everything else is refused. Each attempt gets its own client, so a
    // permission error cannot be mistaken for the previous one's.
    let (dev, errors) = client_recording_errors(&url, &user, &password).await;
    let mut dev_js = async_nats::jetstream::new(dev.clone());
    dev_js.set_timeout(Duration::from_secs(2));

    // 1. A tap in another device's name.
    let r = tagpoll_bus::publish::publish_for_read(
        &dev_js,
        subjects::read("hall-right", "coffee-left"),
        "perm-t2",
        tag_read("hall-right", "coffee-left", "perm-t2"),
    )
    .await;
    assert!(
        r.is_err(),
        "a tap for another device must not be acknowledged"
    );
    wait_for_error(
        &errors,
        "Permissions Violation for Publish to \"tagpoll.reads.hall-right.coffee-left\"",
    )
    .await;

    // 1b. The subject grammar exactly (issue #15): a tap or heartbeat
    // subject with extra tokens under its own prefix, and a dead letter.
    for subject in [
        "tagpoll.reads.hall-left.coffee-left.extra",
        "tagpoll.heartbeat.device.hall-left.i1.extra",
        "tagpoll.dead.hall-left",
    ] {
        dev.publish(subject, "x".into()).await.unwrap();
        dev.flush().await.unwrap();
        wait_for_error(
            &errors,
            &format!("Permissions Violation for Publish to \"{subject}\""),
        )
        .await;
    }

    // 2. A vote (an outcome on the vote stream), through JetStream and plain.
    let forged = v1::VoteOutcome {
        read_id: "forged".into(),
        reader_id: "coffee-left".into(),
        poll_id: "p1".into(),
        answer_id: "coffee".into(),
        kind: v1::OutcomeKind::Accepted as i32,
        ..Default::default()
    };
    let r = dev_js
        .publish(
            subjects::outcome("p1", "coffee-left"),
            forged.encode_to_vec().into(),
        )
        .await;
    let acked = match r {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "a forged vote must not be acknowledged");
    wait_for_error(
        &errors,
        "Permissions Violation for Publish to \"tagpoll.outcomes.p1.coffee-left\"",
    )
    .await;

    // 3. Results: the core subject and the results bucket.
    dev.publish(subjects::results("p1"), "forged".into())
        .await
        .unwrap();
    dev.flush().await.unwrap();
    wait_for_error(
        &errors,
        "Permissions Violation for Publish to \"tagpoll.results.p1\"",
    )
    .await;
    let r = dev_js
        .publish("$KV.tagpoll_results.poll.p1", "forged".into())
        .await;
    let acked = match r {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "a forged results entry must not be acknowledged");
    wait_for_error(
        &errors,
        "Permissions Violation for Publish to \"$KV.tagpoll_results.poll.p1\"",
    )
    .await;

    // 4. Reading what is not its own: the vote stream's subjects (even for
    //    its own reader), other devices' feedback, another user's replies,
    //    the raw taps of other devices.
    for subject in [
        "tagpoll.outcomes.>",
        "tagpoll.outcomes.*.coffee-left",
        "tagpoll.feedback.>",
        "tagpoll.feedback.hall-right.>",
        "_INBOX.identity.>",
    ] {
        let _sub = dev.subscribe(subject).await.unwrap();
        dev.flush().await.unwrap();
        wait_for_error(
            &errors,
            &format!("Permissions Violation for Subscription to \"{subject}\""),
        )
        .await;
    }
    let stream = dev_js.get_stream(names::STREAM_READS).await.unwrap();
    let r = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await;
    assert!(r.is_err(), "a device must not read the taps stream");
    wait_for_error(&errors, "$JS.API.CONSUMER.CREATE.TAGPOLL_READS").await;

    // Nothing of that reached a stream or the results bucket.
    assert_eq!(stream_len(&admin_js, names::STREAM_READS).await, 1);
    assert_eq!(
        stream_len(&admin_js, names::STREAM_VOTES).await,
        votes_before
    );
    let results = admin_js.get_key_value(names::KV_RESULTS).await.unwrap();
    assert!(results.get("poll.p1").await.unwrap().is_none());

    // Wrong credentials are refused outright.
    for (who, user, password) in [
        ("wrong password", user.as_str(), "not-the-password"),
        (
            "another device's password",
            "reader-hall-right",
            password.as_str(),
        ),
        (
            "a service user with a device's password",
            "tally",
            password.as_str(),
        ),
    ] {
        let r = async_nats::ConnectOptions::new()
            .user_and_password(user.into(), password.into())
            .connect(&url)
            .await;
        let err = r.err().unwrap_or_else(|| panic!("{who}: connected"));
        assert!(
            err.to_string().to_lowercase().contains("authorization"),
            "{who}: {err}"
        );
    }
    let Err(err) = async_nats::connect(&url).await else {
        panic!("connected without credentials");
    };
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "{err}"
    );
    // The command says so too.
    let out = cli_with_env(
        &["results", "p1"],
        &[
            ("NATS_URL".into(), url.clone()),
            ("NATS_USER".into(), "admin".into()),
            ("NATS_PASSWORD".into(), "wrong".into()),
        ],
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("authorization"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_end_to_end_with_their_role_credentials() {
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-roles-")
        .tempdir()
        .unwrap();
    let nats = DeployServer::start(dir.path(), "nats.conf", &[]);
    let url = nats.url();
    admin_load(dir.path(), &url, &[]);
    let (dev_user, dev_password) = nats.add_device("hall-left");

    // Services log in as their roles, reading the password from a file
    // (NATS_PASSWORD_FILE) as they do in docker-compose.yml.
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let service = |name: &str, role: &str, args: &[&str], extra: &[(&str, &str)]| {
        let pw_file = dir.path().join(format!("nats-{role}.password"));
        std::fs::write(&pw_file, format!("{}\n", role_password(role))).unwrap();
        let mut env = vec![
            ("NATS_URL".to_string(), url.clone()),
            ("NATS_USER".to_string(), role.to_string()),
            (
                "NATS_PASSWORD_FILE".to_string(),
                pw_file.display().to_string(),
            ),
            ("TAGPOLL_VOTER_KEY".to_string(), TEST_VOTER_KEY.to_string()),
            (
                "TAGPOLL_ADMIN_TOKEN".to_string(),
                TEST_ADMIN_TOKEN.to_string(),
            ),
            ("RUST_LOG".to_string(), "info,async_nats=warn".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut p = tagpoll::dev::ServiceProcess::new(name, &args, &env, &logs)
            .unwrap_or_else(|e| panic!("{e}"));
        p.start().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        p
    };
    let http = format!("127.0.0.1:{}", tagpoll::nats_server::free_port().unwrap());
    let _identity = service("tagpoll-identity", "identity", &[], &[]);
    let _tally = service("tagpoll-tally", "tally", &[], &[]);
    let _web = service("tagpoll-web", "web", &["--http", &http], &[]);
    wait_http_ok(&format!("http://{http}/healthz")).await;

    // The reader device taps as itself and hears the feedback for its tap.
    let reader = connect_device(&url, &dev_user, &dev_password).await;
    let js = async_nats::jetstream::new(reader.clone());
    tagpoll_bus::topology::ensure(&js).await.unwrap();
    let mut feedback = reader
        .subscribe(subjects::feedback_for_device("hall-left"))
        .await
        .unwrap();
    reader.flush().await.unwrap();
    tagpoll_bus::publish::publish_for_read(
        &js,
        subjects::read("hall-left", "coffee-left"),
        "roles-t1",
        tag_read("hall-left", "coffee-left", "roles-t1"),
    )
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(20), feedback.next())
        .await
        .expect("the tally's feedback reaches the reader device")
        .unwrap();
    let fb = v1::ReaderFeedback::decode(msg.payload.as_ref()).unwrap();
    assert_eq!(fb.display_name, "Alice");
    let o = fb.outcome.expect("feedback carries the outcome");
    assert_eq!(o.read_id, "roles-t1");
    assert_eq!(o.kind(), v1::OutcomeKind::Accepted, "{o:?}");
    assert_eq!(o.voter_id, "file:alice");

    // The public API shows the count; the admin API (web's KV writes) works.
    let url_results = format!("http://{http}/api/polls/p1/results");
    eventually(Duration::from_secs(10), "results via web", || {
        let u = url_results.clone();
        async move {
            let (status, body) = http_json(&u).await;
            if status == 200 && body["total"] == 1 && body["answers"][0]["votes"] == 1 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        }
    })
    .await;
    let resp = http_client()
        .post(format!("http://{http}/api/admin/polls/p1/close"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "admin close via web: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );

    // A simulated reader (compose profile `sim`) as user `sim`.
    let spool = dir.path().join("sim-spool");
    let _sim = service(
        "tagpoll-reader",
        "sim",
        &[
            "--device",
            "sim",
            "--simulate",
            "--sim-rate",
            "20",
            "--spool",
            spool.to_str().unwrap(),
        ],
        &[],
    );
    let admin_env = role_env(&url, "admin");
    let admin = async_nats::ConnectOptions::new()
        .user_and_password("admin".into(), role_password("admin"))
        .connect(&url)
        .await
        .unwrap();
    let admin_js = async_nats::jetstream::new(admin);
    eventually(Duration::from_secs(20), "simulated taps decided", || {
        let js = admin_js.clone();
        async move {
            let n = stream_len(&js, names::STREAM_VOTES).await;
            if n >= 5 {
                Ok(())
            } else {
                Err(format!("{n} outcomes"))
            }
        }
    })
    .await;

    // The XMPP bridge as role xmpp, against a private Prosody: it follows
    // results and the vote stream (personal votes) and answers status.
    let prosody = tagpoll_tests::prosody::Prosody::start(&["bridge"]);
    prosody.register("bridge", "bridge-pw");
    let xmpp_server = prosody.c2s_addr();
    let _xmpp = service(
        "tagpoll-xmpp",
        "xmpp",
        &[],
        &[
            ("TAGPOLL_XMPP_JID", "bridge@localhost"),
            ("TAGPOLL_XMPP_PASSWORD", "bridge-pw"),
            ("TAGPOLL_XMPP_SERVER", &xmpp_server),
            ("TAGPOLL_XMPP_ALLOW_PLAINTEXT", "1"),
            ("TAGPOLL_XMPP_PUBSUB", tagpoll_tests::prosody::PUBSUB),
            ("TAGPOLL_XMPP_INTERVAL_MS", "200"),
            ("TAGPOLL_XMPP_IKPOLL", "1"),
            ("TAGPOLL_XMPP_IKPOLL_PERSONAL", "1"),
        ],
    );

    // Status: `tagpoll status` asks the services over NATS (they answer
    // through allow_responses); the admin page's monitor reads heartbeats.
    let out = cli_with_env(&["status", "--json"], &admin_env);
    assert!(out.status.success(), "tagpoll status: {}", show(&out));
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for s in ["identity", "tally"] {
        assert!(names.contains(&s), "status lists {s}: {status}");
    }
    eventually(Duration::from_secs(20), "xmpp bridge in status", || {
        let env = admin_env.clone();
        async move {
            let out = cli_with_env(&["status", "--json"], &env);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.contains("\"xmpp\"") {
                Ok(())
            } else {
                Err(text)
            }
        }
    })
    .await;
    // Let the bridge publish a few rounds (and the services a heartbeat or two).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resp = http_client()
        .get(format!("http://{http}/api/admin/status"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // The organiser's audit commands, as admin.
    let out = cli_with_env(&["replay", "p1"], &admin_env);
    assert!(out.status.success(), "tagpoll replay: {}", show(&out));
    let out = cli_with_env(&["export", "p1", "--format", "json"], &admin_env);
    assert!(out.status.success(), "tagpoll export: {}", show(&out));

    // No service tripped over a permission it lacks.
    let log = nats.server.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "permission violations in nats-server's log:\n{}",
        violations.join("\n")
    );
}

/// A throwaway CA and a server certificate for 127.0.0.1/localhost, written
/// as PEM files; returns (ca, server cert, server key, client cert, client key).
fn make_pki(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tagpoll test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "tagpoll nats");
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "tagpoll reader hall-left");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server_cert.pem()),
        ("server-key.pem", server_key.serialize_pem()),
        ("client.pem", client_cert.pem()),
        ("client-key.pem", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    let dir = tempfile::Builder::new()
        .prefix("tagpoll-tls-")
        .tempdir()
        .unwrap();
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let [ca, cert, key, client_cert, client_key] = make_pki(&pki_dir);
    let path = |p: &std::path::PathBuf| p.display().to_string();

    // Server TLS (nats-tls.conf): the command trusts the CA through NATS_CA.
    let tls_dir = dir.path().join("tls");
    let nats = DeployServer::start(
        &tls_dir,
        "nats-tls.conf",
        &[
            ("TAGPOLL_NATS_TLS_CERT", path(&cert)),
            ("TAGPOLL_NATS_TLS_KEY", path(&key)),
        ],
    );
    let url = nats.url();
    admin_load(&tls_dir, &url, &[("NATS_CA".into(), path(&ca))]);
    let mut env = role_env(&url, "admin");
    env.push(("NATS_CA".into(), path(&ca)));
    let out = cli_with_env(&["results", "p1"], &env);
    assert!(out.status.success(), "results over TLS: {}", show(&out));

    // The same through the bus options, as every service connects.
    let opts = BusOptions {
        url: url.clone(),
        creds_file: None,
        user_password: Some(("web".into(), role_password("web"))),
        name: "tls-test".into(),
        tls: TlsOptions {
            ca_file: Some(path(&ca)),
            client_cert: None,
        },
        inbox_prefix: Some(inbox_prefix_for_user("web")),
    };
    let client = tagpoll_bus::connect(&opts, false)
        .await
        .expect("a client with the CA connects");
    let js = async_nats::jetstream::new(client);
    tagpoll_bus::topology::ensure(&js)
        .await
        .expect("JetStream over TLS");

    // Without the CA (system roots only) the server's certificate is not trusted.
    let out = cli_with_env(&["results", "p1"], &role_env(&url, "admin"));
    assert!(
        !out.status.success(),
        "a client without the CA must not connect: {}",
        show(&out)
    );
    // A missing CA file is reported as such.
    let mut env = role_env(&url, "admin");
    env.push(("NATS_CA".into(), path(&pki_dir.join("nope.pem"))));
    let out = cli_with_env(&["results", "p1"], &env);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.pem"),
        "{}",
        show(&out)
    );
    drop(nats);

    // Client certificates (nats-mtls.conf): the password still decides the
    // role, and a client without a certificate is refused.
    let mtls_dir = dir.path().join("mtls");
    let nats = DeployServer::start(
        &mtls_dir,
        "nats-mtls.conf",
        &[
            ("TAGPOLL_NATS_TLS_CERT", path(&cert)),
            ("TAGPOLL_NATS_TLS_KEY", path(&key)),
            ("TAGPOLL_NATS_TLS_CA", path(&ca)),
        ],
    );
    let url = nats.url();
    let cert_env = [
        ("NATS_CA".to_string(), path(&ca)),
        ("NATS_TLS_CERT".to_string(), path(&client_cert)),
        ("NATS_TLS_KEY".to_string(), path(&client_key)),
    ];
    admin_load(&mtls_dir, &url, &cert_env);
    let mut env = role_env(&url, "admin");
    env.push(("NATS_CA".into(), path(&ca)));
    let out = cli_with_env(&["results", "p1"], &env);
    assert!(
        !out.status.success(),
        "a client without a certificate must be refused: {}",
        show(&out)
    );
    let mut env = role_env(&url, "admin");
    env.extend(cert_env.iter().cloned());
    let out = cli_with_env(&["results", "p1"], &env);
    assert!(out.status.success(), "results over mTLS: {}", show(&out));
}
