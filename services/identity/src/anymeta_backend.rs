//! anyMeta as a backend of the chain: cache → single-flight → circuit breaker → retries → HTTP.
//!
//! A lookup first asks the shared KV cache. On a miss, concurrent lookups of the same tag in
//! this process share one call (single-flight). The call is refused at once while the circuit
//! breaker is open; otherwise transient failures (unreachable, timeout, 5xx, malformed answers)
//! are retried with exponential backoff and full jitter, within [`RetryPolicy::budget`]. Only a
//! person or a clear "no person has this tag" is an answer (and cached); everything else is
//! [`Unavailable`], which makes the service hand the read back to JetStream for later.
//! Permanent failures (bad credentials — anyMeta's code 99 —, a wrong entry point, API errors)
//! are logged loudly, open the breaker at once and show in the heartbeat's `last_error`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tagpoll_bus::heartbeat::Stats;
use tracing::Instrument;

use crate::anymeta::{AnyMetaClient, AnyMetaError, Person};
use crate::breaker::{Admission, Breaker, Transition};
use crate::cache::Cache;
use crate::counters::{Counters, inc};
use crate::singleflight::SingleFlight;

/// Why a backend could not answer now; the read is retried later.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable {
    pub reason: String,
    /// At least this long before trying again makes sense (the breaker's cool-down).
    pub retry_after: Option<Duration>,
}

impl Unavailable {
    pub fn new(reason: impl Into<String>) -> Self {
        Unavailable {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// What anyMeta said about a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyMetaAnswer {
    Person(Person),
    NoPerson,
    Unavailable(Unavailable),
}

/// Retries inside one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after the first, for transient failures.
    pub retries: u32,
    /// First backoff; doubled per attempt up to `max_backoff`, each a random fraction (full jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts after this much time since the lookup began.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 2,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            budget: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Backoff before retry number `attempt` (0 for the first retry): full jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive transient failures that open it.
    pub failures: u32,
    /// How long it stays open before one probe.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: 5,
            cooldown: Duration::from_secs(5),
        }
    }
}

/// The anyMeta backend of one instance; clones share cache, flights and breaker.
#[derive(Clone)]
pub struct AnyMetaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: AnyMetaClient,
    cache: Cache,
    flights: SingleFlight<Vec<u8>, AnyMetaAnswer>,
    breaker: Breaker,
    retry: RetryPolicy,
    counters: Arc<Counters>,
    stats: Arc<Stats>,
    /// The last anyMeta failure, quoted while the breaker refuses calls.
    last_failure: std::sync::Mutex<String>,
}

impl AnyMetaBackend {
    pub fn new(
        client: AnyMetaClient,
        cache: Cache,
        retry: RetryPolicy,
        breaker: BreakerPolicy,
        counters: Arc<Counters>,
        stats: Arc<Stats>,
    ) -> Self {
        let probe_timeout = retry.budget + Duration::from_secs(30);
        AnyMetaBackend {
            inner: Arc::new(Inner {
                client,
                cache,
                flights: SingleFlight::default(),
                breaker: Breaker::new(breaker.failures, breaker.cooldown, probe_timeout),
                retry,
                counters,
                stats,
                last_failure: std::sync::Mutex::default(),
            }),
        }
    }

    pub fn client(&self) -> &AnyMetaClient {
        &self.inner.client
    }

    /// Who owns the tag according to anyMeta (cached).
    pub async fn lookup(&self, uid: &[u8]) -> AnyMetaAnswer {
        if uid.is_empty() {
            // Nothing can be linked to an empty UID; asking would only be refused.
            return AnyMetaAnswer::NoPerson;
        }
        let inner = &self.inner;
        if let Some(hit) = inner.cache.get(uid).await {
            inc(&inner.counters.cache_hits);
            return answer_of(hit);
        }
        inc(&inner.counters.cache_misses);
        let me = self.clone();
        let key = uid.to_vec();
        let (answer, leader) = inner
            .flights
            .run(
                key.clone(),
                // Asked again inside the flight: a flight of this tag that ended between our
                // miss and now has just cached its answer, and anyMeta need not hear it twice.
                // The call is logged in the span of the read that started it.
                move || {
                    async move {
                        match me.inner.cache.get(&key).await {
                            Some(hit) => answer_of(hit),
                            None => me.fetch(&key).await,
                        }
                    }
                    .in_current_span()
                },
                AnyMetaAnswer::Unavailable(Unavailable::new("anyMeta lookup task failed")),
            )
            .await;
        if !leader {
            inc(&inner.counters.coalesced);
        }
        answer
    }

    /// Asks anyMeta (breaker, retries), caches a real answer.
    async fn fetch(&self, uid: &[u8]) -> AnyMetaAnswer {
        let inner = &self.inner;
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match inner.breaker.admit(Instant::now()) {
                Admission::Refused(wait) => {
                    inc(&inner.counters.breaker_refusals);
                    let last = inner
                        .last_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    return AnyMetaAnswer::Unavailable(Unavailable {
                        reason: format!("anyMeta circuit breaker open (last error: {last})"),
                        retry_after: Some(wait),
                    });
                }
                Admission::Probe => tracing::info!("anyMeta circuit half-open: probing"),
                Admission::Go => {}
            }
            inc(&inner.counters.anymeta_calls);
            let result = inner.client.identify_rfid(uid).await;
            match result {
                Ok(person) => {
                    if inner.breaker.record_success() == Transition::Closed {
                        tracing::info!("anyMeta answers again: circuit closed");
                    }
                    clear_error(&inner.stats);
                    inner.cache.put(uid, person.as_ref()).await;
                    return answer_of(person);
                }
                Err(e) => {
                    inc(&inner.counters.anymeta_failures);
                    let permanent = !e.is_transient();
                    let transition = inner.breaker.record_failure(permanent, Instant::now());
                    let reason = describe(&e);
                    inner.stats.error(&reason);
                    reason.clone_into(
                        &mut inner.last_failure.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    if permanent {
                        if transition == Transition::Opened {
                            tracing::error!(
                                error = %e,
                                "anyMeta refuses our calls; reads stay unacknowledged in \
                                 TAGPOLL_READS until the anyMeta settings (TAGPOLL_ANYMETA_*) are \
                                 fixed"
                            );
                        }
                        return AnyMetaAnswer::Unavailable(Unavailable {
                            reason,
                            retry_after: Some(inner.breaker.remaining_cooldown(Instant::now())),
                        });
                    }
                    if transition == Transition::Opened {
                        tracing::warn!(error = %e, "anyMeta failing: circuit opened");
                    } else {
                        tracing::debug!(error = %e, attempt, "anyMeta call failed");
                    }
                    let backoff = inner.retry.backoff(attempt);
                    let out_of_budget = started.elapsed() + backoff >= inner.retry.budget;
                    if attempt >= inner.retry.retries
                        || out_of_budget
                        || inner.breaker.remaining_cooldown(Instant::now()) > Duration::ZERO
                    {
                        return AnyMetaAnswer::Unavailable(Unavailable {
                            reason,
                            retry_after: Some(inner.breaker.remaining_cooldown(Instant::now()))
                                .filter(|d| !d.is_zero()),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// anyMeta's answer (fresh or cached) as a lookup's answer.
fn answer_of(hit: Option<Person>) -> AnyMetaAnswer {
    match hit {
        Some(p) => AnyMetaAnswer::Person(p),
        None => AnyMetaAnswer::NoPerson,
    }
}

fn describe(e: &AnyMetaError) -> String {
    match e {
        AnyMetaError::BadCredentials { .. } => format!(
            "{e} (anyMeta error code 99: check TAGPOLL_ANYMETA_CONSUMER_KEY/_SECRET and \
             TAGPOLL_ANYMETA_TOKEN/_SECRET; reads wait unacknowledged)"
        ),
        _ => e.to_string(),
    }
}

/// Clears an anyMeta error from the heartbeat's `last_error` once anyMeta answers again.
fn clear_error(stats: &Stats) {
    let mut last = stats.last_error.lock().unwrap_or_else(|e| e.into_inner());
    if last.contains("anyMeta") {
        last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(2));
            for _ in 0..20 {
                assert!(p.backoff(attempt) <= cap);
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(3)).collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
