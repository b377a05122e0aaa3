//! `/metrics` in the Prometheus text format, written by hand: a handful of
//! counters does not need a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Which live stream an SSE client follows.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Results,
    Reader,
}

#[derive(Default, Debug)]
pub struct Metrics {
    /// (route template, method, status) → count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    pub sse_results: Gauge,
    pub sse_reader: Gauge,
    /// Results snapshots the tally stored (seen through the KV watch).
    pub results_updates: Counter,
    /// Public results changes fanned out to `/api/events` clients.
    pub live_events: Counter,
    pub outcomes: Counter,
    pub unknown_tags: Counter,
    pub heartbeats: Counter,
    /// Outcome events sent to kiosks (one per tap per connected kiosk).
    pub kiosk_events: Counter,
}

/// Counts a connected SSE client while alive.
pub struct ClientGuard {
    metrics: Arc<Metrics>,
    stream: Stream,
}

impl ClientGuard {
    pub fn new(metrics: Arc<Metrics>, stream: Stream) -> Self {
        metrics.gauge(stream).0.fetch_add(1, Ordering::Relaxed);
        ClientGuard { metrics, stream }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.stream)
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn gauge(&self, stream: Stream) -> &Gauge {
        match stream {
            Stream::Results => &self.sse_results,
            Stream::Reader => &self.sse_reader,
        }
    }

    pub fn count_request(&self, route: &str, method: &str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, String)> = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((route, method, status), n)| {
                (
                    format!(
                        "{{route=\"{}\",method=\"{}\",status=\"{status}\"}}",
                        escape(route),
                        escape(method)
                    ),
                    n.to_string(),
                )
            })
            .collect();
        family(
            "tagpoll_web_http_requests_total",
            "counter",
            "HTTP requests by route template, method and status.",
            &requests,
        );
        family(
            "tagpoll_web_sse_clients",
            "gauge",
            "Connected Server-Sent Events clients by stream.",
            &[
                (
                    "{stream=\"results\"}".into(),
                    self.sse_results.get().to_string(),
                ),
                (
                    "{stream=\"reader\"}".into(),
                    self.sse_reader.get().to_string(),
                ),
            ],
        );
        let plain = |c: &Counter| vec![(String::new(), c.get().to_string())];
        family(
            "tagpoll_web_results_updates_total",
            "counter",
            "Results snapshots seen from the tally.",
            &plain(&self.results_updates),
        );
        family(
            "tagpoll_web_live_events_total",
            "counter",
            "Public results changes fanned out to live clients.",
            &plain(&self.live_events),
        );
        family(
            "tagpoll_web_outcomes_total",
            "counter",
            "Vote outcomes seen.",
            &plain(&self.outcomes),
        );
        family(
            "tagpoll_web_unknown_tags_total",
            "counter",
            "Outcomes rejected because the tag is unknown.",
            &plain(&self.unknown_tags),
        );
        family(
            "tagpoll_web_heartbeats_total",
            "counter",
            "Heartbeats seen from services and reader devices.",
            &plain(&self.heartbeats),
        );
        family(
            "tagpoll_web_kiosk_events_total",
            "counter",
            "Outcome events sent to kiosk clients.",
            &plain(&self.kiosk_events),
        );
        out
    }
}

/// Middleware: counts every request by its route template (not the raw
/// path, which would let anyone grow the label set).
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    metrics.count_request(&route, &method, resp.status().as_u16());
    resp
}

/// `GET /metrics`
pub async fn handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Arc::new(Metrics::default());
        m.count_request("/api/polls/{poll}/results", "GET", 404);
        m.count_request("/api/polls/{poll}/results", "GET", 404);
        let guard = ClientGuard::new(m.clone(), Stream::Results);
        m.outcomes.inc();
        let text = m.render();
        assert!(text.contains(
            "tagpoll_web_http_requests_total{route=\"/api/polls/{poll}/results\",method=\"GET\",status=\"404\"} 2\n"
        ), "{text}");
        assert!(text.contains("tagpoll_web_sse_clients{stream=\"results\"} 1\n"));
        assert!(
            text.contains(
                "# TYPE tagpoll_web_outcomes_total counter\ntagpoll_web_outcomes_total 1\n"
            )
        );
        drop(guard);
        assert!(
            m.render()
                .contains("tagpoll_web_sse_clients{stream=\"results\"} 0\n")
        );
    }
}
