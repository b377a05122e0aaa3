//! The web service's HTTP API against a real nats-server and the real
//! identity, tally and web binaries: every admin route's token check, every
//! error path, and admin actions changing what the public API reports.

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use tagpoll::dev::ServiceProcess;
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "web-api"
identity = ["file", "anonymous"]
unknown_tag_hint = "Link your tag at the info desk."

[[polls]]
id = "p1"
question = "Yes or no?"
allow_anonymous = true
answers = [{ id = "yes", label = "Yes" }, { id = "no", label = "No, \"never\"" }]

[[polls]]
id = "p2"
question = "Red or blue?"
answers = [{ id = "red", label = "Red" }, { id = "blue", label = "Blue" }]

[[readers]]
id = "yes"
poll = "p1"
answer = "yes"

[[readers]]
id = "no"
poll = "p1"
answer = "no"

[[readers]]
id = "blue"
poll = "p2"
answer = "blue"

[[people]]
id = "alice"
name = "Alice"
tags = ["04A1B2C3"]

[[people]]
id = "bob"
name = "Bob"
tags = ["7E6FD7A0"]
"#;

const ALICE: &[u8] = &[0x04, 0xA1, 0xB2, 0xC3];
const BOB: &[u8] = &[0x7E, 0x6F, 0xD7, 0xA0];
const STRANGER: &[u8] = &[0xDE, 0xAD, 0xBE, 0xEF];

/// Every admin route, with ids that exist in [`EVENT`].
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/admin/status"),
    ("POST", "/api/admin/polls/p1/open"),
    ("POST", "/api/admin/polls/p1/close"),
    ("POST", "/api/admin/polls/p1/hide"),
    ("POST", "/api/admin/polls/p1/reveal"),
    ("POST", "/api/admin/polls/p1/reset"),
    ("POST", "/api/admin/readers/no/map"),
];

struct Stack {
    bus: TestBus,
    site: String,
    _services: Vec<ServiceProcess>,
}

impl Stack {
    async fn start() -> Stack {
        let bus = TestBus::start();
        let event = write_file(&bus, "event.toml", EVENT);
        let out = bus.cli(&["load", &event]);
        assert!(out.status.success(), "tagpoll load: {out:?}");
        let port = tagpoll::nats_server::free_port().unwrap();
        let http = format!("127.0.0.1:{port}");
        let services = vec![
            bus.service("tagpoll-identity", &[], &[]),
            bus.service("tagpoll-tally", &[], &[]),
            bus.service("tagpoll-web", &["--http", &http], &[]),
        ];
        let site = format!("http://{http}");
        wait_http_ok(&format!("{site}/healthz")).await;
        Stack {
            bus,
            site,
            _services: services,
        }
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.bus.client().await)
    }

    /// A request with an optional bearer token and JSON body text; the
    /// status, the body as JSON (or a JSON string) and the headers.
    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let client = http_client();
        let url = format!("{}{path}", self.site);
        let mut req = match method {
            "GET" => client.get(&url),
            "POST" => client.post(&url),
            m => panic!("method {m}"),
        };
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json, headers)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let bearer = format!("Bearer {TEST_ADMIN_TOKEN}");
        let (s, v, _) = self.call(method, path, Some(&bearer), body).await;
        (s, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        http_json(&format!("{}{path}", self.site)).await
    }

    /// Waits until `GET path` answers 200 with a body `check` accepts.
    async fn wait_get(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = format!("{}{path}", self.site);
        eventually(Duration::from_secs(15), what, || {
            let url = url.clone();
            let check = &check;
            async move {
                let (status, body) = http_json(&url).await;
                if status == 200 && check(&body) {
                    Ok(body)
                } else {
                    Err(format!("{status} {body}"))
                }
            }
        })
        .await
    }
}

fn votes(results: &Value) -> Vec<u64> {
    results["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["votes"].as_u64().unwrap())
        .collect()
}

/// Taps and waits for the outcome, so later steps see the vote counted.
async fn vote(
    stack: &Stack,
    outcomes: &mut async_nats::Subscriber,
    reader: &str,
    uid: &[u8],
    read_id: &str,
) -> v1::VoteOutcome {
    tap(&stack.js().await, "dev-1", reader, uid, read_id).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = outcomes.next().await.expect("outcome subscription");
            let o = v1::VoteOutcome::decode(m.payload.as_ref()).unwrap();
            if o.read_id == read_id {
                return o;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome for {read_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_missing_and_wrong_tokens() {
    let stack = Stack::start().await;
    let body = r#"{"poll":"p1","answer":"yes"}"#;
    for (method, path) in ADMIN_ROUTES {
        for auth in [
            None,
            Some("Bearer not-the-token".to_string()),
            Some(format!("Bearer {TEST_ADMIN_TOKEN}x")),
            Some(format!("Basic {TEST_ADMIN_TOKEN}")),
            Some(TEST_ADMIN_TOKEN.to_string()),
            Some("Bearer ".to_string()),
        ] {
            let (status, json, headers) =
                stack.call(method, path, auth.as_deref(), Some(body)).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {json}");
            assert_eq!(json["field"], "authorization", "{method} {path}: {json}");
            assert!(json["error"].as_str().unwrap().contains("token"), "{json}");
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{method} {path}"
            );
        }
    }
    // Nothing changed: p1 is open, visible and in run 0; reader "no" votes no.
    let (_, polls) = stack.get("/api/polls").await;
    assert_eq!(polls[0]["state"], "open");
    assert!(polls[0].get("hidden").is_none());
    let (_, readers) = stack.get("/api/readers").await;
    assert!(
        readers
            .as_array()
            .unwrap()
            .contains(&json!({"id": "no", "poll": "p1", "answer": "no"}))
    );
    let (status, st) = stack.admin("GET", "/api/admin/status", None).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["polls"][0]["run"], 0);

    // The token from a file (a docker or systemd secret) wins over the variable.
    let token_file = stack.bus.path().join("admin-token");
    std::fs::write(&token_file, "token-from-a-file\n").unwrap();
    let port = tagpoll::nats_server::free_port().unwrap();
    let http = format!("127.0.0.1:{port}");
    let _web_file = stack.bus.service(
        "tagpoll-web",
        &["--http", &http],
        &[("TAGPOLL_ADMIN_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let from_file = format!("http://{http}");
    wait_http_ok(&format!("{from_file}/healthz")).await;
    for (token, expected) in [("token-from-a-file", 200), (TEST_ADMIN_TOKEN, 401)] {
        let resp = http_client()
            .get(format!("{from_file}/api/admin/status"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expected, "token {token:?}");
    }
    // An unreadable token file stops the service at start, naming the variable.
    let mut env = stack.bus.env();
    env.push((
        "TAGPOLL_ADMIN_TOKEN_FILE".into(),
        stack.bus.path().join("missing").display().to_string(),
    ));
    let mut child = std::process::Command::new(binary("tagpoll-web"))
        .args(["--http", "127.0.0.1:0"])
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(10), "tagpoll-web to refuse", || {
        let status = child.try_wait().unwrap();
        async move { status.ok_or_else(|| "still running".to_string()) }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!exited.success());
    assert!(
        stderr.contains("TAGPOLL_ADMIN_TOKEN_FILE=") && stderr.contains("cannot read the token"),
        "{stderr}"
    );

    // A web service started without a token serves the public API but no admin call.
    let port = tagpoll::nats_server::free_port().unwrap();
    let http = format!("127.0.0.1:{port}");
    let _web = stack.bus.service(
        "tagpoll-web",
        &["--http", &http],
        &[("TAGPOLL_ADMIN_TOKEN", "")],
    );
    let other = format!("http://{http}");
    wait_http_ok(&format!("{other}/healthz")).await;
    let (status, _) = http_json(&format!("{other}/api/polls")).await;
    assert_eq!(status, 200);
    let client = http_client();
    for (method, path) in ADMIN_ROUTES {
        for auth in ["", "Bearer ", "Bearer anything"] {
            let url = format!("{other}{path}");
            let req = if *method == "GET" {
                client.get(&url)
            } else {
                client.post(&url).body(body)
            };
            let resp = req.header("Authorization", auth).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 503, "{method} {path}");
            let json: Value = resp.json().await.unwrap();
            assert!(
                json["error"]
                    .as_str()
                    .unwrap()
                    .contains("TAGPOLL_ADMIN_TOKEN"),
                "{json}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_things_are_404_and_bad_requests_name_the_field() {
    let stack = Stack::start().await;
    let not_found: &[(&str, &str, &str)] = &[
        ("GET", "/api/polls/nope/results", "poll"),
        ("GET", "/api/polls/nope/export", "poll"),
        ("GET", "/api/polls/nope/export?format=csv", "poll"),
        ("GET", "/api/readers/nope", "reader"),
        ("GET", "/api/readers/nope/events", "reader"),
        ("POST", "/api/admin/polls/nope/open", "poll"),
        ("POST", "/api/admin/polls/nope/close", "poll"),
        ("POST", "/api/admin/polls/nope/hide", "poll"),
        ("POST", "/api/admin/polls/nope/reveal", "poll"),
        ("POST", "/api/admin/polls/nope/reset", "poll"),
        ("GET", "/api/nothing-here", "path"),
    ];
    for (method, path, field) in not_found {
        let (status, json) = stack.admin(method, path, None).await;
        assert_eq!(status, 404, "{method} {path}: {json}");
        assert_eq!(json["field"], *field, "{method} {path}: {json}");
        assert!(json["error"].is_string(), "{json}");
    }
    // The public ones say 404 without a token too.
    let (status, _) = stack.get("/api/polls/nope/results").await;
    assert_eq!(status, 404);

    let (status, json) = stack.get("/api/polls/p1/export?format=xml").await;
    assert_eq!(
        (status, json["field"].as_str()),
        (400, Some("format")),
        "{json}"
    );
    let (status, json) = stack.get("/api/readers/bad.id").await;
    assert_eq!(
        (status, json["field"].as_str()),
        (400, Some("reader")),
        "{json}"
    );

    let map = "/api/admin/readers/no/map";
    let bad: &[(&str, u16, &str)] = &[
        (r#"{"poll": "p1"}"#, 400, "answer"),
        (r#"{"answer": "yes"}"#, 400, "poll"),
        (r#"{"poll": "p1", "answer": null}"#, 400, "answer"),
        (r#"{"poll": "p1", "answer": 7}"#, 400, "answer"),
        (r#"{"poll": "p1", "answer": "not valid"}"#, 400, "answer"),
        ("not json", 400, "body"),
        ("[]", 400, "body"),
        (r#"{"poll": "p1", "answer": "maybe"}"#, 422, "answer"),
        (r#"{"poll": "nope", "answer": "yes"}"#, 422, "poll"),
        (r#"{"poll": "p2", "answer": "yes"}"#, 422, "answer"),
    ];
    for (body, code, field) in bad {
        let (status, json) = stack.admin("POST", map, Some(body)).await;
        assert_eq!(status, *code, "map {body}: {json}");
        assert_eq!(json["field"], *field, "map {body}: {json}");
    }
    let (status, json) = stack
        .admin(
            "POST",
            "/api/admin/readers/bad.id/map",
            Some(r#"{"poll": "p1", "answer": "yes"}"#),
        )
        .await;
    assert_eq!(
        (status, json["field"].as_str()),
        (400, Some("reader")),
        "{json}"
    );
    // None of it changed the mapping.
    let (_, reader) = stack.get("/api/readers/no").await;
    assert_eq!(
        (reader["poll"].as_str(), reader["answer"].as_str()),
        (Some("p1"), Some("no"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_change_what_the_public_api_reports() {
    let stack = Stack::start().await;
    let client = stack.bus.client().await;
    let mut outcomes = client.subscribe(subjects::OUTCOMES_ALL).await.unwrap();
    client.flush().await.unwrap();
    let results = "/api/polls/p1/results";

    assert_eq!(
        vote(&stack, &mut outcomes, "yes", ALICE, "r0-a")
            .await
            .kind(),
        v1::OutcomeKind::Accepted
    );
    vote(&stack, &mut outcomes, "no", BOB, "r0-b").await;
    stack
        .wait_get(results, "two votes", |r| votes(r) == [1, 1])
        .await;

    // Close: the public list says so, and a tap is not counted.
    let (status, p) = stack.admin("POST", "/api/admin/polls/p1/close", None).await;
    assert_eq!((status, p["state"].as_str()), (200, Some("closed")), "{p}");
    stack
        .wait_get("/api/polls", "p1 closed", |p| p[0]["state"] == "closed")
        .await;
    let o = vote(&stack, &mut outcomes, "yes", STRANGER, "r0-closed").await;
    assert_eq!(o.reject_reason(), v1::RejectReason::PollClosed);
    let r = stack
        .wait_get(results, "closed results", |r| r["state"] == "closed")
        .await;
    assert_eq!(r["total"], 2);
    let (status, p) = stack.admin("POST", "/api/admin/polls/p1/open", None).await;
    assert_eq!((status, p["state"].as_str()), (200, Some("open")), "{p}");
    stack
        .wait_get("/api/polls", "p1 open again", |p| p[0]["state"] == "open")
        .await;

    // Hide: the contract's shape stays, counts are gone, "hidden" says why.
    let (status, p) = stack.admin("POST", "/api/admin/polls/p1/hide", None).await;
    assert_eq!((status, &p["hidden"]), (200, &json!(true)), "{p}");
    let r = stack
        .wait_get(results, "hidden results", |r| r["hidden"] == true)
        .await;
    assert_eq!(
        r,
        json!({"poll": "p1", "question": "Yes or no?", "state": "open", "total": 0, "hidden": true,
               "answers": [{"id": "yes", "label": "Yes", "votes": 0},
                           {"id": "no", "label": "No, \"never\"", "votes": 0}]})
    );
    let (_, polls) = stack.get("/api/polls").await;
    assert_eq!(polls[0]["hidden"], true);
    // Voting goes on while hidden; the live stream does not leak it either.
    vote(&stack, &mut outcomes, "yes", STRANGER, "r0-hidden").await;
    let first = first_sse_event(&stack.site, "/api/events").await;
    assert_eq!(
        (first["poll"].as_str(), &first["total"], &first["hidden"]),
        (Some("p1"), &json!(0), &json!(true)),
        "{first}"
    );
    let (status, json) = stack.get("/api/polls/p1/export?format=csv").await;
    assert_eq!(
        (status, json["field"].as_str()),
        (403, Some("poll")),
        "{json}"
    );
    let (status, export) = stack.admin("GET", "/api/polls/p1/export", None).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(
        export["total"], 3,
        "the admin token sees hidden counts: {export}"
    );
    let (_, st) = stack.admin("GET", "/api/admin/status", None).await;
    assert_eq!(
        (st["polls"][0]["hidden"].as_bool(), &st["polls"][0]["total"]),
        (Some(true), &json!(3))
    );

    // Reveal: counts are back.
    let (status, _) = stack
        .admin("POST", "/api/admin/polls/p1/reveal", None)
        .await;
    assert_eq!(status, 200);
    let r = stack
        .wait_get(results, "revealed results", |r| {
            r.get("hidden").is_none() && r["total"] == 3
        })
        .await;
    assert_eq!(votes(&r), [2, 1]);

    // Exports: CSV with a header row, JSON with the run.
    let resp = http_client()
        .get(format!("{}/api/polls/p1/export?format=csv", stack.site))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(
        resp.text().await.unwrap(),
        "poll,run,answer,label,votes\np1,0,yes,Yes,2\np1,0,no,\"No, \"\"never\"\"\",1\n"
    );
    let (_, export) = stack.get("/api/polls/p1/export?format=json").await;
    assert_eq!(
        (export["run"].as_u64(), export["total"].as_u64()),
        (Some(0), Some(3)),
        "{export}"
    );
    assert!(export["exported_at"].is_string());

    // Reset: a new run starts at zero; the old run's votes stay in the vote stream.
    let (status, p) = stack.admin("POST", "/api/admin/polls/p1/reset", None).await;
    assert_eq!((status, &p["run"]), (200, &json!(1)), "{p}");
    let r = stack
        .wait_get(results, "a fresh run", |r| r["total"] == 0)
        .await;
    assert_eq!(votes(&r), [0, 0]);
    let o = vote(&stack, &mut outcomes, "no", ALICE, "r1-a").await;
    assert_eq!(
        (o.kind(), o.run),
        (v1::OutcomeKind::Accepted, 1),
        "Alice votes afresh in run 1"
    );
    stack
        .wait_get(results, "the new run's vote", |r| votes(r) == [0, 1])
        .await;
    let mut counted_by_run = std::collections::BTreeMap::<u32, u32>::new();
    tagpoll_bus::replay::replay(
        &stack.js().await,
        names::STREAM_VOTES,
        None,
        |_, subject, payload| {
            let o = v1::VoteOutcome::decode(payload).unwrap();
            if o.poll_id == "p1" && matches!(o.kind(), v1::OutcomeKind::Accepted) {
                *counted_by_run.entry(o.run).or_default() += 1;
            }
            assert!(subject.starts_with("tagpoll.outcomes."));
        },
    )
    .await
    .unwrap();
    assert_eq!(
        counted_by_run,
        [(0, 3), (1, 1)].into_iter().collect(),
        "vote stream by run"
    );
    let (_, export) = stack.get("/api/polls/p1/export").await;
    assert_eq!(
        (export["run"].as_u64(), export["total"].as_u64()),
        (Some(1), Some(1))
    );

    // Remap: reader "blue" now votes "yes" in p1.
    let (status, m) = stack
        .admin(
            "POST",
            "/api/admin/readers/blue/map",
            Some(r#"{"poll": "p1", "answer": "yes"}"#),
        )
        .await;
    assert_eq!(
        (status, m),
        (200, json!({"id": "blue", "poll": "p1", "answer": "yes"}))
    );
    stack
        .wait_get("/api/readers", "the new mapping", |r| {
            r.as_array()
                .unwrap()
                .contains(&json!({"id": "blue", "poll": "p1", "answer": "yes"}))
        })
        .await;
    let o = vote(&stack, &mut outcomes, "blue", BOB, "r1-b").await;
    assert_eq!((o.poll_id.as_str(), o.answer_id.as_str()), ("p1", "yes"));
    stack
        .wait_get(results, "the remapped reader's vote", |r| {
            votes(r) == [1, 1]
        })
        .await;
    // A reader that had no mapping gets one.
    let (status, _) = stack
        .admin(
            "POST",
            "/api/admin/readers/new-reader/map",
            Some(r#"{"poll": "p2", "answer": "red"}"#),
        )
        .await;
    assert_eq!(status, 200);
    stack
        .wait_get("/api/readers/new-reader", "the new reader", |r| {
            r["answer_label"] == "Red"
        })
        .await;
}

/// The data of the first event of an SSE stream.
async fn first_sse_event(site: &str, path: &str) -> Value {
    SseReader::open(site, path).await.next_event().await.1
}

/// Reads a Server-Sent Events stream event by event, pings skipped.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(site: &str, path: &str) -> SseReader {
        let resp = http_client()
            .get(format!("{site}{path}"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next named event and its JSON data.
    async fn next_event(&mut self) -> (String, Value) {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !name.is_empty() && name != "ping" {
                    return (name, serde_json::from_str(&data).unwrap_or(Value::Null));
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .expect("no SSE event within 20 s")
                .expect("stream error")
                .expect("stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_kiosk_stream_metrics_and_openapi() {
    let stack = Stack::start().await;
    let client = stack.bus.client().await;
    let mut outcomes = client.subscribe(subjects::OUTCOMES_ALL).await.unwrap();
    client.flush().await.unwrap();

    // The kiosk stream: what the reader stands for, then each tap's outcome.
    let mut kiosk = SseReader::open(&stack.site, "/api/readers/blue/events").await;
    let (name, info) = kiosk.next_event().await;
    assert_eq!(name, "reader");
    assert_eq!(
        info,
        json!({"id": "blue", "mapped": true, "poll": "p2", "answer": "blue", "location": "",
               "question": "Red or blue?", "answer_label": "Blue", "state": "open"})
    );
    let mut results = SseReader::open(&stack.site, "/api/events").await;
    for poll in ["p1", "p2"] {
        let (name, r) = results.next_event().await;
        assert_eq!((name.as_str(), r["poll"].as_str()), ("results", Some(poll)));
    }
    let o = vote(&stack, &mut outcomes, "blue", BOB, "k-bob").await;
    assert_eq!(o.kind(), v1::OutcomeKind::Accepted);
    let (name, out) = kiosk.next_event().await;
    assert_eq!(name, "outcome");
    assert_eq!(
        (
            out["read_id"].as_str(),
            out["kind"].as_str(),
            out["name"].as_str(),
            out["headline"].as_str()
        ),
        (
            Some("k-bob"),
            Some("accepted"),
            Some("Bob"),
            Some("Thanks, Bob — you voted Blue")
        )
    );
    assert!(
        out.get("voter_id").is_none(),
        "no voter ids to kiosks: {out}"
    );
    // The results stream saw the vote within moments.
    let (_, r) = results.next_event().await;
    assert_eq!(
        (r["poll"].as_str(), &r["total"]),
        (Some("p2"), &json!(1)),
        "{r}"
    );
    // p2 takes no anonymous votes: an unknown tag, with the event's hint.
    vote(&stack, &mut outcomes, "blue", STRANGER, "k-stranger").await;
    let (_, out) = kiosk.next_event().await;
    assert_eq!(
        (
            out["kind"].as_str(),
            out["reject_reason"].as_str(),
            out["headline"].as_str(),
            out["detail"].as_str()
        ),
        (
            Some("rejected"),
            Some("unknown_tag"),
            Some("We don't know this tag"),
            Some("Link your tag at the info desk.")
        )
    );
    // A remap reaches the kiosk as a new reader event.
    let (status, _) = stack
        .admin(
            "POST",
            "/api/admin/readers/blue/map",
            Some(r#"{"poll": "p2", "answer": "red"}"#),
        )
        .await;
    assert_eq!(status, 200);
    let (name, info) = kiosk.next_event().await;
    assert_eq!(
        (name.as_str(), info["answer_label"].as_str()),
        ("reader", Some("Red"))
    );

    // Status: services from their heartbeats, a device that goes quiet,
    // unknown tags per reader.
    let hb = v1::Heartbeat {
        kind: "device".into(),
        name: "box-1".into(),
        instance: "box-1-test".into(),
        interval_secs: 1,
        spool_depth: 7,
        frame_errors: 2,
        nats_connected: true,
        readers: vec![v1::ReaderHealth {
            reader_id: "blue".into(),
            state: "connected".into(),
            protocol: "sm130".into(),
            frame_errors: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    // Sent on every check, as a live device would: it counts as online for
    // only 3 s after each one, and the services may take longer to show up.
    let st = eventually(
        Duration::from_secs(20),
        "status with services and the device",
        || {
            let (stack, client, hb) = (&stack, &client, &hb);
            async move {
                client
                    .publish(
                        subjects::heartbeat("device", "box-1", "box-1-test"),
                        hb.encode_to_vec().into(),
                    )
                    .await
                    .unwrap();
                client.flush().await.unwrap();
                let (status, st) = stack.admin("GET", "/api/admin/status", None).await;
                let online = |kind: &str, name: &str| {
                    st[kind]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|s| s["name"] == name && s["online"] == true))
                };
                if status == 200
                    && online("services", "tally")
                    && online("services", "identity")
                    && online("devices", "box-1")
                {
                    Ok(st)
                } else {
                    Err(format!("{status} {st}"))
                }
            }
        },
    )
    .await;
    let dev = &st["devices"][0];
    assert_eq!(
        (
            &dev["spool_depth"],
            &dev["frame_errors"],
            &dev["offline_after_secs"]
        ),
        (&json!(7), &json!(2), &json!(3)),
        "{dev}"
    );
    let blue = st["readers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "blue")
        .unwrap()
        .clone();
    assert_eq!(
        (
            &blue["online"],
            &blue["device"],
            &blue["unknown_tags"],
            &blue["frame_errors"]
        ),
        (&json!(true), &json!("box-1"), &json!(1), &json!(2)),
        "{blue}"
    );
    assert!(blue["last_tap_at"].is_string(), "{blue}");
    assert_eq!(st["unknown_tags"]["total"], 1);
    assert_eq!(st["unknown_tags"]["by_reader"]["blue"], 1);
    // Three missed one-second heartbeats: offline, and so is its reader.
    eventually(
        Duration::from_secs(10),
        "the quiet device to go offline",
        || {
            let stack = &stack;
            async move {
                let (_, st) = stack.admin("GET", "/api/admin/status", None).await;
                let blue = st["readers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["id"] == "blue")
                    .cloned();
                if st["devices"][0]["online"] == false && blue.is_some_and(|b| b["online"] == false)
                {
                    Ok(())
                } else {
                    Err(st.to_string())
                }
            }
        },
    )
    .await;

    // Metrics in the Prometheus text format.
    let text = http_client()
        .get(format!("{}/metrics", stack.site))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "# TYPE tagpoll_web_http_requests_total counter",
        "tagpoll_web_http_requests_total{route=\"/api/admin/status\",method=\"GET\",status=\"200\"}",
        "tagpoll_web_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
        "tagpoll_web_sse_clients{stream=\"results\"} 1\n",
        "tagpoll_web_sse_clients{stream=\"reader\"} 1\n",
        "tagpoll_web_unknown_tags_total 1\n",
        "tagpoll_web_outcomes_total 2\n",
        "tagpoll_web_kiosk_events_total 2\n",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle:?}:\n{text}");
    }
    let updates: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tagpoll_web_results_updates_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(updates >= 1, "{text}");
    drop(kiosk);
    drop(results);
    eventually(
        Duration::from_secs(5),
        "SSE clients to be counted out",
        || async {
            let text = http_client()
                .get(format!("{}/metrics", stack.site))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("tagpoll_web_sse_clients{stream=\"results\"} 0\n")
                && text.contains("tagpoll_web_sse_clients{stream=\"reader\"} 0\n")
            {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;

    // The OpenAPI document is served and names the contract's routes.
    let (status, doc) = stack.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/api/polls",
        "/api/polls/{poll}/results",
        "/api/polls/{poll}/export",
        "/api/admin/status",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
}
