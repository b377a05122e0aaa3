//! Reads from the shared `identity` consumer, one explicit pull request (batch) at a time.
//!
//! Why batches and not the client's endless message stream: the stream keeps pull requests
//! open in the background, so a stopping instance cannot know that the server will send it
//! nothing more. Reads delivered to an instance that is gone wait out the consumer's ack wait
//! (30 s). With one batch at a time, a stop asks for no new batch, takes what the current one
//! still brings (it ends when full or after [`BATCH_EXPIRES`]), and hands all of it back:
//! nothing is on its way to us any more, so the server re-delivers to another instance.
//!
//! [`Intake::next`] is cancel-safe (it is raced in a `select!`): a batch request under way is
//! kept in the state, never dropped half-done, so no request is left without a listener.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::message::Message;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt};

/// How long one pull request waits for reads on an idle stream. It bounds how long a stop
/// waits for the current batch, and costs one request per second per idle instance.
pub const BATCH_EXPIRES: Duration = Duration::from_secs(1);
/// Pause after a failed pull request before the next.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

enum State {
    Idle,
    Requesting(BoxFuture<'static, Result<pull::Batch, pull::BatchError>>),
    Taking(Box<pull::Batch>),
    Pausing(Pin<Box<tokio::time::Sleep>>),
}

/// The reads of one instance.
pub struct Intake {
    consumer: Consumer<pull::Config>,
    batch: usize,
    state: State,
    closing: bool,
}

impl Intake {
    /// Reads in batches of `batch`.
    pub fn new(consumer: Consumer<pull::Config>, batch: usize) -> Intake {
        Intake {
            consumer,
            batch: batch.max(1),
            state: State::Idle,
            closing: false,
        }
    }

    /// The next read; `Some(Err)` is a failed pull request (the next call pauses, then asks
    /// again); `None` only once [`Intake::close`] was called and the last batch has ended.
    pub async fn next(&mut self) -> Option<Result<Message, String>> {
        loop {
            match &mut self.state {
                State::Idle if self.closing => return None,
                State::Idle => {
                    let consumer = self.consumer.clone();
                    let batch = self.batch;
                    self.state = State::Requesting(
                        async move {
                            consumer
                                .batch()
                                .max_messages(batch)
                                .expires(BATCH_EXPIRES)
                                .messages()
                                .await
                        }
                        .boxed(),
                    );
                }
                State::Requesting(request) => match request.await {
                    Ok(batch) => self.state = State::Taking(Box::new(batch)),
                    Err(e) => {
                        self.pause();
                        return Some(Err(format!("pull request for reads: {e}")));
                    }
                },
                State::Taking(batch) => match batch.next().await {
                    Some(Ok(msg)) => return Some(Ok(msg)),
                    Some(Err(e)) => {
                        self.pause();
                        return Some(Err(format!("reads batch: {e}")));
                    }
                    None => self.state = State::Idle,
                },
                State::Pausing(_) if self.closing => {
                    self.state = State::Idle;
                    return None;
                }
                State::Pausing(sleep) => {
                    sleep.as_mut().await;
                    self.state = State::Idle;
                }
            }
        }
    }

    /// Asks for no new batch: [`Intake::next`] yields what the current one still brings,
    /// then `None`.
    pub fn close(&mut self) {
        self.closing = true;
    }

    fn pause(&mut self) {
        self.state = State::Pausing(Box::pin(tokio::time::sleep(RETRY_PAUSE)));
    }
}
