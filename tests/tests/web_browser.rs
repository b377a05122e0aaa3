//! The web pages in a real headless Chromium, driven over W3C WebDriver
//! (chromedriver's HTTP API, spoken with reqwest + serde_json), against a
//! real nats-server and the real identity, tally and web binaries.
//!
//! Screenshots go to `target/test-artifacts/`. A missing chromium or
//! chromedriver fails the test with instructions; nothing here skips.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tagpoll_tests::*;

const EVENT: &str = r#"
[event]
id = "web-browser"
identity = ["file", "anonymous"]
unknown_tag_hint = "Link your tag at the info desk."

[[polls]]
id = "p1"
question = "Yes or no?"
allow_anonymous = true
answers = [{ id = "yes", label = "Yes" }, { id = "no", label = "No" }]

[[polls]]
id = "p2"
question = "Red or blue?"
answers = [{ id = "red", label = "Red" }, { id = "blue", label = "Blue" }]

[[readers]]
id = "yes"
poll = "p1"
answer = "yes"
location = "by the door"

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

[[people]]
id = "carol"
name = "Carol"
tags = ["0A0B0C0D"]
"#;

const ALICE: &[u8] = &[0x04, 0xA1, 0xB2, 0xC3];
const BOB: &[u8] = &[0x7E, 0x6F, 0xD7, 0xA0];
const CAROL: &[u8] = &[0x0A, 0x0B, 0x0C, 0x0D];
const STRANGER: &[u8] = &[0xDE, 0xAD, 0xBE, 0xEF];

/// `target/test-artifacts/`, next to the build's profile folders.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/web_browser-HASH → target
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary inside target/<profile>/deps");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// A program from `$ENV` or the PATH, or a failure that says what to do.
fn find_program(env: &str, names: &[&str]) -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os(env) {
        Some(p) => vec![PathBuf::from(p)],
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .collect(),
    };
    if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
        return p;
    }
    panic!(
        "{} not found on PATH (or in ${env}): the browser tests need Debian's chromium and \
         chromium-driver; run scripts/setup.sh to install them",
        names.join(" / ")
    );
}

/// One chromedriver process with one browser session; both go away on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(log: &Path) -> Browser {
        let chromium = find_program("CHROMIUM", &["chromium", "chromium-browser"]);
        let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let port = tagpoll::nats_server::free_port().unwrap();
        let log = std::fs::File::create(log).expect("chromedriver log");
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        tagpoll::dev::die_with_parent(&mut cmd);
        let driver = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = http_client();
        let profile = tempfile::Builder::new()
            .prefix("tagpoll-chromium-")
            .tempdir()
            .unwrap();
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let status_url = format!("{}/status", browser.base);
        let http = browser.http.clone();
        eventually(Duration::from_secs(20), "chromedriver to be ready", || {
            let (http, url) = (http.clone(), status_url.clone());
            async move {
                let v: Value = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if v["value"]["ready"] == true {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            }
        })
        .await;
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1280,800".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let v = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args}
                }}}),
            )
            .await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {v}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`, panics on an error.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let resp = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    async fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), json!({ "url": url }))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until it returns `expected`; on timeout saves a
    /// screenshot named after `what` and fails with the last value.
    async fn wait_for(&self, what: &str, script: &str, expected: Value) {
        let start = Instant::now();
        loop {
            let v = self.js(script).await;
            if v == expected {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let shot = self
                    .screenshot(&format!("FAILED-{}", what.replace(' ', "-")))
                    .await;
                panic!(
                    "timed out waiting for {what}: `{script}` returned {v}, expected {expected}; \
                     screenshot {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                &self.s("/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/value")),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &self.s(&format!("/element/{id}/click")), json!({}))
            .await;
    }

    /// Saves a screenshot once CSS transitions (bars growing) have settled.
    async fn screenshot(&self, name: &str) -> PathBuf {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = self.call("GET", &self.s("/screenshot"), Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        let path = artifacts_dir().join(format!("web_browser-{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromedriver closes Chromium), synchronously:
        // Drop cannot await. Then the driver itself goes.
        if !self.session.is_empty() {
            let addr = self.base.trim_start_matches("http://").to_string();
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session
                );
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        tagpoll::dev::terminate(&mut self.driver, Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_update_live_answer_the_voter_and_guard_admin() {
    let bus = TestBus::start();
    let event = write_file(&bus, "event.toml", EVENT);
    let out = bus.cli(&["load", &event]);
    assert!(out.status.success(), "tagpoll load: {out:?}");
    let port = tagpoll::nats_server::free_port().unwrap();
    let http = format!("127.0.0.1:{port}");
    let site = format!("http://{http}");
    let _identity = bus.service("tagpoll-identity", &[], &[]);
    let _tally = bus.service("tagpoll-tally", &[], &[]);
    let mut web = bus.service("tagpoll-web", &["--http", &http], &[]);
    wait_http_ok(&format!("{site}/healthz")).await;
    let js = async_nats::jetstream::new(bus.client().await);

    let b = Browser::start(&bus.path().join("chromedriver.log")).await;

    // 1. Results: a tap changes the bar and count without a reload.
    b.goto(&format!("{site}/polls/p1")).await;
    let votes = |answer: &str| {
        format!(
            "const e = document.querySelector('section[data-poll=\"p1\"] .row[data-answer=\"{answer}\"] .votes'); return e ? e.textContent : null;"
        )
    };
    let bar = "const e = document.querySelector('section[data-poll=\"p1\"] .row[data-answer=\"yes\"] .bar'); return e ? e.style.width : null;";
    b.wait_for("the results page", &votes("yes"), json!("0"))
        .await;
    b.wait_for(
        "the live status",
        "return document.getElementById('status').textContent",
        json!("live"),
    )
    .await;
    assert_eq!(b.js(bar).await, json!("0%"));
    b.js("window.__sameDocument = 42; return null;").await;
    tap(&js, "dev-a", "yes", BOB, "b-yes").await;
    b.wait_for("the count to change live", &votes("yes"), json!("1"))
        .await;
    b.wait_for("the bar to grow", bar, json!("100%")).await;
    b.wait_for(
        "a meta line with the total",
        "return document.querySelector('section[data-poll=\"p1\"] .total').textContent",
        json!("1 vote"),
    )
    .await;
    assert_eq!(
        b.js("return window.__sameDocument").await,
        json!(42),
        "the page was reloaded"
    );
    b.screenshot("results").await;

    // A network blip: the web service goes away, a vote happens meanwhile,
    // the service comes back; the page reconnects and catches up by itself.
    web.stop();
    b.wait_for(
        "the page to notice the outage",
        "return document.getElementById('status').textContent",
        json!("reconnecting…"),
    )
    .await;
    tap(&js, "dev-a", "no", CAROL, "c-no").await;
    web.start().unwrap();
    b.wait_for(
        "the missed vote after reconnecting",
        &votes("no"),
        json!("1"),
    )
    .await;
    b.wait_for(
        "the live status again",
        "return document.getElementById('status').textContent",
        json!("live"),
    )
    .await;
    assert_eq!(b.js("return window.__sameDocument").await, json!(42));
    assert_eq!(b.js(bar).await, json!("50%"));

    // Projector mode: one poll at a time, full screen.
    b.goto(&format!("{site}/?projector=1&cycle=3")).await;
    b.wait_for(
        "the projector to show one poll",
        "return document.body.classList.contains('projector') && document.querySelectorAll('section.poll.current').length",
        json!(1),
    )
    .await;
    b.wait_for(
        "the projector to cycle to the other poll",
        "const c = document.querySelector('section.poll.current'); return c ? c.dataset.poll : null",
        json!("p2"),
    )
    .await;
    b.screenshot("projector").await;

    // 2. Kiosk: the voter is greeted with their name and answer, then idle
    // (held 6 s: long enough to be seen by a slow poll of the page).
    b.goto(&format!("{site}/kiosk/yes?hold=6")).await;
    b.wait_for(
        "the kiosk's answer",
        "return document.getElementById('answer').textContent",
        json!("Yes"),
    )
    .await;
    b.wait_for(
        "the kiosk to be live",
        "return document.getElementById('status').textContent",
        json!("live"),
    )
    .await;
    b.screenshot("kiosk-idle").await;
    tap(&js, "dev-a", "yes", ALICE, "a-yes").await;
    b.wait_for(
        "Alice's outcome at the kiosk",
        "const o = document.getElementById('outcome'); return !o.hidden && o.dataset.kind === 'accepted' && o.textContent.includes('Alice') && o.textContent.includes('Yes')",
        json!(true),
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('headline').textContent")
            .await,
        json!("Thanks, Alice — you voted Yes")
    );
    b.screenshot("kiosk-accepted").await;
    b.wait_for(
        "the kiosk to return to idle",
        "return document.getElementById('outcome').hidden && !document.getElementById('idle').hidden",
        json!(true),
    )
    .await;
    tap(&js, "dev-a", "yes", ALICE, "a-yes-again").await;
    b.wait_for(
        "the already-voted outcome",
        "const o = document.getElementById('outcome'); return !o.hidden && o.dataset.readId === 'a-yes-again' ? document.getElementById('headline').textContent : null",
        json!("Hi, Alice — you already voted"),
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('outcome').dataset.late")
            .await,
        json!("0"),
        "a tap decided at once is the current tap"
    );
    // A tap decided long after it was made (a box that was offline): the
    // kiosk says it is a late result, so the person at the reader now does
    // not take it for theirs.
    let late = v1::ReaderFeedback {
        outcome: Some(v1::VoteOutcome {
            read_id: "a-late".into(),
            device_id: "dev-a".into(),
            reader_id: "yes".into(),
            poll_id: "p1".into(),
            answer_id: "yes".into(),
            kind: v1::OutcomeKind::Accepted as i32,
            tapped_at: Some(tagpoll_proto::timestamp(
                std::time::SystemTime::now() - Duration::from_secs(90),
            )),
            ..Default::default()
        }),
        display_name: "Alice".into(),
    };
    js.client()
        .publish(
            subjects::feedback("dev-a", "yes"),
            prost::Message::encode_to_vec(&late).into(),
        )
        .await
        .expect("publish feedback");
    b.wait_for(
        "the late result at the kiosk",
        "const o = document.getElementById('outcome'); return !o.hidden && o.dataset.readId === 'a-late' ? [o.dataset.late, document.getElementById('late').textContent.startsWith('Late result · tap at')] : null",
        json!(["1", true]),
    )
    .await;
    b.screenshot("kiosk-late-result").await;

    // An unknown tag where anonymous votes are not allowed gets the hint.
    b.goto(&format!("{site}/kiosk/blue")).await;
    b.wait_for(
        "the blue kiosk to be live",
        "return document.getElementById('answer').textContent + '/' + document.getElementById('status').textContent",
        json!("Blue/live"),
    )
    .await;
    tap(&js, "dev-b", "blue", STRANGER, "s-blue").await;
    b.wait_for(
        "the unknown-tag outcome with its hint",
        "const o = document.getElementById('outcome'); return o.hidden ? null : [o.dataset.kind, document.getElementById('headline').textContent, document.getElementById('detail').textContent]",
        json!(["rejected", "We don't know this tag", "Link your tag at the info desk."]),
    )
    .await;
    b.screenshot("kiosk-unknown-tag").await;

    // 3. Admin: no token → the API says 401 and the page shows it.
    let (status, body) = http_json(&format!("{site}/api/admin/status")).await;
    assert_eq!(status, 401, "{body}");
    b.goto(&format!("{site}/admin")).await;
    b.wait_for(
        "the page to show the 401",
        "const e = document.getElementById('error'); return e.hidden ? null : e.dataset.status + ' ' + e.textContent.startsWith('401 Unauthorized')",
        json!("401 true"),
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('dash').hidden").await,
        json!(true),
        "nothing of the dashboard without a token"
    );
    b.screenshot("admin-no-token").await;
    b.type_into("#token", "not-the-token").await;
    b.click("#login button[type=submit]").await;
    b.wait_for(
        "the page to refuse a wrong token",
        "const e = document.getElementById('error'); return e.hidden ? null : e.textContent",
        json!("401 Unauthorized — wrong admin token. Enter the admin token above."),
    )
    .await;
    b.type_into("#token", TEST_ADMIN_TOKEN).await;
    b.click("#login button[type=submit]").await;
    b.wait_for(
        "the dashboard with the tally online",
        "return !document.getElementById('dash').hidden && document.getElementById('services').textContent.includes('tally')",
        json!(true),
    )
    .await;
    b.wait_for(
        "the unknown-tag count per reader",
        "const r = document.querySelector('#readers tr[data-reader=\"blue\"]'); return r ? r.children[4].textContent : null",
        json!("1"),
    )
    .await;
    assert_eq!(
        b.js("return sessionStorage.getItem('tagpoll-admin-token')")
            .await,
        json!(TEST_ADMIN_TOKEN)
    );
    b.screenshot("admin").await;
    // The page's actions carry the token: hiding p1 from the page hides it.
    b.click("#polls tr[data-poll=\"p1\"] button[data-action=\"hide\"]")
        .await;
    eventually(Duration::from_secs(10), "p1 hidden by the page", || {
        let url = format!("{site}/api/polls/p1/results");
        async move {
            let (status, body) = http_json(&url).await;
            if status == 200 && body["hidden"] == true && body["total"] == 0 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        }
    })
    .await;
    b.wait_for(
        "the page to offer reveal",
        "const b = document.querySelector('#polls tr[data-poll=\"p1\"] button[data-action=\"reveal\"]'); return !!b",
        json!(true),
    )
    .await;
    // And the public page says hidden without showing counts.
    b.goto(&format!("{site}/polls/p1")).await;
    b.wait_for(
        "the hidden results page",
        "const s = document.querySelector('section[data-poll=\"p1\"]'); return s ? [s.classList.contains('hidden'), s.querySelector('.votes').textContent, s.querySelector('.badge').textContent] : null",
        json!([true, "–", "results hidden"]),
    )
    .await;
    b.screenshot("results-hidden").await;
}
