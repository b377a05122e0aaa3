//! Human-readable output: one line per outcome, a table per poll.

use tagpoll_proto::v1::{self, OutcomeKind, RejectReason};

/// Upper-case label of an outcome kind.
pub fn kind_label(kind: OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Accepted => "ACCEPTED",
        OutcomeKind::Changed => "CHANGED",
        OutcomeKind::Duplicate => "DUPLICATE",
        OutcomeKind::Rejected => "REJECTED",
        OutcomeKind::Unspecified => "UNKNOWN",
    }
}

/// Snake-case name of a reject reason.
pub fn reason_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::UnknownTag => "unknown_tag",
        RejectReason::ReaderNotMapped => "reader_not_mapped",
        RejectReason::PollClosed => "poll_closed",
        RejectReason::UnknownPoll => "unknown_poll",
        RejectReason::TooManyChoices => "too_many_choices",
        RejectReason::Unspecified => "",
    }
}

fn clock(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "--:--:--".into();
    };
    let secs = ts.seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ts.nanos / 1_000_000
    )
}

/// One line for `tagpoll tail` and `tagpoll tap`.
pub fn outcome_line(o: &v1::VoteOutcome) -> String {
    let mut line = format!(
        "{} {:<9} poll={} answer={} reader={}",
        clock(o.decided_at.as_ref()),
        kind_label(o.kind()),
        if o.poll_id.is_empty() {
            "-"
        } else {
            &o.poll_id
        },
        if o.answer_id.is_empty() {
            "-"
        } else {
            &o.answer_id
        },
        o.reader_id,
    );
    if o.kind() == OutcomeKind::Changed {
        line.push_str(&format!(" from={}", o.previous_answer_id));
    }
    if o.kind() == OutcomeKind::Rejected {
        line.push_str(&format!(" reason={}", reason_label(o.reject_reason())));
    }
    if !o.voter_id.is_empty() {
        line.push_str(&format!(" voter={}", o.voter_id));
    }
    if o.correction {
        // Re-decided because an earlier tap of the same voter came in late.
        line.push_str(&format!(" correction-by={}", o.corrected_by));
    }
    line.push_str(&format!(" read={} \"{}\"", o.read_id, o.message));
    line
}

/// A results table for `tagpoll results`.
pub fn results_table(poll: &v1::PollDefinition, results: &crate::show::Counts) -> String {
    let width = poll
        .answers
        .iter()
        .map(|a| a.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let total: u64 = results.values().sum();
    let mut out = format!(
        "{} ({}, {})\n",
        poll.question,
        poll.poll_id,
        crate::show::state_label(poll.state())
    );
    out.push_str(&format!(
        "{:<width$}  {:>6}  {:>6}\n",
        "answer", "votes", "%"
    ));
    for a in &poll.answers {
        let votes = results.get(&a.id).copied().unwrap_or(0);
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * votes as f64 / total as f64
        };
        out.push_str(&format!(
            "{:<width$}  {:>6}  {:>5.1}%\n",
            a.label, votes, pct
        ));
    }
    out.push_str(&format!("{:<width$}  {:>6}\n", "total", total));
    out
}

/// Votes per answer id.
pub type Counts = std::collections::HashMap<String, u64>;

/// Lower-case poll state.
pub fn state_label(state: v1::PollState) -> &'static str {
    match state {
        v1::PollState::Open => "open",
        v1::PollState::Closed => "closed",
        _ => "draft",
    }
}

/// A stream's `max_age` as an organiser reads it: "30 days", "48 hours",
/// "forever".
pub fn retention(max_age: std::time::Duration) -> String {
    let secs = max_age.as_secs_f64();
    if max_age.is_zero() {
        "forever".into()
    } else if secs >= 2.0 * 86_400.0 {
        format!("{} days", trim(secs / 86_400.0))
    } else {
        format!("{} hours", trim(secs / 3600.0))
    }
}

fn trim(n: f64) -> String {
    let s = format!("{n:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn retention_reads_like_the_settings() {
        use std::time::Duration;
        assert_eq!(super::retention(Duration::ZERO), "forever");
        assert_eq!(
            super::retention(Duration::from_secs(30 * 86_400)),
            "30 days"
        );
        assert_eq!(super::retention(Duration::from_secs(48 * 3600)), "2 days");
        assert_eq!(super::retention(Duration::from_secs(5400)), "1.5 hours");
    }

    use super::*;

    #[test]
    fn table_lists_answers_in_order_with_percentages() {
        let poll = v1::PollDefinition {
            poll_id: "p".into(),
            question: "Q?".into(),
            answers: vec![
                v1::Answer {
                    id: "a".into(),
                    label: "Apple".into(),
                },
                v1::Answer {
                    id: "b".into(),
                    label: "Banana".into(),
                },
            ],
            state: v1::PollState::Open as i32,
            ..Default::default()
        };
        let counts: Counts = [("b".to_string(), 3), ("a".to_string(), 1)].into();
        let t = results_table(&poll, &counts);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "Q? (p, open)");
        assert!(
            lines[2].starts_with("Apple") && lines[2].ends_with("25.0%"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("Banana") && lines[3].contains("3"),
            "{t}"
        );
        assert!(lines[4].ends_with("4"), "{t}");
    }
}
