//! Every NATS subject tagpoll uses, all under the `tagpoll.` prefix.
//!
//! Ids embedded here must have passed [`crate::ids::check_id`].

/// Common prefix of every tagpoll subject.
pub const PREFIX: &str = "tagpoll";

/// Subject filter of [`crate::names::STREAM_READS`].
pub const READS_ALL: &str = "tagpoll.reads.>";
/// Subject filter of [`crate::names::STREAM_IDENTIFIED`].
pub const IDENTIFIED_ALL: &str = "tagpoll.identified.>";
/// Subject filter of [`crate::names::STREAM_VOTES`].
pub const OUTCOMES_ALL: &str = "tagpoll.outcomes.>";
/// All results snapshots.
pub const RESULTS_ALL: &str = "tagpoll.results.*";
/// All heartbeats.
pub const HEARTBEAT_ALL: &str = "tagpoll.heartbeat.>";
/// Heartbeats of reader devices (`tagpoll.heartbeat.device.{device}.{instance}`): what
/// identity measures device clocks from.
pub const HEARTBEAT_DEVICES: &str = "tagpoll.heartbeat.device.>";

/// Poll id used in outcome subjects when the reader has no poll.
pub const NO_POLL: &str = "_";

/// A tap at `reader` on `device`.
pub fn read(device: &str, reader: &str) -> String {
    format!("tagpoll.reads.{device}.{reader}")
}

/// The device and reader a tap subject names (`tagpoll.reads.{device}.{reader}`).
pub fn parse_read(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("tagpoll.reads.")?;
    let (device, reader) = rest.split_once('.')?;
    (!device.is_empty() && !reader.is_empty() && !reader.contains('.')).then_some((device, reader))
}

/// An identified tap at `reader` on `device`.
pub fn identified(device: &str, reader: &str) -> String {
    format!("tagpoll.identified.{device}.{reader}")
}

/// The outcome of a tap at `reader`, counted (or not) in `poll`.
pub fn outcome(poll: &str, reader: &str) -> String {
    let poll = if poll.is_empty() { NO_POLL } else { poll };
    format!("tagpoll.outcomes.{poll}.{reader}")
}

/// Outcomes for one reader, whatever poll: the reader's feedback filter.
pub fn outcomes_for_reader(reader: &str) -> String {
    format!("tagpoll.outcomes.*.{reader}")
}

/// All reader feedback (core NATS only: outcome plus the voter's name).
pub const FEEDBACK_ALL: &str = "tagpoll.feedback.>";

/// Feedback for a tap at `reader` on `device`.
pub fn feedback(device: &str, reader: &str) -> String {
    format!("tagpoll.feedback.{device}.{reader}")
}

/// Feedback for every reader of one device: what a reader device may read.
pub fn feedback_for_device(device: &str) -> String {
    format!("tagpoll.feedback.{device}.>")
}

/// Feedback for one reader, whatever device it is on (the kiosk's filter).
pub fn feedback_for_reader(reader: &str) -> String {
    format!("tagpoll.feedback.*.{reader}")
}

/// Outcomes of one poll.
pub fn outcomes_for_poll(poll: &str) -> String {
    format!("tagpoll.outcomes.{poll}.*")
}

/// Results snapshots of one poll.
pub fn results(poll: &str) -> String {
    format!("tagpoll.results.{poll}")
}

/// Heartbeat of a service or device instance; `kind` is "service" or "device".
pub fn heartbeat(kind: &str, name: &str, instance: &str) -> String {
    format!("tagpoll.heartbeat.{kind}.{name}.{instance}")
}

/// All notifications the XMPP bridge republishes from XMPP nodes.
pub const XMPP_IN_ALL: &str = "tagpoll.xmpp.in.*";

/// A notification from XMPP publish-subscribe `node`, republished by the
/// XMPP bridge as an `XmppNotification`. The node name becomes one subject
/// token: `%`, `.`, `*`, `>`, space, control and non-ASCII bytes are
/// percent-encoded (`vote/42` stays `vote/42`, `a.b` becomes `a%2Eb`), so
/// the mapping is reversible. `node` must not be empty (XEP-0060 nodes never are).
pub fn xmpp_in(node: &str) -> String {
    let mut s = String::from("tagpoll.xmpp.in.");
    for b in node.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'.' | b'*' | b'>') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Subject filter of [`crate::names::STREAM_DEAD`].
pub const DEAD_ALL: &str = "tagpoll.dead.>";

/// Where `service` puts what it dead-letters (its role may publish only there).
pub fn dead(service: &str) -> String {
    format!("tagpoll.dead.{service}")
}

/// Request/reply, scatter-gather: every service instance answers with its
/// live state as a `Heartbeat`.
pub const ADMIN_STATUS: &str = "tagpoll.admin.status";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_prefixed_and_nest_under_their_filters() {
        assert_eq!(read("dev1", "r1"), "tagpoll.reads.dev1.r1");
        assert_eq!(identified("dev1", "r1"), "tagpoll.identified.dev1.r1");
        assert_eq!(outcome("p", "r1"), "tagpoll.outcomes.p.r1");
        assert_eq!(outcome("", "r1"), "tagpoll.outcomes._.r1");
        assert_eq!(results("p"), "tagpoll.results.p");
        assert_eq!(feedback("dev1", "r1"), "tagpoll.feedback.dev1.r1");
        assert_eq!(parse_read(&read("dev1", "r1")), Some(("dev1", "r1")));
        for bad in [
            "tagpoll.reads.dev1",
            "tagpoll.reads.a.b.c",
            "tagpoll.reads..r",
            "x.reads.a.b",
        ] {
            assert_eq!(parse_read(bad), None, "{bad}");
        }
        assert_eq!(feedback_for_device("dev1"), "tagpoll.feedback.dev1.>");
        assert_eq!(feedback_for_reader("r1"), "tagpoll.feedback.*.r1");
        assert!(heartbeat("device", "d", "i").starts_with(HEARTBEAT_DEVICES.trim_end_matches('>')));
        for s in [read("a", "b"), outcome("a", "b"), results("a")] {
            assert!(s.starts_with("tagpoll."));
        }
    }
}
