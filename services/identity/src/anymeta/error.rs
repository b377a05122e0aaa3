//! Errors of anyMeta calls, split so the caller can tell "try again later" from "fix the config".

/// anyMeta's "user not logged on" error code: for OAuth calls it means the credentials are wrong.
pub const CODE_NOT_LOGGED_ON: i64 = 99;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnyMetaError {
    /// Connecting failed: refused, DNS, no route.
    #[error("anyMeta unreachable: {detail}")]
    Unreachable { detail: String },
    /// No complete answer within the per-request timeout (connect included).
    #[error("anyMeta request timed out")]
    Timeout,
    /// The connection broke after it was made (reset, closed mid-answer).
    #[error("anyMeta transport error: {detail}")]
    Transport { detail: String },
    #[error("anyMeta server error: HTTP {status}")]
    Server5xx { status: u16 },
    /// Any other non-2xx answer without an anyMeta error body (e.g. 404 for a wrong entry point).
    #[error("anyMeta answered HTTP {status}")]
    HttpStatus { status: u16 },
    /// The body is not JSON, or not the shape the method answers with.
    #[error("malformed anyMeta answer: {detail}")]
    Malformed { detail: String },
    /// anyMeta's own error answer (`{"err":{"-attrib-":{"code":…,"msg":…}}}`).
    #[error("anyMeta error {code}: {msg}")]
    Api { code: i64, msg: String },
    /// Error code 99 ("not logged on"): the OAuth credentials were not accepted.
    #[error("anyMeta refused the credentials: {msg}")]
    BadCredentials { msg: String },
    /// The call's arguments cannot be sent (a bug in the caller, not a server problem).
    #[error("invalid anyMeta call: {detail}")]
    InvalidArgs { detail: String },
    /// The client could not be built from its configuration.
    #[error("invalid anyMeta client configuration: {detail}")]
    Config { detail: String },
}

impl AnyMetaError {
    /// Whether retrying the same call later may succeed. Credential, API and 4xx errors will not
    /// change by themselves (except 408/429, which ask for a retry); a malformed answer is
    /// treated as transient because proxies and overloaded PHP back ends produce them.
    pub fn is_transient(&self) -> bool {
        match self {
            AnyMetaError::Unreachable { .. }
            | AnyMetaError::Timeout
            | AnyMetaError::Transport { .. }
            | AnyMetaError::Server5xx { .. }
            | AnyMetaError::Malformed { .. } => true,
            AnyMetaError::HttpStatus { status } => matches!(status, 408 | 429),
            AnyMetaError::Api { .. }
            | AnyMetaError::BadCredentials { .. }
            | AnyMetaError::InvalidArgs { .. }
            | AnyMetaError::Config { .. } => false,
        }
    }

    /// Builds the error for an anyMeta error answer.
    pub fn from_api(code: i64, msg: impl Into<String>) -> Self {
        let msg = msg.into();
        if code == CODE_NOT_LOGGED_ON {
            AnyMetaError::BadCredentials { msg }
        } else {
            AnyMetaError::Api { code, msg }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        let transient = [
            AnyMetaError::Unreachable { detail: "x".into() },
            AnyMetaError::Timeout,
            AnyMetaError::Transport { detail: "x".into() },
            AnyMetaError::Server5xx { status: 502 },
            AnyMetaError::Malformed { detail: "x".into() },
            AnyMetaError::HttpStatus { status: 429 },
        ];
        let permanent = [
            AnyMetaError::HttpStatus { status: 404 },
            AnyMetaError::HttpStatus { status: 401 },
            AnyMetaError::Api {
                code: 4,
                msg: "x".into(),
            },
            AnyMetaError::BadCredentials { msg: "x".into() },
            AnyMetaError::InvalidArgs { detail: "x".into() },
            AnyMetaError::Config { detail: "x".into() },
        ];
        for e in transient {
            assert!(e.is_transient(), "{e:?}");
        }
        for e in permanent {
            assert!(!e.is_transient(), "{e:?}");
        }
    }

    #[test]
    fn code_99_is_bad_credentials() {
        assert_eq!(
            AnyMetaError::from_api(99, "not logged on"),
            AnyMetaError::BadCredentials {
                msg: "not logged on".into()
            }
        );
        assert_eq!(
            AnyMetaError::from_api(5, "nope"),
            AnyMetaError::Api {
                code: 5,
                msg: "nope".into()
            }
        );
    }
}
