//! ikPoll-compatible vote notifications: the `rsp` payload the original
//! ikPoll published on node `vote/{question}` (see docs/xmpp.md), one item
//! per counted vote (item id = read id). Pure code.
//!
//! ```xml
//! <rsp>
//!   <vote>
//!     <id>0193…</id><reader_serial>yes-left</reader_serial><reader_id_ref>yes-left</reader_id_ref>
//!     <rfid_tag/><user_id_ref>file:alice</user_id_ref><user_session_id/>
//!     <answer_id_ref>yes</answer_id_ref><question_id_ref>p1</question_id_ref>
//!     <reader_location_id_ref/><timestamp>2025-11-26 09:10:11</timestamp>
//!     <source>tagpoll</source><poll_session_id>1</poll_session_id>
//!   </vote>
//!   <person><title>Alice</title><image/><works_for/></person>
//!   <question>
//!     <title>Yes or no?</title><id>p1</id>
//!     <answers>
//!       <item><answer_id>yes</answer_id><title>Yes</title><count>3</count><percentage>75.0</percentage></item>
//!       …
//!     </answers>
//!     <total_votes>4</total_votes>
//!   </question>
//! </rsp>
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tagpoll_proto::v1::{self, OutcomeKind};
use tokio_xmpp::minidom::Element;

use crate::results::PollSnapshot;
use crate::xml::{element, ikpoll_time, text_element};

/// ikPoll payloads have no namespace.
pub const NS_NONE: &str = "";

/// How long a vote notification waits for the tally's results that include
/// it, before it goes out with the last known counts plus this vote.
pub const RESULTS_WAIT: Duration = Duration::from_secs(2);

/// Whether an outcome becomes a vote notification: counted votes only, and
/// never a correction (a later tap re-decided after a late earlier one: the
/// voter voted once, and the results nodes carry the corrected counts).
pub fn is_notified(o: &v1::VoteOutcome) -> bool {
    matches!(o.kind(), OutcomeKind::Accepted | OutcomeKind::Changed)
        && !o.correction
        && !o.poll_id.is_empty()
        && o.poll_id != tagpoll_proto::subjects::NO_POLL
}

/// The counts to show with a vote: `snapshot`, plus the vote itself when
/// the snapshot does not include it yet (`included` false) and is of the
/// vote's run.
pub fn counts_with_vote(
    snapshot: &PollSnapshot,
    o: &v1::VoteOutcome,
    included: bool,
) -> PollSnapshot {
    let mut s = snapshot.clone();
    if included || o.run != s.run {
        return s;
    }
    let mut bump = |id: &str, up: bool| {
        if let Some(a) = s.answers.iter_mut().find(|a| a.answer_id == id) {
            if up {
                a.votes += 1;
            } else {
                a.votes = a.votes.saturating_sub(1);
            }
        }
    };
    bump(&o.answer_id, true);
    if o.kind() == OutcomeKind::Changed && !o.previous_answer_id.is_empty() {
        bump(&o.previous_answer_id, false);
    }
    s.total = s.answers.iter().map(|a| a.votes).sum();
    s
}

fn pct(count: u64, total: u64) -> String {
    if total == 0 {
        "0.0".into()
    } else {
        format!("{:.1}", count as f64 * 100.0 / total as f64)
    }
}

/// The `<rsp/>` item payload for a counted vote. The person's `title` is
/// `voter_name` (empty unless personal mode is on); `image`, `works_for` and
/// `rfid_tag` are always empty (tag UIDs never leave the identity service,
/// and tagpoll has no pictures). Counts are left empty for a poll whose
/// results are hidden.
pub fn vote_payload(o: &v1::VoteOutcome, s: &PollSnapshot, voter_name: &str) -> Element {
    let t = |name: &str, text: &str| text_element(name, NS_NONE, text);
    let mut vote = element("vote", NS_NONE);
    let time = o
        .read_at
        .as_ref()
        .or(o.decided_at.as_ref())
        .and_then(ikpoll_time)
        .unwrap_or_default();
    for (name, value) in [
        ("id", o.read_id.as_str()),
        ("reader_serial", o.reader_id.as_str()),
        ("reader_id_ref", o.reader_id.as_str()),
        ("rfid_tag", ""),
        ("user_id_ref", o.voter_id.as_str()),
        ("user_session_id", ""),
        ("answer_id_ref", o.answer_id.as_str()),
        ("question_id_ref", o.poll_id.as_str()),
        ("reader_location_id_ref", ""),
        ("timestamp", time.as_str()),
        ("source", "tagpoll"),
        ("poll_session_id", &o.run.to_string()),
    ] {
        vote.append_child(t(name, value));
    }

    let mut person = element("person", NS_NONE);
    person.append_child(t("title", voter_name));
    person.append_child(t("image", ""));
    person.append_child(t("works_for", ""));

    let mut question = element("question", NS_NONE);
    question.append_child(t("title", &s.question));
    question.append_child(t("id", &s.poll_id));
    let mut answers = element("answers", NS_NONE);
    for a in &s.answers {
        let mut item = element("item", NS_NONE);
        item.append_child(t("answer_id", &a.answer_id));
        item.append_child(t("title", &a.label));
        if s.hidden {
            item.append_child(t("count", ""));
            item.append_child(t("percentage", ""));
        } else {
            item.append_child(t("count", &a.votes.to_string()));
            item.append_child(t("percentage", &pct(a.votes, s.total)));
        }
        answers.append_child(item);
    }
    question.append_child(answers);
    question.append_child(t(
        "total_votes",
        &if s.hidden {
            String::new()
        } else {
            s.total.to_string()
        },
    ));

    let mut rsp = element("rsp", NS_NONE);
    rsp.append_child(vote);
    rsp.append_child(person);
    rsp.append_child(question);
    rsp
}

/// Voter names by read id, for personal mode: the vote stream carries no
/// names, so they come from the tally's reader feedback (core NATS) and wait
/// here until their vote goes out. An empty name is kept too: it says the
/// feedback came and the voter has no name, so the vote need not wait.
/// Bounded: the oldest are dropped first.
#[derive(Debug, Default)]
pub struct VoterNames {
    names: HashMap<String, String>,
    order: VecDeque<String>,
}

/// At most this many names wait for their votes.
pub const MAX_NAMES: usize = 10_000;

impl VoterNames {
    pub fn insert(&mut self, read_id: String, name: String) {
        if self.names.insert(read_id.clone(), name).is_none() {
            self.order.push_back(read_id);
        }
        while self.order.len() > MAX_NAMES {
            if let Some(old) = self.order.pop_front() {
                self.names.remove(&old);
            }
        }
    }

    /// Whether the feedback for `read_id` came (with or without a name).
    pub fn contains(&self, read_id: &str) -> bool {
        self.names.contains_key(read_id)
    }

    /// The name for `read_id`, forgotten once taken; empty if none came.
    pub fn take(&mut self, read_id: &str) -> String {
        match self.names.remove(read_id) {
            Some(name) => {
                self.order.retain(|r| r != read_id);
                name
            }
            None => String::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A vote waiting for results that include it.
#[derive(Debug, Clone)]
pub struct Held {
    /// Stream sequence of the outcome in TAGPOLL_VOTES.
    pub seq: u64,
    pub outcome: v1::VoteOutcome,
    pub deadline: Instant,
}

/// Votes waiting for their results, in arrival (= stream) order.
#[derive(Debug, Default)]
pub struct VoteHold {
    pending: VecDeque<Held>,
}

/// At most this many votes wait; older ones go out first when exceeded.
pub const MAX_HELD: usize = 10_000;

impl VoteHold {
    pub fn push(&mut self, seq: u64, outcome: v1::VoteOutcome, now: Instant) {
        self.pending.push_back(Held {
            seq,
            outcome,
            deadline: now + RESULTS_WAIT,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|h| h.deadline).min()
    }

    /// Votes ready to go, in order, each with whether the known results
    /// (`votes_seq_of(poll)`) already include it. A vote is ready once the
    /// results include it and `named(read_id)` (personal mode: its voter's
    /// name came), or at its deadline.
    pub fn take_ready(
        &mut self,
        votes_seq_of: impl Fn(&str) -> u64,
        named: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<(Held, bool)> {
        let overflow = self.pending.len().saturating_sub(MAX_HELD);
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        for (i, h) in self.pending.drain(..).enumerate() {
            let included = votes_seq_of(&h.outcome.poll_id) >= h.seq;
            if (included && named(&h.outcome.read_id)) || h.deadline <= now || i < overflow {
                out.push((h, included));
            } else {
                keep.push_back(h);
            }
        }
        self.pending = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{snapshot, tests as rt};

    fn outcome(kind: OutcomeKind, answer: &str, previous: &str) -> v1::VoteOutcome {
        v1::VoteOutcome {
            read_id: "r-1".into(),
            device_id: "dev".into(),
            reader_id: "tea-left".into(),
            poll_id: "p1".into(),
            answer_id: answer.into(),
            kind: kind as i32,
            previous_answer_id: previous.into(),
            voter_id: "file:alice".into(),
            read_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            run: 2,
            ..Default::default()
        }
    }

    fn text(e: &Element, path: &[&str]) -> String {
        let mut cur = e;
        for p in path {
            cur = cur
                .children()
                .find(|c| c.name() == *p)
                .unwrap_or_else(|| panic!("no {p}"));
        }
        cur.text()
    }

    #[test]
    fn payload_has_ikpoll_shape() {
        let s = snapshot(Some(&rt::def(false)), Some(&rt::stored(2, 3, 1, 9))).unwrap();
        let o = outcome(OutcomeKind::Accepted, "tea", "");
        let e = vote_payload(&o, &s, "Alice");
        assert_eq!(e.name(), "rsp");
        assert_eq!(e.ns(), "");
        let names: Vec<&str> = e.children().map(|c| c.name()).collect();
        assert_eq!(names, ["vote", "person", "question"]);
        assert_eq!(text(&e, &["vote", "id"]), "r-1");
        assert_eq!(text(&e, &["vote", "reader_serial"]), "tea-left");
        assert_eq!(text(&e, &["vote", "answer_id_ref"]), "tea");
        assert_eq!(text(&e, &["vote", "question_id_ref"]), "p1");
        assert_eq!(text(&e, &["vote", "user_id_ref"]), "file:alice");
        assert_eq!(text(&e, &["vote", "timestamp"]), "2023-11-14 22:13:20");
        assert_eq!(text(&e, &["vote", "rfid_tag"]), "");
        assert_eq!(text(&e, &["person", "title"]), "Alice");
        assert_eq!(text(&e, &["question", "title"]), "Tea or coffee?");
        assert_eq!(text(&e, &["question", "id"]), "p1");
        assert_eq!(text(&e, &["question", "total_votes"]), "4");
        let items: Vec<(String, String, String, String)> = e
            .get_child("question", NS_NONE)
            .unwrap()
            .get_child("answers", NS_NONE)
            .unwrap()
            .children()
            .map(|i| {
                (
                    text(i, &["answer_id"]),
                    text(i, &["title"]),
                    text(i, &["count"]),
                    text(i, &["percentage"]),
                )
            })
            .collect();
        assert_eq!(
            items,
            [
                ("tea".into(), "Tea".into(), "3".into(), "75.0".into()),
                (
                    "coffee".into(),
                    "Coffee & cake".into(),
                    "1".into(),
                    "25.0".into()
                )
            ]
        );
        let xml = crate::xml::to_xml(&e);
        assert!(xml.starts_with("<rsp"), "{xml}");
        let wrapped = crate::xml::to_xml(&crate::pubsub::publish_item("vote/p1", "r-1", e.clone()));
        assert!(wrapped.contains("<rsp xmlns=''>"), "{wrapped}");
    }

    #[test]
    fn personal_fields_only_when_opted_in() {
        let s = snapshot(Some(&rt::def(false)), None).unwrap();
        let o = outcome(OutcomeKind::Accepted, "tea", "");
        let e = vote_payload(&o, &s, "");
        assert_eq!(text(&e, &["person", "title"]), "");
        assert_eq!(text(&e, &["person", "image"]), "");
        assert!(!crate::xml::to_xml(&e).contains("Alice"));
    }

    #[test]
    fn names_wait_for_their_vote_and_are_bounded() {
        let mut n = VoterNames::default();
        n.insert("r1".into(), "Alice".into());
        n.insert("r2".into(), String::new());
        assert!(n.contains("r2"), "an empty name says the feedback came");
        assert!(!n.contains("r3"));
        assert_eq!(n.take("r2"), "");
        assert!(!n.contains("r2"));
        assert_eq!(n.len(), 1);
        assert_eq!(n.take("r1"), "Alice");
        assert_eq!(n.take("r1"), "", "taken once");
        for i in 0..MAX_NAMES + 5 {
            n.insert(format!("x{i}"), "X".into());
        }
        assert_eq!(n.len(), MAX_NAMES);
        assert_eq!(n.take("x0"), "", "the oldest went first");
        assert_eq!(n.take(&format!("x{}", MAX_NAMES + 4)), "X");
    }

    #[test]
    fn hidden_results_leave_counts_empty() {
        let s = snapshot(Some(&rt::def(true)), Some(&rt::stored(2, 3, 1, 9))).unwrap();
        let e = vote_payload(&outcome(OutcomeKind::Accepted, "tea", ""), &s, "");
        assert_eq!(text(&e, &["question", "total_votes"]), "");
        let xml = crate::xml::to_xml(&e);
        assert!(!xml.contains("<count>3"), "{xml}");
    }

    #[test]
    fn counts_include_the_vote_when_results_lag() {
        let s = snapshot(Some(&rt::def(false)), Some(&rt::stored(2, 3, 1, 9))).unwrap();
        let changed = outcome(OutcomeKind::Changed, "coffee", "tea");
        let c = counts_with_vote(&s, &changed, false);
        assert_eq!(
            c.answers.iter().map(|a| a.votes).collect::<Vec<_>>(),
            [2, 2]
        );
        assert_eq!(c.total, 4);
        let c = counts_with_vote(&s, &outcome(OutcomeKind::Accepted, "tea", ""), false);
        assert_eq!(c.total, 5);
        assert_eq!(counts_with_vote(&s, &changed, true), s);
    }

    #[test]
    fn only_counted_votes_are_notified() {
        assert!(is_notified(&outcome(OutcomeKind::Accepted, "tea", "")));
        assert!(is_notified(&outcome(OutcomeKind::Changed, "tea", "x")));
        let mut corrected = outcome(OutcomeKind::Changed, "tea", "x");
        corrected.correction = true;
        assert!(!is_notified(&corrected));
        assert!(!is_notified(&outcome(OutcomeKind::Duplicate, "tea", "")));
        assert!(!is_notified(&outcome(OutcomeKind::Rejected, "tea", "")));
    }

    #[test]
    fn hold_releases_when_included_or_late() {
        let t0 = Instant::now();
        let mut h = VoteHold::default();
        h.push(10, outcome(OutcomeKind::Accepted, "tea", ""), t0);
        h.push(11, outcome(OutcomeKind::Accepted, "tea", ""), t0);
        assert!(h.take_ready(|_| 9, |_| true, t0).is_empty());
        let r = h.take_ready(|_| 10, |_| true, t0);
        assert_eq!(r.len(), 1);
        assert!(r[0].1);
        assert_eq!(h.next_deadline(), Some(t0 + RESULTS_WAIT));
        let r = h.take_ready(|_| 10, |_| true, t0 + RESULTS_WAIT);
        assert_eq!(r.len(), 1);
        assert!(!r[0].1);
        assert!(h.is_empty());
    }

    #[test]
    fn personal_votes_also_wait_for_the_name() {
        let t0 = Instant::now();
        let mut h = VoteHold::default();
        h.push(10, outcome(OutcomeKind::Accepted, "tea", ""), t0);
        assert!(h.take_ready(|_| 10, |_| false, t0).is_empty());
        let r = h.take_ready(|_| 10, |id| id == "r-1", t0);
        assert_eq!(r.len(), 1);
        assert!(r[0].1);
        // A name that never comes holds the vote only until its deadline.
        h.push(11, outcome(OutcomeKind::Accepted, "tea", ""), t0);
        let r = h.take_ready(|_| 11, |_| false, t0 + RESULTS_WAIT);
        assert_eq!(r.len(), 1);
    }
}
