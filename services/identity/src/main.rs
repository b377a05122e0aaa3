//! `tagpoll-identity`: resolves taps to voters. Config and wiring only.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tagpoll_identity::{anymeta, backend, service};

/// Resolves RFID taps to voters (anyMeta, event file, anonymous).
#[derive(Parser)]
#[command(version)]
struct Args {}

fn voter_key() -> anyhow::Result<backend::VoterKey> {
    let secret = match std::env::var("TAGPOLL_VOTER_KEY_FILE") {
        Ok(path) if !path.is_empty() => std::fs::read(&path)
            .with_context(|| format!("reading TAGPOLL_VOTER_KEY_FILE {path}"))?,
        _ => std::env::var("TAGPOLL_VOTER_KEY")
            .context("set TAGPOLL_VOTER_KEY or TAGPOLL_VOTER_KEY_FILE (a secret of at least 16 bytes that keys anonymous voter ids)")?
            .into_bytes(),
    };
    let secret: Vec<u8> = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
    backend::VoterKey::new(secret).map_err(|e| anyhow::anyhow!("TAGPOLL_VOTER_KEY: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init();
    let _args = Args::parse();
    let voter_key = voter_key()?;
    let anymeta = anymeta::AnyMetaConfig::from_env()
        .context("anyMeta configuration")?
        .map(anymeta::AnyMetaClient::new)
        .transpose()
        .context("anyMeta client")?;
    let opts = tagpoll_bus::BusOptions::from_env("tagpoll-identity")?;
    let client = tagpoll_bus::connect(&opts, true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let config = tagpoll_bus::config::follow(&js, buckets.config).await?;
    let stats = Arc::new(tagpoll_bus::heartbeat::Stats::default());
    tagpoll_bus::heartbeat::spawn_service(client, "identity", stats.clone());
    let backends = backend::Backends { voter_key, anymeta };
    tokio::select! {
        r = service::run(js, config, backends, stats) => r?,
        _ = tagpoll_bus::shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
