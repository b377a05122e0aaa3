//! A fake anyMeta site for tests and benchmarks: `POST /services/rest/` speaking the RPC call
//! format, verifying OAuth 1.0 HMAC-SHA1 (or PLAINTEXT) signatures with its own, independent
//! implementation, and answering `identity.identify` from a table of tags.
//!
//! Faults can be injected: latency, HTTP 500s, malformed JSON, and being down (listener closed
//! so connects are refused, open connections cut; later re-opened on the same port).
//!
//! Part of the library (not only of the tests) so the integration tests in `tests/` and the
//! `identity-bench` binary can use it too; nothing in the service uses it.
//!
//! ```ignore
//! let fake = FakeAnyMeta::start().await;
//! fake.add_person("7E6FD7A0", 1234, "<b>Jan</b>");
//! let client = AnyMetaClient::new(fake.config()).unwrap();
//! assert_eq!(fake.lookups("7E6FD7A0"), 0);
//! ```
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::anymeta::{AnyMetaClient, AnyMetaConfig};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Path of the RPC entry point on the fake site.
pub const REST_PATH: &str = "/services/rest/";
/// Accepted clock difference, as OAuth servers commonly allow.
pub const TIMESTAMP_WINDOW_SECS: u64 = 300;
/// Error code anyMeta uses for "not logged on"; the fake uses it for every OAuth failure.
pub const NOT_LOGGED_ON: i64 = 99;

/// The one consumer and access token the fake accepts. Secrets contain characters that must be
/// percent-encoded in the signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCredentials {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub token: String,
    pub token_secret: String,
}

impl Default for FakeCredentials {
    fn default() -> Self {
        FakeCredentials {
            consumer_key: "tagpoll-test-consumer".into(),
            consumer_secret: "c0nsumer s3cret/+=&~".into(),
            token: "tagpoll-test-token".into(),
            token_secret: "t0ken:s3cret%?é".into(),
        }
    }
}

/// What the fake saw of one request (the latest is kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The `method` parameter.
    pub method: Option<String>,
    /// Form and query parameters other than `oauth_*`.
    pub params: Vec<(String, String)>,
    pub oauth_in_header: bool,
    pub oauth_in_body: bool,
    pub authorization: Option<String>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Handle to a running fake; clones share the same server.
#[derive(Clone)]
pub struct FakeAnyMeta {
    shared: Arc<Shared>,
}

struct Shared {
    state: Arc<FakeState>,
    addr: SocketAddr,
    server: Mutex<Option<Running>>,
}

struct Running {
    task: JoinHandle<()>,
    conns: Arc<Conns>,
}

impl Running {
    fn stop(self) -> JoinHandle<()> {
        self.task.abort();
        self.conns.kill_all();
        self.task
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.server).take() {
            drop(running.stop());
        }
    }
}

struct FakeState {
    creds: FakeCredentials,
    answers: Mutex<HashMap<String, Value>>,
    unknown_answer: Mutex<Value>,
    lookups: Mutex<HashMap<String, usize>>,
    answered: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    latency_ms: AtomicU64,
    fail_next: AtomicUsize,
    malformed_next: AtomicUsize,
    nonces: Mutex<NonceStore>,
    last: Mutex<Option<RecordedRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeAnyMeta {
    /// Starts on `127.0.0.1`, on a free port, with [`FakeCredentials::default`].
    pub async fn start() -> FakeAnyMeta {
        Self::start_with(FakeCredentials::default()).await
    }

    pub async fn start_with(creds: FakeCredentials) -> FakeAnyMeta {
        // Below the kernel's ephemeral range: `go_down` frees the port, and an
        // outgoing connection must not be handed it before `come_up` binds again.
        let mut tries = 0;
        let listener = loop {
            let port = tagpoll_bus::nats_server::free_port().expect("fake anyMeta: a free port");
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if tries >= 20 => panic!("fake anyMeta: bind 127.0.0.1:{port}: {e}"),
                Err(_) => tries += 1,
            }
        };
        let addr = listener.local_addr().expect("fake anyMeta: local address");
        let state = Arc::new(FakeState {
            creds,
            answers: Mutex::default(),
            unknown_answer: Mutex::new(Value::Null),
            lookups: Mutex::default(),
            answered: Mutex::default(),
            total: AtomicUsize::new(0),
            latency_ms: AtomicU64::new(0),
            fail_next: AtomicUsize::new(0),
            malformed_next: AtomicUsize::new(0),
            nonces: Mutex::default(),
            last: Mutex::default(),
        });
        let running = serve(listener, state.clone());
        FakeAnyMeta {
            shared: Arc::new(Shared {
                state,
                addr,
                server: Mutex::new(Some(running)),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn site(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `http://127.0.0.1:PORT/services/rest/`
    pub fn entrypoint(&self) -> String {
        format!("http://{}{}", self.shared.addr, REST_PATH)
    }

    pub fn credentials(&self) -> FakeCredentials {
        self.shared.state.creds.clone()
    }

    /// A client configuration with valid credentials (OAuth in the body, default timeout).
    pub fn config(&self) -> AnyMetaConfig {
        let c = &self.shared.state.creds;
        AnyMetaConfig::new(
            self.entrypoint(),
            &c.consumer_key,
            &c.consumer_secret,
            &c.token,
            &c.token_secret,
        )
    }

    /// A client for [`FakeAnyMeta::config`] with the given timeout.
    pub fn client(&self, timeout: Duration) -> AnyMetaClient {
        let mut config = self.config();
        config.timeout = timeout;
        AnyMetaClient::new(config).expect("fake anyMeta: client config")
    }

    /// The environment that points a `tagpoll-identity` process at this fake
    /// (entry point and OAuth credentials, as `TAGPOLL_ANYMETA_*`).
    pub fn service_env(&self) -> Vec<(String, String)> {
        let c = self.credentials();
        vec![
            ("TAGPOLL_ANYMETA_ENTRYPOINT".into(), self.entrypoint()),
            ("TAGPOLL_ANYMETA_CONSUMER_KEY".into(), c.consumer_key),
            ("TAGPOLL_ANYMETA_CONSUMER_SECRET".into(), c.consumer_secret),
            ("TAGPOLL_ANYMETA_TOKEN".into(), c.token),
            ("TAGPOLL_ANYMETA_TOKEN_SECRET".into(), c.token_secret),
        ]
    }

    /// Links a tag (hex UID, any case) to a person; the answer is
    /// `{"rsc_id": rsc_id, "id": rsc_id, "title": title}`.
    pub fn add_person(&self, uid_hex: &str, rsc_id: impl Into<Value>, title: &str) {
        let rsc_id = rsc_id.into();
        self.set_answer(
            uid_hex,
            json!({"rsc_id": rsc_id.clone(), "id": rsc_id, "title": title}),
        );
    }

    /// Makes `identity.identify` answer exactly `answer` for this tag.
    pub fn set_answer(&self, uid_hex: &str, answer: Value) {
        lock(&self.shared.state.answers).insert(uid_hex.to_ascii_uppercase(), answer);
    }

    pub fn remove_person(&self, uid_hex: &str) {
        lock(&self.shared.state.answers).remove(&uid_hex.to_ascii_uppercase());
    }

    /// What unknown tags answer (default `null`; anyMeta has also been seen to send `false`).
    pub fn set_unknown_answer(&self, answer: Value) {
        *lock(&self.shared.state.unknown_answer) = answer;
    }

    /// Delay applied to every request before it is answered (also to injected faults).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.shared.state.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// The next `n` requests answer HTTP 500 (replaces any earlier count).
    pub fn fail_next(&self, n: usize) {
        self.shared.state.fail_next.store(n, Ordering::Relaxed);
    }

    /// The next `n` requests answer 200 with truncated JSON (replaces any earlier count).
    pub fn malformed_next(&self, n: usize) {
        self.shared.state.malformed_next.store(n, Ordering::Relaxed);
    }

    /// Closes the listener (connects are refused from when this returns) and cuts every open
    /// connection, including requests still in flight.
    pub async fn go_down(&self) {
        let running = lock(&self.shared.server).take();
        if let Some(running) = running {
            // The listener lives in the serve task: once the aborted task is joined it is closed.
            let task = running.stop();
            let _ = task.await;
        }
    }

    /// Listens again on the same port (retrying while the port is still being released).
    pub async fn come_up(&self) {
        if lock(&self.shared.server).is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.shared.addr).await {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("fake anyMeta: cannot re-bind {}: {e}", self.shared.addr),
            }
        };
        let running = serve(listener, self.shared.state.clone());
        let mut slot = lock(&self.shared.server);
        match slot.as_ref() {
            Some(_) => drop(running.stop()),
            None => *slot = Some(running),
        }
    }

    pub fn is_down(&self) -> bool {
        lock(&self.shared.server).is_none()
    }

    /// `identity.identify` requests that reached the server for this tag (hex UID, any case),
    /// whatever they were answered (faults and refused signatures included).
    pub fn lookups(&self, uid_hex: &str) -> usize {
        lock(&self.shared.state.lookups)
            .get(&uid_hex.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    /// `identity.identify` requests for this tag (hex UID, any case) that got a real answer (a
    /// person or "unknown"), not an injected fault or a refused signature.
    pub fn answered(&self, uid_hex: &str) -> usize {
        lock(&self.shared.state.answered)
            .get(&uid_hex.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    /// Sum of [`FakeAnyMeta::answered`] over every tag.
    pub fn total_answered(&self) -> usize {
        lock(&self.shared.state.answered).values().sum()
    }

    /// Every request that reached the handler.
    pub fn total_requests(&self) -> usize {
        self.shared.state.total.load(Ordering::Relaxed)
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.state.last).clone()
    }
}

fn serve(listener: TcpListener, state: Arc<FakeState>) -> Running {
    let conns = Arc::new(Conns::default());
    let listener = TrackedListener {
        inner: listener,
        conns: conns.clone(),
    };
    let app = Router::new().route(REST_PATH, post(rest)).with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Running { task, conns }
}

// ---------------------------------------------------------------------------------------------
// Connection tracking: each accepted socket keeps a duplicate handle so `go_down` can shut it
// down from outside, which axum's own graceful shutdown would not do for in-flight requests.

#[derive(Default)]
struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, std::net::TcpStream>>,
}

impl Conns {
    fn track(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let handle = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let _ = stream.set_nodelay(true);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(id, handle);
        Ok(TrackedStream {
            inner: stream,
            id,
            conns: self.clone(),
        })
    }

    fn kill_all(&self) {
        for (_, handle) in lock(&self.open).drain() {
            let _ = handle.shutdown(Shutdown::Both);
        }
    }
}

struct TrackedListener {
    inner: TcpListener,
    conns: Arc<Conns>,
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Ok(tracked) = self.conns.track(stream) {
                        return (tracked, addr);
                    }
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

struct TrackedStream {
    inner: TcpStream,
    id: u64,
    conns: Arc<Conns>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        lock(&self.conns.open).remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// The RPC handler.

async fn rest(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.total.fetch_add(1, Ordering::Relaxed);

    let body_params = parse_form(&String::from_utf8_lossy(&body));
    let query_params = parse_form(uri.query().unwrap_or(""));
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let header_oauth = authorization
        .as_deref()
        .map(parse_authorization)
        .unwrap_or_default();

    let call_params: Vec<(String, String)> = query_params
        .iter()
        .chain(body_params.iter())
        .filter(|(k, _)| !k.starts_with("oauth_"))
        .cloned()
        .collect();
    let param = |name: &str| {
        call_params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let method = param("method");
    if method.as_deref() == Some("identity.identify")
        && let Some(uid) = param("raw")
            .as_deref()
            .and_then(|r| r.strip_prefix("urn:rfid:"))
    {
        *lock(&state.lookups).entry(uid.to_string()).or_insert(0) += 1;
    }
    *lock(&state.last) = Some(RecordedRequest {
        method: method.clone(),
        params: call_params.clone(),
        oauth_in_header: !header_oauth.is_empty(),
        oauth_in_body: body_params.iter().any(|(k, _)| k.starts_with("oauth_")),
        authorization,
    });

    let latency = state.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if take_one(&state.fail_next) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    if take_one(&state.malformed_next) {
        return json_response(r#"{"rsc_id": 1234, "title": "Trunc"#.to_string());
    }

    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(msg) = state.verify(host, uri.path(), &query_params, &body_params, &header_oauth) {
        return api_error(NOT_LOGGED_ON, &msg);
    }

    if param("format").as_deref() != Some("json") {
        return api_error(1, "the fake only speaks format=json");
    }
    match method.as_deref() {
        Some("identity.identify") => {
            if param("type").as_deref() != Some("rfid") {
                return api_error(2, "the fake only knows type=rfid");
            }
            let Some(raw) = param("raw") else {
                return api_error(2, "missing argument raw");
            };
            let uid = raw.strip_prefix("urn:rfid:");
            let answer = uid
                .and_then(|uid| lock(&state.answers).get(uid).cloned())
                .unwrap_or_else(|| lock(&state.unknown_answer).clone());
            if let Some(uid) = uid {
                *lock(&state.answered).entry(uid.to_string()).or_insert(0) += 1;
            }
            json_response(answer.to_string())
        }
        Some("anymeta.user.info") => {
            json_response(json!({"id": 1, "title": "tagpoll API user"}).to_string())
        }
        Some("anymeta.test.echo") => {
            let echoed: serde_json::Map<String, Value> = call_params
                .iter()
                .filter(|(k, _)| k != "method" && k != "format")
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json_response(Value::Object(echoed).to_string())
        }
        _ => api_error(1, "unknown method"),
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// anyMeta's JSON error shape, sent with HTTP 200.
fn api_error(code: i64, msg: &str) -> Response {
    json_response(json!({"err": {"-attrib-": {"code": code, "msg": msg}}}).to_string())
}

// ---------------------------------------------------------------------------------------------
// OAuth verification, written independently of the client's signer.

/// RFC 5849 §3.6: keep only ALPHA, DIGIT, `-`, `.`, `_`, `~`.
const OAUTH_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, OAUTH_ENCODE).to_string()
}

fn dec(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// `OAuth realm="", oauth_x="…", …` → the `oauth_*` pairs (realm dropped).
fn parse_authorization(value: &str) -> Vec<(String, String)> {
    let Some(rest) = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("oauth "))
        .map(|_| &value[6..])
    else {
        return Vec::new();
    };
    rest.split(',')
        .filter_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            let v = v.trim().trim_matches('"');
            let k = dec(k.trim());
            k.starts_with("oauth_").then(|| (k, dec(v)))
        })
        .collect()
}

#[derive(Default)]
struct NonceStore {
    seen: HashSet<String>,
    order: VecDeque<(Instant, String)>,
}

impl NonceStore {
    /// False if the nonce was used within the window (twice the timestamp window: a nonce older
    /// than that would fail the timestamp check anyway).
    fn insert(&mut self, key: String) -> bool {
        let now = Instant::now();
        let keep = Duration::from_secs(2 * TIMESTAMP_WINDOW_SECS);
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= keep {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back((now, key));
        true
    }
}

impl FakeState {
    fn verify(
        &self,
        host: &str,
        path: &str,
        query: &[(String, String)],
        body: &[(String, String)],
        header_oauth: &[(String, String)],
    ) -> Result<(), String> {
        // Protocol parameters come from the header when it has any, else from the body.
        let oauth: Vec<(String, String)> = if header_oauth.is_empty() {
            body.iter()
                .filter(|(k, _)| k.starts_with("oauth_"))
                .cloned()
                .collect()
        } else {
            header_oauth.to_vec()
        };
        let get = |name: &str| -> Result<&str, String> {
            let mut values = oauth
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            let first = values.next().ok_or_else(|| format!("missing {name}"))?;
            if values.next().is_some() {
                return Err(format!("duplicate {name}"));
            }
            Ok(first)
        };
        let consumer_key = get("oauth_consumer_key")?;
        let token = get("oauth_token")?;
        let method = get("oauth_signature_method")?;
        let signature = get("oauth_signature")?;
        let timestamp = get("oauth_timestamp")?;
        let nonce = get("oauth_nonce")?;
        if let Ok(version) = get("oauth_version")
            && version != "1.0"
        {
            return Err(format!("unsupported oauth_version {version:?}"));
        }
        if consumer_key != self.creds.consumer_key {
            return Err("unknown consumer key".into());
        }
        if token != self.creds.token {
            return Err("unknown or revoked token".into());
        }

        let key = format!(
            "{}&{}",
            enc(&self.creds.consumer_secret),
            enc(&self.creds.token_secret)
        );
        let expected = match method {
            "HMAC-SHA1" => {
                let mut params: Vec<(String, String)> = query
                    .iter()
                    .chain(body.iter())
                    .chain(header_oauth.iter())
                    .filter(|(k, _)| k != "oauth_signature")
                    .map(|(k, v)| (enc(k), enc(v)))
                    .collect();
                params.sort();
                let normalized = params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                let host = host.to_ascii_lowercase();
                let host = host.strip_suffix(":80").unwrap_or(&host);
                let base = format!(
                    "POST&{}&{}",
                    enc(&format!("http://{host}{path}")),
                    enc(&normalized)
                );
                let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes())
                    .map_err(|e| format!("hmac: {e}"))?;
                mac.update(base.as_bytes());
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            }
            "PLAINTEXT" => key,
            other => return Err(format!("unsupported signature method {other:?}")),
        };
        if signature != expected {
            return Err("invalid signature".into());
        }

        let timestamp: u64 = timestamp
            .parse()
            .map_err(|_| format!("bad oauth_timestamp {timestamp:?}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if now.abs_diff(timestamp) > TIMESTAMP_WINDOW_SECS {
            return Err("timestamp outside the allowed window".into());
        }
        if !lock(&self.nonces).insert(format!("{consumer_key}&{token}&{nonce}")) {
            return Err("nonce already used".into());
        }
        Ok(())
    }
}
