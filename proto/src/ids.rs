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

/// Most bytes a read id may have (a UUIDv7 has 36; `tagpoll tap`'s 52).
pub const MAX_READ_ID: usize = 128;

/// Checks a read id: 1 to [`MAX_READ_ID`] bytes of visible ASCII. It goes
/// into NATS headers (`Nats-Msg-Id`, `Tagpoll-Read-Id`), where a `\r` or
/// `\n` would make the client panic, and into logs: so it is checked where
/// a read enters, and a read whose id fails can never be processed.
pub fn check_read_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("read id is empty".into());
    }
    if s.len() > MAX_READ_ID {
        return Err(format!(
            "read id is {} bytes long, at most {MAX_READ_ID} are allowed",
            s.len()
        ));
    }
    if let Some(b) = s.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!(
            "read id contains byte 0x{b:02x}; only visible ASCII is allowed"
        ));
    }
    Ok(())
}

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

/// Parses a tag UID written as hex (`04A1B2C3`, `04:a1:b2:c3`) into
/// uppercase hex without separators; 4 to 10 bytes.
pub fn normalize_uid(s: &str) -> Result<String, String> {
    let hexs: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | ' '))
        .collect();
    if hexs.is_empty()
        || !hexs.len().is_multiple_of(2)
        || !hexs.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(format!(
            "tag {s:?} is not a UID in hex (an even number of hex digits, e.g. \"04A1B2C3\")"
        ));
    }
    let bytes = hexs.len() / 2;
    if !(4..=10).contains(&bytes) {
        return Err(format!("tag {s:?} has {bytes} bytes; UIDs have 4 to 10"));
    }
    Ok(hexs.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_ids_are_visible_ascii() {
        use super::check_read_id;
        assert!(check_read_id("018f2a6e-7b1c-7d3e-9a4b-2c1d0e9f8a7b").is_ok());
        assert!(check_read_id("cli-8e1b92f1e22e4742").is_ok());
        for bad in ["", "a\nb", "a\rb", "a b", "héllo", &"x".repeat(129)] {
            assert!(check_read_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_read_id("a\nb").unwrap_err().contains("0x0a"));
    }

    use super::*;

    #[test]
    fn accepts_plain_ids() {
        assert_eq!(check_id("poll-1_a"), Ok(()));
    }

    #[test]
    fn normalizes_uids() {
        assert_eq!(normalize_uid("04:a1:b2:c3"), Ok("04A1B2C3".into()));
        assert_eq!(
            normalize_uid("04-11-22-33-44-55-66"),
            Ok("04112233445566".into())
        );
        assert!(normalize_uid("0102").is_err());
        assert!(normalize_uid("XYZ").is_err());
        assert!(normalize_uid("123").is_err());
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
