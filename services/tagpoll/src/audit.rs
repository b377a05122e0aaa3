//! Audit: recount a poll from the vote stream, and export its results and
//! vote log.
//!
//! The recount folds the poll's outcomes through the tally's own
//! [`Ballots`](tagpoll_tally::ballots::Ballots), which is how the tally
//! builds its counts at start; comparing with the live snapshot shows both
//! agree. Exports use pseudonymous voter ids unless asked otherwise.

use std::collections::HashMap;
use std::io::Write;

use async_nats::jetstream;
use serde::Serialize;
use tagpoll_proto::{names, subjects, v1};
use tagpoll_tally::ballots::Ballots;

/// A poll's outcomes, read from the vote stream.
pub struct PollLog {
    pub ballots: Ballots,
    /// (stream sequence, outcome), in stream order.
    pub outcomes: Vec<(u64, v1::VoteOutcome)>,
}

/// Reads every outcome of `poll_id`, reporting progress to `progress(done, total)`.
pub async fn read_poll_log(
    js: &jetstream::Context,
    poll_id: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<PollLog, tagpoll_bus::BusError> {
    let total = js
        .get_stream(names::STREAM_VOTES)
        .await
        .map_err(|e| tagpoll_bus::BusError::js("looking up the vote stream", e))?
        .info()
        .await
        .map_err(|e| tagpoll_bus::BusError::js("vote stream info", e))?
        .state
        .last_sequence;
    let mut log = PollLog {
        ballots: Ballots::default(),
        outcomes: Vec::new(),
    };
    let filter = subjects::outcomes_for_poll(poll_id);
    let mut bad = None;
    tagpoll_bus::replay::replay(
        js,
        names::STREAM_VOTES,
        Some(&filter),
        |seq, subject, payload| {
            match tagpoll_bus::decode::<v1::VoteOutcome>(subject, payload) {
                Ok(o) => {
                    log.ballots.apply(&o, seq);
                    log.outcomes.push((seq, o));
                }
                Err(e) => bad = Some(e),
            }
            progress(seq, total);
        },
    )
    .await?;
    if let Some(e) = bad {
        return Err(e);
    }
    Ok(log)
}

/// Votes per answer of the poll's current run, from a recount.
pub fn recount(log: &PollLog, poll: &v1::PollDefinition) -> HashMap<String, u64> {
    log.ballots
        .results(poll)
        .answers
        .into_iter()
        .map(|a| (a.answer_id, a.votes))
        .collect()
}

/// How voters appear in an export. Forgotten people (`tagpoll forget`)
/// always appear as `forgotten`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoterIds {
    /// `voter-1`, `voter-2`, … in order of first vote: unlinkable across exports.
    Pseudonymous,
    /// The ids on the vote stream (`file:alice`, `anymeta:1234`, `anon:…`).
    AsStored,
}

#[derive(Serialize)]
struct ExportRow<'a> {
    seq: u64,
    decided_at: String,
    read_id: &'a str,
    device: &'a str,
    reader: &'a str,
    run: u32,
    answer: &'a str,
    outcome: &'static str,
    previous_answer: &'a str,
    reason: &'static str,
    voter: String,
}

#[derive(Serialize)]
struct ExportAnswer<'a> {
    id: &'a str,
    label: &'a str,
    votes: u64,
}

/// RFC 3339 UTC time of a protobuf timestamp.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return String::new() };
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ts.nanos / 1_000_000
    )
}

/// Writes results and the vote log of `poll` as CSV (two tables separated
/// by a blank line) or as one JSON object.
pub fn export(
    out: &mut dyn Write,
    poll: &v1::PollDefinition,
    log: &PollLog,
    json: bool,
    voters: VoterIds,
    forgotten: &std::collections::HashSet<String>,
) -> std::io::Result<()> {
    let counts = recount(log, poll);
    let answers: Vec<ExportAnswer> = poll
        .answers
        .iter()
        .map(|a| ExportAnswer {
            id: &a.id,
            label: &a.label,
            votes: counts.get(&a.id).copied().unwrap_or(0),
        })
        .collect();
    let mut pseudonyms: HashMap<&str, String> = HashMap::new();
    let rows: Vec<ExportRow> = log
        .outcomes
        .iter()
        .map(|(seq, o)| {
            let voter = match (voters, o.voter_id.as_str()) {
                (_, "") => String::new(),
                (_, id) if forgotten.contains(id) => "forgotten".to_string(),
                (VoterIds::AsStored, id) => id.to_string(),
                (VoterIds::Pseudonymous, id) => {
                    let n = pseudonyms.len() + 1;
                    pseudonyms
                        .entry(id)
                        .or_insert_with(|| format!("voter-{n}"))
                        .clone()
                }
            };
            ExportRow {
                seq: *seq,
                decided_at: rfc3339(o.decided_at.as_ref()),
                read_id: &o.read_id,
                device: &o.device_id,
                reader: &o.reader_id,
                run: o.run,
                answer: &o.answer_id,
                outcome: crate::show::kind_label(o.kind()),
                previous_answer: &o.previous_answer_id,
                reason: crate::show::reason_label(o.reject_reason()),
                voter,
            }
        })
        .collect();
    if json {
        let doc = serde_json::json!({
            "poll": poll.poll_id,
            "question": poll.question,
            "run": poll.run,
            "total": answers.iter().map(|a| a.votes).sum::<u64>(),
            "answers": answers,
            "votes": rows,
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut w = csv::Writer::from_writer(&mut *out);
    for a in &answers {
        w.serialize(a).map_err(std::io::Error::other)?;
    }
    w.flush()?;
    drop(w);
    writeln!(out)?;
    let mut w = csv::Writer::from_writer(&mut *out);
    for r in &rows {
        w.serialize(r).map_err(std::io::Error::other)?;
    }
    if rows.is_empty() {
        w.write_record([
            "seq",
            "decided_at",
            "read_id",
            "device",
            "reader",
            "run",
            "answer",
            "outcome",
            "previous_answer",
            "reason",
            "voter",
        ])
        .map_err(std::io::Error::other)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let ts = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 5_000_000,
        };
        assert_eq!(rfc3339(Some(&ts)), "2026-01-01T00:00:00.005Z");
        assert_eq!(
            rfc3339(Some(&prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            })),
            "1970-01-01T00:00:00.000Z"
        );
    }

    fn outcome(read: &str, voter: &str, answer: &str, kind: v1::OutcomeKind) -> v1::VoteOutcome {
        v1::VoteOutcome {
            read_id: read.into(),
            poll_id: "p".into(),
            answer_id: answer.into(),
            voter_id: voter.into(),
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn exports_pseudonymous_csv_and_json() {
        let poll = v1::PollDefinition {
            poll_id: "p".into(),
            question: "Q".into(),
            answers: vec![
                v1::Answer {
                    id: "a".into(),
                    label: "A".into(),
                },
                v1::Answer {
                    id: "b".into(),
                    label: "B, really".into(),
                },
            ],
            ..Default::default()
        };
        let mut log = PollLog {
            ballots: Ballots::default(),
            outcomes: vec![],
        };
        for (i, o) in [
            outcome("r1", "file:alice", "a", v1::OutcomeKind::Accepted),
            outcome("r2", "file:bob", "b", v1::OutcomeKind::Accepted),
            outcome("r3", "file:alice", "b", v1::OutcomeKind::Duplicate),
        ]
        .into_iter()
        .enumerate()
        {
            log.ballots.apply(&o, i as u64 + 1);
            log.outcomes.push((i as u64 + 1, o));
        }
        let mut csv = Vec::new();
        export(
            &mut csv,
            &poll,
            &log,
            false,
            VoterIds::Pseudonymous,
            &Default::default(),
        )
        .unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.starts_with("id,label,votes\na,A,1\nb,\"B, really\",1\n\nseq,"),
            "{csv}"
        );
        assert!(
            csv.contains(",voter-1\n") && csv.contains(",voter-2\n"),
            "{csv}"
        );
        assert!(!csv.contains("alice"), "{csv}");
        let mut json = Vec::new();
        let forgotten = ["file:bob".to_string()].into();
        export(&mut json, &poll, &log, true, VoterIds::AsStored, &forgotten).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["total"], 2);
        assert_eq!(doc["votes"][2]["voter"], "file:alice");
        assert_eq!(doc["votes"][2]["outcome"], "DUPLICATE");
        assert_eq!(doc["votes"][1]["voter"], "forgotten");
    }
}
