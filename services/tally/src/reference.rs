//! A deliberately simple reference model of the poll rules, written apart
//! from `services/tally/src/rules.rs` so tests can compare the two.

use std::collections::{HashMap, HashSet};

/// One poll's rules, as the model sees them.
#[derive(Debug, Clone)]
pub struct ModelRules {
    /// A later tap moves the vote (else the first vote stands).
    pub change: bool,
    /// Distinct answers per voter.
    pub max: usize,
    /// Anonymous voters may vote.
    pub anon: bool,
}

/// What people did, counted as plainly as possible.
#[derive(Default)]
pub struct Model {
    pub open: HashMap<String, bool>,
    pub rules: HashMap<String, ModelRules>,
    /// reader → (poll, answer)
    pub map: HashMap<String, (String, String)>,
    /// poll → opening window (from, until) in the caller's time unit; a
    /// poll with a window is open inside it (unless closed).
    pub windows: HashMap<String, (Option<u64>, Option<u64>)>,
    /// poll → closed for good (a window does not reopen it).
    pub closed: HashMap<String, bool>,
    choices: HashMap<(String, String), Vec<String>>,
    seen: HashSet<String>,
}

impl Model {
    /// A tap by `voter` (None: nobody knows the tag; "anon:…": anonymous).
    pub fn tap(&mut self, read_id: &str, reader: &str, voter: Option<&str>) {
        if !self.seen.insert(read_id.to_string()) {
            return; // a re-delivery changes nothing
        }
        let Some((poll, answer)) = self.map.get(reader).cloned() else {
            return;
        };
        if !self.open.get(&poll).copied().unwrap_or(false) {
            return;
        }
        let Some(voter) = voter else { return };
        let rules = self.rules[&poll].clone();
        if voter.starts_with("anon:") && !rules.anon {
            return;
        }
        let mine = self.choices.entry((poll, voter.to_string())).or_default();
        if mine.contains(&answer) {
            return;
        }
        if mine.len() < rules.max {
            mine.push(answer);
        } else if rules.change {
            mine.remove(0);
            mine.push(answer);
        }
    }

    /// A tap at time `now` (the caller's unit, as in [`Model::windows`]),
    /// for polls with opening windows. Taps must come in time order.
    pub fn tap_at(&mut self, read_id: &str, reader: &str, voter: Option<&str>, now: u64) {
        if let Some((poll, _)) = self.map.get(reader)
            && let Some(&(from, until)) = self.windows.get(poll)
        {
            let inside = from.is_none_or(|f| now >= f) && until.is_none_or(|u| now < u);
            let closed = self.closed.get(poll).copied().unwrap_or(false);
            let open = inside && !closed;
            let poll = poll.clone();
            let was = self.open.insert(poll.clone(), open);
            self.tap(read_id, reader, voter);
            if let Some(w) = was {
                self.open.insert(poll, w);
            }
            return;
        }
        self.tap(read_id, reader, voter);
    }

    /// A reset of `poll`: a new run, nobody has voted in it.
    pub fn reset(&mut self, poll: &str) {
        self.choices.retain(|(p, _), _| p != poll);
    }

    /// Votes per answer of `poll` (answers with no votes left out).
    pub fn counts(&self, poll: &str) -> HashMap<String, u64> {
        let mut c = HashMap::new();
        for ((p, _), answers) in &self.choices {
            if p == poll {
                for a in answers {
                    *c.entry(a.clone()).or_default() += 1;
                }
            }
        }
        c
    }
}
