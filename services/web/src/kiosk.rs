//! The kiosk next to a reader: what the reader stands for, and what became
//! of each tap there, said to the person who just tapped.
//!
//! Outcomes come with the voter's name as the tally's `ReaderFeedback`, from
//! a core NATS subscription on `tagpoll.feedback.*.{reader}` per connected
//! kiosk (the vote stream carries no names): the subscription lives
//! exactly as long as the kiosk's event stream, and no tap at another reader
//! ever reaches it. The words are chosen here (tested in Rust); the page only
//! shows them.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tagpoll_bus::config::{EventConfig, ReaderTarget};
use tagpoll_proto::subjects;
use tagpoll_proto::v1::{self, OutcomeKind, RejectReason};
use tokio_stream::wrappers::WatchStream;

use crate::api::{ApiError, state_name};
use crate::app::AppState;
use crate::metrics::{ClientGuard, Stream as Which};
use crate::monitor::kind_name;
use crate::pages::{PING, RETRY};

/// Shown for unknown tags when neither identity nor the event has a hint.
pub const DEFAULT_HINT: &str = "Ask at the info desk how to link your tag.";

/// `GET /api/readers/{reader}`, and the `reader` event of the kiosk stream.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ReaderInfoJson {
    pub id: String,
    /// False once the mapping is gone (only in the event stream; GET says 404).
    pub mapped: bool,
    pub poll: String,
    pub answer: String,
    pub location: String,
    /// Empty when the poll does not exist.
    pub question: String,
    /// Empty when the poll or answer does not exist.
    pub answer_label: String,
    /// "open", "closed", "draft", or "unknown_poll" for a dangling mapping.
    pub state: &'static str,
}

/// One tap's outcome for the kiosk (`outcome` event).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct OutcomeJson {
    pub read_id: String,
    pub reader: String,
    pub poll: String,
    pub answer: String,
    pub answer_label: String,
    /// "accepted", "changed", "duplicate" or "rejected".
    pub kind: &'static str,
    /// For rejected: "unknown_tag", "reader_not_mapped", "poll_closed",
    /// "unknown_poll" or "too_many_choices".
    pub reject_reason: Option<&'static str>,
    /// The voter's name, empty when unknown. The voter id is not sent.
    pub name: String,
    pub previous_answer: String,
    pub previous_answer_label: String,
    /// What the kiosk says in big type ("Thanks, Alice — you voted Yes").
    pub headline: String,
    /// The smaller line under it (a hint for unknown tags).
    pub detail: String,
    pub decided_at: Option<String>,
    /// The tap moment (when the tap was made, server clock).
    pub tapped_at: Option<String>,
    /// The outcome comes more than [`LATE_AFTER`] after the tap (a spooled
    /// tap, an identity outage): the kiosk shows it as a late result, not
    /// as the tap of whoever stands at the reader now.
    pub late: bool,
}

/// How old a tap may be for its outcome to be shown as the current tap.
pub const LATE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The reader's mapping resolved against the current polls.
pub fn reader_info(config: &EventConfig, reader: &str) -> ReaderInfoJson {
    let mut info = ReaderInfoJson {
        id: reader.to_string(),
        mapped: false,
        poll: String::new(),
        answer: String::new(),
        location: String::new(),
        question: String::new(),
        answer_label: String::new(),
        state: "unknown_poll",
    };
    if let Some(m) = config.readers.get(reader) {
        info.mapped = true;
        info.poll = m.poll_id.clone();
        info.answer = m.answer_id.clone();
        info.location = m.location.clone();
    }
    match config.target(reader) {
        ReaderTarget::Answer { poll, answer_id } => {
            info.question = poll.question.clone();
            info.answer_label = label(poll, answer_id);
            info.state = state_name(poll.state());
        }
        ReaderTarget::Dangling { poll_id, .. } => {
            if let Some(p) = config.polls.get(poll_id) {
                info.question = p.question.clone();
            }
        }
        ReaderTarget::Unmapped => {}
    }
    info
}

fn label(poll: &v1::PollDefinition, answer_id: &str) -> String {
    poll.answers
        .iter()
        .find(|a| a.id == answer_id)
        .map_or_else(|| answer_id.to_string(), |a| a.label.clone())
}

fn reason_name(r: RejectReason) -> Option<&'static str> {
    match r {
        RejectReason::UnknownTag => Some("unknown_tag"),
        RejectReason::ReaderNotMapped => Some("reader_not_mapped"),
        RejectReason::PollClosed => Some("poll_closed"),
        RejectReason::UnknownPoll => Some("unknown_poll"),
        RejectReason::TooManyChoices => Some("too_many_choices"),
        RejectReason::Unspecified => None,
    }
}

/// "Thanks, Alice" or just "Thanks" for a voter without a name.
fn with_name(word: &str, name: &str) -> String {
    if name.is_empty() {
        word.to_string()
    } else {
        format!("{word}, {name}")
    }
}

/// What the kiosk tells the person who just tapped, greeted as `name`.
pub fn outcome_json(config: &EventConfig, o: &v1::VoteOutcome, name: &str) -> OutcomeJson {
    outcome_json_at(config, o, name, std::time::SystemTime::now())
}

/// [`outcome_json`] as seen at `now`.
pub fn outcome_json_at(
    config: &EventConfig,
    o: &v1::VoteOutcome,
    name: &str,
    now: std::time::SystemTime,
) -> OutcomeJson {
    let tapped = tagpoll_proto::to_system_time(o.tapped_at.as_ref());
    let late = tapped
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age > LATE_AFTER);
    let poll = config.polls.get(&o.poll_id);
    let label_of = |answer: &str| {
        if answer.is_empty() {
            String::new()
        } else {
            poll.map_or_else(|| answer.to_string(), |p| label(p, answer))
        }
    };
    let answer_label = label_of(&o.answer_id);
    let previous_answer_label = label_of(&o.previous_answer_id);
    let hint = if !o.hint.is_empty() {
        o.hint.clone()
    } else {
        config
            .event
            .as_ref()
            .map(|e| e.unknown_tag_hint.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HINT.to_string())
    };
    let (headline, detail) = match (o.kind(), o.reject_reason()) {
        (OutcomeKind::Accepted, _) => (
            format!("{} — you voted {answer_label}", with_name("Thanks", name)),
            poll.map(|p| p.question.clone()).unwrap_or_default(),
        ),
        (OutcomeKind::Changed, _) => (
            format!(
                "{} — you changed your vote to {answer_label}",
                with_name("Thanks", name)
            ),
            if previous_answer_label.is_empty() {
                String::new()
            } else {
                format!("Your vote for {previous_answer_label} no longer counts.")
            },
        ),
        (OutcomeKind::Duplicate, _) => (
            format!("{} — you already voted", with_name("Hi", name)),
            if o.message.is_empty() {
                "Your earlier vote still counts.".to_string()
            } else {
                o.message.clone()
            },
        ),
        (_, RejectReason::UnknownTag) => ("We don't know this tag".to_string(), hint),
        (_, RejectReason::PollClosed) => (
            "Voting is closed".to_string(),
            poll.map(|p| format!("“{}” is not taking votes right now.", p.question))
                .unwrap_or_default(),
        ),
        (_, RejectReason::TooManyChoices) => (
            format!("{} — you used all your choices", with_name("Sorry", name)),
            o.message.clone(),
        ),
        (_, RejectReason::ReaderNotMapped | RejectReason::UnknownPoll) => (
            "This reader is not set up for a poll".to_string(),
            "Please tell someone at the info desk.".to_string(),
        ),
        _ => ("Your tap was not counted".to_string(), o.message.clone()),
    };
    OutcomeJson {
        read_id: o.read_id.clone(),
        reader: o.reader_id.clone(),
        poll: o.poll_id.clone(),
        answer: o.answer_id.clone(),
        answer_label,
        kind: kind_name(o.kind()),
        reject_reason: reason_name(o.reject_reason()),
        name: name.to_string(),
        previous_answer: o.previous_answer_id.clone(),
        previous_answer_label,
        headline,
        detail,
        decided_at: o.decided_at.map(|t| t.to_string()),
        tapped_at: o.tapped_at.map(|t| t.to_string()),
        late,
    }
}

fn known_reader(state: &AppState, reader: &str) -> Result<(), ApiError> {
    tagpoll_proto::ids::check_id(reader)
        .map_err(|e| ApiError::bad_request(format!("reader id {reader:?} {e}"), "reader"))?;
    if state.view.config.borrow().readers.contains_key(reader) {
        Ok(())
    } else {
        Err(ApiError::not_found(
            format!("no reader {reader:?}"),
            "reader",
        ))
    }
}

/// `GET /api/readers/{reader}`
pub async fn reader(
    State(state): State<AppState>,
    Path(reader): Path<String>,
) -> Result<Json<ReaderInfoJson>, ApiError> {
    known_reader(&state, &reader)?;
    Ok(Json(reader_info(&state.view.config.borrow(), &reader)))
}

/// `GET /api/readers/{reader}/events`: a `reader` event with what the
/// reader stands for (again whenever that changes), then one `outcome`
/// event per tap at the reader.
pub async fn events(
    State(state): State<AppState>,
    Path(reader): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    known_reader(&state, &reader)?;
    let outcomes = state
        .view
        .client
        .subscribe(subjects::feedback_for_reader(&reader))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot follow the reader's outcomes: {e}"),
                None,
            )
        })?;
    let guard = ClientGuard::new(state.metrics.clone(), Which::Reader);
    let config = state.view.config.clone();
    let metrics = state.metrics.clone();
    let outcome_events = outcomes.filter_map(move |msg| {
        let event = tagpoll_bus::decode::<v1::ReaderFeedback>(&msg.subject, &msg.payload)
            .ok()
            .and_then(|f| {
                let o = f.outcome?;
                let json = outcome_json(&config.borrow(), &o, &f.display_name);
                Event::default().event("outcome").json_data(json).ok()
            });
        if event.is_some() {
            metrics.kiosk_events.inc();
        }
        futures::future::ready(event)
    });
    let mut last = None;
    let id = reader.clone();
    let reader_events = WatchStream::new(state.view.config.clone()).filter_map(move |config| {
        let info = reader_info(&config, &id);
        let changed = last.as_ref() != Some(&info);
        let event = changed
            .then(|| Event::default().event("reader").json_data(&info).ok())
            .flatten();
        last = Some(info);
        futures::future::ready(event)
    });
    let stream = futures::stream::select(reader_events, outcome_events).map(move |e| {
        let _alive = &guard;
        Ok(e)
    });
    let stream =
        futures::stream::once(async { Ok(Event::default().retry(RETRY).comment("tagpoll")) })
            .chain(stream);
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(PING)
            .event(Event::default().event("ping").data("")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn config() -> EventConfig {
        let mut c = EventConfig::default();
        let poll = v1::PollDefinition {
            poll_id: "p".into(),
            question: "Yes or no?".into(),
            answers: vec![
                v1::Answer {
                    id: "yes".into(),
                    label: "Yes".into(),
                },
                v1::Answer {
                    id: "no".into(),
                    label: "No".into(),
                },
            ],
            state: v1::PollState::Open as i32,
            ..Default::default()
        };
        c.apply("poll.p", Some(&poll.encode_to_vec()), 1);
        let m = v1::ReaderMapping {
            reader_id: "r".into(),
            poll_id: "p".into(),
            answer_id: "yes".into(),
            location: "door".into(),
        };
        c.apply("reader.r", Some(&m.encode_to_vec()), 2);
        let e = v1::EventSettings {
            unknown_tag_hint: "Link your tag at the desk.".into(),
            ..Default::default()
        };
        c.apply("event", Some(&e.encode_to_vec()), 3);
        c
    }

    fn outcome(kind: OutcomeKind, reason: RejectReason) -> v1::VoteOutcome {
        v1::VoteOutcome {
            read_id: "t1".into(),
            reader_id: "r".into(),
            poll_id: "p".into(),
            answer_id: "yes".into(),
            kind: kind as i32,
            reject_reason: reason as i32,
            voter_id: "file:alice".into(),
            ..Default::default()
        }
    }

    #[test]
    fn reader_info_resolves_labels() {
        let c = config();
        let info = reader_info(&c, "r");
        assert_eq!(
            (
                info.question.as_str(),
                info.answer_label.as_str(),
                info.state
            ),
            ("Yes or no?", "Yes", "open")
        );
        assert!(!reader_info(&c, "other").mapped);
    }

    #[test]
    fn an_outcome_long_after_its_tap_is_late() {
        let c = config();
        let now = std::time::SystemTime::now();
        let mut o = outcome(OutcomeKind::Accepted, RejectReason::Unspecified);
        o.tapped_at = Some(tagpoll_proto::timestamp(
            now - std::time::Duration::from_secs(1),
        ));
        assert!(!outcome_json_at(&c, &o, "", now).late);
        o.tapped_at = Some(tagpoll_proto::timestamp(
            now - std::time::Duration::from_secs(90),
        ));
        let j = outcome_json_at(&c, &o, "", now);
        assert!(j.late);
        assert!(j.tapped_at.is_some());
        o.tapped_at = None;
        assert!(!outcome_json_at(&c, &o, "", now).late);
    }

    #[test]
    fn kiosk_words_for_each_outcome() {
        let c = config();
        let say = |o: v1::VoteOutcome| {
            let name = if o.reject_reason() == RejectReason::UnknownTag {
                ""
            } else {
                "Alice"
            };
            let j = outcome_json(&c, &o, name);
            (j.headline, j.detail)
        };
        let (h, _) = say(outcome(OutcomeKind::Accepted, RejectReason::Unspecified));
        assert_eq!(h, "Thanks, Alice — you voted Yes");
        let mut changed = outcome(OutcomeKind::Changed, RejectReason::Unspecified);
        changed.previous_answer_id = "no".into();
        let (h, d) = say(changed);
        assert_eq!(h, "Thanks, Alice — you changed your vote to Yes");
        assert!(d.contains("No"), "{d}");
        let (h, _) = say(outcome(OutcomeKind::Duplicate, RejectReason::Unspecified));
        assert_eq!(h, "Hi, Alice — you already voted");
        let mut unknown = outcome(OutcomeKind::Rejected, RejectReason::UnknownTag);
        let (h, d) = say(unknown.clone());
        assert_eq!(
            (h.as_str(), d.as_str()),
            ("We don't know this tag", "Link your tag at the desk.")
        );
        unknown.hint = "Go to example.org/link".into();
        assert_eq!(say(unknown).1, "Go to example.org/link");
        let (h, _) = say(outcome(OutcomeKind::Rejected, RejectReason::PollClosed));
        assert_eq!(h, "Voting is closed");
        let j = outcome_json(
            &c,
            &outcome(OutcomeKind::Rejected, RejectReason::UnknownTag),
            "",
        );
        assert_eq!((j.kind, j.reject_reason), ("rejected", Some("unknown_tag")));
        let json = serde_json::to_value(&j).unwrap();
        assert!(json.get("voter_id").is_none(), "no voter ids to kiosks");
    }
}
