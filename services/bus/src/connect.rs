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
}

impl BusOptions {
    /// Reads `NATS_URL`, `NATS_CREDS`, `NATS_USER`, `NATS_PASSWORD[_FILE]`.
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
        Ok(BusOptions {
            url,
            creds_file,
            user_password,
            name: name.to_string(),
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
    co.connect(opts.url.as_str())
        .await
        .map_err(|source| BusError::Connect {
            url: opts.url.clone(),
            source,
        })
}
