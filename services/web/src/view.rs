//! What the web service knows: the event config and the latest results,
//! both followed live from KV, plus a broadcast of every results change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::v1;
use tokio::sync::{broadcast, watch};

/// Shared, cheaply clonable view.
#[derive(Clone)]
pub struct View {
    pub client: async_nats::Client,
    pub config: watch::Receiver<Arc<EventConfig>>,
    pub results: Arc<RwLock<HashMap<String, v1::PollResults>>>,
    pub changes: broadcast::Sender<v1::PollResults>,
}

impl View {
    /// Starts following the results bucket.
    pub fn new(
        client: async_nats::Client,
        config: watch::Receiver<Arc<EventConfig>>,
        results_kv: kv::Store,
    ) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let view = View {
            client,
            config,
            results: Arc::default(),
            changes,
        };
        tokio::spawn(follow_results(view.clone(), results_kv));
        view
    }

    /// Whether the NATS link is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Latest stored results of a poll, if the tally published any.
    pub fn results_of(&self, poll_id: &str) -> Option<v1::PollResults> {
        self.results
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(poll_id)
            .cloned()
    }
}

async fn follow_results(view: View, kv: kv::Store) {
    loop {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "results watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(Ok(entry)) = watch.next().await {
            if entry.operation != kv::Operation::Put {
                continue;
            }
            match tagpoll_bus::decode::<v1::PollResults>(&entry.key, &entry.value) {
                Ok(r) => {
                    view.results
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(r.poll_id.clone(), r.clone());
                    let _ = view.changes.send(r);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring bad results entry"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
