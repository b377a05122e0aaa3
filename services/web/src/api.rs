//! The public JSON API. Field names here are a contract other tools rely on.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tagpoll_proto::v1::{self, PollState};

use crate::view::View;

#[derive(Serialize)]
pub struct AnswerJson {
    pub id: String,
    pub label: String,
}

#[derive(Serialize)]
pub struct PollJson {
    pub id: String,
    pub question: String,
    pub state: &'static str,
    pub answers: Vec<AnswerJson>,
}

#[derive(Serialize, Clone)]
pub struct AnswerVotesJson {
    pub id: String,
    pub label: String,
    pub votes: u64,
}

#[derive(Serialize, Clone)]
pub struct ResultsJson {
    pub poll: String,
    pub question: String,
    pub state: &'static str,
    pub total: u64,
    pub answers: Vec<AnswerVotesJson>,
}

#[derive(Serialize)]
pub struct ReaderJson {
    pub id: String,
    pub poll: String,
    pub answer: String,
}

/// A JSON error body: `{"error": "...", "field": "..."}`.
#[derive(Serialize)]
pub struct ErrorJson {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An HTTP error with a JSON body.
pub struct ApiError(pub StatusCode, pub ErrorJson);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl ApiError {
    pub fn not_found(what: impl Into<String>, field: &str) -> Self {
        ApiError(
            StatusCode::NOT_FOUND,
            ErrorJson {
                error: what.into(),
                field: Some(field.into()),
            },
        )
    }
}

/// Lower-case name of a poll state, as used in JSON.
pub fn state_name(state: PollState) -> &'static str {
    match state {
        PollState::Open => "open",
        PollState::Closed => "closed",
        PollState::Draft | PollState::Unspecified => "draft",
    }
}

/// Results of `poll` in its definition's order; zero counts until the tally
/// published anything for the poll's current run.
pub fn results_json(poll: &v1::PollDefinition, stored: Option<&v1::PollResults>) -> ResultsJson {
    let stored = stored.filter(|r| r.run == poll.run);
    let answers: Vec<AnswerVotesJson> = poll
        .answers
        .iter()
        .map(|a| AnswerVotesJson {
            id: a.id.clone(),
            label: a.label.clone(),
            votes: stored
                .and_then(|r| r.answers.iter().find(|c| c.answer_id == a.id))
                .map_or(0, |c| c.votes),
        })
        .collect();
    ResultsJson {
        poll: poll.poll_id.clone(),
        question: poll.question.clone(),
        state: state_name(poll.state()),
        total: answers.iter().map(|a| a.votes).sum(),
        answers,
    }
}

/// `GET /api/polls`
pub async fn polls(State(view): State<View>) -> Json<Vec<PollJson>> {
    let config = view.config.borrow().clone();
    Json(
        config
            .polls_in_order()
            .into_iter()
            .map(|p| PollJson {
                id: p.poll_id.clone(),
                question: p.question.clone(),
                state: state_name(p.state()),
                answers: p
                    .answers
                    .iter()
                    .map(|a| AnswerJson {
                        id: a.id.clone(),
                        label: a.label.clone(),
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// `GET /api/polls/{poll}/results`
pub async fn results(
    State(view): State<View>,
    Path(poll_id): Path<String>,
) -> Result<Json<ResultsJson>, ApiError> {
    let config = view.config.borrow().clone();
    let poll = config
        .polls
        .get(&poll_id)
        .ok_or_else(|| ApiError::not_found(format!("no poll {poll_id:?}"), "poll"))?;
    Ok(Json(results_json(poll, view.results_of(&poll_id).as_ref())))
}

/// `GET /api/readers`
pub async fn readers(State(view): State<View>) -> Json<Vec<ReaderJson>> {
    let config = view.config.borrow().clone();
    Json(
        config
            .readers
            .values()
            .map(|r| ReaderJson {
                id: r.reader_id.clone(),
                poll: r.poll_id.clone(),
                answer: r.answer_id.clone(),
            })
            .collect(),
    )
}

/// `GET /healthz`: 200 once connected to NATS.
pub async fn healthz(State(view): State<View>) -> (StatusCode, &'static str) {
    if view.connected() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS not connected\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_follow_definition_order_and_ignore_old_runs() {
        let poll = v1::PollDefinition {
            poll_id: "p".into(),
            question: "Q".into(),
            answers: vec![
                v1::Answer {
                    id: "b".into(),
                    label: "B".into(),
                },
                v1::Answer {
                    id: "a".into(),
                    label: "A".into(),
                },
            ],
            run: 1,
            ..Default::default()
        };
        let stored = v1::PollResults {
            poll_id: "p".into(),
            answers: vec![v1::AnswerCount {
                answer_id: "a".into(),
                label: "A".into(),
                votes: 2,
            }],
            run: 1,
            ..Default::default()
        };
        let r = results_json(&poll, Some(&stored));
        assert_eq!(r.answers[0].id, "b");
        assert_eq!((r.answers[0].votes, r.answers[1].votes, r.total), (0, 2, 2));
        let old = v1::PollResults { run: 0, ..stored };
        assert_eq!(results_json(&poll, Some(&old)).total, 0);
    }
}
