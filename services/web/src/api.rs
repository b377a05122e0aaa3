//! The public JSON API. Field names here are a contract other tools rely on.
//!
//! Results of a poll whose `results_hidden` is set never leave through these
//! handlers: [`public_results`] zeroes every count and adds `"hidden": true`,
//! so the contract's shape (poll, question, total, answers[id,label,votes])
//! holds either way and a client only has to look at one flag.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tagpoll_proto::v1::{self, PollState};

use crate::admin::Admin;
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
    /// Only present (and then `true`) while the poll's results are hidden.
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
    pub answers: Vec<AnswerJson>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct AnswerVotesJson {
    pub id: String,
    pub label: String,
    pub votes: u64,
}

/// `GET /api/polls/{poll}/results`, and every `results` event of `/api/events`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ResultsJson {
    pub poll: String,
    pub question: String,
    pub state: &'static str,
    pub total: u64,
    pub answers: Vec<AnswerVotesJson>,
    /// Only present (and then `true`) while results are hidden; every count is 0 then.
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
pub struct ReaderJson {
    pub id: String,
    pub poll: String,
    pub answer: String,
}

/// A JSON error body: `{"error": "...", "field": "..."}`.
#[derive(Serialize, Debug)]
pub struct ErrorJson {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An HTTP error with a JSON body.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub ErrorJson);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(self.1)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tagpoll-admin\""),
            );
        }
        resp
    }
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, field: Option<&str>) -> Self {
        ApiError(
            status,
            ErrorJson {
                error: error.into(),
                field: field.map(str::to_string),
            },
        )
    }

    pub fn not_found(what: impl Into<String>, field: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, what, Some(field))
    }

    pub fn bad_request(what: impl Into<String>, field: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, what, Some(field))
    }

    /// Well-formed, but names something that does not exist (an answer in a body).
    pub fn unprocessable(what: impl Into<String>, field: &str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, what, Some(field))
    }

    pub fn unauthorized(what: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, what, Some("authorization"))
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
/// published anything for the poll's current run. Reveals hidden counts:
/// only for the admin API and exports with the admin token.
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
        hidden: false,
    }
}

/// Whether the public may not see counts. The config is the organiser's
/// word; a snapshot of the current run that says hidden also hides, so a
/// hide that reaches the tally before the web service never leaks a count.
pub fn is_hidden(poll: &v1::PollDefinition, stored: Option<&v1::PollResults>) -> bool {
    poll.results_hidden || stored.is_some_and(|r| r.run == poll.run && r.results_hidden)
}

/// What the public may see of a poll's results.
pub fn public_results(poll: &v1::PollDefinition, stored: Option<&v1::PollResults>) -> ResultsJson {
    let mut r = results_json(poll, stored);
    if is_hidden(poll, stored) {
        r.hidden = true;
        r.total = 0;
        for a in &mut r.answers {
            a.votes = 0;
        }
    }
    r
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
                hidden: p.results_hidden,
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

/// The poll named in a path, or 404 naming the field `poll`.
pub fn find_poll(view: &View, poll_id: &str) -> Result<v1::PollDefinition, ApiError> {
    view.config
        .borrow()
        .polls
        .get(poll_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no poll {poll_id:?}"), "poll"))
}

/// `GET /api/polls/{poll}/results`
pub async fn results(
    State(view): State<View>,
    Path(poll_id): Path<String>,
) -> Result<Json<ResultsJson>, ApiError> {
    let poll = find_poll(&view, &poll_id)?;
    Ok(Json(public_results(
        &poll,
        view.results_of(&poll_id).as_ref(),
    )))
}

/// The JSON export: the results contract plus the run and when it was taken.
#[derive(Serialize)]
pub struct ExportJson {
    pub poll: String,
    pub question: String,
    pub state: &'static str,
    pub run: u32,
    pub total: u64,
    pub answers: Vec<AnswerVotesJson>,
    /// RFC 3339.
    pub exported_at: String,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExportFormat {
    Csv,
    Json,
}

/// `format` query parameter: `csv` or `json` (the default).
pub fn export_format(query: &HashMap<String, String>) -> Result<ExportFormat, ApiError> {
    match query.get("format").map(String::as_str) {
        None | Some("json") => Ok(ExportFormat::Json),
        Some("csv") => Ok(ExportFormat::Csv),
        Some(other) => Err(ApiError::bad_request(
            format!("unknown format {other:?}: use csv or json"),
            "format",
        )),
    }
}

/// One CSV field, quoted when it has to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV with a header row, one row per answer in the poll's order.
pub fn export_csv(poll: &v1::PollDefinition, results: &ResultsJson) -> String {
    let mut out = String::from("poll,run,answer,label,votes\n");
    for a in &results.answers {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            csv_field(&poll.poll_id),
            poll.run,
            csv_field(&a.id),
            csv_field(&a.label),
            a.votes
        ));
    }
    out
}

/// `GET /api/polls/{poll}/export?format=csv|json`: the current run's counts.
/// While results are hidden only a request with the admin token gets them
/// (403 otherwise), so organisers can still take them out.
pub async fn export(
    State(view): State<View>,
    State(admin): State<Admin>,
    Path(poll_id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let poll = find_poll(&view, &poll_id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text(), "query"))?;
    let format = export_format(&query)?;
    let stored = view.results_of(&poll_id);
    if is_hidden(&poll, stored.as_ref()) && admin.check(&headers).is_err() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("results of poll {poll_id:?} are hidden; reveal them or send the admin token"),
            Some("poll"),
        ));
    }
    let results = results_json(&poll, stored.as_ref());
    let file = format!("{}-run{}", poll.poll_id, poll.run);
    Ok(match format {
        ExportFormat::Csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}.csv\""),
                ),
            ],
            export_csv(&poll, &results),
        )
            .into_response(),
        ExportFormat::Json => (
            [(
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{file}.json\""),
            )],
            Json(ExportJson {
                poll: results.poll,
                question: results.question,
                state: results.state,
                run: poll.run,
                total: results.total,
                answers: results.answers,
                exported_at: tagpoll_proto::now().to_string(),
            }),
        )
            .into_response(),
    })
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

/// `GET /api/openapi.json`: the hand-written description of every route.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// The OpenAPI 3 document; a unit test checks it lists every route.
pub const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");

/// Unmatched paths: a JSON 404 rather than an empty body.
pub async fn fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {}", uri.path()),
        Some("path"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll() -> v1::PollDefinition {
        v1::PollDefinition {
            poll_id: "p".into(),
            question: "Q".into(),
            answers: vec![
                v1::Answer {
                    id: "b".into(),
                    label: "B, \"bee\"".into(),
                },
                v1::Answer {
                    id: "a".into(),
                    label: "A".into(),
                },
            ],
            run: 1,
            ..Default::default()
        }
    }

    fn stored() -> v1::PollResults {
        v1::PollResults {
            poll_id: "p".into(),
            answers: vec![v1::AnswerCount {
                answer_id: "a".into(),
                label: "A".into(),
                votes: 2,
            }],
            run: 1,
            ..Default::default()
        }
    }

    #[test]
    fn results_follow_definition_order_and_ignore_old_runs() {
        let poll = poll();
        let r = results_json(&poll, Some(&stored()));
        assert_eq!(r.answers[0].id, "b");
        assert_eq!((r.answers[0].votes, r.answers[1].votes, r.total), (0, 2, 2));
        let old = v1::PollResults { run: 0, ..stored() };
        assert_eq!(results_json(&poll, Some(&old)).total, 0);
    }

    #[test]
    fn hidden_results_keep_their_shape_but_no_counts() {
        let mut poll = poll();
        let visible = serde_json::to_value(public_results(&poll, Some(&stored()))).unwrap();
        assert!(visible.get("hidden").is_none(), "{visible}");
        assert_eq!(visible["total"], 2);

        poll.results_hidden = true;
        let hidden = serde_json::to_value(public_results(&poll, Some(&stored()))).unwrap();
        assert_eq!(hidden["hidden"], true);
        assert_eq!(hidden["total"], 0);
        assert!(
            hidden["answers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["votes"] == 0)
        );

        // A snapshot of the current run saying hidden hides too; an old run's does not.
        poll.results_hidden = false;
        let snap = v1::PollResults {
            results_hidden: true,
            ..stored()
        };
        assert!(public_results(&poll, Some(&snap)).hidden);
        let old = v1::PollResults { run: 0, ..snap };
        assert!(!public_results(&poll, Some(&old)).hidden);
    }

    #[test]
    fn export_formats_and_csv_quoting() {
        let q = |v: &str| HashMap::from([("format".to_string(), v.to_string())]);
        assert_eq!(export_format(&HashMap::new()).unwrap(), ExportFormat::Json);
        assert_eq!(export_format(&q("csv")).unwrap(), ExportFormat::Csv);
        let err = export_format(&q("xml")).unwrap_err();
        assert_eq!(
            (err.0, err.1.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("format"))
        );

        let poll = poll();
        let csv = export_csv(&poll, &results_json(&poll, Some(&stored())));
        assert_eq!(
            csv,
            "poll,run,answer,label,votes\np,1,b,\"B, \"\"bee\"\"\",0\np,1,a,A,2\n"
        );
    }
}
