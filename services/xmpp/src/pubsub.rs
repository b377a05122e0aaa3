//! XEP-0060 publish-subscribe: request payloads the bridge sends and the
//! notifications it receives. Pure code over `minidom` elements.

use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, StanzaError};

use crate::xml::{element, set_attr, text_element};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_DATA_FORMS: &str = "jabber:x:data";
pub const NODE_CONFIG_FORM: &str = "http://jabber.org/protocol/pubsub#node_config";

/// Configuration the bridge asks for when it creates a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `pubsub#title`.
    pub title: String,
    /// `pubsub#max_items`: 1 for results (the node holds the latest).
    pub max_items: u32,
}

fn field(var: &str, value: &str) -> Element {
    let mut f = element("field", NS_DATA_FORMS);
    set_attr(&mut f, "var", var);
    f.append_child(text_element("value", NS_DATA_FORMS, value));
    f
}

/// `<pubsub><create node/><configure><x type='submit'>…</x></configure></pubsub>`:
/// open access model, persistent items, `max_items`, notifications with payload.
pub fn create_node(node: &str, config: &NodeConfig) -> Element {
    let mut create = element("create", NS_PUBSUB);
    set_attr(&mut create, "node", node);
    let mut x = element("x", NS_DATA_FORMS);
    set_attr(&mut x, "type", "submit");
    let mut form_type = field("FORM_TYPE", NODE_CONFIG_FORM);
    set_attr(&mut form_type, "type", "hidden");
    x.append_child(form_type);
    for (var, value) in [
        ("pubsub#title", config.title.as_str()),
        ("pubsub#access_model", "open"),
        ("pubsub#persist_items", "1"),
        ("pubsub#max_items", &config.max_items.to_string()),
        ("pubsub#deliver_payloads", "1"),
        ("pubsub#deliver_notifications", "1"),
    ] {
        x.append_child(field(var, value));
    }
    let mut configure = element("configure", NS_PUBSUB);
    configure.append_child(x);
    let mut pubsub = element("pubsub", NS_PUBSUB);
    pubsub.append_child(create);
    pubsub.append_child(configure);
    pubsub
}

/// `<pubsub><publish node><item id>payload</item></publish></pubsub>`.
pub fn publish_item(node: &str, item_id: &str, payload: Element) -> Element {
    let mut item = element("item", NS_PUBSUB);
    set_attr(&mut item, "id", item_id);
    item.append_child(payload);
    let mut publish = element("publish", NS_PUBSUB);
    set_attr(&mut publish, "node", node);
    publish.append_child(item);
    let mut pubsub = element("pubsub", NS_PUBSUB);
    pubsub.append_child(publish);
    pubsub
}

/// `<pubsub><subscribe node jid/></pubsub>`: `jid` is the bridge's bare JID,
/// so the subscription survives reconnects with a new resource.
pub fn subscribe(node: &str, jid: &str) -> Element {
    let mut sub = element("subscribe", NS_PUBSUB);
    set_attr(&mut sub, "node", node);
    set_attr(&mut sub, "jid", jid);
    let mut pubsub = element("pubsub", NS_PUBSUB);
    pubsub.append_child(sub);
    pubsub
}

/// `<pubsub><items node max_items/></pubsub>`: the latest items of a node.
pub fn items_request(node: &str, max_items: u32) -> Element {
    let mut items = element("items", NS_PUBSUB);
    set_attr(&mut items, "node", node);
    set_attr(&mut items, "max_items", max_items.to_string());
    let mut pubsub = element("pubsub", NS_PUBSUB);
    pubsub.append_child(items);
    pubsub
}

/// One published item from a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The sender of the notification: the pubsub service (or PEP account).
    pub service: String,
    pub node: String,
    pub item_id: String,
    /// The first child element of `<item/>`, if any.
    pub payload: Option<Element>,
    pub publisher: String,
}

/// Why a message was not a usable notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    /// Not a pubsub event at all (a chat message, …): ignore quietly.
    #[error("not a pubsub event")]
    NotAnEvent,
    /// A pubsub event that is broken: log and skip.
    #[error("malformed pubsub event: {0}")]
    Malformed(String),
}

/// Extracts the published items of a pubsub event message. Retractions,
/// purges, deletions and configuration changes yield no items.
pub fn parse_notification(m: &Message) -> Result<Vec<Notification>, NotificationError> {
    let event = m
        .payloads
        .iter()
        .find(|p| p.is("event", NS_PUBSUB_EVENT))
        .ok_or(NotificationError::NotAnEvent)?;
    let service = m
        .from
        .as_ref()
        .map(|j| j.to_bare().to_string())
        .ok_or_else(|| NotificationError::Malformed("event without a sender".into()))?;
    let mut out = Vec::new();
    for items in event.children().filter(|c| c.is("items", NS_PUBSUB_EVENT)) {
        let node = items
            .attr("node")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| NotificationError::Malformed("<items/> without node".into()))?;
        for item in items.children().filter(|c| c.is("item", NS_PUBSUB_EVENT)) {
            out.push(Notification {
                service: service.clone(),
                node: node.to_string(),
                item_id: item.attr("id").unwrap_or_default().to_string(),
                payload: item.children().next().cloned(),
                publisher: item.attr("publisher").unwrap_or_default().to_string(),
            });
        }
    }
    Ok(out)
}

/// The items of an `<items/>` result (`<pubsub><items><item id>payload`):
/// (item id, payload).
pub fn parse_items_result(pubsub: &Element) -> Vec<(String, Option<Element>)> {
    pubsub
        .children()
        .filter(|c| c.is("items", NS_PUBSUB))
        .flat_map(|items| items.children().filter(|c| c.is("item", NS_PUBSUB)))
        .map(|item| {
            (
                item.attr("id").unwrap_or_default().to_string(),
                item.children().next().cloned(),
            )
        })
        .collect()
}

/// What to do after a pubsub request failed with a stanza error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `conflict` on create: the node exists already.
    Exists,
    /// `item-not-found`: the node does not exist (any more).
    NoNode,
    /// Not allowed (forbidden, not-authorized, not-allowed…): a setup error
    /// (e.g. the bridge's JID is not in Prosody's `admins`).
    Refused,
    /// Anything else (wait, internal error…): retry later.
    Other,
}

pub fn classify(e: &StanzaError) -> ErrorKind {
    match e.defined_condition {
        DefinedCondition::Conflict => ErrorKind::Exists,
        DefinedCondition::ItemNotFound => ErrorKind::NoNode,
        DefinedCondition::Forbidden
        | DefinedCondition::NotAuthorized
        | DefinedCondition::NotAllowed
        | DefinedCondition::NotAcceptable
        | DefinedCondition::BadRequest
        | DefinedCondition::FeatureNotImplemented => ErrorKind::Refused,
        _ => ErrorKind::Other,
    }
}

/// A short description of a stanza error: condition and text.
pub fn describe(e: &StanzaError) -> String {
    let debug = format!("{:?}", e.defined_condition);
    let camel = debug.split([' ', '{', '(']).next().unwrap_or("error");
    let mut name = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                name.push('-');
            }
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    match e.texts.values().next() {
        Some(t) if !t.is_empty() => format!("{name}: {t}"),
        _ => name,
    }
}

/// The sender of a stanza as a string, or "".
pub fn jid_str(j: Option<&Jid>) -> String {
    j.map(ToString::to_string).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_xmpp::parsers::stanza_error::ErrorType;

    fn message(xml: &str) -> Message {
        let e: Element = xml.parse().unwrap();
        Message::try_from(e).unwrap()
    }

    #[test]
    fn create_request_carries_node_config() {
        let e = create_node(
            "tagpoll/e/p1",
            &NodeConfig {
                title: "t".into(),
                max_items: 1,
            },
        );
        let xml = crate::xml::to_xml(&e);
        for needle in [
            "node='tagpoll/e/p1'",
            "pubsub#node_config",
            "pubsub#access_model",
            "<value>open</value>",
            "pubsub#persist_items",
            "pubsub#max_items",
        ] {
            assert!(xml.contains(needle), "{needle} missing in {xml}");
        }
    }

    #[test]
    fn publish_request_wraps_the_payload() {
        let payload = element("results", "urn:tagpoll:results:1");
        let e = publish_item("n", "p1", payload.clone());
        let publish = e.get_child("publish", NS_PUBSUB).unwrap();
        assert_eq!(publish.attr("node"), Some("n"));
        let item = publish.get_child("item", NS_PUBSUB).unwrap();
        assert_eq!(item.attr("id"), Some("p1"));
        assert_eq!(item.children().next(), Some(&payload));
    }

    #[test]
    fn parses_published_items() {
        let m = message(
            "<message xmlns='jabber:client' from='pubsub.localhost' to='b@localhost' type='headline'>\
               <event xmlns='http://jabber.org/protocol/pubsub#event'>\
                 <items node='news/today'>\
                   <item id='i1' publisher='alice@localhost'><entry xmlns='urn:x'>hi</entry></item>\
                   <item id='i2'/>\
                 </items>\
               </event>\
             </message>",
        );
        let n = parse_notification(&m).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].service, "pubsub.localhost");
        assert_eq!(n[0].node, "news/today");
        assert_eq!(n[0].item_id, "i1");
        assert_eq!(n[0].publisher, "alice@localhost");
        assert_eq!(n[0].payload.as_ref().unwrap().text(), "hi");
        assert_eq!(n[1].payload, None);
    }

    #[test]
    fn skips_retractions_and_non_events() {
        let m = message(
            "<message xmlns='jabber:client' from='pubsub.localhost'>\
               <event xmlns='http://jabber.org/protocol/pubsub#event'>\
                 <items node='n'><retract id='i1'/></items></event></message>",
        );
        assert_eq!(parse_notification(&m).unwrap(), vec![]);
        let m = message(
            "<message xmlns='jabber:client' from='a@b' type='chat'><body>hi</body></message>",
        );
        assert_eq!(parse_notification(&m), Err(NotificationError::NotAnEvent));
        let m = message(
            "<message xmlns='jabber:client' from='pubsub.localhost'>\
               <event xmlns='http://jabber.org/protocol/pubsub#event'><items><item id='x'/></items></event></message>",
        );
        assert!(matches!(
            parse_notification(&m),
            Err(NotificationError::Malformed(_))
        ));
    }

    #[test]
    fn classifies_errors() {
        let e = StanzaError::new(ErrorType::Cancel, DefinedCondition::Conflict, "en", "");
        assert_eq!(classify(&e), ErrorKind::Exists);
        let e = StanzaError::new(ErrorType::Auth, DefinedCondition::Forbidden, "en", "no");
        assert_eq!(classify(&e), ErrorKind::Refused);
        assert_eq!(describe(&e), "forbidden: no");
        let e = StanzaError::new(ErrorType::Cancel, DefinedCondition::ItemNotFound, "en", "");
        assert_eq!(classify(&e), ErrorKind::NoNode);
    }

    #[test]
    fn node_names_become_one_subject_token() {
        use tagpoll_proto::subjects::{XMPP_IN_ALL, xmpp_in};
        assert_eq!(xmpp_in("vote/42"), "tagpoll.xmpp.in.vote/42");
        assert_eq!(xmpp_in("feeds.v1"), "tagpoll.xmpp.in.feeds%2Ev1");
        assert_eq!(xmpp_in("a b*>%"), "tagpoll.xmpp.in.a%20b%2A%3E%25");
        assert_eq!(xmpp_in("caf\u{e9}"), "tagpoll.xmpp.in.caf%C3%A9");
        for node in ["vote/42", "a.b.c", "x y", "*", ">"] {
            let s = xmpp_in(node);
            let token = s.strip_prefix("tagpoll.xmpp.in.").unwrap();
            assert!(
                !token.is_empty() && !token.contains(['.', '*', '>', ' ']),
                "{s}"
            );
            assert!(XMPP_IN_ALL.ends_with(".*"));
        }
    }

    #[test]
    fn parses_items_results() {
        let e: Element = "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'>\
             <item id='p1'><results xmlns='urn:tagpoll:results:1'/></item></items></pubsub>"
            .parse()
            .unwrap();
        let items = parse_items_result(&e);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, "p1");
        assert_eq!(items[0].1.as_ref().unwrap().name(), "results");
    }
}
