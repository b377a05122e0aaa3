//! Single-flight: concurrent requests for the same key share one execution.
//!
//! The first caller for a key (the leader) spawns the work as its own task, so it finishes even
//! if every waiter goes away; later callers for the same key wait for that result. Once it is
//! done the key is free again: the next caller starts a new flight (by then the answer is
//! usually in the cache, which the work fills before it returns).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

type Flight<V> = Shared<BoxFuture<'static, V>>;
/// Flights under way, each with an id so a finished flight never removes its successor.
type Flights<K, V> = Arc<Mutex<HashMap<K, (u64, Flight<V>)>>>;

/// Coalesces concurrent work per key. Cheap to clone; clones share the flights.
pub struct SingleFlight<K, V: Clone> {
    flights: Flights<K, V>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl<K, V: Clone> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            flights: self.flights.clone(),
            next_id: self.next_id.clone(),
        }
    }
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            flights: Arc::default(),
            next_id: Arc::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` unless a flight for `key` is under way, in which case its result is shared.
    /// Returns the value and whether this caller led the flight. `on_panic` is the value when
    /// the work panicked.
    pub async fn run<F, Fut>(&self, key: K, work: F, on_panic: V) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&key) {
                Some((_, flight)) => (flight.clone(), false),
                None => {
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let work = work();
                    let (map, k) = (self.flights.clone(), key.clone());
                    // Free the key before anyone sees the value, so a caller that arrives
                    // after the answer starts afresh instead of reusing it. Done by the task
                    // itself, so it happens even when every waiter went away.
                    let task = tokio::spawn(async move {
                        let value = work.await;
                        release(&map, &k, id);
                        value
                    });
                    let (map, k) = (self.flights.clone(), key.clone());
                    let flight: Flight<V> = async move {
                        let value = task.await.unwrap_or(on_panic);
                        // The task panicked before freeing the key.
                        release(&map, &k, id);
                        value
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, (id, flight.clone()));
                    (flight, true)
                }
            }
        };
        (flight.await, leader)
    }

    /// Keys with a flight under way (or one whose end nobody has awaited yet).
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes the flight of `key` if it is still flight `id` (not a successor).
fn release<K: Hash + Eq, V>(flights: &Flights<K, V>, key: &K, id: u64) {
    let mut flights = flights.lock().unwrap_or_else(|e| e.into_inner());
    if flights.get(key).is_some_and(|(i, _)| *i == id) {
        flights.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_share_one_execution() {
        let sf: SingleFlight<u32, u32> = SingleFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let sf = sf.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                sf.run(
                    7,
                    move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        42
                    },
                    0,
                )
                .await
            }));
        }
        let mut leaders = 0;
        for h in handles {
            let (v, led) = h.await.unwrap();
            assert_eq!(v, 42);
            leaders += led as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(sf.in_flight(), 0);
        // A later call runs again.
        let (v, led) = sf.run(7, || async { 43 }, 0).await;
        assert_eq!((v, led), (43, true));
    }

    #[tokio::test]
    async fn different_keys_run_separately_and_panics_yield_the_fallback() {
        let sf: SingleFlight<u32, u32> = SingleFlight::default();
        let (a, b) = tokio::join!(sf.run(1, || async { 1 }, 0), sf.run(2, || async { 2 }, 0));
        assert_eq!((a.0, b.0), (1, 2));
        let (v, _) = sf.run(3, || async { panic!("boom") }, 99).await;
        assert_eq!(v, 99);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_flight_nobody_waits_for_still_frees_its_key() {
        let sf: SingleFlight<u32, u32> = SingleFlight::default();
        let waiter = tokio::time::timeout(
            Duration::from_millis(10),
            sf.run(
                5,
                || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    1
                },
                0,
            ),
        );
        assert!(waiter.await.is_err(), "the only waiter gave up");
        assert_eq!(sf.in_flight(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sf.in_flight(), 0, "the finished flight freed its key");
        let (v, led) = sf.run(5, || async { 2 }, 0).await;
        assert_eq!(
            (v, led),
            (2, true),
            "a new flight, not the abandoned one's answer"
        );
    }
}
