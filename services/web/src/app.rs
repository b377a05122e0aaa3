//! The router and the HTTP server.

use axum::Router;
use axum::routing::get;

use crate::view::View;
use crate::{api, pages};

/// Every route the web service serves.
pub fn router(view: View) -> Router {
    Router::new()
        .route("/", get(pages::results_page))
        .route("/polls/{poll}", get(pages::results_page))
        .route("/healthz", get(api::healthz))
        .route("/api/polls", get(api::polls))
        .route("/api/polls/{poll}/results", get(api::results))
        .route("/api/readers", get(api::readers))
        .route("/api/events", get(pages::events))
        .with_state(view)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: View,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(view))
        .with_graceful_shutdown(shutdown)
        .await
}
