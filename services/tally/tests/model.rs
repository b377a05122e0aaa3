//! Property test: random sequences of reads (repeats, changes, closed polls,
//! remaps, re-deliveries) through the real rules and ballots give the same
//! counts as a deliberately simple reference model.

use std::collections::HashMap;
use std::time::SystemTime;

use proptest::prelude::*;
use prost::Message;
use tagpoll_bus::config::EventConfig;
use tagpoll_proto::v1::{self, PollState, VoteMode};
use tagpoll_tally::ballots::Ballots;
use tagpoll_tally::reference::{Model, ModelRules as PollRules};
use tagpoll_tally::rules;

const POLLS: [&str; 2] = ["p", "q"];
const ANSWERS: [&str; 3] = ["a", "b", "c"];
const READERS: [&str; 4] = ["r0", "r1", "r2", "r3"];
/// Voters: named people, anonymous tags, and a tag nobody knows (None).
const VOTERS: [Option<&str>; 5] = [
    Some("file:ann"),
    Some("file:ben"),
    Some("anon:1"),
    Some("anon:2"),
    None,
];

#[derive(Debug, Clone)]
enum Op {
    Tap {
        reader: usize,
        voter: usize,
    },
    Redeliver(usize),
    Open(usize),
    Close(usize),
    Remap {
        reader: usize,
        poll: usize,
        answer: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..READERS.len(), 0..VOTERS.len()).prop_map(|(reader, voter)| Op::Tap { reader, voter }),
        2 => (0..200usize).prop_map(Op::Redeliver),
        1 => (0..POLLS.len()).prop_map(Op::Open),
        1 => (0..POLLS.len()).prop_map(Op::Close),
        1 => (0..READERS.len(), 0..POLLS.len(), 0..ANSWERS.len())
            .prop_map(|(reader, poll, answer)| Op::Remap { reader, poll, answer }),
    ]
}

fn rules_strategy() -> impl Strategy<Value = PollRules> {
    (any::<bool>(), 1..=3usize, any::<bool>()).prop_map(|(change, max, anon)| PollRules {
        change,
        max,
        anon,
    })
}

fn poll_def(id: &str, r: &PollRules, open: bool) -> v1::PollDefinition {
    v1::PollDefinition {
        poll_id: id.into(),
        question: id.into(),
        answers: ANSWERS
            .iter()
            .map(|a| v1::Answer {
                id: a.to_string(),
                label: a.to_string(),
            })
            .collect(),
        rules: Some(v1::PollRules {
            mode: if r.change {
                VoteMode::LastCounts
            } else {
                VoteMode::FirstStands
            } as i32,
            max_choices: r.max as u32,
            allow_anonymous: r.anon,
            ..Default::default()
        }),
        state: if open {
            PollState::Open
        } else {
            PollState::Closed
        } as i32,
        ..Default::default()
    }
}

fn mapping(reader: &str, poll: &str, answer: &str) -> Vec<u8> {
    v1::ReaderMapping {
        reader_id: reader.into(),
        poll_id: poll.into(),
        answer_id: answer.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn identified(read_id: &str, reader: &str, voter: Option<&str>) -> v1::IdentifiedRead {
    v1::IdentifiedRead {
        read_id: read_id.into(),
        reader_id: reader.into(),
        identity: Some(match voter {
            Some(v) => v1::identified_read::Identity::Voter(v1::Voter {
                voter_id: v.into(),
                anonymous: v.starts_with("anon:"),
                ..Default::default()
            }),
            None => v1::identified_read::Identity::Unknown(v1::UnknownTag::default()),
        }),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn rules_and_ballots_match_the_reference_model(
        rules_p in rules_strategy(),
        rules_q in rules_strategy(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut config = EventConfig::default();
        let mut model = Model::default();
        let mut rev = 0;
        let mut next_rev = || { rev += 1; rev };
        for (id, r) in [("p", &rules_p), ("q", &rules_q)] {
            config.apply(&format!("poll.{id}"), Some(&poll_def(id, r, true).encode_to_vec()), next_rev());
            model.open.insert(id.into(), true);
            model.rules.insert(id.into(), r.clone());
        }
        for (i, reader) in READERS.iter().enumerate() {
            let (poll, answer) = (POLLS[i % 2], ANSWERS[i % 3]);
            config.apply(&format!("reader.{reader}"), Some(&mapping(reader, poll, answer)), next_rev());
            model.map.insert(reader.to_string(), (poll.into(), answer.into()));
        }
        let mut ballots = Ballots::default();
        // Every tap made so far, with who made it, for re-deliveries.
        let mut taps: Vec<(v1::IdentifiedRead, Option<&str>)> = Vec::new();
        let mut seq = 0;
        let mut outcomes = 0;
        for op in ops {
            let read = match op {
                Op::Tap { reader, voter } => {
                    let r = identified(&format!("t{}", taps.len()), READERS[reader], VOTERS[voter]);
                    taps.push((r.clone(), VOTERS[voter]));
                    Some((r, VOTERS[voter]))
                }
                Op::Redeliver(i) if !taps.is_empty() => Some(taps[i % taps.len()].clone()),
                Op::Redeliver(_) => None,
                Op::Open(p) | Op::Close(p) => {
                    let open = matches!(op, Op::Open(_));
                    let id = POLLS[p];
                    let r = &model.rules[id];
                    config.apply(&format!("poll.{id}"), Some(&poll_def(id, r, open).encode_to_vec()), next_rev());
                    model.open.insert(id.into(), open);
                    None
                }
                Op::Remap { reader, poll, answer } => {
                    let (reader, poll, answer) = (READERS[reader], POLLS[poll], ANSWERS[answer]);
                    config.apply(&format!("reader.{reader}"), Some(&mapping(reader, poll, answer)), next_rev());
                    model.map.insert(reader.into(), (poll.into(), answer.into()));
                    None
                }
            };
            if let Some((read, voter)) = read {
                model.tap(&read.read_id, &read.reader_id, voter);
                if !ballots.is_decided(&read.read_id) {
                    let placed = rules::decide(&config, &ballots, &read, SystemTime::now());
                    // Taps arrive in the order they were made: nothing to correct.
                    prop_assert!(placed.corrections.is_empty());
                    let outcome = placed.outcome;
                    seq += 1;
                    prop_assert!(ballots.apply(&outcome, seq));
                    outcomes += 1;
                }
            }
            for poll in POLLS {
                let real: HashMap<String, u64> = ballots
                    .run(poll, 0)
                    .map(|r| r.counts.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v as u64)).collect())
                    .unwrap_or_default();
                prop_assert_eq!(&real, &model.counts(poll), "poll {}", poll);
            }
        }
        prop_assert_eq!(outcomes, taps.len(), "exactly one outcome per read");
    }
}
