//! HTML pages and static assets (compiled into the binary) and the live
//! results stream they use.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use crate::app::AppState;
use crate::live::LiveResults;
use crate::metrics::{ClientGuard, Stream as Which};

/// How long a browser waits before reconnecting after the stream broke.
pub const RETRY: Duration = Duration::from_secs(1);
/// Keep-alive `ping` events let a page notice a silently dead connection.
pub const PING: Duration = Duration::from_secs(5);

const NO_CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

/// The live results page (`/` and `/polls/{poll}`): one page, the script
/// reads the poll and `?projector=1` from the URL.
pub async fn results_page() -> impl IntoResponse {
    ([NO_CACHE], Html(include_str!("../assets/results.html")))
}

/// `/kiosk/{reader}`: the script reads the reader from the path.
pub async fn kiosk_page() -> impl IntoResponse {
    ([NO_CACHE], Html(include_str!("../assets/kiosk.html")))
}

/// `/admin`: loads without a token and asks for one.
pub async fn admin_page() -> impl IntoResponse {
    ([NO_CACHE], Html(include_str!("../assets/admin.html")))
}

/// Files shared by the pages.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "tagpoll.css",
        "text/css; charset=utf-8",
        include_str!("../assets/tagpoll.css"),
    ),
    (
        "tagpoll.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/tagpoll.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/favicon.svg"),
    ),
];

/// `GET /assets/{file}`
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

fn results_event(r: &LiveResults) -> Event {
    Event::default().event("results").data(&*r.json)
}

/// `GET /api/events`: Server-Sent Events, one `results` event per public
/// change, starting with the current results of every poll so a
/// (re)connecting client catches up without a reload. A client too slow
/// for the stream gets every poll's current results again instead of the
/// updates it missed.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let guard = ClientGuard::new(state.metrics.clone(), Which::Results);
    // Subscribe before taking the snapshot: a change in between is sent
    // twice rather than lost.
    let changes = BroadcastStream::new(state.live.subscribe());
    let initial = state.live.current();
    let live = state.live.clone();
    let updates = changes.flat_map(move |r| {
        let batch = match r {
            Ok(r) => vec![r],
            Err(_lagged) => live.current(),
        };
        futures::stream::iter(batch)
    });
    let stream = futures::stream::iter(initial).chain(updates).map(move |r| {
        let _alive = &guard;
        Ok(results_event(&r))
    });
    let stream =
        futures::stream::once(async { Ok(Event::default().retry(RETRY).comment("tagpoll")) })
            .chain(stream);
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(PING)
            .event(Event::default().event("ping").data("")),
    )
}
