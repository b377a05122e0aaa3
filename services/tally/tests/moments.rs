//! Property test: taps decided at their tap moments, arriving in any order
//! (late, re-delivered), against a configuration that changes over time
//! (opens, closes, remaps, opening windows, resets), give the counts of the
//! plain reference model that sees everything in the order it happened.
//! The vote log they produce (corrections included) recounts the same, also
//! when the tally crashes after storing part of a late tap's corrections.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use prost::Message;
use tagpoll_proto::v1::{self, PollState, VoteMode};
use tagpoll_tally::ballots::Ballots;
use tagpoll_tally::history::{Change, ConfigHistory};
use tagpoll_tally::reference::{Model, ModelRules};
use tagpoll_tally::rules;

const POLLS: [&str; 2] = ["p", "q"];
const ANSWERS: [&str; 3] = ["a", "b", "c"];
const READERS: [&str; 3] = ["r0", "r1", "r2"];
const VOTERS: [Option<&str>; 4] = [Some("file:ann"), Some("file:ben"), Some("anon:1"), None];

#[derive(Debug, Clone)]
enum Op {
    Tap {
        reader: usize,
        voter: usize,
    },
    Open(usize),
    Close(usize),
    Remap {
        reader: usize,
        poll: usize,
        answer: usize,
    },
    Reset(usize),
    /// An opening window from `from` to `from + len` steps after now.
    Window {
        poll: usize,
        from: u64,
        len: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..READERS.len(), 0..VOTERS.len()).prop_map(|(reader, voter)| Op::Tap { reader, voter }),
        1 => (0..POLLS.len()).prop_map(Op::Open),
        1 => (0..POLLS.len()).prop_map(Op::Close),
        2 => (0..READERS.len(), 0..POLLS.len(), 0..ANSWERS.len())
            .prop_map(|(reader, poll, answer)| Op::Remap { reader, poll, answer }),
        1 => (0..POLLS.len()).prop_map(Op::Reset),
        1 => (0..POLLS.len(), 0..4u64, 1..6u64).prop_map(|(poll, from, len)| Op::Window { poll, from, len }),
    ]
}

fn rules_strategy() -> impl Strategy<Value = ModelRules> {
    // Single choice (first stands / last counts) and multiple choice.
    (any::<bool>(), 1..=3usize).prop_map(|(change, max)| ModelRules {
        change,
        max,
        anon: true,
    })
}

/// Seconds apart: moments at whole steps, so ties only come from equal steps.
const STEP: Duration = Duration::from_secs(10);

fn at(step: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + STEP * step as u32
}

#[derive(Clone)]
struct PollConf {
    rules: ModelRules,
    state: PollState,
    run: u32,
    window: Option<(u64, u64)>,
}

fn poll_def(id: &str, c: &PollConf) -> Vec<u8> {
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
            mode: if c.rules.change {
                VoteMode::LastCounts
            } else {
                VoteMode::FirstStands
            } as i32,
            max_choices: c.rules.max as u32,
            allow_anonymous: c.rules.anon,
            opens_at: c.window.map(|(f, _)| tagpoll_proto::timestamp(at(f))),
            closes_at: c.window.map(|(_, u)| tagpoll_proto::timestamp(at(u))),
        }),
        state: c.state as i32,
        run: c.run,
        ..Default::default()
    }
    .encode_to_vec()
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

fn identified(read_id: &str, reader: &str, voter: Option<&str>, step: u64) -> v1::IdentifiedRead {
    v1::IdentifiedRead {
        read_id: read_id.into(),
        reader_id: reader.into(),
        device_id: "box".into(),
        tapped_at: Some(tagpoll_proto::timestamp(at(step))),
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

fn counts(b: &Ballots, poll: &str, run: u32) -> HashMap<String, u64> {
    b.run(poll, run)
        .map(|r| {
            r.counts
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| (k.clone(), *v as u64))
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn late_taps_count_as_of_their_moment(
        rules_p in rules_strategy(),
        rules_q in rules_strategy(),
        ops in prop::collection::vec(op(), 1..80),
        arrival_keys in prop::collection::vec(0..1000u32, 80),
        redeliver in prop::collection::vec(0..80usize, 0..8),
        crash_after in prop::collection::vec(0..4usize, 1..6),
    ) {
        let mut history = ConfigHistory::default();
        let mut model = Model::default();
        let mut seq = 0;
        let mut change = |h: &mut ConfigHistory, step: u64, key: String, value: Vec<u8>| {
            seq += 1;
            h.insert(Change { seq, at: at(step), key, value: Some(value) });
        };
        let mut polls: HashMap<&str, PollConf> = HashMap::new();
        for (id, r) in [("p", &rules_p), ("q", &rules_q)] {
            let c = PollConf { rules: r.clone(), state: PollState::Open, run: 0, window: None };
            change(&mut history, 0, format!("poll.{id}"), poll_def(id, &c));
            polls.insert(id, c);
            model.open.insert(id.into(), true);
            model.rules.insert(id.into(), r.clone());
        }
        for (i, reader) in READERS.iter().enumerate() {
            let (poll, answer) = (POLLS[i % 2], ANSWERS[i % 3]);
            change(&mut history, 0, format!("reader.{reader}"), mapping(reader, poll, answer));
            model.map.insert(reader.to_string(), (poll.into(), answer.into()));
        }
        // The timeline, in the order things happened (step i + 1).
        let mut taps: Vec<v1::IdentifiedRead> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let step = i as u64 + 1;
            match *op {
                Op::Tap { reader, voter } => {
                    let id = format!("t{step:03}");
                    model.tap_at(&id, READERS[reader], VOTERS[voter], step);
                    taps.push(identified(&id, READERS[reader], VOTERS[voter], step));
                }
                Op::Open(p) | Op::Close(p) | Op::Reset(p) | Op::Window { poll: p, .. } => {
                    let id = POLLS[p];
                    let c = polls.get_mut(id).expect("poll");
                    match *op {
                        Op::Open(_) => {
                            c.state = PollState::Open;
                            model.open.insert(id.into(), true);
                            model.closed.insert(id.into(), false);
                        }
                        Op::Close(_) => {
                            c.state = PollState::Closed;
                            model.open.insert(id.into(), false);
                            model.closed.insert(id.into(), true);
                        }
                        Op::Reset(_) => {
                            c.run += 1;
                            model.reset(id);
                        }
                        Op::Window { from, len, .. } => {
                            let w = (step + from, step + from + len);
                            c.window = Some(w);
                            model.windows.insert(id.into(), (Some(w.0), Some(w.1)));
                        }
                        _ => {}
                    }
                    let bytes = poll_def(id, c);
                    change(&mut history, step, format!("poll.{id}"), bytes);
                }
                Op::Remap { reader, poll, answer } => {
                    let (reader, poll, answer) = (READERS[reader], POLLS[poll], ANSWERS[answer]);
                    change(&mut history, step, format!("reader.{reader}"), mapping(reader, poll, answer));
                    model.map.insert(reader.into(), (poll.into(), answer.into()));
                }
            }
        }
        // Arrival: any order, plus re-deliveries of some taps.
        let mut arrivals: Vec<(u32, v1::IdentifiedRead)> = taps
            .iter()
            .enumerate()
            .map(|(i, t)| (arrival_keys[i % arrival_keys.len()], t.clone()))
            .collect();
        for (j, r) in redeliver.iter().enumerate() {
            if !taps.is_empty() {
                arrivals.push((arrival_keys[(j + 7) % arrival_keys.len()], taps[r % taps.len()].clone()));
            }
        }
        arrivals.sort_by_key(|(k, _)| *k);

        let mut ballots = Ballots::default();
        let mut log: Vec<v1::VoteOutcome> = Vec::new();
        let mut decided = 0;
        let mut crashes = crash_after.iter().copied().cycle();
        for (_, read) in arrivals {
            if ballots.is_decided(&read.read_id) {
                continue;
            }
            let moment = tagpoll_proto::to_system_time(read.tapped_at.as_ref()).expect("moment");
            let place = |ballots: &Ballots, history: &mut ConfigHistory| {
                let config = history.as_of(moment).config;
                rules::decide_at(&config, ballots, &read, moment, |poll_id, m| {
                    history.as_of(m).config.polls.get(poll_id).cloned()
                })
            };
            let mut placed = place(&ballots, &mut history);
            // A crash after storing only some of the corrections (and not
            // the read's own outcome): the restarted tally rebuilds from the
            // log and decides the read again against what was stored.
            if !placed.corrections.is_empty()
                && let Some(stored) = crashes.next().filter(|k| *k < placed.corrections.len())
            {
                log.extend(placed.corrections.drain(..).take(stored));
                ballots = Ballots::default();
                for (i, o) in log.iter().enumerate() {
                    ballots.apply(o, i as u64 + 1);
                }
                prop_assert!(!ballots.is_decided(&read.read_id));
                placed = place(&ballots, &mut history);
            }
            for c in &placed.corrections {
                prop_assert!(c.correction);
                prop_assert!(ballots.apply(c, 0), "a correction changes something");
                log.push(c.clone());
            }
            prop_assert!(ballots.apply(&placed.outcome, 0));
            log.push(placed.outcome);
            decided += 1;
        }
        prop_assert_eq!(decided, taps.len(), "exactly one first outcome per read");
        // The vote log recounts the same (what a restart and `tagpoll replay` do).
        let mut replayed = Ballots::default();
        for (i, o) in log.iter().enumerate() {
            replayed.apply(o, i as u64 + 1);
        }
        for poll in POLLS {
            let run = polls[poll].run;
            let live = counts(&ballots, poll, run);
            prop_assert_eq!(&live, &model.counts(poll), "poll {} run {}", poll, run);
            prop_assert_eq!(&counts(&replayed, poll, run), &live, "replay of poll {}", poll);
        }
    }
}
