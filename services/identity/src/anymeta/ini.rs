//! The subset of Python's ConfigParser format that anyMeta's `~/.anymeta` registry uses.
//!
//! Rules followed: `[section]` headers; `key = value` or `key: value` (split at the first `=` or
//! `:`, keys lowercased); lines starting with `#` or `;` are comments; a `;` preceded by
//! whitespace starts an inline comment; indented lines continue the previous value (joined with
//! `\n`, as ConfigParser writes multi-line values). Line numbers are 1-based.

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniSection {
    pub name: String,
    /// Line of the `[name]` header.
    pub line: usize,
    pub entries: Vec<IniEntry>,
}

impl IniSection {
    /// Keys are matched case-insensitively, as ConfigParser does.
    pub fn get(&self, key: &str) -> Option<&IniEntry> {
        let key = key.to_ascii_lowercase();
        self.entries.iter().find(|e| e.key == key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {detail}")]
pub struct IniError {
    pub line: usize,
    pub detail: String,
}

pub fn parse_ini(text: &str) -> Result<Vec<IniSection>, IniError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections: Vec<IniSection> = Vec::new();
    // Whether the previous non-blank line was an entry a continuation line may extend.
    let mut in_value = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |detail: String| IniError { line, detail };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            in_value = false;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) && in_value {
            if let Some(entry) = sections.last_mut().and_then(|s| s.entries.last_mut()) {
                entry.value.push('\n');
                entry.value.push_str(trimmed);
            }
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            let name = header
                .strip_suffix(']')
                .ok_or_else(|| err(format!("unterminated section header {trimmed:?}")))?
                .trim();
            if name.is_empty() {
                return Err(err("empty section name".into()));
            }
            if sections.iter().any(|s| s.name == name) {
                return Err(err(format!("duplicate section [{name}]")));
            }
            sections.push(IniSection {
                name: name.to_string(),
                line,
                entries: Vec::new(),
            });
            in_value = false;
            continue;
        }
        let split = trimmed.find(['=', ':']).ok_or_else(|| {
            err(format!(
                "expected `key = value` or `[section]`, got {trimmed:?}"
            ))
        })?;
        let key = trimmed[..split].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(err("missing key before `=`".into()));
        }
        let mut value = trimmed[split + 1..].trim();
        if let Some(pos) = value.find(" ;").or_else(|| value.find("\t;")) {
            value = value[..pos].trim_end();
        }
        let section = sections
            .last_mut()
            .ok_or_else(|| err(format!("key {key:?} before any [section]")))?;
        if section.entries.iter().any(|e| e.key == key) {
            return Err(err(format!(
                "duplicate key {key:?} in section [{}]",
                section.name
            )));
        }
        section.entries.push(IniEntry {
            key,
            value: value.to_string(),
            line,
        });
        in_value = true;
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_registry_file() {
        let text = "\u{feff}# anyMeta registry\n\
                    [mediamatic]\n\
                    entrypoint = http://www.mediamatic.net/services/rest/\n\
                    comment = Mediamatic ; the main site\n\
                    C_Key: abc=def\n\
                    \n\
                    ; another\n\
                    [test site]\n\
                    c_sec =\n\
                    t_key=x;y\n";
        let sections = parse_ini(text).unwrap();
        assert_eq!(sections.len(), 2);
        let m = &sections[0];
        assert_eq!((m.name.as_str(), m.line), ("mediamatic", 2));
        assert_eq!(
            m.get("entrypoint").unwrap().value,
            "http://www.mediamatic.net/services/rest/"
        );
        assert_eq!(m.get("comment").unwrap().value, "Mediamatic");
        // Split at the first `:` or `=`, whichever comes first; keys are case-insensitive.
        assert_eq!(m.get("c_key").unwrap().value, "abc=def");
        assert_eq!(m.get("C_KEY").unwrap().line, 5);
        let t = &sections[1];
        assert_eq!(t.name, "test site");
        assert_eq!(t.get("c_sec").unwrap().value, "");
        assert_eq!(t.get("t_key").unwrap().value, "x;y");
        assert!(t.get("t_sec").is_none());
    }

    #[test]
    fn continuation_lines_join_with_newline() {
        let sections = parse_ini("[s]\ncomment = one\n\ttwo\n  three\nk = v\n").unwrap();
        assert_eq!(sections[0].get("comment").unwrap().value, "one\ntwo\nthree");
        assert_eq!(sections[0].get("k").unwrap().value, "v");
    }

    #[test]
    fn errors_carry_line_numbers() {
        let cases = [
            ("k = v\n", 1, "before any [section]"),
            ("[s]\n\njunk\n", 3, "expected"),
            ("[s\n", 1, "unterminated"),
            ("[]\n", 1, "empty section"),
            ("[s]\n[s]\n", 2, "duplicate section"),
            ("[s]\na=1\nA=2\n", 3, "duplicate key"),
            ("[s]\n = v\n", 2, "missing key"),
        ];
        for (text, line, needle) in cases {
            let e = parse_ini(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.detail.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn empty_file_has_no_sections() {
        assert!(parse_ini("").unwrap().is_empty());
        assert!(parse_ini("# only a comment\n\n").unwrap().is_empty());
    }
}
