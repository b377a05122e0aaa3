//! Small helpers over `minidom` for building and reading payloads.

use tokio_xmpp::minidom::Element;
use tokio_xmpp::minidom::rxml::NcName;

/// An empty element `name` in namespace `ns` ("" for no namespace).
pub fn element(name: &str, ns: &str) -> Element {
    Element::bare(name, ns)
}

/// Sets attribute `name` (a fixed, valid XML name) to `value`.
pub fn set_attr(e: &mut Element, name: &str, value: impl Into<String>) {
    let name = NcName::try_from(name).expect("attribute names are valid XML names");
    e.set_attr(
        tokio_xmpp::minidom::rxml::Namespace::NONE,
        name,
        value.into(),
    );
}

/// `<name>text</name>` in `ns`.
pub fn text_element(name: &str, ns: &str, text: impl Into<String>) -> Element {
    let mut e = element(name, ns);
    let text = text.into();
    if !text.is_empty() {
        e.append_text_node(text);
    }
    e
}

/// Serialises an element (with its namespace declaration).
pub fn to_xml(e: &Element) -> String {
    String::from(e)
}

/// Text of the first child `name` (any namespace), if present.
pub fn child_text(e: &Element, name: &str) -> Option<String> {
    e.children().find(|c| c.name() == name).map(Element::text)
}

/// Formats a protobuf timestamp as RFC 3339 / XEP-0082 UTC (`2025-01-31T18:04:05.123Z`).
pub fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()?
        .replace_nanosecond(t.nanos.clamp(0, 999_999_999) as u32)
        .ok()?;
    let millis = dt.millisecond();
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        millis
    ))
}

/// Formats a protobuf timestamp as `YYYY-MM-DD HH:MM:SS` in UTC (ikPoll's format).
pub fn ikpoll_time(t: &prost_types::Timestamp) -> Option<String> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_serialises() {
        let mut e = element("a", "urn:x");
        set_attr(&mut e, "k", "v<&'\"");
        e.append_child(text_element("b", "urn:x", "t & u"));
        let xml = to_xml(&e);
        let back: Element = xml.parse().unwrap();
        assert_eq!(back.attr("k"), Some("v<&'\""));
        assert_eq!(child_text(&back, "b").as_deref(), Some("t & u"));
        assert!(back.is("a", "urn:x"));
    }

    #[test]
    fn times() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        };
        assert_eq!(rfc3339(&t).unwrap(), "2023-11-14T22:13:20.123Z");
        assert_eq!(ikpoll_time(&t).unwrap(), "2023-11-14 22:13:20");
    }
}
