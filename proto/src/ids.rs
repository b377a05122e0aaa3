//! Identifiers that end up inside NATS subjects and KV keys.
//!
//! Poll, answer, reader and device ids are chosen by people in an event file
//! and then embedded in subjects (`tagpoll.reads.{device}.{reader}`), so they
//! are checked once, here: 1 to 64 characters of `A-Z a-z 0-9 - _`.

use std::fmt;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong(usize),
    BadChar(char),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong(n) => write!(f, "is {n} characters long, at most 64 are allowed"),
            IdError::BadChar(c) => write!(
                f,
                "contains {c:?}; only letters, digits, '-' and '_' are allowed"
            ),
        }
    }
}

impl std::error::Error for IdError {}

/// Checks that `s` can be used as a poll, answer, reader or device id.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.chars().count() > 64 {
        return Err(IdError::TooLong(s.chars().count()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        assert_eq!(check_id("poll-1_a"), Ok(()));
    }

    #[test]
    fn rejects_subject_breaking_ids() {
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id("a.b"), Err(IdError::BadChar('.')));
        assert_eq!(check_id("a*"), Err(IdError::BadChar('*')));
        assert_eq!(check_id("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(check_id(&"x".repeat(65)), Err(IdError::TooLong(65)));
    }
}
