//! The XMPP edge: one task owns the `tokio_xmpp::Client` (a c2s account),
//! answers what must be answered, and hands everything else out.
//!
//! - tokio-xmpp reconnects by itself (1 s doubling to 30 s between tries);
//!   every (re)connect shows up here as [`XmppEvent::Online`], after which
//!   this task has already sent available presence (pubsub notifications
//!   are headline messages, dropped for an account with none).
//! - Requests go through [`XmppHandle`]: each IQ gets a timeout, so a lost
//!   link never blocks the caller for long.
//! - Incoming messages are passed on as they are; IQ requests from others
//!   get `service-unavailable` (pings get a result).

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};

use crate::config::{self, Config, ConfigError, Server, Transport};
use crate::pubsub::describe;

/// How the client reaches the server.
#[derive(Debug, Clone)]
pub enum Connect {
    /// Plain TCP to this address (loopback, checked by [`config::resolve_plaintext`]).
    Plaintext(SocketAddr),
    /// STARTTLS, server found through `DnsConfig` (SRV or host:port).
    StartTls(Box<DnsConfig>),
}

impl Connect {
    /// Derives the connection from the configuration; resolves (and checks)
    /// the address of a plaintext server.
    pub async fn from_config(c: &Config) -> Result<Connect, ConfigError> {
        match (&c.transport, &c.server) {
            (Transport::Plaintext { allow_remote }, Server::HostPort { host, port }) => Ok(
                Connect::Plaintext(config::resolve_plaintext(host, *port, *allow_remote).await?),
            ),
            (Transport::Plaintext { .. }, Server::Srv) => Err(ConfigError {
                var: "TAGPOLL_XMPP_SERVER",
                message: "must be set for plaintext".into(),
            }),
            (Transport::StartTls, Server::Srv) => Ok(Connect::StartTls(Box::new(
                DnsConfig::srv_default_client(c.jid.domain().as_str()),
            ))),
            (Transport::StartTls, Server::HostPort { host, port }) => {
                Ok(Connect::StartTls(Box::new(DnsConfig::no_srv(host, *port))))
            }
        }
    }
}

/// What the client reports.
#[derive(Debug)]
pub enum XmppEvent {
    /// Connected, authenticated, bound and available. Unless `resumed`, the
    /// server kept nothing of the previous session: republish, resubscribe.
    Online { jid: Jid, resumed: bool },
    /// A message stanza (pubsub notifications among them).
    Message(Box<Message>),
}

/// Why an IQ request failed.
#[derive(Debug, thiserror::Error)]
pub enum IqError {
    /// The peer answered with an error.
    #[error("{}", describe(.0))]
    Stanza(Box<StanzaError>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    #[error("the XMPP client has stopped")]
    Closed,
}

enum Command {
    Iq {
        to: Jid,
        request: IqRequest,
        reply: oneshot::Sender<Result<Option<Element>, IqError>>,
    },
}

/// Sends requests through the client task; cheap to clone.
#[derive(Clone, Debug)]
pub struct XmppHandle {
    tx: mpsc::Sender<Command>,
    timeout: Duration,
}

impl XmppHandle {
    async fn iq(&self, to: &Jid, request: IqRequest) -> Result<Option<Element>, IqError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Iq {
                to: to.clone(),
                request,
                reply,
            })
            .await
            .map_err(|_| IqError::Closed)?;
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(IqError::Closed),
            Err(_) => Err(IqError::Timeout(self.timeout)),
        }
    }

    /// An IQ `set` to `to`; the result's payload, if any.
    pub async fn set(&self, to: &Jid, payload: Element) -> Result<Option<Element>, IqError> {
        self.iq(to, IqRequest::Set(payload)).await
    }

    /// An IQ `get` to `to`.
    pub async fn get(&self, to: &Jid, payload: Element) -> Result<Option<Element>, IqError> {
        self.iq(to, IqRequest::Get(payload)).await
    }
}

/// Connection settings for [`spawn`].
#[derive(Debug, Clone)]
pub struct XmppOptions {
    pub jid: Jid,
    pub password: String,
    pub connect: Connect,
    /// How long to wait for each IQ answer.
    pub iq_timeout: Duration,
}

/// Starts the client task. The client connects (and keeps reconnecting)
/// in the background; events arrive on the returned receiver. Dropping
/// every handle closes the stream cleanly.
pub fn spawn(
    opts: XmppOptions,
) -> (
    XmppHandle,
    mpsc::Receiver<XmppEvent>,
    tokio::task::JoinHandle<()>,
) {
    // Tight timeouts: a silent link is probed after 60 s, given up 15 s later.
    let timeouts = Timeouts::tight();
    let client = match opts.connect {
        Connect::Plaintext(addr) => Client::new_plaintext(
            opts.jid.clone(),
            opts.password,
            DnsConfig::addr(&addr.to_string()),
            timeouts,
        ),
        Connect::StartTls(dns) => {
            Client::new_starttls(opts.jid.clone(), opts.password, *dns, timeouts)
        }
    };
    let (tx, cmds) = mpsc::channel(64);
    let (events_tx, events) = mpsc::channel(1024);
    let task = tokio::spawn(run(client, cmds, events_tx, opts.iq_timeout));
    (
        XmppHandle {
            tx,
            timeout: opts.iq_timeout,
        },
        events,
        task,
    )
}

async fn run(
    mut client: Client,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<XmppEvent>,
    iq_timeout: Duration,
) {
    loop {
        tokio::select! {
            ev = client.next() => match ev {
                None => {
                    tracing::error!("XMPP client ended");
                    return;
                }
                Some(Event::Online { bound_jid, resumed, .. }) => {
                    tracing::info!(jid = %bound_jid, resumed, "XMPP online");
                    send(&mut client, Presence::available().into()).await;
                    if events.send(XmppEvent::Online { jid: bound_jid, resumed }).await.is_err() {
                        break;
                    }
                }
                Some(Event::Disconnected(e)) => {
                    tracing::warn!(error = %e, "XMPP link lost; reconnecting");
                }
                Some(Event::Stanza(Stanza::Message(m))) => {
                    if events.send(XmppEvent::Message(Box::new(m))).await.is_err() {
                        break;
                    }
                }
                Some(Event::Stanza(Stanza::Iq(iq))) => {
                    if let Some(reply) = answer(iq) {
                        send(&mut client, reply.into()).await;
                    }
                }
                Some(Event::Stanza(Stanza::Presence(_))) => {}
            },
            cmd = cmds.recv() => match cmd {
                None => break,
                Some(Command::Iq { to, request, reply }) => {
                    let token = client.send_iq(Some(to), request).await;
                    tokio::spawn(async move {
                        let r = match tokio::time::timeout(iq_timeout, token).await {
                            Err(_) => Err(IqError::Timeout(iq_timeout)),
                            Ok(Err(e)) => Err(IqError::Failed(e.to_string())),
                            Ok(Ok(IqResponse::Result(payload))) => Ok(payload),
                            Ok(Ok(IqResponse::Error(e))) => Err(IqError::Stanza(Box::new(e))),
                        };
                        let _ = reply.send(r);
                    });
                }
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), client.send_end()).await;
}

/// Sends a stanza without waiting long when the link is down (it stays
/// queued and goes out after the reconnect).
async fn send(client: &mut Client, stanza: Stanza) {
    match tokio::time::timeout(Duration::from_secs(5), client.send_stanza(stanza)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "XMPP send failed"),
        Err(_) => tracing::warn!("XMPP send still queued after 5 s"),
    }
}

/// The answer to an IQ request from someone else: pong for pings,
/// `service-unavailable` for anything else; nothing for stray responses.
fn answer(iq: Iq) -> Option<Iq> {
    let (from, id, payload) = match iq {
        Iq::Get {
            from, id, payload, ..
        }
        | Iq::Set {
            from, id, payload, ..
        } => (from, id, payload),
        Iq::Result { .. } | Iq::Error { .. } => return None,
    };
    let reply = if payload.is("ping", "urn:xmpp:ping") {
        Iq::Result {
            from: None,
            to: from,
            id,
            payload: None,
        }
    } else {
        tracing::debug!(ns = %payload.ns(), name = payload.name(), "refusing IQ request");
        Iq::Error {
            from: None,
            to: from,
            id,
            error: StanzaError::new(
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                "en",
                "",
            ),
            payload: None,
        }
    };
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_pings_and_refuses_the_rest() {
        let ping: Element = "<ping xmlns='urn:xmpp:ping'/>".parse().unwrap();
        let iq = Iq::Get {
            from: Some("localhost".parse().unwrap()),
            to: None,
            id: "1".into(),
            payload: ping,
        };
        assert!(matches!(answer(iq), Some(Iq::Result { id, .. }) if id == "1"));
        let q: Element = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
            .parse()
            .unwrap();
        let iq = Iq::Get {
            from: None,
            to: None,
            id: "2".into(),
            payload: q,
        };
        assert!(matches!(answer(iq), Some(Iq::Error { .. })));
        let r = Iq::Result {
            from: None,
            to: None,
            id: "3".into(),
            payload: None,
        };
        assert!(answer(r).is_none());
    }
}
