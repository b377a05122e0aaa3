//! The results payload: `<results xmlns='urn:tagpoll:results:1'>`, one item
//! per poll (item id = poll id) on the poll's node. Pure code.
//!
//! ```xml
//! <results xmlns='urn:tagpoll:results:1' event='e2e' poll='p1' state='open'
//!          run='1' total='4' updated='2025-11-26T09:10:11.123Z'>
//!   <question>Yes or no?</question>
//!   <answer id='yes' votes='3'>Yes</answer>
//!   <answer id='no' votes='1'>No</answer>
//! </results>
//! ```
//!
//! A poll with `results_hidden` is published as state only: `hidden='true'`,
//! the question, and no `total`, no `answer` elements.

use tagpoll_proto::v1::{self, PollState};
use tokio_xmpp::minidom::Element;

use crate::xml::{child_text, element, rfc3339, set_attr, text_element};

/// Namespace of the results payload.
pub const NS_RESULTS: &str = "urn:tagpoll:results:1";

/// What is published about one poll: its definition merged with its latest counts.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSnapshot {
    pub poll_id: String,
    pub question: String,
    pub state: PollState,
    pub hidden: bool,
    pub run: u32,
    /// In the definition's order, every answer, zero when nobody voted.
    pub answers: Vec<v1::AnswerCount>,
    pub total: u64,
    /// Stream sequence of the last vote included (0: none known).
    pub votes_seq: u64,
    pub updated_at: Option<prost_types::Timestamp>,
}

/// Merges a poll definition (live state, labels, order, hidden flag) with the
/// tally's latest results. Results of an earlier run count as none, as on
/// the web page. Without a definition the stored results stand alone.
pub fn snapshot(
    def: Option<&v1::PollDefinition>,
    stored: Option<&v1::PollResults>,
) -> Option<PollSnapshot> {
    match (def, stored) {
        (None, None) => None,
        (None, Some(r)) => Some(PollSnapshot {
            poll_id: r.poll_id.clone(),
            question: r.question.clone(),
            state: r.state(),
            hidden: r.results_hidden,
            run: r.run,
            answers: r.answers.clone(),
            total: r.answers.iter().map(|a| a.votes).sum(),
            votes_seq: r.votes_seq,
            updated_at: r.updated_at,
        }),
        (Some(d), stored) => {
            let stored = stored.filter(|r| r.run == d.run);
            let answers: Vec<v1::AnswerCount> = d
                .answers
                .iter()
                .map(|a| v1::AnswerCount {
                    answer_id: a.id.clone(),
                    label: a.label.clone(),
                    votes: stored
                        .and_then(|r| r.answers.iter().find(|c| c.answer_id == a.id))
                        .map_or(0, |c| c.votes),
                })
                .collect();
            Some(PollSnapshot {
                poll_id: d.poll_id.clone(),
                question: d.question.clone(),
                state: d.state(),
                hidden: d.results_hidden,
                run: d.run,
                total: answers.iter().map(|a| a.votes).sum(),
                answers,
                votes_seq: stored.map_or(0, |r| r.votes_seq),
                updated_at: stored.and_then(|r| r.updated_at),
            })
        }
    }
}

/// Whether `new` may replace `old` (same poll): results are ordered by
/// (run, votes_seq, updated_at), so a late read of the KV bucket never
/// overwrites a newer snapshot received on the subject.
pub fn supersedes(new: &v1::PollResults, old: &v1::PollResults) -> bool {
    fn key(r: &v1::PollResults) -> (u32, u64, i64, i32) {
        let (s, n) = r.updated_at.map_or((0, 0), |t| (t.seconds, t.nanos));
        (r.run, r.votes_seq, s, n)
    }
    key(new) >= key(old)
}

/// Whether two results of a poll show the same thing: everything but the
/// snapshot time and the vote stream position (the tally refreshes idle
/// polls now and then, and votes in other polls move `votes_seq`).
pub fn same_content(a: &v1::PollResults, b: &v1::PollResults) -> bool {
    a.poll_id == b.poll_id
        && a.question == b.question
        && a.state == b.state
        && a.answers == b.answers
        && a.total == b.total
        && a.run == b.run
        && a.results_hidden == b.results_hidden
}

/// Lower-case state name used in payloads: draft, open, closed.
pub fn state_name(s: PollState) -> &'static str {
    match s {
        PollState::Open => "open",
        PollState::Closed => "closed",
        PollState::Draft | PollState::Unspecified => "draft",
    }
}

/// The `<results/>` payload of a snapshot.
pub fn results_payload(event_id: &str, s: &PollSnapshot) -> Element {
    let mut e = element("results", NS_RESULTS);
    if !event_id.is_empty() {
        set_attr(&mut e, "event", event_id);
    }
    set_attr(&mut e, "poll", &s.poll_id);
    set_attr(&mut e, "state", state_name(s.state));
    set_attr(&mut e, "run", s.run.to_string());
    if let Some(t) = s.updated_at.as_ref().and_then(rfc3339) {
        set_attr(&mut e, "updated", t);
    }
    if s.hidden {
        set_attr(&mut e, "hidden", "true");
    } else {
        set_attr(&mut e, "total", s.total.to_string());
    }
    e.append_child(text_element("question", NS_RESULTS, &s.question));
    if !s.hidden {
        for a in &s.answers {
            let mut ae = text_element("answer", NS_RESULTS, &a.label);
            set_attr(&mut ae, "id", &a.answer_id);
            set_attr(&mut ae, "votes", a.votes.to_string());
            e.append_child(ae);
        }
    }
    e
}

/// A parsed `<results/>` payload (for consumers and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsPayload {
    pub event: Option<String>,
    pub poll: String,
    pub state: String,
    pub run: u32,
    pub hidden: bool,
    /// None when hidden.
    pub total: Option<u64>,
    pub updated: Option<String>,
    pub question: String,
    /// (id, label, votes)
    pub answers: Vec<(String, String, u64)>,
}

/// Why a payload is not a valid `<results/>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tagpoll results payload: {0}")]
pub struct PayloadError(pub String);

/// Parses a `<results xmlns='urn:tagpoll:results:1'/>` element.
pub fn parse_results(e: &Element) -> Result<ResultsPayload, PayloadError> {
    if !e.is("results", NS_RESULTS) {
        return Err(PayloadError(format!("root is {{{}}}{}", e.ns(), e.name())));
    }
    let need = |name: &str| {
        e.attr(name)
            .map(str::to_string)
            .ok_or_else(|| PayloadError(format!("missing attribute {name}")))
    };
    let num = |name: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| PayloadError(format!("{name}={v:?} is not a number")))
    };
    let hidden = e.attr("hidden") == Some("true");
    let total = match e.attr("total") {
        Some(t) => Some(num("total", t)?),
        None if hidden => None,
        None => return Err(PayloadError("missing attribute total".into())),
    };
    let mut answers = Vec::new();
    for a in e.children().filter(|c| c.is("answer", NS_RESULTS)) {
        let id = a
            .attr("id")
            .ok_or_else(|| PayloadError("answer without id".into()))?;
        let votes = num(
            "votes",
            a.attr("votes")
                .ok_or_else(|| PayloadError(format!("answer {id} without votes")))?,
        )?;
        answers.push((id.to_string(), a.text(), votes));
    }
    Ok(ResultsPayload {
        event: e.attr("event").map(str::to_string),
        poll: need("poll")?,
        state: need("state")?,
        run: e.attr("run").map_or(Ok(0), |r| num("run", r))? as u32,
        hidden,
        total,
        updated: e.attr("updated").map(str::to_string),
        question: child_text(e, "question").unwrap_or_default(),
        answers,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn def(hidden: bool) -> v1::PollDefinition {
        v1::PollDefinition {
            poll_id: "p1".into(),
            question: "Tea or coffee?".into(),
            answers: vec![
                v1::Answer {
                    id: "tea".into(),
                    label: "Tea".into(),
                },
                v1::Answer {
                    id: "coffee".into(),
                    label: "Coffee & cake".into(),
                },
            ],
            state: PollState::Open as i32,
            run: 2,
            results_hidden: hidden,
            ..Default::default()
        }
    }

    pub fn stored(run: u32, tea: u64, coffee: u64, seq: u64) -> v1::PollResults {
        v1::PollResults {
            poll_id: "p1".into(),
            question: "Tea or coffee?".into(),
            state: PollState::Open as i32,
            answers: vec![
                v1::AnswerCount {
                    answer_id: "coffee".into(),
                    label: "Coffee & cake".into(),
                    votes: coffee,
                },
                v1::AnswerCount {
                    answer_id: "tea".into(),
                    label: "Tea".into(),
                    votes: tea,
                },
            ],
            total: tea + coffee,
            run,
            votes_seq: seq,
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            results_hidden: false,
        }
    }

    #[test]
    fn snapshot_follows_definition_and_run() {
        let s = snapshot(Some(&def(false)), Some(&stored(2, 3, 1, 9))).unwrap();
        assert_eq!(s.answers[0].answer_id, "tea");
        assert_eq!(s.answers[0].votes, 3);
        assert_eq!(s.total, 4);
        assert_eq!(s.votes_seq, 9);
        // Counts of an older run do not count.
        let s = snapshot(Some(&def(false)), Some(&stored(1, 3, 1, 9))).unwrap();
        assert_eq!(s.total, 0);
        assert_eq!(s.updated_at, None);
        // No definition: results alone.
        let s = snapshot(None, Some(&stored(1, 3, 1, 9))).unwrap();
        assert_eq!(s.total, 4);
        assert!(snapshot(None, None).is_none());
    }

    #[test]
    fn payload_round_trip() {
        let s = snapshot(Some(&def(false)), Some(&stored(2, 3, 1, 9))).unwrap();
        let e = results_payload("ev1", &s);
        let xml = crate::xml::to_xml(&e);
        assert!(xml.contains("xmlns='urn:tagpoll:results:1'"), "{xml}");
        let parsed = parse_results(&xml.parse().unwrap()).unwrap();
        assert_eq!(
            parsed,
            ResultsPayload {
                event: Some("ev1".into()),
                poll: "p1".into(),
                state: "open".into(),
                run: 2,
                hidden: false,
                total: Some(4),
                updated: Some("2023-11-14T22:13:20.000Z".into()),
                question: "Tea or coffee?".into(),
                answers: vec![
                    ("tea".into(), "Tea".into(), 3),
                    ("coffee".into(), "Coffee & cake".into(), 1)
                ],
            }
        );
    }

    #[test]
    fn hidden_results_publish_state_only() {
        let s = snapshot(Some(&def(true)), Some(&stored(2, 3, 1, 9))).unwrap();
        let e = results_payload("ev1", &s);
        let xml = crate::xml::to_xml(&e);
        assert!(!xml.contains("votes"), "{xml}");
        assert!(!xml.contains("total"), "{xml}");
        let p = parse_results(&e).unwrap();
        assert!(p.hidden);
        assert_eq!(p.total, None);
        assert!(p.answers.is_empty());
        assert_eq!(p.state, "open");
    }

    #[test]
    fn newer_results_win() {
        let a = stored(2, 1, 0, 5);
        let mut b = stored(2, 2, 0, 6);
        assert!(supersedes(&b, &a));
        assert!(!supersedes(&a, &b));
        // Same votes, later snapshot (e.g. closed): newer.
        b.votes_seq = 5;
        b.updated_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_001,
            nanos: 0,
        });
        assert!(supersedes(&b, &a));
        // A new run wins even with fewer votes.
        let c = stored(3, 0, 0, 5);
        assert!(supersedes(&c, &b));
    }

    #[test]
    fn refreshes_are_not_changes() {
        let a = stored(2, 1, 0, 5);
        let mut b = a.clone();
        b.votes_seq = 9;
        b.updated_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_005,
            nanos: 0,
        });
        assert!(same_content(&a, &b));
        b.state = PollState::Closed as i32;
        assert!(!same_content(&a, &b));
        assert!(!same_content(&a, &stored(2, 2, 0, 5)));
    }

    #[test]
    fn rejects_foreign_payloads() {
        let e: Element = "<results xmlns='urn:other'/>".parse().unwrap();
        assert!(parse_results(&e).is_err());
        let e: Element = "<results xmlns='urn:tagpoll:results:1' poll='p' state='open' total='x'/>"
            .parse()
            .unwrap();
        assert!(parse_results(&e).is_err());
    }
}
