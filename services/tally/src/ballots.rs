//! Counted state: who chose what in each poll run.
//!
//! The state is a pure function of the vote stream: [`Ballots::apply`] folds
//! one outcome in, so a restarted tally (or `tagpoll replay`) that re-reads
//! the stream gets the same counts. Applying the same read twice is a no-op.

use std::collections::{HashMap, HashSet};

use tagpoll_proto::v1::{self, OutcomeKind};

/// One run of one poll.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunTally {
    /// Each voter's current answers, oldest first.
    pub choices: HashMap<String, Vec<String>>,
    /// Votes per answer id.
    pub counts: HashMap<String, u64>,
}

impl RunTally {
    /// Sum of all votes.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
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

    /// A voter's current answers in a poll run.
    pub fn choices(&self, poll_id: &str, run: u32, voter_id: &str) -> &[String] {
        self.run(poll_id, run)
            .and_then(|r| r.choices.get(voter_id))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Folds one outcome in. Returns false (and changes nothing) if its read
    /// was already applied.
    pub fn apply(&mut self, outcome: &v1::VoteOutcome, seq: u64) -> bool {
        self.last_seq = self.last_seq.max(seq);
        if !self.decided.insert(outcome.read_id.clone()) {
            return false;
        }
        let key = (outcome.poll_id.clone(), outcome.run);
        match outcome.kind() {
            OutcomeKind::Accepted => {
                let run = self.runs.entry(key).or_default();
                run.choices
                    .entry(outcome.voter_id.clone())
                    .or_default()
                    .push(outcome.answer_id.clone());
                *run.counts.entry(outcome.answer_id.clone()).or_default() += 1;
            }
            OutcomeKind::Changed => {
                let run = self.runs.entry(key).or_default();
                let choices = run.choices.entry(outcome.voter_id.clone()).or_default();
                if let Some(i) = choices
                    .iter()
                    .position(|a| *a == outcome.previous_answer_id)
                {
                    choices.remove(i);
                    if let Some(c) = run.counts.get_mut(&outcome.previous_answer_id) {
                        *c = c.saturating_sub(1);
                    }
                }
                choices.push(outcome.answer_id.clone());
                *run.counts.entry(outcome.answer_id.clone()).or_default() += 1;
            }
            OutcomeKind::Duplicate | OutcomeKind::Rejected | OutcomeKind::Unspecified => {}
        }
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
                votes: run.and_then(|r| r.counts.get(&a.id)).copied().unwrap_or(0),
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
