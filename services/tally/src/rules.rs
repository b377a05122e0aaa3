//! Poll rules: the pure decision for one identified read.
//!
//! [`classify`] judges a read against the configuration in force at its tap
//! moment; [`place`] puts a vote among the voter's other taps in the same
//! poll run by tap moment, so a tap that arrives late counts as if it had
//! arrived in order, and says which later taps change meaning (corrections).
//! Nothing here changes state: the service stores the outcomes in the vote
//! stream and applies them to [`Ballots`] as it goes.

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

/// What a read means before the voter's other taps are looked at.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Decided by the configuration and the tag alone: no other tap can
    /// change it (unmapped reader, closed poll, unknown tag).
    Final(v1::VoteOutcome),
    /// A vote whose kind depends on the voter's taps in the same poll run:
    /// place it in their sequence ([`place`]).
    Countable(Countable),
}

/// A vote waiting to be placed among the voter's taps.
#[derive(Debug, Clone, PartialEq)]
pub struct Countable {
    /// Everything but the kind, previous answer and message.
    pub outcome: v1::VoteOutcome,
    pub moment: SystemTime,
    pub poll: v1::PollDefinition,
}

/// Decides what `read` means against `config`, the configuration in force
/// at the tap moment `moment` (opening windows are judged at it too).
pub fn classify(config: &EventConfig, read: &v1::IdentifiedRead, moment: SystemTime) -> Decision {
    let mut out = v1::VoteOutcome {
        read_id: read.read_id.clone(),
        device_id: read.device_id.clone(),
        reader_id: read.reader_id.clone(),
        read_at: read.read_at,
        tapped_at: Some(tagpoll_proto::timestamp(moment)),
        decided_at: Some(tagpoll_proto::now()),
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
            return Decision::Final(reject(
                out,
                RejectReason::ReaderNotMapped,
                "This reader is not part of a poll.",
            ));
        }
        ReaderTarget::Dangling { poll_id, answer_id } => {
            out.poll_id = poll_id.to_string();
            out.answer_id = answer_id.to_string();
            return Decision::Final(reject(
                out,
                RejectReason::UnknownPoll,
                "This reader points at a poll or answer that does not exist.",
            ));
        }
        ReaderTarget::Answer { poll, answer_id } => (poll, answer_id),
    };
    out.poll_id = poll.poll_id.clone();
    out.answer_id = answer_id.to_string();
    out.run = poll.run;
    if !is_open(poll, moment) {
        return Decision::Final(reject(
            out,
            RejectReason::PollClosed,
            "This poll is not open.",
        ));
    }
    let rules = poll.rules.unwrap_or_default();
    match (voter, &read.identity) {
        (Some(v), _) if !v.anonymous || rules.allow_anonymous => {}
        (_, Some(v1::identified_read::Identity::Unknown(u))) => {
            out.hint = u.hint.clone();
            return Decision::Final(reject(
                out,
                RejectReason::UnknownTag,
                "We don't know this tag.",
            ));
        }
        _ => {
            out.voter_id.clear();
            return Decision::Final(reject(
                out,
                RejectReason::UnknownTag,
                "Only registered tags can vote in this poll.",
            ));
        }
    }
    Decision::Countable(Countable {
        outcome: out,
        moment,
        poll: poll.clone(),
    })
}

/// The kind of a vote for `answer_id` by a voter who holds `choices`.
/// Returns the kind and, for [`OutcomeKind::Changed`], the answer that loses.
pub fn choose(
    choices: &[String],
    answer_id: &str,
    rules: &v1::PollRules,
) -> (OutcomeKind, Option<RejectReason>, String) {
    let max = rules.max_choices.max(1) as usize;
    if choices.iter().any(|c| c == answer_id) {
        (OutcomeKind::Duplicate, None, String::new())
    } else if choices.len() < max {
        (OutcomeKind::Accepted, None, String::new())
    } else if rules.mode() == VoteMode::LastCounts {
        (OutcomeKind::Changed, None, choices[0].clone())
    } else if max == 1 {
        (OutcomeKind::Duplicate, None, String::new())
    } else {
        (
            OutcomeKind::Rejected,
            Some(RejectReason::TooManyChoices),
            String::new(),
        )
    }
}

/// Applies a vote's kind to the voter's answers.
fn hold(choices: &mut Vec<String>, kind: OutcomeKind, answer_id: &str, previous: &str) {
    match kind {
        OutcomeKind::Accepted => choices.push(answer_id.to_string()),
        OutcomeKind::Changed => {
            if let Some(i) = choices.iter().position(|a| a == previous) {
                choices.remove(i);
            }
            choices.push(answer_id.to_string());
        }
        _ => {}
    }
}

/// Fills in kind, reason, previous answer and message.
fn settle_kind(out: &mut v1::VoteOutcome, poll: &v1::PollDefinition, choices: &[String]) {
    let rules = poll.rules.unwrap_or_default();
    let (kind, reason, previous) = choose(choices, &out.answer_id, &rules);
    let label = poll
        .answers
        .iter()
        .find(|a| a.id == out.answer_id)
        .map(|a| a.label.as_str())
        .unwrap_or(&out.answer_id);
    let max = rules.max_choices.max(1);
    out.message = match kind {
        OutcomeKind::Duplicate if choices.contains(&out.answer_id) => {
            format!("You already voted {label}.")
        }
        OutcomeKind::Duplicate => "You already voted in this poll.".into(),
        OutcomeKind::Accepted => format!("You voted {label}."),
        OutcomeKind::Changed => format!("You changed your vote to {label}."),
        _ => format!("You already picked {max} answers."),
    };
    out.kind = kind as i32;
    out.reject_reason = reason.map_or(0, |r| r as i32);
    out.previous_answer_id = previous;
}

/// Where a countable vote lands among the voter's taps in its poll run.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The vote's own outcome.
    pub outcome: v1::VoteOutcome,
    /// Later taps of the same voter whose meaning changes because this one
    /// came first (a late arrival): each a correction outcome, to be stored
    /// before [`Placement::outcome`].
    pub corrections: Vec<v1::VoteOutcome>,
}

/// Places `vote` in its voter's sequence by tap moment: its kind follows
/// from the taps before it, and every later tap is decided again after it.
/// `poll_at(moment)` is the poll's definition in force at a moment (for the
/// later taps' rules and labels; `None` falls back to the vote's own).
pub fn place(
    ballots: &Ballots,
    vote: Countable,
    mut poll_at: impl FnMut(SystemTime) -> Option<v1::PollDefinition>,
) -> Placement {
    let Countable {
        mut outcome,
        moment,
        poll,
    } = vote;
    let casts = ballots.casts(&outcome.poll_id, outcome.run, &outcome.voter_id);
    let at = casts.partition_point(|c| (c.moment, c.read_id.as_str()) < (moment, &outcome.read_id));
    let mut choices = crate::ballots::choices_of(&casts[..at]);
    settle_kind(&mut outcome, &poll, &choices);
    hold(
        &mut choices,
        outcome.kind(),
        &outcome.answer_id,
        &outcome.previous_answer_id,
    );
    let mut corrections = Vec::new();
    for later in &casts[at..] {
        let their_poll = poll_at(later.moment).unwrap_or_else(|| poll.clone());
        let mut again = v1::VoteOutcome {
            read_id: later.read_id.clone(),
            device_id: later.device_id.clone(),
            reader_id: later.reader_id.clone(),
            poll_id: outcome.poll_id.clone(),
            answer_id: later.answer_id.clone(),
            voter_id: outcome.voter_id.clone(),
            run: outcome.run,
            tapped_at: Some(tagpoll_proto::timestamp(later.moment)),
            decided_at: outcome.decided_at,
            correction: true,
            corrected_by: outcome.read_id.clone(),
            ..Default::default()
        };
        settle_kind(&mut again, &their_poll, &choices);
        hold(
            &mut choices,
            again.kind(),
            &again.answer_id,
            &again.previous_answer_id,
        );
        let unchanged = again.kind() == later.kind
            && again.previous_answer_id == later.previous_answer_id
            && (again.reject_reason() == RejectReason::TooManyChoices) == later.too_many;
        if !unchanged {
            corrections.push(again);
        }
    }
    Placement {
        outcome,
        corrections,
    }
}

/// Decides `read` at tap moment `moment` against `config` (the
/// configuration in force then) and the voter's taps so far, as if it had
/// arrived in moment order: the outcome, plus corrections of later taps it
/// changes. `poll_at(poll_id, moment)` is a poll's definition in force at a
/// later tap's moment (its rules and labels).
pub fn decide_at(
    config: &EventConfig,
    ballots: &Ballots,
    read: &v1::IdentifiedRead,
    moment: SystemTime,
    mut poll_at: impl FnMut(&str, SystemTime) -> Option<v1::PollDefinition>,
) -> Placement {
    match classify(config, read, moment) {
        Decision::Final(outcome) => Placement {
            outcome,
            corrections: Vec::new(),
        },
        Decision::Countable(vote) => {
            let poll_id = vote.poll.poll_id.clone();
            place(ballots, vote, |m| poll_at(&poll_id, m))
        }
    }
}

/// [`decide_at`] for a configuration that does not change (tests): later
/// taps are judged by `config`'s rules too.
pub fn decide(
    config: &EventConfig,
    ballots: &Ballots,
    read: &v1::IdentifiedRead,
    moment: SystemTime,
) -> Placement {
    decide_at(config, ballots, read, moment, |poll_id, _| {
        config.polls.get(poll_id).cloned()
    })
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

    fn decide_one(
        c: &EventConfig,
        b: &Ballots,
        r: &v1::IdentifiedRead,
        at: SystemTime,
    ) -> v1::VoteOutcome {
        decide(c, b, r, at).outcome
    }

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
                let o = decide_one(c, &b, r, SystemTime::now());
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
        let o = decide_one(
            &closed,
            &Ballots::default(),
            &read("1", "ra", "v"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::PollClosed);
        let open = config(VoteMode::FirstStands, 1, false, PollState::Open);
        let o = decide_one(
            &open,
            &Ballots::default(),
            &read("1", "nope", "v"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::ReaderNotMapped);
        let o = decide_one(
            &open,
            &Ballots::default(),
            &read("1", "rx", "v"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::UnknownPoll);
        let o = decide_one(
            &open,
            &Ballots::default(),
            &read("1", "ra", "anon:1"),
            SystemTime::now(),
        );
        assert_eq!(o.reject_reason(), RejectReason::UnknownTag);
        let anon_ok = config(VoteMode::FirstStands, 1, true, PollState::Open);
        let o = decide_one(
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
        let o = decide_one(&c, &b, &read("1", "ra", "v"), SystemTime::now());
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
