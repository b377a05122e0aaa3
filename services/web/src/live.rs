//! Public results as they change, serialised once and fanned out to every
//! live client (`/api/events`).
//!
//! Both results snapshots (from the tally, via KV) and config changes (open,
//! close, hide, reset, relabel) can change what the public sees, so both
//! trigger a recomputation; a poll's event goes out only when its public
//! JSON actually changed. Hiding therefore takes effect on every screen at
//! once, whichever of the two changes arrives first.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::public_results;
use crate::metrics::Metrics;
use crate::view::View;

/// One poll's public results, as the JSON text every client receives.
#[derive(Clone, Debug)]
pub struct LiveResults {
    pub poll: String,
    pub json: Arc<str>,
}

/// Handle to the fan-out.
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<LiveResults>,
    view: View,
}

/// Every poll's public results, in the event's order.
pub fn current(view: &View) -> Vec<LiveResults> {
    let config = view.config.borrow().clone();
    config
        .polls_in_order()
        .into_iter()
        .map(|p| public_json(view, p))
        .collect()
}

fn public_json(view: &View, poll: &tagpoll_proto::v1::PollDefinition) -> LiveResults {
    let r = public_results(poll, view.results_of(&poll.poll_id).as_ref());
    LiveResults {
        poll: poll.poll_id.clone(),
        json: serde_json::to_string(&r)
            .unwrap_or_else(|_| "{}".into())
            .into(),
    }
}

impl Live {
    /// Starts the task that turns changes into public events.
    pub fn spawn(view: View, metrics: Arc<Metrics>) -> Live {
        // Big enough for a burst over many polls; a client that still lags
        // behind gets every poll's current results instead (see pages).
        let (tx, _) = broadcast::channel(512);
        let raw = view.changes.subscribe();
        tokio::spawn(run(view.clone(), raw, tx.clone(), metrics));
        Live { tx, view }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveResults> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Vec<LiveResults> {
        current(&self.view)
    }
}

async fn run(
    view: View,
    mut raw: broadcast::Receiver<tagpoll_proto::v1::PollResults>,
    tx: broadcast::Sender<LiveResults>,
    metrics: Arc<Metrics>,
) {
    let mut config = view.config.clone();
    let mut last: HashMap<String, Arc<str>> = current(&view)
        .into_iter()
        .map(|r| (r.poll, r.json))
        .collect();
    loop {
        let polls: Option<Vec<String>> = tokio::select! {
            r = raw.recv() => match r {
                Ok(res) => {
                    metrics.results_updates.inc();
                    Some(vec![res.poll_id])
                }
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            },
            c = config.changed() => {
                if c.is_err() {
                    return;
                }
                config.borrow_and_update();
                None
            }
        };
        let cfg = view.config.borrow().clone();
        let polls = polls.unwrap_or_else(|| cfg.polls.keys().cloned().collect());
        for id in polls {
            let Some(poll) = cfg.polls.get(&id) else {
                continue;
            };
            let r = public_json(&view, poll);
            if last.get(&id) != Some(&r.json) {
                last.insert(id, r.json.clone());
                metrics.live_events.inc();
                let _ = tx.send(r);
            }
        }
    }
}
