//! The anyMeta RPC client: every call is an OAuth-signed form POST to `{site}/services/rest/`.

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use super::args::flatten_args;
use super::config::AnyMetaConfig;
use super::error::AnyMetaError;
use super::oauth::{self, Signer, Stamp};
use super::person::Person;

/// Answers bigger than this are not an anyMeta JSON answer (an HTML error page or worse).
const MAX_BODY: usize = 1 << 20;

/// Where nonces and timestamps come from; replaceable so tests can replay or skew them.
pub type StampSource = Arc<dyn Fn() -> Stamp + Send + Sync>;

/// A cheap-to-clone handle; clones share one connection pool.
#[derive(Clone)]
pub struct AnyMetaClient {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    http: reqwest::Client,
    entrypoint: String,
    site: String,
    signer: Signer,
    auth_in_header: bool,
    timeout: Duration,
    stamps: StampSource,
}

impl std::fmt::Debug for AnyMetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyMetaClient")
            .field("entrypoint", &self.inner.entrypoint)
            .field("signer", &self.inner.signer)
            .field("auth_in_header", &self.inner.auth_in_header)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// reqwest is built without a rustls crypto provider; install ring once, leaving any provider the
/// embedding program installed first in place.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

impl AnyMetaClient {
    pub fn new(config: AnyMetaConfig) -> Result<Self, AnyMetaError> {
        let entry = Url::parse(&config.entrypoint).map_err(|e| AnyMetaError::Config {
            detail: format!("entry point {:?}: {e}", config.entrypoint),
        })?;
        if !matches!(entry.scheme(), "http" | "https") || entry.host_str().is_none() {
            return Err(AnyMetaError::Config {
                detail: format!("entry point {:?} is not an http(s) URL", config.entrypoint),
            });
        }
        if config.timeout.is_zero() {
            return Err(AnyMetaError::Config {
                detail: "timeout must be positive".into(),
            });
        }
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("tagpoll-identity/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout)
            // A redirect would be followed as a GET with a signature for the wrong URL; better
            // to surface it as an HTTP status so the entry point gets fixed.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AnyMetaError::Config {
                detail: error_chain(&e),
            })?;
        let signer = Signer::new(&config.consumer_key, &config.consumer_secret)
            .with_token(&config.token, &config.token_secret);
        Ok(AnyMetaClient {
            inner: Arc::new(Inner {
                http,
                entrypoint: config.entrypoint,
                site: site_of(&entry),
                signer,
                auth_in_header: config.auth_in_header,
                timeout: config.timeout,
                stamps: Arc::new(Stamp::fresh),
            }),
        })
    }

    /// Replaces the nonce/timestamp source (tests: replayed nonces, skewed clocks).
    pub fn with_stamp_source(self, stamps: StampSource) -> Self {
        let mut inner = (*self.inner).clone();
        inner.stamps = stamps;
        AnyMetaClient {
            inner: Arc::new(inner),
        }
    }

    pub fn entrypoint(&self) -> &str {
        &self.inner.entrypoint
    }

    /// The site URL (entry point without `/services/rest/`), base of profile URLs.
    pub fn site(&self) -> &str {
        &self.inner.site
    }

    /// Resolves a tag UID to its person; `Ok(None)` when no person has the tag.
    pub async fn identify_rfid(&self, uid: &[u8]) -> Result<Option<Person>, AnyMetaError> {
        if uid.is_empty() {
            return Err(AnyMetaError::InvalidArgs {
                detail: "empty tag UID".into(),
            });
        }
        let raw = rfid_urn(uid);
        let answer = self
            .call("identity.identify", &json!({"type": "rfid", "raw": raw}))
            .await?;
        Person::from_identify_answer(&answer, &self.inner.site)
    }

    /// Calls any API method with nested arguments (an object, or `null` for none) and returns the
    /// decoded JSON answer; an empty body is `null`.
    pub async fn call(&self, method: &str, args: &Value) -> Result<Value, AnyMetaError> {
        let mut params = vec![
            ("method".to_string(), method.to_string()),
            ("format".to_string(), "json".to_string()),
        ];
        let flat = flatten_args(args).map_err(|e| AnyMetaError::InvalidArgs { detail: e.0 })?;
        if let Some((k, _)) = flat
            .iter()
            .find(|(k, _)| k == "method" || k == "format" || k.starts_with("oauth_"))
        {
            return Err(AnyMetaError::InvalidArgs {
                detail: format!("argument name {k:?} is reserved"),
            });
        }
        params.extend(flat);
        self.post(method, params).await
    }

    async fn post(
        &self,
        method: &str,
        mut params: Vec<(String, String)>,
    ) -> Result<Value, AnyMetaError> {
        let inner = &*self.inner;
        let stamp = (inner.stamps)();
        let oauth_params = inner
            .signer
            .sign("POST", &inner.entrypoint, &params, &stamp)
            .map_err(|e| AnyMetaError::Config {
                detail: e.to_string(),
            })?;
        let mut request = inner
            .http
            .post(&inner.entrypoint)
            .timeout(inner.timeout)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if inner.auth_in_header {
            request = request.header(
                AUTHORIZATION,
                oauth::authorization_header("", &oauth_params),
            );
        } else {
            params.extend(oauth_params);
        }
        let started = Instant::now();
        let result = async {
            let mut response = request
                .body(oauth::encode_form(&params))
                .send()
                .await
                .map_err(from_reqwest)?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(AnyMetaError::Malformed {
                        detail: format!("answer larger than {MAX_BODY} bytes (HTTP {status})"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            interpret_response(status, &body)
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis();
        match &result {
            Ok(_) => tracing::debug!(method, elapsed_ms, "anyMeta call ok"),
            Err(error) => tracing::debug!(method, elapsed_ms, %error, "anyMeta call failed"),
        }
        result
    }
}

/// `urn:rfid:` + uppercase hex of every UID byte, as the ikTag readers sent it.
pub fn rfid_urn(uid: &[u8]) -> String {
    format!("urn:rfid:{}", hex::encode_upper(uid))
}

/// The site URL for an entry point: `/services/rest/` and any query removed, no trailing slash.
fn site_of(entry: &Url) -> String {
    let mut site = entry.clone();
    site.set_query(None);
    site.set_fragment(None);
    let path = site.path().trim_end_matches('/');
    let path = path
        .strip_suffix("/services/rest")
        .unwrap_or(path)
        .to_string();
    site.set_path(&path);
    site.as_str().trim_end_matches('/').to_string()
}

/// Maps an HTTP answer to the decoded JSON or an error. anyMeta error bodies win over 4xx
/// statuses (some deployments send them with 401/403); 5xx is always a server error.
pub(crate) fn interpret_response(status: StatusCode, body: &[u8]) -> Result<Value, AnyMetaError> {
    if status.is_server_error() {
        return Err(AnyMetaError::Server5xx {
            status: status.as_u16(),
        });
    }
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    let parsed: Result<Value, _> = if trimmed.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_str(trimmed)
    };
    let value = match parsed {
        Ok(value) => value,
        Err(_) if !status.is_success() => {
            return Err(AnyMetaError::HttpStatus {
                status: status.as_u16(),
            });
        }
        Err(e) => {
            return Err(AnyMetaError::Malformed {
                detail: format!("not JSON ({e}): {}", snippet(trimmed)),
            });
        }
    };
    if let Some(err) = value.as_object().and_then(|o| o.get("err")) {
        return Err(api_error(err));
    }
    if !status.is_success() {
        return Err(AnyMetaError::HttpStatus {
            status: status.as_u16(),
        });
    }
    Ok(value)
}

/// `{"-attrib-":{"code":N,"msg":"…"}}`; PHP may send the code as a string.
fn api_error(err: &Value) -> AnyMetaError {
    let attrib = err.get("-attrib-").unwrap_or(err);
    let code = match attrib.get("code") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let msg = attrib
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match code {
        Some(code) => AnyMetaError::from_api(code, msg),
        None => AnyMetaError::Malformed {
            detail: format!(
                "error answer without a numeric code: {}",
                snippet(&err.to_string())
            ),
        },
    }
}

fn snippet(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn from_reqwest(e: reqwest::Error) -> AnyMetaError {
    if e.is_timeout() {
        AnyMetaError::Timeout
    } else if e.is_connect() {
        AnyMetaError::Unreachable {
            detail: error_chain(&e),
        }
    } else if e.is_builder() {
        AnyMetaError::Config {
            detail: error_chain(&e),
        }
    } else {
        AnyMetaError::Transport {
            detail: error_chain(&e),
        }
    }
}

/// reqwest's own message is just "error sending request"; the cause is in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u16, body: &str) -> Result<Value, AnyMetaError> {
        interpret_response(StatusCode::from_u16(status).unwrap(), body.as_bytes())
    }

    #[test]
    fn urn_is_uppercase_hex_of_all_bytes() {
        assert_eq!(rfid_urn(&[0x7e, 0x6f, 0xd7, 0xa0]), "urn:rfid:7E6FD7A0");
        assert_eq!(
            rfid_urn(&[0x04, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e, 0x80]),
            "urn:rfid:041A2B3C4D5E80"
        );
    }

    #[test]
    fn site_strips_rest_path() {
        let site = |s: &str| site_of(&Url::parse(s).unwrap());
        assert_eq!(
            site("http://www.mediamatic.net/services/rest/"),
            "http://www.mediamatic.net"
        );
        assert_eq!(site("https://h:8443/services/rest?x=1"), "https://h:8443");
        assert_eq!(site("http://h/anymeta/services/rest/"), "http://h/anymeta");
        assert_eq!(site("http://h/other/"), "http://h/other");
    }

    #[test]
    fn responses_are_classified() {
        assert_eq!(ok(200, "null"), Ok(Value::Null));
        assert_eq!(ok(200, ""), Ok(Value::Null));
        assert_eq!(ok(200, " \n"), Ok(Value::Null));
        assert_eq!(ok(200, "\u{feff}false"), Ok(Value::Bool(false)));
        assert_eq!(ok(200, r#"{"rsc_id":1}"#), Ok(json!({"rsc_id": 1})));
        assert!(matches!(
            ok(200, "{\"rsc_id\":"),
            Err(AnyMetaError::Malformed { .. })
        ));
        assert!(matches!(
            ok(200, "<html>"),
            Err(AnyMetaError::Malformed { .. })
        ));
        assert_eq!(ok(500, "{}"), Err(AnyMetaError::Server5xx { status: 500 }));
        assert_eq!(
            ok(503, "<html>"),
            Err(AnyMetaError::Server5xx { status: 503 })
        );
        assert_eq!(
            ok(404, "<html>"),
            Err(AnyMetaError::HttpStatus { status: 404 })
        );
        assert_eq!(ok(403, "{}"), Err(AnyMetaError::HttpStatus { status: 403 }));
        assert_eq!(ok(302, ""), Err(AnyMetaError::HttpStatus { status: 302 }));
    }

    #[test]
    fn api_errors_are_recognised() {
        let err99 = r#"{"err":{"-attrib-":{"code":99,"msg":"User not logged on"}}}"#;
        assert_eq!(
            ok(200, err99),
            Err(AnyMetaError::BadCredentials {
                msg: "User not logged on".into()
            })
        );
        assert!(matches!(
            ok(401, err99),
            Err(AnyMetaError::BadCredentials { .. })
        ));
        assert_eq!(
            ok(
                200,
                r#"{"err":{"-attrib-":{"code":"4","msg":"Node not found"}}}"#
            ),
            Err(AnyMetaError::Api {
                code: 4,
                msg: "Node not found".into()
            })
        );
        assert!(matches!(
            ok(200, r#"{"err":{"-attrib-":{"msg":"?"}}}"#),
            Err(AnyMetaError::Malformed { .. })
        ));
    }

    #[test]
    fn reserved_and_bad_args_are_refused() {
        let config =
            AnyMetaConfig::new("http://127.0.0.1:9/services/rest/", "ck", "cs", "tk", "ts");
        let client = AnyMetaClient::new(config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for args in [
                json!({"method": "x"}),
                json!({"oauth_token": "x"}),
                json!([1]),
            ] {
                let e = client.call("m", &args).await.unwrap_err();
                assert!(
                    matches!(e, AnyMetaError::InvalidArgs { .. }),
                    "{args}: {e:?}"
                );
            }
            let e = client.identify_rfid(&[]).await.unwrap_err();
            assert!(matches!(e, AnyMetaError::InvalidArgs { .. }));
        });
    }

    #[test]
    fn bad_entrypoints_are_config_errors() {
        for ep in ["not a url", "ftp://h/services/rest/", "file:///x"] {
            let config = AnyMetaConfig::new(ep, "ck", "cs", "tk", "ts");
            assert!(
                matches!(AnyMetaClient::new(config), Err(AnyMetaError::Config { .. })),
                "{ep}"
            );
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let config = AnyMetaConfig::new(
            "http://h/services/rest/",
            "ck",
            "c-secret",
            "tk",
            "t-secret",
        );
        let client = AnyMetaClient::new(config).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
