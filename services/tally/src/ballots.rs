//! Counted state: who chose what in each poll run, in tap-moment order.
//!
//! The state is a pure function of the vote stream: [`Ballots::apply`] folds
//! one outcome in, so a restarted tally (or `tagpoll replay`) that re-reads
//! the stream gets the same counts. Applying the same read twice is a no-op.
//!
//! A voter's taps in one poll run are kept as [`Cast`]s sorted by tap moment.
//! A read counts by its latest outcome: a correction (an outcome with
//! `correction` set, stored when an earlier tap of the same voter arrived
//! late) replaces the effect of the read's earlier outcome.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use tagpoll_proto::v1::{self, OutcomeKind, RejectReason};

/// One read's standing decision in a voter's sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    pub moment: SystemTime,
    pub read_id: String,
    /// Where the tap was made (a correction is published under its reader).
    pub device_id: String,
    pub reader_id: String,
    /// Sequence in TAGPOLL_IDENTIFIED of the read.
    pub identified_seq: u64,
    pub answer_id: String,
    pub kind: OutcomeKind,
    /// For [`OutcomeKind::Changed`]: the answer that lost the vote.
    pub previous_answer_id: String,
    /// The outcome was a [`RejectReason::TooManyChoices`] rejection.
    pub too_many: bool,
}

impl Cast {
    /// Sorting key: tap moment, then read id (UUIDv7, time-ordered) for ties.
    fn key(&self) -> (SystemTime, &str) {
        (self.moment, &self.read_id)
    }

    /// (answer gaining a vote, answer losing one)
    fn delta(&self) -> (Option<&str>, Option<&str>) {
        match self.kind {
            OutcomeKind::Accepted => (Some(&self.answer_id), None),
            OutcomeKind::Changed => (Some(&self.answer_id), Some(&self.previous_answer_id)),
            _ => (None, None),
        }
    }
}

/// Whether an outcome's kind depends on the voter's earlier taps (and so
/// belongs in the voter's sequence). Rejections for the poll state or the
/// tag do not: they never change when another tap arrives.
pub fn depends_on_voter(outcome: &v1::VoteOutcome) -> bool {
    match outcome.kind() {
        OutcomeKind::Accepted | OutcomeKind::Changed | OutcomeKind::Duplicate => true,
        OutcomeKind::Rejected => outcome.reject_reason() == RejectReason::TooManyChoices,
        OutcomeKind::Unspecified => false,
    }
}

/// The tap moment of an outcome; outcomes stored before tap moments existed
/// fall back to when they were decided (they were decided in arrival order).
pub fn moment_of(outcome: &v1::VoteOutcome) -> SystemTime {
    [&outcome.tapped_at, &outcome.decided_at, &outcome.read_at]
        .into_iter()
        .find_map(|t| tagpoll_proto::to_system_time(t.as_ref()))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// One run of one poll.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunTally {
    /// Each voter's taps that depend on their earlier taps, by tap moment.
    pub casts: HashMap<String, Vec<Cast>>,
    /// Votes per answer id. Signed: in the vote stream a correction comes
    /// just before the late tap it follows from, so an answer can stand at
    /// -1 between the two.
    pub counts: HashMap<String, i64>,
}

impl RunTally {
    /// Sum of all votes.
    pub fn total(&self) -> u64 {
        self.counts.keys().map(|a| self.votes(a)).sum()
    }

    /// Votes for one answer (never below zero).
    pub fn votes(&self, answer_id: &str) -> u64 {
        self.counts
            .get(answer_id)
            .map_or(0, |c| u64::try_from(*c).unwrap_or(0))
    }

    /// A voter's current answers, oldest first.
    pub fn choices(&self, voter_id: &str) -> Vec<String> {
        choices_of(self.casts.get(voter_id).map(Vec::as_slice).unwrap_or(&[]))
    }

    fn add(&mut self, cast: &Cast, sign: i64) {
        let (gain, loss) = cast.delta();
        for (answer, by) in [(gain, sign), (loss, -sign)] {
            if let Some(a) = answer {
                *self.counts.entry(a.to_string()).or_default() += by;
            }
        }
    }
}

/// The answers a sequence of standing decisions leaves a voter with.
pub fn choices_of(casts: &[Cast]) -> Vec<String> {
    let mut choices: Vec<String> = Vec::new();
    for c in casts {
        match c.kind {
            OutcomeKind::Accepted => choices.push(c.answer_id.clone()),
            OutcomeKind::Changed => {
                if let Some(i) = choices.iter().position(|a| *a == c.previous_answer_id) {
                    choices.remove(i);
                }
                choices.push(c.answer_id.clone());
            }
            _ => {}
        }
    }
    choices
}

/// All polls' tallies plus the reads already decided.
#[derive(Debug, Default, Clone)]
pub struct Ballots {
    runs: HashMap<(String, u32), RunTally>,
    decided: HashSet<String>,
    /// Vote stream sequence of the last outcome applied.
    pub last_seq: u64,
}

impl Ballots {
    /// Whether this read already has an outcome (re-delivery).
    pub fn is_decided(&self, read_id: &str) -> bool {
        self.decided.contains(read_id)
    }

    /// The tally of a poll run, if anyone voted in it.
    pub fn run(&self, poll_id: &str, run: u32) -> Option<&RunTally> {
        self.runs.get(&(poll_id.to_string(), run))
    }

    /// A voter's standing decisions in a poll run, by tap moment.
    pub fn casts(&self, poll_id: &str, run: u32, voter_id: &str) -> &[Cast] {
        self.run(poll_id, run)
            .and_then(|r| r.casts.get(voter_id))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A voter's current answers in a poll run, oldest first.
    pub fn choices(&self, poll_id: &str, run: u32, voter_id: &str) -> Vec<String> {
        choices_of(self.casts(poll_id, run, voter_id))
    }

    /// Folds one outcome in. Returns false (and changes nothing) if its read
    /// was already applied, or if it corrects a read this state never saw.
    pub fn apply(&mut self, outcome: &v1::VoteOutcome, seq: u64) -> bool {
        self.last_seq = self.last_seq.max(seq);
        if outcome.correction {
            return self.correct(outcome);
        }
        if !self.decided.insert(outcome.read_id.clone()) {
            return false;
        }
        if !depends_on_voter(outcome) {
            return true;
        }
        let cast = cast_of(outcome);
        let run = self
            .runs
            .entry((outcome.poll_id.clone(), outcome.run))
            .or_default();
        run.add(&cast, 1);
        let casts = run.casts.entry(outcome.voter_id.clone()).or_default();
        let at = casts.partition_point(|c| c.key() < cast.key());
        casts.insert(at, cast);
        true
    }

    fn correct(&mut self, outcome: &v1::VoteOutcome) -> bool {
        let Some(run) = self.runs.get_mut(&(outcome.poll_id.clone(), outcome.run)) else {
            return false;
        };
        let Some(casts) = run.casts.get_mut(&outcome.voter_id) else {
            return false;
        };
        let Some(i) = casts.iter().position(|c| c.read_id == outcome.read_id) else {
            return false;
        };
        // A correction decides the same tap again: only the decision
        // changes; where, when and its place in the sequence stay.
        let new = Cast {
            kind: outcome.kind(),
            previous_answer_id: outcome.previous_answer_id.clone(),
            too_many: outcome.reject_reason() == RejectReason::TooManyChoices,
            ..casts[i].clone()
        };
        let old = std::mem::replace(&mut casts[i], new.clone());
        if old == new {
            return false;
        }
        run.add(&old, -1);
        run.add(&new, 1);
        true
    }

    /// The results snapshot of a poll, answers in the definition's order.
    pub fn results(&self, poll: &v1::PollDefinition) -> v1::PollResults {
        let run = self.run(&poll.poll_id, poll.run);
        let answers: Vec<v1::AnswerCount> = poll
            .answers
            .iter()
            .map(|a| v1::AnswerCount {
                answer_id: a.id.clone(),
                label: a.label.clone(),
                votes: run.map_or(0, |r| r.votes(&a.id)),
            })
            .collect();
        v1::PollResults {
            poll_id: poll.poll_id.clone(),
            question: poll.question.clone(),
            state: poll.state,
            total: answers.iter().map(|a| a.votes).sum(),
            answers,
            run: poll.run,
            votes_seq: self.last_seq,
            updated_at: Some(tagpoll_proto::now()),
            results_hidden: poll.results_hidden,
        }
    }
}

fn cast_of(outcome: &v1::VoteOutcome) -> Cast {
    Cast {
        moment: moment_of(outcome),
        read_id: outcome.read_id.clone(),
        device_id: outcome.device_id.clone(),
        reader_id: outcome.reader_id.clone(),
        identified_seq: outcome.identified_seq,
        answer_id: outcome.answer_id.clone(),
        kind: outcome.kind(),
        previous_answer_id: outcome.previous_answer_id.clone(),
        too_many: outcome.reject_reason() == RejectReason::TooManyChoices,
    }
}
