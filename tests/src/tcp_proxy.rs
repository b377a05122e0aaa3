//! A TCP proxy that can cut a client's link to a server, for tests that need
//! a network outage rather than a stopped server.
//!
//! [`TcpProxy::start`] listens on a free loopback port and forwards every
//! connection to `target` (e.g. the test's nats-server), both ways, byte for
//! byte. [`TcpProxy::cut`] closes every live connection on both sides at once
//! and, until [`TcpProxy::restore`], closes each new connection as soon as it
//! is accepted: a client sees its link drop and its reconnects fail, while
//! the server behind stays up (and sees its clients go away). Dropping the
//! proxy stops it and closes everything it still holds.
//!
//! Its tasks never panic: a failed accept, an unreachable target or a
//! broken connection just ends that one connection.
//!
//! Must be used inside a tokio runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Live connections and whether the link is cut, under one lock so that a
/// connection accepted while [`TcpProxy::cut`] runs is either closed by the
/// cut or refused, never left open.
#[derive(Default)]
struct Links {
    cut: bool,
    live: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    links: Mutex<Links>,
    forwarded: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Links> {
        // A poisoned lock only means a holder panicked between two plain
        // assignments; the data is still consistent.
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cuttable loopback TCP proxy; see the module documentation.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(TcpProxy {
            addr,
            target,
            shared,
            accept,
        })
    }

    /// The proxy's own address (clients connect here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `nats://` URL of the proxy, for a NATS client's `NATS_URL`.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cuts the link: every live connection is closed on both sides before
    /// this returns, and new ones are closed as soon as they are accepted
    /// until [`restore`](Self::restore).
    pub async fn cut(&self) {
        let live = {
            let mut links = self.shared.links();
            links.cut = true;
            std::mem::take(&mut links.live)
        };
        for task in &live {
            task.abort();
        }
        // An aborted task has dropped (closed) both of its sockets once its
        // handle resolves.
        for task in live {
            let _ = task.await;
        }
    }

    /// Lets connections through again (clients reconnect on their own).
    pub fn restore(&self) {
        self.shared.links().cut = false;
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.links().cut
    }

    /// Connections forwarded so far (each one accepted while not cut).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the link was cut (a client's
    /// reconnect attempts).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections open through the proxy now.
    pub fn live(&self) -> usize {
        let mut links = self.shared.links();
        links.live.retain(|t| !t.is_finished());
        links.live.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        let mut links = self.shared.links();
        links.cut = true;
        for task in links.live.drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of descriptors: wait a little rather than spin.
                eprintln!("tcp proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut links = shared.links();
        if links.cut {
            drop(links);
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        links.live.retain(|t| !t.is_finished());
        links.live.push(tokio::spawn(forward(client, target)));
    }
}

/// Copies both ways until both sides are done or either fails; both sockets
/// are closed when this ends (or is aborted).
async fn forward(mut client: TcpStream, target: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(5);

    /// An echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn echoes(s: &mut TcpStream, what: &[u8]) -> bool {
        if s.write_all(what).await.is_err() {
            return false;
        }
        let mut buf = vec![0; what.len()];
        matches!(timeout(LIMIT, s.read_exact(&mut buf)).await, Ok(Ok(_))) && buf == what
    }

    /// The connection ends (EOF or an error) promptly, without data.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(timeout(LIMIT, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn forwards_cuts_both_ways_refuses_while_cut_and_restores() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut a, b"hello").await);
        assert_eq!(proxy.live(), 1);

        proxy.cut().await;
        assert!(proxy.is_cut());
        assert_eq!(proxy.live(), 0);
        assert!(closed(&mut a).await, "a live connection survived the cut");
        // A new connection is accepted by the kernel, then closed at once.
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed(&mut b).await, "a new connection got through the cut");

        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut c, b"again").await);
        assert_eq!((proxy.forwarded(), proxy.refused()), (2, 1));

        let addr = proxy.addr();
        drop(proxy);
        assert!(closed(&mut c).await, "dropping the proxy left a link open");
        // The listener is gone too (the accept task ends at its next poll).
        let mut gone = false;
        for _ in 0..100 {
            match TcpStream::connect(addr).await {
                Err(_) => {
                    gone = true;
                    break;
                }
                Ok(mut s) => assert!(closed(&mut s).await, "a dropped proxy still forwards"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "a dropped proxy still listens");
    }
}
