//! The admin API under `/api/admin/`: bearer-token access, live poll control
//! and reader remapping through the same KV writes as the `tagpoll` command.
//!
//! Without `TAGPOLL_ADMIN_TOKEN` the service still starts (the public pages
//! matter more at an event than the admin page), but every admin call gets a
//! 503 that says why, and a warning is logged at start.

use async_nats::jetstream::kv;
use axum::Json;
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tagpoll_bus::store::{self, StoreError};
use tagpoll_proto::v1::{self, PollState};

use crate::api::{AnswerVotesJson, ApiError, find_poll, results_json, state_name};
use crate::app::AppState;
use crate::monitor;

/// The admin token (as a digest) and where admin changes are written.
#[derive(Clone)]
pub struct Admin {
    token: Option<[u8; 32]>,
    config: kv::Store,
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Compares digests so neither the token's length nor a matching prefix
/// shows in the time an answer takes.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Admin {
    /// `token` empty or `None` disables the admin API (503 on every call).
    pub fn new(token: Option<&str>, config: kv::Store) -> Self {
        let token = token
            .filter(|t| !t.is_empty())
            .map(|t| digest(t.as_bytes()));
        if token.is_none() {
            tracing::warn!(
                "TAGPOLL_ADMIN_TOKEN is not set: the admin API answers 503 until the service is restarted with it"
            );
        }
        Admin { token, config }
    }

    /// Checks `Authorization: Bearer TOKEN`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin API is disabled: start tagpoll-web with TAGPOLL_ADMIN_TOKEN set",
                None,
            ));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "admin token missing: send Authorization: Bearer TOKEN",
            ));
        };
        let value = value.to_str().unwrap_or("");
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::unauthorized(
                    "admin token missing: the Authorization header must be \"Bearer TOKEN\"",
                ));
            }
        };
        if same_digest(&digest(token.as_bytes()), expected) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("wrong admin token"))
        }
    }
}

/// Extractor that admits only requests with the admin token. Listed first
/// in every admin handler, so a caller without it learns nothing else.
pub struct AdminAuth;

impl<S> FromRequestParts<S> for AdminAuth
where
    Admin: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Admin::from_ref(state)
            .check(&parts.headers)
            .map(|_| AdminAuth)
    }
}

/// A poll as the admin sees it: live state and real counts even when hidden.
#[derive(Serialize)]
pub struct AdminPollJson {
    pub id: String,
    pub question: String,
    pub state: &'static str,
    pub run: u32,
    pub hidden: bool,
    pub total: u64,
    pub answers: Vec<AnswerVotesJson>,
}

fn admin_poll(poll: &v1::PollDefinition, stored: Option<&v1::PollResults>) -> AdminPollJson {
    let r = results_json(poll, stored);
    AdminPollJson {
        id: poll.poll_id.clone(),
        question: poll.question.clone(),
        state: state_name(poll.state()),
        run: poll.run,
        hidden: poll.results_hidden,
        total: r.total,
        answers: r.answers,
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::UnknownPoll(p) => ApiError::not_found(format!("no poll {p:?}"), "poll"),
        StoreError::UnknownAnswer {
            poll,
            answer,
            answers,
        } => ApiError::unprocessable(
            format!("poll {poll:?} has no answer {answer:?}; it has {answers}"),
            "answer",
        ),
        StoreError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m, None),
        e @ StoreError::Kv { .. } => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string(), None),
    }
}

/// What each poll action does to the definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PollAction {
    Open,
    Close,
    Hide,
    Reveal,
    Reset,
}

impl PollAction {
    /// Applies the action; open/close override any automatic window, as
    /// `tagpoll poll open/close` does.
    pub fn apply(self, p: &mut v1::PollDefinition) {
        let set_state = |p: &mut v1::PollDefinition, s: PollState| {
            p.state = s as i32;
            if let Some(r) = p.rules.as_mut() {
                r.opens_at = None;
                r.closes_at = None;
            }
        };
        match self {
            PollAction::Open => set_state(p, PollState::Open),
            PollAction::Close => set_state(p, PollState::Closed),
            PollAction::Hide => p.results_hidden = true,
            PollAction::Reveal => p.results_hidden = false,
            // The tally counts by (poll, run): the old run's votes stay in
            // the vote stream and simply stop counting.
            PollAction::Reset => p.run += 1,
        }
    }
}

async fn poll_action(
    state: &AppState,
    poll_id: &str,
    action: PollAction,
) -> Result<Json<AdminPollJson>, ApiError> {
    find_poll(&state.view, poll_id)?;
    let poll = store::update_poll(&state.admin.config, poll_id, |p| action.apply(p))
        .await
        .map_err(store_error)?;
    tracing::info!(
        poll = poll_id,
        ?action,
        run = poll.run,
        "admin changed a poll"
    );
    Ok(Json(admin_poll(
        &poll,
        state.view.results_of(poll_id).as_ref(),
    )))
}

/// `POST /api/admin/polls/{poll}/open`
pub async fn open(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(poll): Path<String>,
) -> Result<Json<AdminPollJson>, ApiError> {
    poll_action(&s, &poll, PollAction::Open).await
}

/// `POST /api/admin/polls/{poll}/close`
pub async fn close(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(poll): Path<String>,
) -> Result<Json<AdminPollJson>, ApiError> {
    poll_action(&s, &poll, PollAction::Close).await
}

/// `POST /api/admin/polls/{poll}/hide`
pub async fn hide(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(poll): Path<String>,
) -> Result<Json<AdminPollJson>, ApiError> {
    poll_action(&s, &poll, PollAction::Hide).await
}

/// `POST /api/admin/polls/{poll}/reveal`
pub async fn reveal(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(poll): Path<String>,
) -> Result<Json<AdminPollJson>, ApiError> {
    poll_action(&s, &poll, PollAction::Reveal).await
}

/// `POST /api/admin/polls/{poll}/reset`
pub async fn reset(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(poll): Path<String>,
) -> Result<Json<AdminPollJson>, ApiError> {
    poll_action(&s, &poll, PollAction::Reset).await
}

/// A validated `{"poll": "...", "answer": "..."}` body.
#[derive(Debug, PartialEq)]
pub struct MapRequest {
    pub poll: String,
    pub answer: String,
}

/// Parses a map body by hand, so every problem names its field.
pub fn parse_map_request(body: &[u8]) -> Result<MapRequest, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("body is not JSON: {e}; send {{\"poll\": \"...\", \"answer\": \"...\"}}"),
            Some("body"),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object {\"poll\": \"...\", \"answer\": \"...\"}",
            Some("body"),
        ));
    };
    let field = |name: &str| -> Result<String, ApiError> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => {
                Err(ApiError::bad_request(format!("{name:?} is missing"), name))
            }
            Some(serde_json::Value::String(s)) => {
                tagpoll_proto::ids::check_id(s)
                    .map_err(|e| ApiError::bad_request(format!("{name} id {s:?} {e}"), name))?;
                Ok(s.clone())
            }
            Some(_) => Err(ApiError::bad_request(
                format!("{name:?} must be a string"),
                name,
            )),
        }
    };
    Ok(MapRequest {
        poll: field("poll")?,
        answer: field("answer")?,
    })
}

#[derive(Serialize)]
pub struct MappedJson {
    pub id: String,
    pub poll: String,
    pub answer: String,
}

/// `POST /api/admin/readers/{reader}/map` with `{"poll", "answer"}`;
/// creates the mapping for a reader not mapped yet.
pub async fn map_reader(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(reader): Path<String>,
    body: bytes::Bytes,
) -> Result<Json<MappedJson>, ApiError> {
    tagpoll_proto::ids::check_id(&reader)
        .map_err(|e| ApiError::bad_request(format!("reader id {reader:?} {e}"), "reader"))?;
    let req = parse_map_request(&body)?;
    if !s.view.config.borrow().polls.contains_key(&req.poll) {
        return Err(ApiError::unprocessable(
            format!("no poll {:?}", req.poll),
            "poll",
        ));
    }
    store::map_reader(&s.admin.config, &reader, &req.poll, &req.answer)
        .await
        .map_err(|e| match e {
            StoreError::UnknownPoll(p) => ApiError::unprocessable(format!("no poll {p:?}"), "poll"),
            e => store_error(e),
        })?;
    tracing::info!(reader, poll = %req.poll, answer = %req.answer, "admin remapped a reader");
    Ok(Json(MappedJson {
        id: reader,
        poll: req.poll,
        answer: req.answer,
    }))
}

/// `GET /api/admin/status`
#[derive(Serialize)]
pub struct StatusJson {
    /// RFC 3339, the web service's clock.
    pub now: String,
    pub polls: Vec<AdminPollJson>,
    pub readers: Vec<monitor::ReaderStatusJson>,
    pub devices: Vec<monitor::SenderJson>,
    pub services: Vec<monitor::SenderJson>,
    pub unknown_tags: monitor::UnknownTagsJson,
}

pub async fn status(_: AdminAuth, State(s): State<AppState>) -> Json<StatusJson> {
    let config = s.view.config.borrow().clone();
    let polls = config
        .polls_in_order()
        .into_iter()
        .map(|p| admin_poll(p, s.view.results_of(&p.poll_id).as_ref()))
        .collect();
    let snap = s.monitor.snapshot(&config);
    Json(StatusJson {
        now: tagpoll_proto::now().to_string(),
        polls,
        readers: snap.readers,
        devices: snap.devices,
        services: snap.services,
        unknown_tags: snap.unknown_tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same_digest(&digest(b"abc"), &digest(b"abc")));
        assert!(!same_digest(&digest(b"abc"), &digest(b"abd")));
        assert!(!same_digest(&digest(b"abc"), &digest(b"abcabc")));
    }

    #[test]
    fn map_bodies_name_the_bad_field() {
        let field = |body: &str| parse_map_request(body.as_bytes()).unwrap_err().1.field;
        assert_eq!(field(r#"{"poll":"p"}"#).as_deref(), Some("answer"));
        assert_eq!(field(r#"{"answer":"a"}"#).as_deref(), Some("poll"));
        assert_eq!(
            field(r#"{"poll":"p","answer":3}"#).as_deref(),
            Some("answer")
        );
        assert_eq!(
            field(r#"{"poll":"a.b","answer":"x"}"#).as_deref(),
            Some("poll")
        );
        assert_eq!(field("[1]").as_deref(), Some("body"));
        assert_eq!(field("nope").as_deref(), Some("body"));
        assert_eq!(
            parse_map_request(br#"{"poll":"p","answer":"a"}"#).unwrap(),
            MapRequest {
                poll: "p".into(),
                answer: "a".into()
            }
        );
    }

    #[test]
    fn actions_change_the_definition() {
        let mut p = v1::PollDefinition {
            rules: Some(v1::PollRules {
                opens_at: Some(tagpoll_proto::now()),
                ..Default::default()
            }),
            ..Default::default()
        };
        PollAction::Open.apply(&mut p);
        assert_eq!(p.state(), PollState::Open);
        assert!(p.rules.unwrap().opens_at.is_none());
        PollAction::Close.apply(&mut p);
        assert_eq!(p.state(), PollState::Closed);
        PollAction::Hide.apply(&mut p);
        assert!(p.results_hidden);
        PollAction::Reveal.apply(&mut p);
        assert!(!p.results_hidden);
        PollAction::Reset.apply(&mut p);
        PollAction::Reset.apply(&mut p);
        assert_eq!(p.run, 2);
    }
}
