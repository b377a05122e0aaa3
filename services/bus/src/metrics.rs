//! `/metrics` in Prometheus text format for services without a web server.
//!
//! Set `TAGPOLL_METRICS_ADDR` (e.g. `127.0.0.1:9464`) and the service serves
//! its latest heartbeat as metrics: messages handled, lag, in-flight work,
//! NATS link, uptime, and for reader devices spool depth, taps and frame
//! errors per reader. The web service has its own `/metrics`.

use std::fmt::Write as _;
use std::time::SystemTime;

use tagpoll_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Environment variable naming the listen address.
pub const ENV_ADDR: &str = "TAGPOLL_METRICS_ADDR";

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text for one heartbeat.
pub fn render(hb: &v1::Heartbeat) -> String {
    let who = format!(
        "kind=\"{}\",name=\"{}\",instance=\"{}\"",
        label(&hb.kind),
        label(&hb.name),
        label(&hb.instance)
    );
    let uptime = tagpoll_proto::to_system_time(hb.started_at.as_ref())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{who}}} {value}"
        );
    };
    metric(
        "tagpoll_handled_total",
        "counter",
        "Messages (or taps) handled since start.",
        hb.handled as f64,
    );
    metric(
        "tagpoll_lag",
        "gauge",
        "Work waiting for this process (reads not yet handled, taps in the spool).",
        hb.lag as f64,
    );
    metric(
        "tagpoll_in_flight",
        "gauge",
        "Work started and not finished.",
        hb.in_flight as f64,
    );
    metric(
        "tagpoll_nats_connected",
        "gauge",
        "1 while the NATS link is up.",
        f64::from(u8::from(hb.nats_connected)),
    );
    metric(
        "tagpoll_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        uptime,
    );
    metric(
        "tagpoll_error",
        "gauge",
        "1 while the process reports an error (see its heartbeat's last_error).",
        f64::from(u8::from(!hb.last_error.is_empty())),
    );
    // Only services: a device's name is its id, not a fixed name.
    let mut counters: Vec<_> = hb
        .counters
        .iter()
        .filter(|_| hb.kind == "service")
        .collect();
    counters.sort();
    for (counter, value) in counters {
        // Names are fixed by the services; keep them metric-safe anyway.
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let name = format!("tagpoll_{}_{}_total", safe(&hb.name), safe(counter));
        metric(
            &name,
            "counter",
            "Events of this kind since start.",
            *value as f64,
        );
    }
    if hb.kind == "device" {
        metric(
            "tagpoll_spool_depth",
            "gauge",
            "Taps in the spool, not yet acknowledged by JetStream.",
            hb.spool_depth as f64,
        );
        metric(
            "tagpoll_frame_errors_total",
            "counter",
            "Bad frames from all readers.",
            hb.frame_errors as f64,
        );
        let _ = writeln!(
            out,
            "# HELP tagpoll_reader_taps_total Taps per reader.\n# TYPE tagpoll_reader_taps_total counter"
        );
        for r in &hb.readers {
            let _ = writeln!(
                out,
                "tagpoll_reader_taps_total{{{who},reader=\"{}\"}} {}",
                label(&r.reader_id),
                r.taps
            );
        }
        let _ = writeln!(
            out,
            "# HELP tagpoll_reader_connected 1 while a reader's serial port is open.\n# TYPE tagpoll_reader_connected gauge"
        );
        for r in &hb.readers {
            let up = u8::from(r.state == "connected");
            let _ = writeln!(
                out,
                "tagpoll_reader_connected{{{who},reader=\"{}\"}} {up}",
                label(&r.reader_id)
            );
        }
    }
    out
}

/// Whether the process behind `hb` (its latest heartbeat) is healthy: its
/// heartbeat task is alive (the heartbeat is fresh, which a stuck runtime
/// or a closed client stops) and it is connected to NATS. The reason why
/// not, otherwise. Container health checks ask this on `GET /healthz`.
pub fn health(hb: &v1::Heartbeat, now: std::time::SystemTime) -> Result<(), String> {
    if hb.sent_at.is_none() {
        return Err("starting: no heartbeat yet".into());
    }
    if !crate::heartbeat::is_online(hb, now) {
        let age = hb
            .sent_at
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map_or_else(|| "?".to_string(), |d| d.as_secs().to_string());
        return Err(format!("no heartbeat for {age} s: the service is stuck"));
    }
    if !hb.nats_connected {
        return Err("not connected to NATS".into());
    }
    Ok(())
}

/// Serves `GET /metrics` (and `GET /healthz`, see [`health`]) from the
/// latest heartbeat if `TAGPOLL_METRICS_ADDR` is set; logs and gives up if
/// the address cannot be bound.
pub fn serve_from_env(latest: watch::Receiver<v1::Heartbeat>) {
    let Ok(addr) = std::env::var(ENV_ADDR) else {
        return;
    };
    if addr.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "{ENV_ADDR}: cannot listen; no /metrics");
                return;
            }
        };
        tracing::info!(%addr, "serving /metrics");
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let latest = latest.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut len = 0;
                // Read the request head (bounded), then answer and close.
                while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        conn.read(&mut buf[len..]),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => len += n,
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let (status, body) = if head.starts_with("GET /metrics ") {
                    ("200 OK", render(&latest.borrow()))
                } else if head.starts_with("GET /healthz ") {
                    match health(&latest.borrow(), std::time::SystemTime::now()) {
                        Ok(()) => ("200 OK", "ok\n".to_string()),
                        Err(why) => ("503 Service Unavailable", format!("{why}\n")),
                    }
                } else {
                    (
                        "404 Not Found",
                        "only GET /metrics and GET /healthz here\n".to_string(),
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_with_a_fresh_heartbeat_and_nats() {
        use std::time::{Duration, SystemTime};
        let now = SystemTime::now();
        let hb = |age: u64, connected: bool| v1::Heartbeat {
            sent_at: Some(tagpoll_proto::timestamp(now - Duration::from_secs(age))),
            interval_secs: 2,
            nats_connected: connected,
            ..Default::default()
        };
        assert_eq!(health(&hb(1, true), now), Ok(()));
        assert_eq!(
            health(&hb(1, false), now),
            Err("not connected to NATS".into())
        );
        assert_eq!(
            health(&hb(30, true), now),
            Err("no heartbeat for 30 s: the service is stuck".into())
        );
        assert!(
            health(&v1::Heartbeat::default(), now)
                .unwrap_err()
                .starts_with("starting")
        );
    }

    #[test]
    fn renders_device_metrics() {
        let hb = v1::Heartbeat {
            kind: "device".into(),
            name: "hall".into(),
            instance: "i1".into(),
            handled: 7,
            spool_depth: 3,
            nats_connected: true,
            readers: vec![v1::ReaderHealth {
                reader_id: "r\"1".into(),
                state: "connected".into(),
                taps: 7,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&hb);
        assert!(
            text.contains("tagpoll_handled_total{kind=\"device\",name=\"hall\",instance=\"i1\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("tagpoll_spool_depth{kind=\"device\",name=\"hall\",instance=\"i1\"} 3"),
            "{text}"
        );
        assert!(text.contains("reader=\"r\\\"1\"} 1"), "{text}");
        assert!(text.contains("# TYPE tagpoll_lag gauge"));
    }
}
