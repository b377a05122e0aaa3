//! The CSV people file (`TAGPOLL_IDENTITY_CSV`): one tag per line, `tag_uid,person_id,name`.
//!
//! Read and validated once at start; every problem is reported with its line number (all of
//! them, not just the first), and the service does not start with a broken file.
//!
//! - An optional header line `tag_uid,person_id,name` (any case) is skipped.
//! - Blank lines and lines starting with `#` are skipped.
//! - Fields may be quoted (`"Jansen, Jan"`, `""` inside quotes is one `"`); whitespace around
//!   fields is trimmed; a UTF-8 byte-order mark is ignored.
//! - `tag_uid`: hex as in the event file (`04A1B2C3`, `04:a1:b2:c3`), 4 to 10 bytes.
//! - `person_id`: 1–64 characters of `A-Z a-z 0-9 - _`; the voter is `file:{person_id}`, the
//!   same voter as an event-file person with that id.
//! - `name`: may be empty. A tag may appear only once.

use std::collections::HashMap;
use std::path::Path;

use tagpoll_proto::v1;

/// The environment variable naming the file.
pub const ENV_CSV: &str = "TAGPOLL_IDENTITY_CSV";

/// Tags from the CSV file, by uppercase hex UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsvPeople {
    pub tags: HashMap<String, v1::TagOwner>,
}

/// Everything wrong with a CSV file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(|(l, m)| format!("{path}:{l}: {m}")).collect::<Vec<_>>().join("\n"))]
pub struct CsvError {
    pub path: String,
    /// (line, message), in line order.
    pub problems: Vec<(usize, String)>,
}

impl CsvPeople {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, CsvError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CsvError {
            path: shown.clone(),
            problems: vec![(0, format!("cannot read: {e}"))],
        })?;
        Self::parse(&text, &shown)
    }

    /// Validates CSV text; `path` is only used in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, CsvError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut tags: HashMap<String, v1::TagOwner> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut problems = Vec::new();
        let mut seen_data = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields = match split_fields(trimmed) {
                Ok(f) => f,
                Err(e) => {
                    problems.push((line, e));
                    continue;
                }
            };
            if !seen_data && is_header(&fields) {
                seen_data = true;
                continue;
            }
            seen_data = true;
            if fields.len() != 3 {
                problems.push((
                    line,
                    format!(
                        "expected 3 fields (tag_uid,person_id,name), found {}",
                        fields.len()
                    ),
                ));
                continue;
            }
            let uid = match tagpoll_proto::ids::normalize_uid(&fields[0]) {
                Ok(u) => u,
                Err(e) => {
                    problems.push((line, e));
                    continue;
                }
            };
            let person = fields[1].clone();
            if let Err(e) = tagpoll_proto::ids::check_id(&person) {
                problems.push((line, format!("person id {person:?} {e}")));
                continue;
            }
            if let Some(prev) = first_line.get(&uid) {
                problems.push((line, format!("tag {uid} is already listed on line {prev}")));
                continue;
            }
            first_line.insert(uid.clone(), line);
            tags.insert(
                uid.clone(),
                v1::TagOwner {
                    tag_uid_hex: uid,
                    person_id: person,
                    display_name: fields[2].clone(),
                },
            );
        }
        if problems.is_empty() {
            Ok(CsvPeople { tags })
        } else {
            Err(CsvError {
                path: path.to_string(),
                problems,
            })
        }
    }
}

fn is_header(fields: &[String]) -> bool {
    let lower: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
    lower == ["tag_uid", "person_id", "name"]
}

/// Splits one line at commas outside double quotes.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        // Skip leading whitespace of the field.
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_comments_quotes_and_normalises_uids() {
        let text = "\u{feff}tag_uid,person_id,name\n\
                    # staff\n\
                    04:a1:b2:c3, alice , Alice\n\
                    \n\
                    7E6FD7A0,bob,\"Bouwer, Bob \"\"B\"\"\"\n\
                    0A0B0C0D,carol,\n";
        let p = CsvPeople::parse(text, "people.csv").unwrap();
        assert_eq!(p.tags.len(), 3);
        assert_eq!(p.tags["04A1B2C3"].person_id, "alice");
        assert_eq!(p.tags["04A1B2C3"].display_name, "Alice");
        assert_eq!(p.tags["7E6FD7A0"].display_name, "Bouwer, Bob \"B\"");
        assert_eq!(p.tags["0A0B0C0D"].display_name, "");
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let text = "tag_uid,person_id,name\n\
                    04A1B2C3,alice,Alice\n\
                    XYZ,bob,Bob\n\
                    04A1B2C3,carol,Carol\n\
                    0A0B0C0D,no spaces,Dan\n\
                    0A0B0C0E,erin\n\
                    \"0A0B0C0F,frank,Frank\n";
        let e = CsvPeople::parse(text, "people.csv").unwrap_err();
        let lines: Vec<usize> = e.problems.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7], "{e}");
        let msg = e.to_string();
        assert!(msg.contains("people.csv:3: tag \"XYZ\""), "{msg}");
        assert!(
            msg.contains("people.csv:4: tag 04A1B2C3 is already listed on line 2"),
            "{msg}"
        );
        assert!(
            msg.contains("people.csv:5: person id \"no spaces\""),
            "{msg}"
        );
        assert!(msg.contains("people.csv:6: expected 3 fields"), "{msg}");
        assert!(
            msg.contains("people.csv:7: unterminated quoted field"),
            "{msg}"
        );
    }

    #[test]
    fn a_header_is_only_recognised_first() {
        let e = CsvPeople::parse("04A1B2C3,a,A\ntag_uid,person_id,name\n", "f").unwrap_err();
        assert_eq!(e.problems[0].0, 2);
    }
}
