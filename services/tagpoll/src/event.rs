//! The event file: polls, answers, reader mappings and known tags.
//!
//! Parsed from TOML into spanned raw sections, then validated into the
//! protobuf definitions services read from KV. Every problem is reported
//! with its line and column; all problems are collected, not just the first.
//!
//! ```toml
//! [event]
//! id = "demo"
//! identity = ["file", "anonymous"]
//!
//! [[polls]]
//! id = "drink"
//! question = "Coffee or tea?"
//! answers = [{ id = "coffee", label = "Coffee" }, { id = "tea", label = "Tea" }]
//!
//! [[readers]]
//! id = "r1"
//! poll = "drink"
//! answer = "coffee"
//!
//! [[people]]
//! id = "alice"
//! name = "Alice"
//! tags = ["04A1B2C3"]
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use tagpoll_proto::ids::check_id;
use tagpoll_proto::v1;
use toml::Spanned;

/// Identity backends an event may name.
pub const BACKENDS: [&str; 4] = ["anymeta", "file", "csv", "anonymous"];

/// One problem in an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq)]
pub struct EventErrors(pub Vec<Diagnostic>);

impl fmt::Display for EventErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EventErrors {}

pub use tagpoll_bus::store::Event;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    event: Option<RawEvent>,
    #[serde(default)]
    polls: Vec<Spanned<RawPoll>>,
    #[serde(default)]
    readers: Vec<Spanned<RawReader>>,
    #[serde(default)]
    people: Vec<Spanned<RawPerson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    id: Spanned<String>,
    #[serde(default)]
    title: String,
    identity: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    unknown_tag_hint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    id: Spanned<String>,
    question: Spanned<String>,
    answers: Spanned<Vec<Spanned<RawAnswer>>>,
    mode: Option<Spanned<String>>,
    max_choices: Option<Spanned<i64>>,
    #[serde(default)]
    allow_anonymous: bool,
    state: Option<Spanned<String>>,
    opens_at: Option<Spanned<toml::value::Datetime>>,
    closes_at: Option<Spanned<toml::value::Datetime>>,
    #[serde(default)]
    hide_results: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer {
    id: Spanned<String>,
    label: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReader {
    id: Spanned<String>,
    poll: Spanned<String>,
    answer: Spanned<String>,
    #[serde(default)]
    location: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    tags: Vec<Spanned<String>>,
}

/// Turns byte offsets into 1-based line and column numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let offset = offset.min(self.0.len());
        let before = &self.0.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        Diagnostic {
            line,
            column,
            message: message.into(),
        }
    }
}

pub use tagpoll_proto::ids::normalize_uid;

fn to_timestamp(dt: &toml::value::Datetime) -> Result<prost_types::Timestamp, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} needs a date, a time and a UTC offset, e.g. 2026-11-26T20:00:00+01:00"
        ));
    };
    let days = days_from_civil(date.year as i64, date.month as i64, date.day as i64);
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => minutes as i64,
    };
    let seconds =
        days * 86_400 + time.hour as i64 * 3600 + time.minute as i64 * 60 + time.second as i64
            - offset_minutes * 60;
    Ok(prost_types::Timestamp {
        seconds,
        nanos: time.nanosecond as i32,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses and validates an event file's text.
pub fn parse(text: &str) -> Result<Event, EventErrors> {
    let lines = Lines(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        EventErrors(vec![lines.at(offset, e.message().trim().to_string())])
    })?;
    let mut errs = Vec::new();
    let mut err = |offset: usize, msg: String| errs.push(lines.at(offset, msg));

    let id_ok = |s: &Spanned<String>, what: &str, err: &mut dyn FnMut(usize, String)| {
        if let Err(e) = check_id(s.get_ref()) {
            err(s.span().start, format!("{what} {:?} {e}", s.get_ref()));
            false
        } else {
            true
        }
    };

    // [event]
    let mut settings = v1::EventSettings::default();
    match &raw.event {
        None => err(
            0,
            "missing [event] table with at least `id = \"...\"`".into(),
        ),
        Some(ev) => {
            id_ok(&ev.id, "event id", &mut err);
            settings.event_id = ev.id.get_ref().clone();
            settings.title = ev.title.clone();
            settings.unknown_tag_hint = ev.unknown_tag_hint.clone();
            let mut seen = HashSet::new();
            for b in ev.identity.iter().flatten() {
                if !BACKENDS.contains(&b.get_ref().as_str()) {
                    err(
                        b.span().start,
                        format!(
                            "unknown identity backend {:?}; choose from {}",
                            b.get_ref(),
                            BACKENDS.join(", ")
                        ),
                    );
                } else if !seen.insert(b.get_ref().clone()) {
                    err(
                        b.span().start,
                        format!("identity backend {:?} listed twice", b.get_ref()),
                    );
                } else {
                    settings.identity_chain.push(b.get_ref().clone());
                }
            }
        }
    }

    // [[polls]]
    let mut polls = Vec::new();
    let mut poll_answers: HashMap<String, HashSet<String>> = HashMap::new();
    for (position, p) in raw.polls.iter().enumerate() {
        let start = p.span().start;
        let p = p.get_ref();
        let pid = p.id.get_ref();
        if id_ok(&p.id, "poll id", &mut err) && poll_answers.contains_key(pid) {
            err(p.id.span().start, format!("duplicate poll id {pid:?}"));
            continue;
        }
        if p.question.get_ref().trim().is_empty() {
            err(
                p.question.span().start,
                format!("poll {pid:?} has an empty question"),
            );
        }
        if p.answers.get_ref().is_empty() {
            err(
                p.answers.span().start,
                format!("poll {pid:?} has no answers"),
            );
        }
        let mut ids = HashSet::new();
        let mut answers = Vec::new();
        for a in p.answers.get_ref() {
            let a = a.get_ref();
            if id_ok(&a.id, "answer id", &mut err) && !ids.insert(a.id.get_ref().clone()) {
                err(
                    a.id.span().start,
                    format!("duplicate answer id {:?} in poll {pid:?}", a.id.get_ref()),
                );
            }
            if a.label.get_ref().trim().is_empty() {
                err(
                    a.label.span().start,
                    format!("answer {:?} has an empty label", a.id.get_ref()),
                );
            }
            answers.push(v1::Answer {
                id: a.id.get_ref().clone(),
                label: a.label.get_ref().clone(),
            });
        }
        let mode = match p
            .mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span().start))
        {
            None | Some(("first", _)) => v1::VoteMode::FirstStands,
            Some(("change", _)) => v1::VoteMode::LastCounts,
            Some((other, at)) => {
                err(
                    at,
                    format!(
                        "mode {other:?} is not \"first\" (first vote stands) or \"change\" (a later tap moves the vote)"
                    ),
                );
                v1::VoteMode::FirstStands
            }
        };
        let max_choices = match &p.max_choices {
            None => 1,
            Some(m) if *m.get_ref() >= 1 && (*m.get_ref() as usize) <= answers.len().max(1) => {
                *m.get_ref() as u32
            }
            Some(m) => {
                err(
                    m.span().start,
                    format!(
                        "max_choices {} must be between 1 and the number of answers ({})",
                        m.get_ref(),
                        answers.len()
                    ),
                );
                1
            }
        };
        let state = match p
            .state
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span().start))
        {
            None | Some(("open", _)) => v1::PollState::Open,
            Some(("draft", _)) => v1::PollState::Draft,
            Some(("closed", _)) => v1::PollState::Closed,
            Some((other, at)) => {
                err(
                    at,
                    format!("state {other:?} is not \"draft\", \"open\" or \"closed\""),
                );
                v1::PollState::Open
            }
        };
        let window = |t: &Option<Spanned<toml::value::Datetime>>,
                      err: &mut dyn FnMut(usize, String)| {
            t.as_ref().and_then(|t| match to_timestamp(t.get_ref()) {
                Ok(ts) => Some(ts),
                Err(e) => {
                    err(t.span().start, e);
                    None
                }
            })
        };
        let opens_at = window(&p.opens_at, &mut err);
        let closes_at = window(&p.closes_at, &mut err);
        if let (Some(o), Some(c), Some(raw_c)) = (&opens_at, &closes_at, &p.closes_at)
            && c.seconds <= o.seconds
        {
            err(
                raw_c.span().start,
                "closes_at must be after opens_at".into(),
            );
        }
        let _ = start;
        poll_answers.insert(pid.clone(), ids);
        polls.push(v1::PollDefinition {
            poll_id: pid.clone(),
            question: p.question.get_ref().clone(),
            answers,
            rules: Some(v1::PollRules {
                mode: mode as i32,
                max_choices,
                allow_anonymous: p.allow_anonymous,
                opens_at,
                closes_at,
            }),
            state: state as i32,
            run: 0,
            results_hidden: p.hide_results,
            position: position as u32,
        });
    }

    // [[readers]]
    let mut readers = Vec::new();
    let mut reader_ids = HashSet::new();
    for r in &raw.readers {
        let r = r.get_ref();
        let rid = r.id.get_ref();
        if id_ok(&r.id, "reader id", &mut err) && !reader_ids.insert(rid.clone()) {
            err(
                r.id.span().start,
                format!("reader {rid:?} is mapped twice; a reader stands for one answer"),
            );
            continue;
        }
        match poll_answers.get(r.poll.get_ref()) {
            None => err(
                r.poll.span().start,
                format!("reader {rid:?} names unknown poll {:?}", r.poll.get_ref()),
            ),
            Some(answers) if !answers.contains(r.answer.get_ref()) => err(
                r.answer.span().start,
                format!(
                    "reader {rid:?}: poll {:?} has no answer {:?}",
                    r.poll.get_ref(),
                    r.answer.get_ref()
                ),
            ),
            Some(_) => {}
        }
        readers.push(v1::ReaderMapping {
            reader_id: rid.clone(),
            poll_id: r.poll.get_ref().clone(),
            answer_id: r.answer.get_ref().clone(),
            location: r.location.clone(),
        });
    }

    // [[people]]
    let mut tags = Vec::new();
    let mut person_ids = HashSet::new();
    let mut tag_owner: HashMap<String, String> = HashMap::new();
    for person in &raw.people {
        let person = person.get_ref();
        let pid = person.id.get_ref();
        if id_ok(&person.id, "person id", &mut err) && !person_ids.insert(pid.clone()) {
            err(
                person.id.span().start,
                format!("duplicate person id {pid:?}"),
            );
            continue;
        }
        for t in &person.tags {
            match normalize_uid(t.get_ref()) {
                Err(e) => err(t.span().start, e),
                Ok(uid) => {
                    if let Some(other) = tag_owner.insert(uid.clone(), pid.clone()) {
                        err(
                            t.span().start,
                            format!("tag {uid} belongs to both {other:?} and {pid:?}"),
                        );
                        continue;
                    }
                    tags.push(v1::TagOwner {
                        tag_uid_hex: uid,
                        person_id: pid.clone(),
                        display_name: person.name.clone(),
                    });
                }
            }
        }
    }

    if errs.is_empty() {
        Ok(Event {
            settings,
            polls,
            readers,
            tags,
        })
    } else {
        errs.sort_by_key(|d| (d.line, d.column));
        Err(EventErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[event]
id = "demo"
identity = ["file", "anonymous"]

[[polls]]
id = "drink"
question = "Coffee or tea?"
answers = [{ id = "coffee", label = "Coffee" }, { id = "tea", label = "Tea" }]

[[polls]]
id = "talk"
question = "Best talk?"
mode = "change"
answers = [{ id = "a", label = "A" }, { id = "b", label = "B" }]

[[readers]]
id = "r1"
poll = "drink"
answer = "coffee"

[[readers]]
id = "r2"
poll = "drink"
answer = "coffee"

[[people]]
id = "alice"
name = "Alice"
tags = ["04:a1:b2:c3", "04112233445566"]
"#;

    #[test]
    fn parses_a_good_file() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.polls.len(), 2);
        assert_eq!(e.polls[1].position, 1);
        assert_eq!(
            e.polls[1].rules.as_ref().unwrap().mode(),
            v1::VoteMode::LastCounts
        );
        assert_eq!(e.readers.len(), 2);
        assert_eq!(e.tags[0].tag_uid_hex, "04A1B2C3");
        assert_eq!(e.tags[1].tag_uid_hex, "04112233445566");
        assert_eq!(e.settings.identity_chain, ["file", "anonymous"]);
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn reports_unknown_poll_and_answer_with_line_and_column() {
        let bad = GOOD
            .replacen(
                "poll = \"drink\"\nanswer = \"coffee\"",
                "poll = \"drinks\"\nanswer = \"coffee\"",
                1,
            )
            .replacen(
                "answer = \"coffee\"\n\n[[people]]",
                "answer = \"milk\"\n\n[[people]]",
                1,
            );
        let e = errors(&bad);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("19:8: reader \"r1\" names unknown poll \"drinks\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("25:10: reader \"r2\": poll \"drink\" has no answer \"milk\""),
            "{e:?}"
        );
    }

    #[test]
    fn reports_duplicates_and_empties() {
        let bad = GOOD
            .replace("id = \"r2\"", "id = \"r1\"")
            .replace("Best talk?", " ")
            .replace("id = \"talk\"", "id = \"drink\"");
        let e = errors(&bad);
        assert!(
            e.iter().any(|m| m.contains("duplicate poll id \"drink\"")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("reader \"r1\" is mapped twice")),
            "{e:?}"
        );
    }

    #[test]
    fn reports_syntax_errors_and_unknown_keys_with_position() {
        let e = errors(
            "[event]\nid = \"x\"\n[[polls]]\nid = \"p\"\nquestion = \"q\"\nanswers = [\nbogus = 1\n",
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("7:"), "{e:?}");
        let e = errors("[event]\nid = \"x\"\ncolour = \"red\"\n");
        assert!(e[0].starts_with("3:1:") && e[0].contains("colour"), "{e:?}");
    }

    #[test]
    fn reports_bad_ids_tags_modes_and_windows() {
        let e = errors(
            r#"[event]
id = "x.y"
identity = ["ldap"]
[[polls]]
id = "p"
question = "q"
mode = "sometimes"
max_choices = 3
opens_at = 2026-11-26T20:00:00Z
closes_at = 2026-11-26T19:00:00Z
answers = [{ id = "a", label = "" }, { id = "a", label = "A" }]
[[people]]
id = "bob"
tags = ["XYZ", "0102"]
"#,
        );
        let joined = e.join("\n");
        for needle in [
            "2:6: event id \"x.y\"",
            "3:13: unknown identity backend \"ldap\"",
            "7:8: mode \"sometimes\"",
            "8:15: max_choices 3",
            "10:13: closes_at must be after opens_at",
            "empty label",
            "duplicate answer id \"a\"",
            "tag \"XYZ\" is not a UID in hex",
            "tag \"0102\" has 2 bytes",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in\n{joined}");
        }
    }

    #[test]
    fn converts_offsets_in_windows() {
        let ts = to_timestamp(&"2026-01-01T01:00:00+01:00".parse().unwrap()).unwrap();
        assert_eq!(ts.seconds, 1_767_225_600);
        assert!(to_timestamp(&"2026-01-01".parse().unwrap()).is_err());
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../examples/event.toml");
        if let Err(e) = parse(text) {
            panic!("examples/event.toml:\n{e}");
        }
    }
}
