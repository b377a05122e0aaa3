//! OAuth 1.0 request signing (RFC 5849), HMAC-SHA1 and PLAINTEXT.
//!
//! Hand-written rather than pulled from a crate: anyMeta speaks pre-1.0a OAuth (no verifier),
//! and only the signing half is needed. Everything here is pure so it can be checked against the
//! RFC's worked examples; nonce and timestamp come in through [`Stamp`].

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha1::Sha1;

/// How a request is signed (`oauth_signature_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMethod {
    HmacSha1,
    /// Sends the shared secrets as the signature; only safe over TLS. java-anymeta used it.
    Plaintext,
}

impl SignatureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha1 => "HMAC-SHA1",
            SignatureMethod::Plaintext => "PLAINTEXT",
        }
    }
}

/// The per-request nonce and timestamp; injectable so signatures are reproducible in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub nonce: String,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

impl Stamp {
    pub fn new(nonce: impl Into<String>, timestamp: u64) -> Self {
        Stamp {
            nonce: nonce.into(),
            timestamp,
        }
    }

    /// A random 128-bit hex nonce and the current wall-clock time.
    pub fn fresh() -> Self {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Stamp {
            nonce: hex::encode(rand::random::<[u8; 16]>()),
            timestamp,
        }
    }
}

/// The URL could not be used as an OAuth base string URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign request for {url:?}: {detail}")]
pub struct OAuthError {
    pub url: String,
    pub detail: String,
}

/// Percent-encodes per RFC 5849 §3.6: everything except `A-Z a-z 0-9 - . _ ~`, as UTF-8 bytes,
/// with uppercase hex digits.
pub fn encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Decodes an `application/x-www-form-urlencoded` string (`+` is a space) into pairs, in order.
/// Invalid UTF-8 is replaced rather than rejected: the pairs are only compared, never trusted.
pub fn decode_form(s: &str) -> Vec<(String, String)> {
    fn dec(part: &str) -> String {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    }
    s.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(pair), String::new()),
        })
        .collect()
}

/// Serializes pairs as a form body using the RFC 5849 encoding (also valid form encoding, and
/// unambiguous: what is sent is exactly what was signed).
pub fn encode_form(params: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

fn parse_url(url: &str) -> Result<Url, OAuthError> {
    let err = |detail: String| OAuthError {
        url: url.to_string(),
        detail,
    };
    let parsed = Url::parse(url).map_err(|e| err(e.to_string()))?;
    if parsed.host_str().is_none() {
        return Err(err("URL has no host".into()));
    }
    Ok(parsed)
}

/// The base string URI (RFC 5849 §3.4.1.2): lowercase scheme and host, default port dropped,
/// no query or fragment.
pub fn base_string_uri(url: &str) -> Result<String, OAuthError> {
    let parsed = parse_url(url)?;
    Ok(base_uri_of(&parsed))
}

fn base_uri_of(url: &Url) -> String {
    // `Url` already lowercases scheme and host and reports no port when it is the default.
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let mut out = format!("{}://{}", url.scheme(), host);
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    let path = url.path();
    out.push_str(if path.is_empty() { "/" } else { path });
    out
}

/// The normalized request parameters (RFC 5849 §3.4.1.3.2): each name and value encoded, sorted
/// by name then value, joined as `name=value&…`. `params` must not contain `oauth_signature`.
pub fn normalize_parameters(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The signature base string (RFC 5849 §3.4.1). `params` are the decoded form-body parameters and
/// the `oauth_*` protocol parameters (without `oauth_signature` and `realm`); query parameters are
/// taken from `url` itself.
pub fn signature_base_string(
    http_method: &str,
    url: &str,
    params: &[(String, String)],
) -> Result<String, OAuthError> {
    let parsed = parse_url(url)?;
    let mut all: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    all.extend(params.iter().cloned());
    Ok(format!(
        "{}&{}&{}",
        encode(&http_method.to_ascii_uppercase()),
        encode(&base_uri_of(&parsed)),
        encode(&normalize_parameters(&all))
    ))
}

/// `enc(consumer_secret)&enc(token_secret)`: the HMAC key, and the PLAINTEXT signature itself.
pub fn signing_key(consumer_secret: &str, token_secret: &str) -> String {
    format!("{}&{}", encode(consumer_secret), encode(token_secret))
}

/// Base64 of HMAC-SHA1(signing key, base string) (RFC 5849 §3.4.2).
pub fn hmac_sha1_signature(base_string: &str, consumer_secret: &str, token_secret: &str) -> String {
    let key = signing_key(consumer_secret, token_secret);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(base_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Formats protocol parameters as an `Authorization: OAuth realm="…", k="v", …` header value.
pub fn authorization_header(realm: &str, oauth_params: &[(String, String)]) -> String {
    let mut out = format!("OAuth realm=\"{}\"", realm.replace(['"', '\\'], ""));
    for (k, v) in oauth_params {
        out.push_str(&format!(", {}=\"{}\"", encode(k), encode(v)));
    }
    out
}

/// Signs requests for one consumer and (optionally) one token.
#[derive(Clone)]
pub struct Signer {
    consumer_key: String,
    consumer_secret: String,
    token: Option<(String, String)>,
    method: SignatureMethod,
    send_version: bool,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("consumer_key", &self.consumer_key)
            .field("token", &self.token.as_ref().map(|(t, _)| t))
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// HMAC-SHA1, `oauth_version=1.0`, no token yet.
    pub fn new(consumer_key: impl Into<String>, consumer_secret: impl Into<String>) -> Self {
        Signer {
            consumer_key: consumer_key.into(),
            consumer_secret: consumer_secret.into(),
            token: None,
            method: SignatureMethod::HmacSha1,
            send_version: true,
        }
    }

    pub fn with_token(mut self, token: impl Into<String>, token_secret: impl Into<String>) -> Self {
        self.token = Some((token.into(), token_secret.into()));
        self
    }

    pub fn with_method(mut self, method: SignatureMethod) -> Self {
        self.method = method;
        self
    }

    /// `oauth_version` is optional in the protocol; the RFC examples omit it.
    pub fn with_version_param(mut self, send: bool) -> Self {
        self.send_version = send;
        self
    }

    /// The unsigned protocol parameters for one request.
    pub fn protocol_params(&self, stamp: &Stamp) -> Vec<(String, String)> {
        let mut p = vec![("oauth_consumer_key".to_string(), self.consumer_key.clone())];
        if let Some((token, _)) = &self.token {
            p.push(("oauth_token".into(), token.clone()));
        }
        p.push((
            "oauth_signature_method".into(),
            self.method.as_str().to_string(),
        ));
        p.push(("oauth_timestamp".into(), stamp.timestamp.to_string()));
        p.push(("oauth_nonce".into(), stamp.nonce.clone()));
        if self.send_version {
            p.push(("oauth_version".into(), "1.0".into()));
        }
        p
    }

    /// Protocol parameters plus `oauth_signature` for a request with the given (decoded) body
    /// parameters; query parameters are read from `url`.
    pub fn sign(
        &self,
        http_method: &str,
        url: &str,
        body_params: &[(String, String)],
        stamp: &Stamp,
    ) -> Result<Vec<(String, String)>, OAuthError> {
        self.sign_protocol_params(http_method, url, body_params, self.protocol_params(stamp))
    }

    /// Like [`Signer::sign`] but with caller-built protocol parameters (e.g. with `oauth_callback`
    /// added), to which `oauth_signature` is appended.
    pub fn sign_protocol_params(
        &self,
        http_method: &str,
        url: &str,
        body_params: &[(String, String)],
        mut oauth_params: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>, OAuthError> {
        let token_secret = self.token.as_ref().map(|(_, s)| s.as_str()).unwrap_or("");
        let signature = match self.method {
            SignatureMethod::HmacSha1 => {
                let mut all = body_params.to_vec();
                all.extend(oauth_params.iter().cloned());
                let base = signature_base_string(http_method, url, &all)?;
                hmac_sha1_signature(&base, &self.consumer_secret, token_secret)
            }
            SignatureMethod::Plaintext => {
                parse_url(url)?;
                signing_key(&self.consumer_secret, token_secret)
            }
        };
        oauth_params.push(("oauth_signature".into(), signature));
        Ok(oauth_params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
        p.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("<missing>")
    }

    #[test]
    fn encode_follows_rfc5849_3_6() {
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode(" !*'()+/=&%"), "%20%21%2A%27%28%29%2B%2F%3D%26%25");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn decode_form_handles_plus_and_bare_names() {
        assert_eq!(
            decode_form("c2&a3=2+q&x=%3D%253D&&e="),
            pairs(&[("c2", ""), ("a3", "2 q"), ("x", "=%3D"), ("e", "")])
        );
    }

    #[test]
    fn encode_form_roundtrips() {
        let p = pairs(&[("a b", "c&d=e+f"), ("raw", "urn:rfid:7E6F"), ("é", "")]);
        assert_eq!(decode_form(&encode_form(&p)), p);
    }

    #[test]
    fn base_string_uri_normalizes() {
        assert_eq!(
            base_string_uri("HTTP://EXAMPLE.COM:80/r%20v/X?id=123").unwrap(),
            "http://example.com/r%20v/X"
        );
        assert_eq!(
            base_string_uri("https://www.example.net:8080/?q=1").unwrap(),
            "https://www.example.net:8080/"
        );
        assert_eq!(
            base_string_uri("https://example.net:443").unwrap(),
            "https://example.net/"
        );
        assert!(base_string_uri("not a url").is_err());
    }

    /// RFC 5849 §3.4.1.1 example (the §3.4.1 request, with the realm excluded).
    #[test]
    fn rfc5849_3_4_1_base_string_and_signature() {
        let url = "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b";
        let mut params = decode_form("c2&a3=2+q");
        params.extend(pairs(&[
            ("oauth_consumer_key", "9djdj82h48djs9d2"),
            ("oauth_token", "kkk9d7dh3k39sjv7"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "137131201"),
            ("oauth_nonce", "7d8f3e4a"),
        ]));
        let base = signature_base_string("POST", url, &params).unwrap();
        assert_eq!(
            base,
            "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q\
             %26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_\
             key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_m\
             ethod%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk\
             9d7dh3k39sjv7"
        );
        assert_eq!(
            hmac_sha1_signature(&base, "j49sk3j29djd", "dh893hdasih9"),
            "r6/TJjbCOr97/+UU0NsvSne7s5g="
        );

        // The same through the Signer.
        let signer = Signer::new("9djdj82h48djs9d2", "j49sk3j29djd")
            .with_token("kkk9d7dh3k39sjv7", "dh893hdasih9")
            .with_version_param(false);
        let signed = signer
            .sign(
                "post",
                url,
                &decode_form("c2&a3=2+q"),
                &Stamp::new("7d8f3e4a", 137131201),
            )
            .unwrap();
        assert_eq!(
            get(&signed, "oauth_signature"),
            "r6/TJjbCOr97/+UU0NsvSne7s5g="
        );
    }

    /// RFC 5849 §1.2, temporary credentials request (no token, with a callback).
    #[test]
    fn rfc5849_1_2_temporary_credentials() {
        let signer = Signer::new("dpf43f3p2l4k3l03", "kd94hf93k423kf44").with_version_param(false);
        let mut oauth = signer.protocol_params(&Stamp::new("wIjqoS", 137131200));
        oauth.push((
            "oauth_callback".into(),
            "http://printer.example.com/ready".into(),
        ));
        let signed = signer
            .sign_protocol_params("POST", "https://photos.example.net/initiate", &[], oauth)
            .unwrap();
        assert_eq!(
            get(&signed, "oauth_signature"),
            "74KNZJeDHnMBp0EMJ9ZHt/XKycU="
        );
        let header = authorization_header("Photos", &signed);
        assert!(
            header.starts_with("OAuth realm=\"Photos\", oauth_consumer_key=\"dpf43f3p2l4k3l03\"")
        );
        assert!(header.contains("oauth_callback=\"http%3A%2F%2Fprinter.example.com%2Fready\""));
        assert!(header.contains("oauth_signature=\"74KNZJeDHnMBp0EMJ9ZHt%2FXKycU%3D\""));
    }

    /// RFC 5849 §1.2, protected resource request.
    #[test]
    fn rfc5849_1_2_photos_request() {
        let signer = Signer::new("dpf43f3p2l4k3l03", "kd94hf93k423kf44")
            .with_token("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00")
            .with_version_param(false);
        let signed = signer
            .sign(
                "GET",
                "http://photos.example.net/photos?file=vacation.jpg&size=original",
                &[],
                &Stamp::new("chapoH", 137131202),
            )
            .unwrap();
        assert_eq!(
            get(&signed, "oauth_signature"),
            "MdpQcU8iPSUjWoN/UDMsK2sui9I="
        );
    }

    #[test]
    fn protocol_params_are_complete() {
        let signer = Signer::new("ck", "cs").with_token("tk", "ts");
        let signed = signer
            .sign(
                "POST",
                "http://h/services/rest/",
                &[],
                &Stamp::new("n1", 42),
            )
            .unwrap();
        let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "oauth_consumer_key",
                "oauth_token",
                "oauth_signature_method",
                "oauth_timestamp",
                "oauth_nonce",
                "oauth_version",
                "oauth_signature"
            ]
        );
        assert_eq!(get(&signed, "oauth_version"), "1.0");
        assert_eq!(get(&signed, "oauth_timestamp"), "42");
    }

    #[test]
    fn plaintext_signature_is_the_key() {
        let signer = Signer::new("ck", "c s")
            .with_token("tk", "t&s")
            .with_method(SignatureMethod::Plaintext);
        let signed = signer
            .sign("POST", "http://h/", &[], &Stamp::new("n", 1))
            .unwrap();
        assert_eq!(get(&signed, "oauth_signature_method"), "PLAINTEXT");
        assert_eq!(get(&signed, "oauth_signature"), "c%20s&t%26s");
    }

    #[test]
    fn fresh_stamps_differ() {
        let a = Stamp::fresh();
        let b = Stamp::fresh();
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 32);
        assert!(a.timestamp > 1_600_000_000);
    }

    #[test]
    fn debug_hides_secrets() {
        let signer = Signer::new("ck", "consumer-secret").with_token("tk", "token-secret");
        let shown = format!("{signer:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
