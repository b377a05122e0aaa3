//! The identity service's environment contract (each also a command-line flag).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TAGPOLL_VOTER_KEY` / `TAGPOLL_VOTER_KEY_FILE` | (required) | secret (≥ 16 bytes) keying anonymous voter ids and cache keys |
//! | `TAGPOLL_ANYMETA_ENTRYPOINT`, `_CONSUMER_KEY`, `_CONSUMER_SECRET`, `_TOKEN`, `_TOKEN_SECRET` | unset | anyMeta site and OAuth credentials |
//! | `TAGPOLL_ANYMETA_FILE` (+ `TAGPOLL_ANYMETA_SITE`) | unset | …or take them from an anyMeta registry file |
//! | `TAGPOLL_ANYMETA_TIMEOUT_MS` | 5000 | one anyMeta request, connecting included |
//! | `TAGPOLL_ANYMETA_RETRIES` | 2 | extra attempts for transient failures within one lookup |
//! | `TAGPOLL_ANYMETA_BREAKER_FAILURES` | 5 | consecutive failures that open the circuit breaker |
//! | `TAGPOLL_ANYMETA_BREAKER_COOLDOWN_MS` | 5000 | open time before one probe call |
//! | `TAGPOLL_IDENTITY_CSV` | unset | CSV people file `tag_uid,person_id,name` |
//! | `TAGPOLL_IDENTITY_CONCURRENCY` | 256 | reads resolved at once per instance |
//! | `TAGPOLL_IDENTITY_CACHE_TTL_SECS` | 3600 | cache lifetime of a known tag (0: not cached) |
//! | `TAGPOLL_IDENTITY_CACHE_UNKNOWN_TTL_SECS` | 60 | cache lifetime of an unknown tag (0: not cached) |
//! | `TAGPOLL_IDENTITY_RETRY_MS` | 1000 | first nak delay of an unavailable read (doubles per delivery) |
//! | `TAGPOLL_IDENTITY_RETRY_MAX_MS` | 10000 | longest nak delay |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tagpoll_bus::heartbeat::Stats;

use crate::anymeta::{AnyMetaClient, AnyMetaConfig};
use crate::anymeta_backend::{AnyMetaBackend, BreakerPolicy, RetryPolicy};
use crate::backend::{Backends, VoterKey};
use crate::cache::{self, Cache, CacheTtl};
use crate::counters::Counters;
use crate::people_csv::CsvPeople;
use crate::service::ServiceOptions;

/// Tunables, from flags or the environment. An empty variable counts as unset (its default),
/// as for the anyMeta settings, so compose files can pass variables through.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Reads resolved at once by this instance (1-4096).
    #[arg(long, env = "TAGPOLL_IDENTITY_CONCURRENCY", default_value = "256",
          value_parser = number_in::<u32>(256, 1, 4096))]
    pub concurrency: u32,
    /// CSV people file (`tag_uid,person_id,name`), asked by the `file` backend after the
    /// event file's people.
    #[arg(long, env = "TAGPOLL_IDENTITY_CSV", value_parser = any_path)]
    pub csv: Option<PathBuf>,
    /// Cache lifetime of a tag anyMeta knows, seconds (0: not cached).
    #[arg(long, env = "TAGPOLL_IDENTITY_CACHE_TTL_SECS", default_value = "3600",
          value_parser = number_in::<u64>(3600, 0, u64::MAX))]
    pub cache_ttl_secs: u64,
    /// Cache lifetime of a tag anyMeta does not know, seconds (0: not cached).
    #[arg(long, env = "TAGPOLL_IDENTITY_CACHE_UNKNOWN_TTL_SECS", default_value = "60",
          value_parser = number_in::<u64>(60, 0, u64::MAX))]
    pub cache_unknown_ttl_secs: u64,
    /// First delay before an unavailable read comes back, ms (doubles per delivery).
    #[arg(long, env = "TAGPOLL_IDENTITY_RETRY_MS", default_value = "1000",
          value_parser = number_in::<u64>(1000, 1, u64::MAX))]
    pub retry_ms: u64,
    /// Longest delay before an unavailable read comes back, ms.
    #[arg(long, env = "TAGPOLL_IDENTITY_RETRY_MAX_MS", default_value = "10000",
          value_parser = number_in::<u64>(10_000, 1, u64::MAX))]
    pub retry_max_ms: u64,
    /// One anyMeta request's time limit, ms.
    #[arg(long, env = "TAGPOLL_ANYMETA_TIMEOUT_MS", default_value = "5000",
          value_parser = number_in::<u64>(5000, 1, u64::MAX))]
    pub anymeta_timeout_ms: u64,
    /// Extra attempts for transient anyMeta failures within one lookup.
    #[arg(long, env = "TAGPOLL_ANYMETA_RETRIES", default_value = "2",
          value_parser = number_in::<u32>(2, 0, 20))]
    pub anymeta_retries: u32,
    /// Consecutive anyMeta failures that open the circuit breaker.
    #[arg(long, env = "TAGPOLL_ANYMETA_BREAKER_FAILURES", default_value = "5",
          value_parser = number_in::<u32>(5, 1, u32::MAX))]
    pub anymeta_breaker_failures: u32,
    /// How long the breaker stays open before one probe call, ms.
    #[arg(long, env = "TAGPOLL_ANYMETA_BREAKER_COOLDOWN_MS", default_value = "5000",
          value_parser = number_in::<u64>(5000, 0, u64::MAX))]
    pub anymeta_breaker_cooldown_ms: u64,
}

/// A path; empty is accepted here and means "none" (see [`Settings::load_csv`]).
fn any_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// A number within `min..=max`; empty means `default`.
fn number_in<T>(
    default: T,
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    move |s: &str| {
        let s = s.trim();
        if s.is_empty() {
            return Ok(default);
        }
        let n: T = s.parse().map_err(|e| format!("{e}"))?;
        if n < min || n > max {
            return Err(format!("{n} is not in {min}..={max}"));
        }
        Ok(n)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 256,
            csv: None,
            cache_ttl_secs: 3600,
            cache_unknown_ttl_secs: 60,
            retry_ms: 1000,
            retry_max_ms: 10_000,
            anymeta_timeout_ms: 5000,
            anymeta_retries: 2,
            anymeta_breaker_failures: 5,
            anymeta_breaker_cooldown_ms: 5000,
        }
    }
}

impl Settings {
    pub fn service_options(&self) -> ServiceOptions {
        let retry_base = Duration::from_millis(self.retry_ms.max(1));
        ServiceOptions {
            concurrency: self.concurrency as usize,
            retry_base,
            retry_max: Duration::from_millis(self.retry_max_ms).max(retry_base),
            order_retry: retry_base.min(Duration::from_millis(200)),
        }
    }

    pub fn cache_ttl(&self) -> CacheTtl {
        CacheTtl {
            known: Duration::from_secs(self.cache_ttl_secs),
            unknown: Duration::from_secs(self.cache_unknown_ttl_secs),
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        let timeout = Duration::from_millis(self.anymeta_timeout_ms);
        RetryPolicy {
            retries: self.anymeta_retries,
            // Enough for every attempt to run into its time limit, but bounded so a read never
            // sits long enough in the pipeline to be re-delivered (ack wait 30 s).
            budget: (timeout * 2).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            ..RetryPolicy::default()
        }
    }

    pub fn breaker_policy(&self) -> BreakerPolicy {
        BreakerPolicy {
            failures: self.anymeta_breaker_failures,
            cooldown: Duration::from_millis(self.anymeta_breaker_cooldown_ms),
        }
    }

    /// Reads and validates the CSV file, if any.
    pub fn load_csv(&self) -> anyhow::Result<Option<Arc<CsvPeople>>> {
        match &self.csv {
            Some(path) if !path.as_os_str().is_empty() => {
                let people = CsvPeople::load(path)
                    .map_err(|e| anyhow::anyhow!("TAGPOLL_IDENTITY_CSV is not valid:\n{e}"))?;
                tracing::info!(path = %path.display(), tags = people.tags.len(), "CSV people file loaded");
                Ok(Some(Arc::new(people)))
            }
            _ => Ok(None),
        }
    }

    /// Builds the backends: anyMeta (with the shared cache bucket) when configured, the CSV
    /// people (from [`Settings::load_csv`]) when given.
    pub async fn backends(
        &self,
        js: &jetstream::Context,
        voter_key: VoterKey,
        anymeta: Option<AnyMetaConfig>,
        csv: Option<Arc<CsvPeople>>,
        counters: Arc<Counters>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Backends> {
        let anymeta = match anymeta {
            None => None,
            Some(mut config) => {
                config.timeout = Duration::from_millis(self.anymeta_timeout_ms);
                let scope = config.entrypoint.clone();
                let client = AnyMetaClient::new(config).context("anyMeta client")?;
                let bucket = cache::ensure_bucket(js).await?;
                let cache = Cache::new(Some(bucket), voter_key.secret(), &scope, self.cache_ttl());
                tracing::info!(
                    entrypoint = client.entrypoint(),
                    "anyMeta backend configured"
                );
                Some(AnyMetaBackend::new(
                    client,
                    cache,
                    self.retry_policy(),
                    self.breaker_policy(),
                    counters,
                    stats,
                ))
            }
        };
        Ok(Backends {
            voter_key,
            anymeta,
            csv,
        })
    }
}

/// The voter key from `TAGPOLL_VOTER_KEY_FILE` or `TAGPOLL_VOTER_KEY`.
pub fn voter_key_from_env() -> anyhow::Result<VoterKey> {
    let secret = match std::env::var("TAGPOLL_VOTER_KEY_FILE") {
        Ok(path) if !path.is_empty() => std::fs::read(&path)
            .with_context(|| format!("reading TAGPOLL_VOTER_KEY_FILE {path}"))?,
        _ => std::env::var("TAGPOLL_VOTER_KEY")
            .context("set TAGPOLL_VOTER_KEY or TAGPOLL_VOTER_KEY_FILE (a secret of at least 16 bytes that keys anonymous voter ids)")?
            .into_bytes(),
    };
    let secret: Vec<u8> = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
    VoterKey::new(secret).map_err(|e| anyhow::anyhow!("TAGPOLL_VOTER_KEY: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: Settings,
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let parsed = Cli::parse_from(["x"]).s;
        let d = Settings::default();
        assert_eq!(parsed.concurrency, d.concurrency);
        assert_eq!(parsed.cache_ttl(), d.cache_ttl());
        assert_eq!(parsed.service_options(), d.service_options());
        assert_eq!(parsed.retry_policy(), d.retry_policy());
        assert_eq!(parsed.breaker_policy(), d.breaker_policy());
        assert_eq!(d.cache_ttl(), CacheTtl::default());
        assert!(Cli::try_parse_from(["x", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--concurrency", "many"]).is_err());
        assert_eq!(
            Cli::parse_from(["x", "--concurrency", ""]).s.concurrency,
            256
        );
        assert_eq!(
            Cli::parse_from(["x", "--concurrency", "8"]).s.concurrency,
            8
        );
    }
}
