//! HTML pages (served from the binary) and the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::api::results_json;
use crate::view::View;

/// The live results page (`/` and `/polls/{poll}`): one page, the script
/// reads the poll from the path.
pub async fn results_page() -> impl IntoResponse {
    Html(include_str!("../assets/results.html"))
}

/// `GET /api/events`: Server-Sent Events, one `results` event per change,
/// starting with the current results of every poll so a (re)connecting
/// client catches up without a reload.
pub async fn events(
    State(view): State<View>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = BroadcastStream::new(view.changes.subscribe());
    let config = view.config.borrow().clone();
    let initial: Vec<_> = config
        .polls_in_order()
        .into_iter()
        .map(|p| results_json(p, view.results_of(&p.poll_id).as_ref()))
        .collect();
    let live_view = view.clone();
    let live = changes.filter_map(move |r| {
        let r = r.ok()?;
        let config = live_view.config.borrow().clone();
        let poll = config.polls.get(&r.poll_id)?;
        Some(results_json(poll, Some(&r)))
    });
    let stream = tokio_stream::iter(initial).chain(live).map(|r| {
        Ok(Event::default()
            .event("results")
            .json_data(&r)
            .unwrap_or_else(|_| Event::default().comment("unserialisable")))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}
