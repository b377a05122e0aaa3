//! `tagpoll-identity`: resolves taps to voters. Config and wiring only.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tagpoll_identity::{anymeta, counters, service, settings};

/// Resolves RFID taps to voters (anyMeta, event file and CSV people, anonymous).
///
/// Every flag can also be set through the environment variable shown; see docs/identity.md.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    settings: settings::Settings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init();
    let args = Args::parse();
    let voter_key = settings::voter_key_from_env()?;
    let anymeta = anymeta::AnyMetaConfig::from_env().context("anyMeta configuration")?;
    // A broken CSV file stops the service before it touches NATS.
    let csv = args.settings.load_csv()?;
    let opts = tagpoll_bus::BusOptions::from_env("tagpoll-identity")?;
    let client = tagpoll_bus::connect(&opts, true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let config = tagpoll_bus::config::follow(&js, buckets.config).await?;
    let stats = Arc::new(tagpoll_bus::heartbeat::Stats::default());
    let counters = Arc::new(counters::Counters::default());
    let backends = args
        .settings
        .backends(
            &js,
            voter_key,
            anymeta,
            csv,
            counters.clone(),
            stats.clone(),
        )
        .await?;
    tagpoll_bus::heartbeat::spawn_service(client, "identity", stats.clone());
    counters.spawn_logger(counters::LOG_INTERVAL);
    let identity = service::Identity {
        js,
        config,
        backends,
        stats,
        counters,
        options: args.settings.service_options(),
    };
    // Listening for signals from now on (not only once the service runs).
    let signal = tokio::spawn(tagpoll_bus::shutdown_signal());
    service::run(identity, async {
        let _ = signal.await;
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}
