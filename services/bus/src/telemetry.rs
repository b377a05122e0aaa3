//! Logging set-up shared by every binary.
//!
//! `RUST_LOG` filters (default `info`); `TAGPOLL_LOG_FORMAT=json` switches to
//! one JSON object per line for log shippers. Logs go to stderr.

/// Installs the global tracing subscriber with `info` as the default level.
/// Call once, first thing in `main`.
pub fn init() {
    init_with_default("info")
}

/// Like [`init`], with another default level (command-line tools use `warn`).
pub fn init_with_default(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(level),
    };
    let json = std::env::var("TAGPOLL_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
