//! Connecting to NATS the same way from every service and tool.

use crate::BusError;

/// Default server when `NATS_URL` is not set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Where and as whom to connect, usually read from the environment.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// `NATS_URL`; several servers may be given comma-separated.
    pub url: String,
    /// `NATS_CREDS`: a `.creds` file (JWT + nkey seed).
    pub creds_file: Option<String>,
    /// `NATS_USER` / `NATS_PASSWORD` (or `NATS_PASSWORD_FILE`).
    pub user_password: Option<(String, String)>,
    /// Connection name shown by the server (`nats-server` monitoring).
    pub name: String,
    /// TLS settings (`NATS_CA`, `NATS_TLS_CERT`, `NATS_TLS_KEY`).
    pub tls: TlsOptions,
    /// `NATS_INBOX_PREFIX`; when unset and `NATS_USER` is set, `_INBOX.{user}`
    /// so a least-privilege server config can give each user only its own
    /// reply subjects (see docs/security.md). `None` keeps the client default `_INBOX`.
    pub inbox_prefix: Option<String>,
}

/// TLS towards the NATS server. A `tls://` URL also turns TLS on (with the
/// system's roots unless a CA is given).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `NATS_CA`: PEM file of the CA(s) that signed the server certificate;
    /// setting it requires TLS.
    pub ca_file: Option<String>,
    /// `NATS_TLS_CERT` + `NATS_TLS_KEY`: a client certificate and its key
    /// (PEM), for servers that verify clients (`verify: true`).
    pub client_cert: Option<(String, String)>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// The inbox prefix for a user: `_INBOX.{user}` with every character that
/// is not `A-Z a-z 0-9 - _` replaced by `_` (a user name must stay one
/// subject token).
pub fn inbox_prefix_for_user(user: &str) -> String {
    let token: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX.{token}")
}

impl BusOptions {
    /// Reads `NATS_URL`, `NATS_CREDS`, `NATS_USER`, `NATS_PASSWORD[_FILE]`,
    /// `NATS_CA`, `NATS_TLS_CERT`, `NATS_TLS_KEY` and `NATS_INBOX_PREFIX`.
    pub fn from_env(name: &str) -> Result<Self, BusError> {
        let url = std::env::var("NATS_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_string());
        let creds_file = std::env::var("NATS_CREDS").ok().filter(|s| !s.is_empty());
        let password = match std::env::var("NATS_PASSWORD_FILE") {
            Ok(path) if !path.is_empty() => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| BusError::Credentials { path, source })?
                    .trim()
                    .to_string(),
            ),
            _ => std::env::var("NATS_PASSWORD").ok(),
        };
        let user_password = std::env::var("NATS_USER")
            .ok()
            .filter(|u| !u.is_empty())
            .map(|u| (u, password.unwrap_or_default()));
        let client_cert = match (env_nonempty("NATS_TLS_CERT"), env_nonempty("NATS_TLS_KEY")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(BusError::Credentials {
                    path: cert,
                    source: std::io::Error::other("NATS_TLS_CERT is set but NATS_TLS_KEY is not"),
                });
            }
            (None, Some(key)) => {
                return Err(BusError::Credentials {
                    path: key,
                    source: std::io::Error::other("NATS_TLS_KEY is set but NATS_TLS_CERT is not"),
                });
            }
        };
        let tls = TlsOptions {
            ca_file: env_nonempty("NATS_CA"),
            client_cert,
        };
        let inbox_prefix = env_nonempty("NATS_INBOX_PREFIX").or_else(|| {
            user_password
                .as_ref()
                .map(|(user, _)| inbox_prefix_for_user(user))
        });
        Ok(BusOptions {
            url,
            creds_file,
            user_password,
            name: name.to_string(),
            tls,
            inbox_prefix,
        })
    }
}

/// Connects, retrying in the background if the server is not up yet.
///
/// `retry` = true suits long-running services (they start before NATS);
/// one-shot commands pass false so a wrong URL fails at once.
pub async fn connect(opts: &BusOptions, retry: bool) -> Result<async_nats::Client, BusError> {
    let mut co = async_nats::ConnectOptions::new()
        .name(&opts.name)
        .subscription_capacity(1 << 16)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("NATS link lost"),
                async_nats::Event::Connected => tracing::info!("NATS link up"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if retry {
        co = co.retry_on_initial_connect();
    }
    if let Some(path) = &opts.creds_file {
        co = co
            .credentials_file(path)
            .await
            .map_err(|source| BusError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    if let Some((user, password)) = &opts.user_password {
        co = co.user_and_password(user.clone(), password.clone());
    }
    if let Some(prefix) = &opts.inbox_prefix {
        co = co.custom_inbox_prefix(prefix);
    }
    if opts.tls.ca_file.is_some() || opts.tls.client_cert.is_some() {
        // One TLS stack everywhere: rustls with ring (a no-op if a provider
        // is installed already).
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    }
    if let Some(ca) = &opts.tls.ca_file {
        if !std::path::Path::new(ca).is_file() {
            return Err(BusError::Credentials {
                path: ca.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "NATS_CA: no such file"),
            });
        }
        co = co.add_root_certificates(ca.into()).require_tls(true);
    }
    if let Some((cert, key)) = &opts.tls.client_cert {
        for path in [cert, key] {
            if !std::path::Path::new(path).is_file() {
                return Err(BusError::Credentials {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "NATS_TLS_CERT/NATS_TLS_KEY: no such file",
                    ),
                });
            }
        }
        co = co
            .add_client_certificate(cert.into(), key.into())
            .require_tls(true);
    }
    // `NATS_URL` may list several servers (a cluster), comma-separated: the
    // client picks one that answers and fails over to the others.
    let servers: Vec<&str> = opts
        .url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    co.connect(servers)
        .await
        .map_err(|source| BusError::Connect {
            url: opts.url.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_prefix_is_one_token_per_user() {
        assert_eq!(inbox_prefix_for_user("identity"), "_INBOX.identity");
        assert_eq!(
            inbox_prefix_for_user("reader-hall-left"),
            "_INBOX.reader-hall-left"
        );
        assert_eq!(inbox_prefix_for_user("a.b c>*"), "_INBOX.a_b_c__");
    }
}
