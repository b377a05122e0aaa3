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
