//! The bridge's configuration contract: environment variables, validated at
//! start. Every error names the variable it is about.
//!
//! Pure code: [`Config::from_lookup`] takes any variable lookup, so tests
//! need no process environment. Only [`resolve_plaintext`] touches the
//! network (a DNS lookup), to check that a plaintext link stays on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_xmpp::jid::{BareJid, Jid};

/// Default node name template for results.
pub const DEFAULT_NODE_TEMPLATE: &str = "tagpoll/{event}/{poll}";
/// Default node name template for ikPoll vote notifications.
pub const DEFAULT_IKPOLL_NODE_TEMPLATE: &str = "vote/{poll}";
/// Default coalescing interval (milliseconds) between two publishes of one poll.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;

/// A configuration error, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// How to reach the XMPP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// DNS SRV lookup of `_xmpp-client._tcp.{JID domain}` (fallback: port 5222).
    Srv,
    /// `TAGPOLL_XMPP_SERVER=host:port`.
    HostPort { host: String, port: u16 },
}

/// Transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// STARTTLS with rustls (system trust store); the default.
    StartTls,
    /// Plain TCP, no TLS: only with `TAGPOLL_XMPP_ALLOW_PLAINTEXT=1`, and only
    /// to loopback unless `TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE=1`.
    Plaintext { allow_remote: bool },
}

/// A node name template with `{event}` and `{poll}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTemplate(String);

impl NodeTemplate {
    /// Checks a template: only `{event}` and `{poll}` placeholders, `{poll}` required.
    pub fn parse(var: &'static str, s: &str) -> Result<Self, ConfigError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(err(var, "must not be empty"));
        }
        let mut rest = t;
        let mut has_poll = false;
        while let Some(start) = rest.find('{') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('}') else {
                return Err(err(var, format!("unclosed '{{' in {t:?}")));
            };
            match &after[..end] {
                "poll" => has_poll = true,
                "event" => {}
                other => {
                    return Err(err(
                        var,
                        format!(
                            "unknown placeholder {{{other}}} in {t:?}; use {{event}} and {{poll}}"
                        ),
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        if rest.contains('}') {
            return Err(err(var, format!("stray '}}' in {t:?}")));
        }
        if !has_poll {
            return Err(err(
                var,
                format!("{t:?} has no {{poll}}: every poll needs a node of its own"),
            ));
        }
        Ok(NodeTemplate(t.to_string()))
    }

    /// Whether the template needs the event id.
    pub fn needs_event(&self) -> bool {
        self.0.contains("{event}")
    }

    /// The node of `poll` in `event`.
    pub fn render(&self, event: &str, poll: &str) -> String {
        self.0.replace("{event}", event).replace("{poll}", poll)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One node to listen to: `service/node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEntry {
    pub service: BareJid,
    pub node: String,
}

impl ListenEntry {
    /// Parses `service/node` (split at the first `/`; the node may contain
    /// more) or an XMPP URI `xmpp:service?;node=NODE`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (service, node) = if let Some(uri) = s.strip_prefix("xmpp:") {
            let (service, query) = uri
                .split_once('?')
                .ok_or_else(|| format!("{s:?}: an XMPP URI needs '?;node=NODE'"))?;
            let node = query
                .split(';')
                .find_map(|kv| kv.strip_prefix("node="))
                .ok_or_else(|| format!("{s:?}: no 'node=' in the URI"))?;
            (service, percent_decode(node))
        } else {
            let (service, node) = s
                .split_once('/')
                .ok_or_else(|| format!("{s:?} is not 'service/node'"))?;
            (service, node.to_string())
        };
        if node.is_empty() {
            return Err(format!("{s:?}: empty node name"));
        }
        let service: BareJid = service
            .parse()
            .map_err(|e| format!("{s:?}: bad service JID {service:?}: {e}"))?;
        Ok(ListenEntry { service, node })
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// ikPoll-compatible vote notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkPollOptions {
    /// Node template, default `vote/{poll}`.
    pub node: NodeTemplate,
    /// Whether person title (display name) goes into the payload.
    pub personal: bool,
}

/// Everything the bridge is configured with (besides NATS, see `tagpoll_bus::BusOptions`).
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub jid: Jid,
    pub password: String,
    pub server: Server,
    pub transport: Transport,
    /// The publish-subscribe service results go to.
    pub pubsub: BareJid,
    pub node: NodeTemplate,
    /// At most one publish per poll per interval.
    pub interval: Duration,
    pub ikpoll: Option<IkPollOptions>,
    pub listen: Vec<ListenEntry>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("jid", &self.jid)
            .field("password", &"<hidden>")
            .field("server", &self.server)
            .field("transport", &self.transport)
            .field("pubsub", &self.pubsub)
            .field("node", &self.node)
            .field("interval", &self.interval)
            .field("ikpoll", &self.ikpoll)
            .field("listen", &self.listen)
            .finish()
    }
}

/// Parses a boolean switch: 1/true/yes/on, 0/false/no/off or empty.
pub fn parse_bool(var: &'static str, v: Option<String>) -> Result<bool, ConfigError> {
    match v
        .as_deref()
        .map(str::trim)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("0") | Some("false") | Some("no") | Some("off") => Ok(false),
        Some("1") | Some("true") | Some("yes") | Some("on") => Ok(true),
        Some(other) => Err(err(var, format!("{other:?} is not a switch; use 1 or 0"))),
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
pub fn parse_host_port(var: &'static str, s: &str) -> Result<(String, u16), ConfigError> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| err(var, format!("{s:?} is not [ipv6]:port")))?;
        (h, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| err(var, format!("{s:?} is not host:port")))?
    };
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return Err(err(var, format!("{s:?} is not host:port")));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(var, format!("{port:?} is not a port number")))?;
    Ok((host.to_string(), port))
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get` (variable name → value).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());

        let jid_s = var("TAGPOLL_XMPP_JID").ok_or_else(|| {
            err(
                "TAGPOLL_XMPP_JID",
                "not set: the bridge's account, e.g. tagpoll@example.org",
            )
        })?;
        let jid: Jid = jid_s
            .trim()
            .parse()
            .map_err(|e| err("TAGPOLL_XMPP_JID", format!("{jid_s:?} is not a JID: {e}")))?;
        if jid.node().is_none() {
            return Err(err(
                "TAGPOLL_XMPP_JID",
                format!(
                    "{jid_s:?} has no user part: the bridge logs in as a client account (user@domain)"
                ),
            ));
        }

        let password = match (
            var("TAGPOLL_XMPP_PASSWORD"),
            var("TAGPOLL_XMPP_PASSWORD_FILE"),
        ) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "TAGPOLL_XMPP_PASSWORD_FILE",
                    "set together with TAGPOLL_XMPP_PASSWORD; set only one",
                ));
            }
            (Some(p), None) => p,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path.trim()).map_err(|e| {
                    err(
                        "TAGPOLL_XMPP_PASSWORD_FILE",
                        format!("cannot read {path:?}: {e}"),
                    )
                })?;
                let p = text.trim_end_matches(['\r', '\n']).to_string();
                if p.is_empty() {
                    return Err(err(
                        "TAGPOLL_XMPP_PASSWORD_FILE",
                        format!("{path:?} is empty"),
                    ));
                }
                p
            }
            (None, None) => {
                return Err(err(
                    "TAGPOLL_XMPP_PASSWORD",
                    "not set (nor TAGPOLL_XMPP_PASSWORD_FILE)",
                ));
            }
        };

        let server = match var("TAGPOLL_XMPP_SERVER") {
            None => Server::Srv,
            Some(s) => {
                let (host, port) = parse_host_port("TAGPOLL_XMPP_SERVER", &s)?;
                Server::HostPort { host, port }
            }
        };

        let plaintext = parse_bool(
            "TAGPOLL_XMPP_ALLOW_PLAINTEXT",
            var("TAGPOLL_XMPP_ALLOW_PLAINTEXT"),
        )?;
        let remote = parse_bool(
            "TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE",
            var("TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE"),
        )?;
        let transport = if plaintext {
            if server == Server::Srv {
                return Err(err(
                    "TAGPOLL_XMPP_SERVER",
                    "must be set (host:port) when TAGPOLL_XMPP_ALLOW_PLAINTEXT=1: plaintext never follows DNS SRV records",
                ));
            }
            Transport::Plaintext {
                allow_remote: remote,
            }
        } else {
            if remote {
                return Err(err(
                    "TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE",
                    "has no effect without TAGPOLL_XMPP_ALLOW_PLAINTEXT=1",
                ));
            }
            Transport::StartTls
        };

        let pubsub = match var("TAGPOLL_XMPP_PUBSUB") {
            Some(s) => {
                let j: BareJid = s
                    .trim()
                    .parse()
                    .map_err(|e| err("TAGPOLL_XMPP_PUBSUB", format!("{s:?} is not a JID: {e}")))?;
                j
            }
            None => format!("pubsub.{}", jid.domain()).parse().map_err(|e| {
                err(
                    "TAGPOLL_XMPP_PUBSUB",
                    format!("not set, and pubsub.{} is not a JID: {e}", jid.domain()),
                )
            })?,
        };

        let node = NodeTemplate::parse(
            "TAGPOLL_XMPP_NODE",
            &var("TAGPOLL_XMPP_NODE").unwrap_or_else(|| DEFAULT_NODE_TEMPLATE.into()),
        )?;

        let interval_ms = match var("TAGPOLL_XMPP_INTERVAL_MS") {
            None => DEFAULT_INTERVAL_MS,
            Some(s) => s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= 3_600_000)
                .ok_or_else(|| {
                    err(
                        "TAGPOLL_XMPP_INTERVAL_MS",
                        format!("{s:?} is not a number of milliseconds (0 to 3600000)"),
                    )
                })?,
        };

        let ikpoll_on = parse_bool("TAGPOLL_XMPP_IKPOLL", var("TAGPOLL_XMPP_IKPOLL"))?;
        let personal = parse_bool(
            "TAGPOLL_XMPP_IKPOLL_PERSONAL",
            var("TAGPOLL_XMPP_IKPOLL_PERSONAL"),
        )?;
        let ik_node = var("TAGPOLL_XMPP_IKPOLL_NODE");
        let ikpoll = if ikpoll_on {
            Some(IkPollOptions {
                node: NodeTemplate::parse(
                    "TAGPOLL_XMPP_IKPOLL_NODE",
                    ik_node.as_deref().unwrap_or(DEFAULT_IKPOLL_NODE_TEMPLATE),
                )?,
                personal,
            })
        } else {
            if personal {
                return Err(err(
                    "TAGPOLL_XMPP_IKPOLL_PERSONAL",
                    "has no effect without TAGPOLL_XMPP_IKPOLL=1",
                ));
            }
            if ik_node.is_some() {
                return Err(err(
                    "TAGPOLL_XMPP_IKPOLL_NODE",
                    "has no effect without TAGPOLL_XMPP_IKPOLL=1",
                ));
            }
            None
        };
        if let Some(ik) = &ikpoll
            && ik.node.render("e", "p") == node.render("e", "p")
        {
            return Err(err(
                "TAGPOLL_XMPP_IKPOLL_NODE",
                "is the same as TAGPOLL_XMPP_NODE: votes and results need different nodes",
            ));
        }

        let mut listen = Vec::new();
        if let Some(s) = var("TAGPOLL_XMPP_LISTEN") {
            for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let e = ListenEntry::parse(entry).map_err(|m| err("TAGPOLL_XMPP_LISTEN", m))?;
                if !listen.contains(&e) {
                    listen.push(e);
                }
            }
        }

        Ok(Config {
            jid,
            password,
            server,
            transport,
            pubsub,
            node,
            interval: Duration::from_millis(interval_ms),
            ikpoll,
            listen,
        })
    }
}

/// Whether plaintext to these addresses is acceptable.
pub fn check_plaintext_addrs(
    host: &str,
    addrs: &[SocketAddr],
    allow_remote: bool,
) -> Result<(), ConfigError> {
    if addrs.is_empty() {
        return Err(err(
            "TAGPOLL_XMPP_SERVER",
            format!("{host:?} resolves to no address"),
        ));
    }
    if allow_remote {
        return Ok(());
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(err(
            "TAGPOLL_XMPP_SERVER",
            format!(
                "{host} ({}) is not a loopback address: plaintext XMPP (TAGPOLL_XMPP_ALLOW_PLAINTEXT=1) \
                 is refused there, use STARTTLS or set TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE=1",
                a.ip()
            ),
        ));
    }
    Ok(())
}

/// Resolves the server for a plaintext link and checks it is on loopback.
pub async fn resolve_plaintext(
    host: &str,
    port: u16,
    allow_remote: bool,
) -> Result<SocketAddr, ConfigError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            err(
                "TAGPOLL_XMPP_SERVER",
                format!("cannot resolve {host:?}: {e}"),
            )
        })?
        .collect();
    check_plaintext_addrs(host, &addrs, allow_remote)?;
    Ok(addrs[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("TAGPOLL_XMPP_JID", "bridge@example.org"),
        ("TAGPOLL_XMPP_PASSWORD", "pw"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        cfg(&v)
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.server, Server::Srv);
        assert_eq!(c.transport, Transport::StartTls);
        assert_eq!(c.pubsub.to_string(), "pubsub.example.org");
        assert_eq!(c.node.render("ev", "p1"), "tagpoll/ev/p1");
        assert_eq!(c.interval, Duration::from_millis(1000));
        assert_eq!(c.ikpoll, None);
        assert!(c.listen.is_empty());
        assert!(
            !format!("{c:?}").contains("pw\""),
            "password must not be logged"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(cfg(&[]).unwrap_err().var, "TAGPOLL_XMPP_JID");
        assert_eq!(
            cfg(&[
                ("TAGPOLL_XMPP_JID", "example.org"),
                ("TAGPOLL_XMPP_PASSWORD", "x")
            ])
            .unwrap_err()
            .var,
            "TAGPOLL_XMPP_JID"
        );
        assert_eq!(
            cfg(&[("TAGPOLL_XMPP_JID", "a@b")]).unwrap_err().var,
            "TAGPOLL_XMPP_PASSWORD"
        );
        for (var, value) in [
            ("TAGPOLL_XMPP_SERVER", "nohost"),
            ("TAGPOLL_XMPP_SERVER", "host:0"),
            ("TAGPOLL_XMPP_SERVER", "host:99999"),
            ("TAGPOLL_XMPP_NODE", "tagpoll/{event}"),
            ("TAGPOLL_XMPP_NODE", "x/{pol}"),
            ("TAGPOLL_XMPP_NODE", "x/{poll"),
            ("TAGPOLL_XMPP_INTERVAL_MS", "soon"),
            ("TAGPOLL_XMPP_IKPOLL", "maybe"),
            ("TAGPOLL_XMPP_IKPOLL_PERSONAL", "1"),
            ("TAGPOLL_XMPP_LISTEN", "pubsub.example.org"),
            ("TAGPOLL_XMPP_LISTEN", "pubsub.example.org/"),
            ("TAGPOLL_XMPP_PUBSUB", "a@@b"),
            ("TAGPOLL_XMPP_ALLOW_PLAINTEXT_REMOTE", "1"),
        ] {
            let e = with(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}: {e}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
        // Plaintext needs an explicit server.
        assert_eq!(
            with(&[("TAGPOLL_XMPP_ALLOW_PLAINTEXT", "1")])
                .unwrap_err()
                .var,
            "TAGPOLL_XMPP_SERVER"
        );
        // Votes and results on the same node.
        assert_eq!(
            with(&[
                ("TAGPOLL_XMPP_IKPOLL", "1"),
                ("TAGPOLL_XMPP_NODE", "vote/{poll}")
            ])
            .unwrap_err()
            .var,
            "TAGPOLL_XMPP_IKPOLL_NODE"
        );
    }

    #[test]
    fn password_file() {
        let dir = std::env::temp_dir().join(format!("tagpoll-xmpp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "secret\n").unwrap();
        let path = f.display().to_string();
        let c = cfg(&[
            ("TAGPOLL_XMPP_JID", "a@b"),
            ("TAGPOLL_XMPP_PASSWORD_FILE", &path),
        ])
        .unwrap();
        assert_eq!(c.password, "secret");
        let e = cfg(&[
            ("TAGPOLL_XMPP_JID", "a@b"),
            ("TAGPOLL_XMPP_PASSWORD_FILE", "/nonexistent/pw"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "TAGPOLL_XMPP_PASSWORD_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_configuration() {
        let c = with(&[
            ("TAGPOLL_XMPP_SERVER", "127.0.0.1:5222"),
            ("TAGPOLL_XMPP_ALLOW_PLAINTEXT", "1"),
            ("TAGPOLL_XMPP_PUBSUB", "pubsub.localhost"),
            ("TAGPOLL_XMPP_NODE", "results/{poll}"),
            ("TAGPOLL_XMPP_INTERVAL_MS", "250"),
            ("TAGPOLL_XMPP_IKPOLL", "true"),
            ("TAGPOLL_XMPP_IKPOLL_PERSONAL", "yes"),
            (
                "TAGPOLL_XMPP_LISTEN",
                "pubsub.localhost/news/today, xmpp:pubsub.example.org?;node=vote%2F42 ,",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.server,
            Server::HostPort {
                host: "127.0.0.1".into(),
                port: 5222
            }
        );
        assert_eq!(
            c.transport,
            Transport::Plaintext {
                allow_remote: false
            }
        );
        assert_eq!(c.node.render("e", "p"), "results/p");
        assert!(!c.node.needs_event());
        assert_eq!(c.interval, Duration::from_millis(250));
        let ik = c.ikpoll.unwrap();
        assert!(ik.personal);
        assert_eq!(ik.node.render("e", "p1"), "vote/p1");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[0].service.to_string(), "pubsub.localhost");
        assert_eq!(c.listen[0].node, "news/today");
        assert_eq!(c.listen[1].service.to_string(), "pubsub.example.org");
        assert_eq!(c.listen[1].node, "vote/42");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("V", "[::1]:5222").unwrap(),
            ("::1".to_string(), 5222)
        );
        assert_eq!(
            parse_host_port("V", "xmpp.example.org:5222").unwrap(),
            ("xmpp.example.org".to_string(), 5222)
        );
        assert!(parse_host_port("V", "::1:5222").is_err());
    }

    #[test]
    fn plaintext_only_to_loopback_unless_allowed() {
        let lo: SocketAddr = "127.0.0.1:5222".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5222".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5222".parse().unwrap();
        assert!(check_plaintext_addrs("localhost", &[lo, lo6], false).is_ok());
        let e = check_plaintext_addrs("xmpp.example.org", &[lo, remote], false).unwrap_err();
        assert_eq!(e.var, "TAGPOLL_XMPP_SERVER");
        assert!(e.message.contains("192.0.2.7"), "{e}");
        assert!(check_plaintext_addrs("xmpp.example.org", &[remote], true).is_ok());
        assert!(check_plaintext_addrs("x", &[], true).is_err());
    }
}
