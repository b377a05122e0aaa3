//! Poll rules: the pure decision for one identified read.
//!
//! [`decide`] looks at the configuration and the counted state and says what
//! the read means, without changing anything; the service stores the outcome
//! in the vote stream first and only then applies it to the state.

use std::time::SystemTime;

use tagpoll_bus::config::{EventConfig, ReaderTarget};
use tagpoll_proto::v1::{self, OutcomeKind, PollState, RejectReason, VoteMode};

use crate::ballots::Ballots;

/// Whether a poll takes votes at `now`.
///
/// A closed poll never does. With an opening window set, the window decides
/// (so a draft poll opens by itself); otherwise only the open state does.
pub fn is_open(poll: &v1::PollDefinition, now: SystemTime) -> bool {
    if poll.state() == PollState::Closed {
        return false;
    }
    let rules = poll.rules.as_ref();
    let opens = rules.and_then(|r| tagpoll_proto::to_system_time(r.opens_at.as_ref()));
    let closes = rules.and_then(|r| tagpoll_proto::to_system_time(r.closes_at.as_ref()));
    if opens.is_none() && closes.is_none() {
        return poll.state() == PollState::Open;
    }
    opens.is_none_or(|t| now >= t) && closes.is_none_or(|t| now < t)
}

/// Decides the outcome of `read` against the configuration and state.
pub fn decide(
    config: &EventConfig,
    ballots: &Ballots,
    read: &v1::IdentifiedRead,
    now: SystemTime,
) -> v1::VoteOutcome {
    let mut out = v1::VoteOutcome {
        read_id: read.read_id.clone(),
        device_id: read.device_id.clone(),
        reader_id: read.reader_id.clone(),
        read_at: read.read_at,
        decided_at: Some(tagpoll_proto::timestamp(now)),
        ..Default::default()
    };
    let voter = match &read.identity {
        Some(v1::identified_read::Identity::Voter(v)) => Some(v),
        _ => None,
    };
    if let Some(v) = voter {
        out.voter_id = v.voter_id.clone();
    }
    let (poll, answer_id) = match config.target(&read.reader_id) {
        ReaderTarget::Unmapped => {
            return reject(
                out,
                RejectReason::ReaderNotMapped,
                "This reader is not part of a poll.",
            );
        }
        ReaderTarget::Dangling { poll_id, answer_id } => {
            out.poll_id = poll_id.to_string();
            out.answer_id = answer_id.to_string();
            return reject(
                out,
                RejectReason::UnknownPoll,
                "This reader points at a poll or answer that does not exist.",
            );
        }
        ReaderTarget::Answer { poll, answer_id } => (poll, answer_id),
    };
    out.poll_id = poll.poll_id.clone();
    out.answer_id = answer_id.to_string();
    out.run = poll.run;
    if !is_open(poll, now) {
        return reject(out, RejectReason::PollClosed, "This poll is not open.");
    }
    let rules = poll.rules.unwrap_or_default();
    let voter = match (voter, &read.identity) {
        (Some(v), _) if !v.anonymous || rules.allow_anonymous => v,
        (_, Some(v1::identified_read::Identity::Unknown(u))) => {
            out.hint = u.hint.clone();
            return reject(out, RejectReason::UnknownTag, "We don't know this tag.");
        }
        _ => {
            out.voter_id.clear();
            return reject(
                out,
                RejectReason::UnknownTag,
                "Only registered tags can vote in this poll.",
            );
        }
    };
    let label = poll
        .answers
        .iter()
        .find(|a| a.id == answer_id)
        .map(|a| a.label.as_str())
        .unwrap_or(answer_id);
    let choices = ballots.choices(&poll.poll_id, poll.run, &voter.voter_id);
    let max = rules.max_choices.max(1) as usize;
    if choices.iter().any(|c| c == answer_id) {
        out.kind = OutcomeKind::Duplicate as i32;
        out.message = format!("You already voted {label}.");
    } else if choices.len() < max {
        out.kind = OutcomeKind::Accepted as i32;
        out.message = format!("You voted {label}.");
    } else if rules.mode() == VoteMode::LastCounts {
        out.kind = OutcomeKind::Changed as i32;
        out.previous_answer_id = choices[0].clone();
        out.message = format!("You changed your vote to {label}.");
    } else if max == 1 {
        out.kind = OutcomeKind::Duplicate as i32;
        out.message = "You already voted in this poll.".into();
    } else {
        return reject(
            out,
            RejectReason::TooManyChoices,
            &format!("You already picked {max} answers."),
        );
    }
    out
}

fn reject(mut out: v1::VoteOutcome, reason: RejectReason, message: &str) -> v1::VoteOutcome {
    out.kind = OutcomeKind::Rejected as i32;
    out.reject_reason = reason as i32;
    out.message = message.to_string();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn config(
        mode: VoteMode,
        max_choices: u32,
        allow_anonymous: bool,
        state: PollState,
    ) -> EventConfig {
        let mut c = EventConfig::default();
        let poll = v1::PollDefinition {
            poll_id: "p".into(),
            question: "Q?".into(),
            answers: ["a", "b", "c"]
                .iter()
                .map(|id| v1::Answer {
                    id: id.to_string(),
                    label: id.to_uppercase(),
                })
                .collect(),
            rules: Some(v1::PollRules {
                mode: mode as i32,
                max_choices,
                allow_anonymous,
                ..Default::default()
            }),
            state: state as i32,
            ..Default::default()
        };
        c.apply("poll.p", Some(&poll.encode_to_vec()), 1);
        for (r, a) in [("ra", "a"), ("rb", "b"), ("rc", "c"), ("rx", "zzz")] {
            let m = v1::ReaderMapping {
                reader_id: r.into(),
                poll_id: "p".into(),
                answer_id: a.into(),
                ..Default::default()
            };
            c.apply(&format!("reader.{r}"), Some(&m.encode_to_vec()), 2);
        }
        c
    }

    fn read(id: &str, reader: &str, voter: &str) -> v1::IdentifiedRead {
        v1::IdentifiedRead {
            read_id: id.into(),
            reader_id: reader.into(),
            identity: Some(v1::identified_read::Identity::Voter(v1::Voter {
                voter_id: voter.into(),
                anonymous: voter.starts_with("anon:"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// Decides and applies a sequence, returning the outcome kinds.
    fn run(c: &EventConfig, reads: &[v1::IdentifiedRead]) -> (Vec<OutcomeKind>, Ballots) {
        let mut b = Ballots::default();
        let kinds = reads
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let o = decide(c, &b, r, SystemTime::now());
                b.apply(&o, i as u64 + 1);
                o.kind()
            })
            .collect();
        (kinds, b)
    }

    #[test]
    fn first_vote_stands() {
        let c = config(VoteMode::FirstStands, 1, false, PollState::Open);
        let (k, b) = run(
            &c,
            &[
                read("1", "ra", "v1"),
                read("2", "rb", "v1"),
                read("3", "ra", "v1"),
            ],
        );
        assert_eq!(
            k,
            [
                OutcomeKind::Accepted,
                OutcomeKind::Duplicate,
                OutcomeKind::Duplicate
            ]
        );
        assert_eq!(b.run("p", 0).unwrap().counts.get("a"), Some(&1));
        assert_eq!(b.run("p", 0).unwrap().total(), 1);
    }

    #[test]
    fn last_vote_counts_moves_the_vote() {
        let c = config(VoteMode::LastCounts, 1, false, PollState::Open);
        let (k, b) = run(&c, &[read("1", "ra", "v1"), read("2", "rb", "v1")]);
        assert_eq!(k, [OutcomeKind::Accepted, OutcomeKind::Changed]);
        let t = b.run("p", 0).unwrap();
        assert_eq!((t.counts["a"], t.counts["b"]), (0, 1));
    }

    #[test]
    fn multiple_choice_up_to_k() {
        let c = config(VoteMode::FirstStands, 2, false, PollState::Open);
        let (k, b) = run(
            &c,
            &[
                read("1", "ra", "v"),
                read("2", "rb", "v"),
                read("3", "rc", "v"),
            ],
        );
        assert_eq!(
            k,
            [
                OutcomeKind::Accepted,
                OutcomeKind::Accepted,
                OutcomeKind::Rejected
            ]
        );
        assert_eq!(b.run("p", 0).unwrap().total(), 2);
    }

    #[test]
    fn closed_unmapped_dangling_and_anonymous_are_rejected() {
        let closed = config(VoteMode::FirstStands, 1, false, PollState::Closed);
        let o = decide(
            &closed,
            &Ballots::default(),
            &read("1", "ra", "v"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::PollClosed);
        let open = config(VoteMode::FirstStands, 1, false, PollState::Open);
        let o = decide(
            &open,
            &Ballots::default(),
            &read("1", "nope", "v"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::ReaderNotMapped);
        let o = decide(
            &open,
            &Ballots::default(),
            &read("1", "rx", "v"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::UnknownPoll);
        let o = decide(
            &open,
            &Ballots::default(),
            &read("1", "ra", "anon:1"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::UnknownTag);
        let anon_ok = config(VoteMode::FirstStands, 1, true, PollState::Open);
        let o = decide(
            &anon_ok,
            &Ballots::default(),
            &read("1", "ra", "anon:1"),
            SystemTime::now(),
        );
        assert_eq!(o.kind(), OutcomeKind::Accepted);
    }

    #[test]
    fn applying_the_same_read_twice_changes_nothing() {
        let c = config(VoteMode::FirstStands, 1, false, PollState::Open);
        let mut b = Ballots::default();
        let o = decide(&c, &b, &read("1", "ra", "v"), SystemTime::now());
        assert!(b.apply(&o, 1));
        assert!(!b.apply(&o, 1));
        assert_eq!(b.run("p", 0).unwrap().total(), 1);
    }

    #[test]
    fn window_opens_a_draft_poll() {
        let mut c = config(VoteMode::FirstStands, 1, false, PollState::Draft);
        let mut poll = c.polls["p"].clone();
        let now = SystemTime::now();
        let rules = poll.rules.as_mut().unwrap();
        rules.opens_at = Some(tagpoll_proto::timestamp(
            now - std::time::Duration::from_secs(60),
        ));
        rules.closes_at = Some(tagpoll_proto::timestamp(
            now + std::time::Duration::from_secs(60),
        ));
        assert!(is_open(&poll, now));
        assert!(!is_open(&poll, now + std::time::Duration::from_secs(120)));
        poll.state = PollState::Closed as i32;
        assert!(!is_open(&poll, now));
        c.apply("poll.p", Some(&poll.encode_to_vec()), 9);
    }
}
