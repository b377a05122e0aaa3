//! `tagpoll-tally`: counts votes. Config and wiring only.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tagpoll_tally::service;

/// Applies poll rules to identified taps and keeps the counts.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Minimum milliseconds between two results snapshots of one poll.
    #[arg(long, env = "TAGPOLL_SNAPSHOT_INTERVAL_MS", default_value_t = 5)]
    snapshot_interval_ms: u64,
    /// This instance's share of the polls, INDEX/COUNT (e.g. 0/2 and 1/2 for two instances).
    #[arg(long, env = "TAGPOLL_TALLY_PARTITION", default_value = "0/1")]
    partition: tagpoll_tally::partition::Partition,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init();
    let args = Args::parse();
    let opts = tagpoll_bus::BusOptions::from_env("tagpoll-tally")?;
    let client = tagpoll_bus::connect(&opts, true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let config = tagpoll_bus::config::follow(&js, buckets.config).await?;
    let stats = Arc::new(tagpoll_bus::heartbeat::Stats::default());
    tagpoll_bus::heartbeat::spawn_service(client.clone(), "tally", stats.clone());
    let options = service::TallyOptions {
        snapshot_interval: Duration::from_millis(args.snapshot_interval_ms),
        partition: args.partition,
        ..Default::default()
    };
    tokio::select! {
        r = service::run(client, js, buckets.results, config, options, stats) => r?,
        _ = tagpoll_bus::shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
