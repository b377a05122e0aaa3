//! `tagpoll-web`: the HTTP API and live pages. Config and wiring only.

use anyhow::Context;
use clap::Parser;

/// Serves the tagpoll JSON API and live pages.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long = "http", env = "TAGPOLL_HTTP", default_value = "127.0.0.1:8080")]
    http: String,
}

/// The admin API's bearer token comes from the environment (or a file named
/// there) only: a command line argument would show in every process listing.
const ADMIN_TOKEN_ENV: &str = "TAGPOLL_ADMIN_TOKEN";
/// A file holding the token (a docker or systemd secret); wins over
/// [`ADMIN_TOKEN_ENV`].
const ADMIN_TOKEN_FILE_ENV: &str = "TAGPOLL_ADMIN_TOKEN_FILE";

fn admin_token() -> anyhow::Result<Option<String>> {
    match std::env::var(ADMIN_TOKEN_FILE_ENV) {
        Ok(path) if !path.is_empty() => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{ADMIN_TOKEN_FILE_ENV}={path}: cannot read the token"))?;
            let token = text.trim_end_matches(['\r', '\n']);
            if token.is_empty() {
                anyhow::bail!("{ADMIN_TOKEN_FILE_ENV}={path}: the file is empty");
            }
            Ok(Some(token.to_string()))
        }
        _ => Ok(std::env::var(ADMIN_TOKEN_ENV).ok()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tagpoll_bus::telemetry::init();
    let args = Args::parse();
    let admin_token = admin_token()?;
    let listener = tokio::net::TcpListener::bind(&args.http)
        .await
        .with_context(|| format!("--http {}: cannot listen", args.http))?;
    let opts = tagpoll_bus::BusOptions::from_env("tagpoll-web")?;
    let client = tagpoll_bus::connect(&opts, true).await?;
    let js = async_nats::jetstream::new(client.clone());
    let buckets = tagpoll_bus::topology::ensure(&js).await?;
    let config = tagpoll_bus::config::follow(&js, buckets.config.clone()).await?;
    let view = tagpoll_web::view::View::new(client, config, buckets.results);
    let state = tagpoll_web::app::AppState::start(view, buckets.config, admin_token.as_deref());
    tracing::info!("web listening on http://{}", listener.local_addr()?);
    tagpoll_web::app::serve(listener, state, tagpoll_bus::shutdown_signal()).await?;
    Ok(())
}
