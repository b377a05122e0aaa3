//! The router and the HTTP server.
//!
//! Routes are added through [`Routes`], which also records each one, so the
//! unit tests can hold the router against `assets/openapi.json`.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::handler::Handler;
use axum::routing::{MethodRouter, get, post};
use axum::{Router, middleware};

use crate::admin::{self, Admin};
use crate::live::Live;
use crate::metrics::{self, Metrics};
use crate::monitor::Monitor;
use crate::view::View;
use crate::{api, kiosk, pages};

/// Everything the handlers share.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub view: View,
    pub live: Live,
    pub monitor: Monitor,
    pub metrics: Arc<Metrics>,
    pub admin: Admin,
}

impl AppState {
    /// Wires the live parts to a view: results fan-out, heartbeat and
    /// outcome listeners. `admin_token` `None` or empty disables admin calls.
    pub fn start(
        view: View,
        config_kv: async_nats::jetstream::kv::Store,
        admin_token: Option<&str>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        AppState {
            live: Live::spawn(view.clone(), metrics.clone()),
            monitor: Monitor::spawn(view.client.clone(), metrics.clone()),
            admin: Admin::new(admin_token, config_kv),
            view,
            metrics,
        }
    }
}

/// A router that remembers its (method, path) pairs.
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn add(mut self, method: &'static str, path: &'static str, mr: MethodRouter<AppState>) -> Self {
        self.table.push((method, path));
        self.router = self.router.route(path, mr);
        self
    }

    fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("get", path, get(h))
    }

    fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("post", path, post(h))
    }
}

fn routes() -> Routes {
    Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    // Pages and their assets.
    .get("/", pages::results_page)
    .get("/polls/{poll}", pages::results_page)
    .get("/kiosk/{reader}", pages::kiosk_page)
    .get("/admin", pages::admin_page)
    .get("/assets/{file}", pages::asset)
    // Operations.
    .get("/healthz", api::healthz)
    .get("/metrics", metrics::handler)
    // The public API.
    .get("/api/openapi.json", api::openapi)
    .get("/api/polls", api::polls)
    .get("/api/polls/{poll}/results", api::results)
    .get("/api/polls/{poll}/export", api::export)
    .get("/api/readers", api::readers)
    .get("/api/readers/{reader}", kiosk::reader)
    .get("/api/readers/{reader}/events", kiosk::events)
    .get("/api/events", pages::events)
    // The admin API (bearer token).
    .get("/api/admin/status", admin::status)
    .post("/api/admin/polls/{poll}/open", admin::open)
    .post("/api/admin/polls/{poll}/close", admin::close)
    .post("/api/admin/polls/{poll}/hide", admin::hide)
    .post("/api/admin/polls/{poll}/reveal", admin::reveal)
    .post("/api/admin/polls/{poll}/reset", admin::reset)
    .post("/api/admin/readers/{reader}/map", admin::map_reader)
}

/// Every (method, path) the router serves, paths in the router's syntax
/// (which is also OpenAPI's: `/api/polls/{poll}/results`).
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    routes().table
}

/// Every route the web service serves.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    routes()
        .router
        .fallback(api::fallback)
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is described in the OpenAPI document, and the document
    /// describes no route that does not exist.
    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(api::OPENAPI_JSON).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let table = route_table();
        for (method, path) in &table {
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is missing from openapi.json"))[*method];
            assert!(
                op.is_object(),
                "{method} {path} is missing from openapi.json"
            );
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            if path.starts_with("/api/admin/") {
                assert_eq!(
                    op["security"][0]["bearerAuth"],
                    serde_json::json!([]),
                    "{method} {path} must require the bearer token"
                );
                assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
            }
        }
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    table.iter().any(|(m, p)| m == method && p == path),
                    "openapi.json describes {method} {path}, which is no route"
                );
            }
        }
    }
}
