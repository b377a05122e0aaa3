//! `tagpoll-xmpp`: the XMPP bridge. Config and wiring only.

use std::sync::Arc;

use clap::Parser;
use tagpoll_xmpp::{config::Config, service, xmpp::Connect};

/// Publishes poll results to XMPP publish-subscribe nodes and republishes
/// notifications from XMPP nodes on NATS.
#[derive(Parser)]
#[command(
    version,
    after_help = "Configured by environment (see docs/xmpp.md):\n  \
        TAGPOLL_XMPP_JID, TAGPOLL_XMPP_PASSWORD | TAGPOLL_XMPP_PASSWORD_FILE (required)\n  \
        TAGPOLL_XMPP_SERVER=host:port (default: DNS SRV of the JID's domain)\n  \
        TAGPOLL_XMPP_PUBSUB (default pubsub.<JID domain>)\n  \
        TAGPOLL_XMPP_ALLOW_PLAINTEXT=1 (no TLS; loopback only unless TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE=1)\n  \
        TAGPOLL_XMPP_NODE (default tagpoll/{event}/{poll}), TAGPOLL_XMPP_INTERVAL_MS (default 1000)\n  \
        TAGPOLL_XMPP_IKPOLL=1, TAGPOLL_XMPP_IKPOLL_PERSONAL=1, TAGPOLL_XMPP_IKPOLL_NODE (default vote/{poll})\n  \
        TAGPOLL_XMPP_LISTEN=service/node,...\n  \
        NATS_URL and the other NATS_* variables"
)]
struct Args {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init();
    let _ = Args::parse();
    let cfg = Config::from_env()?;
    let connect = Connect::from_config(&cfg).await?;
    // One TLS stack: rustls with ring.
    let _ = tokio_xmpp::rustls::crypto::ring::default_provider().install_default();
    let opts = tagpoll_bus::BusOptions::from_env("tagpoll-xmpp")?;
    let client = tagpoll_bus::connect(&opts, true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let config = tagpoll_bus::config::follow(&js, buckets.config).await?;
    let stats = Arc::new(tagpoll_bus::heartbeat::Stats::default());
    tagpoll_bus::heartbeat::spawn_service(client.clone(), "xmpp", stats.clone());
    tokio::select! {
        r = service::run(client, js, buckets.results, config, cfg, connect, stats) => r?,
        _ = tagpoll_bus::shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
