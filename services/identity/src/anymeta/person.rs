//! Turning an `identity.identify` answer into a [`Person`].
//!
//! The answer's schema was never documented; this follows what the old clients read (ikCam,
//! java-anymeta) and is lenient where anyMeta is known to be loose (id keys, numbers as strings,
//! nested vs. dotted field names).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::AnyMetaError;

/// The person a tag belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Person {
    /// anyMeta thing id of the person.
    pub rsc_id: String,
    /// Plain text; empty when the profile is not visible to the API user.
    pub display_name: String,
    /// `{site}/id/{rsc_id}`, the canonical resource URI.
    pub profile_url: String,
}

/// Display-name candidates in ikCam's order of preference.
const NAME_FIELDS: [&[&str]; 5] = [
    &["name", "first"],
    &["name", "full"],
    &["text", "title_short"],
    &["text", "title"],
    &["title"],
];

impl Person {
    /// Interprets an `identity.identify` answer. Falsy answers (`null`, `false`, `""`, `[]`, `{}`)
    /// mean "no person has this tag". `site` is the site URL without a trailing slash.
    pub fn from_identify_answer(
        answer: &Value,
        site: &str,
    ) -> Result<Option<Person>, AnyMetaError> {
        let obj = match answer {
            Value::Null | Value::Bool(false) => return Ok(None),
            Value::String(s) if s.trim().is_empty() => return Ok(None),
            Value::Array(a) if a.is_empty() => return Ok(None),
            Value::Object(o) if o.is_empty() => return Ok(None),
            Value::Object(o) => o,
            other => {
                return Err(AnyMetaError::Malformed {
                    detail: format!("identify answered {}", preview(other)),
                });
            }
        };
        let rsc_id =
            id_of(obj, "rsc_id")?
                .or(id_of(obj, "id")?)
                .ok_or_else(|| AnyMetaError::Malformed {
                    detail: format!("identify answer has no rsc_id or id: {}", preview(answer)),
                })?;
        let display_name = NAME_FIELDS
            .iter()
            .filter_map(|path| field(obj, path))
            .map(|raw| html_to_text(&raw))
            .find(|name| !name.is_empty())
            .unwrap_or_default();
        let profile_url = profile_url(site, &rsc_id);
        Ok(Some(Person {
            rsc_id,
            display_name,
            profile_url,
        }))
    }
}

/// `{site}/id/{rsc_id}` with the id made safe as one path segment.
pub fn profile_url(site: &str, rsc_id: &str) -> String {
    format!(
        "{}/id/{}",
        site.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(rsc_id, percent_encoding::NON_ALPHANUMERIC)
    )
}

fn id_of(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, AnyMetaError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(other) => Err(AnyMetaError::Malformed {
            detail: format!("identify answer has unusable {key}: {}", preview(other)),
        }),
    }
}

/// Looks a field up both as a dotted key (`"name.first"`) and nested (`{"name":{"first":…}}`).
fn field(obj: &Map<String, Value>, path: &[&str]) -> Option<String> {
    let dotted = obj.get(&path.join(".")).and_then(text_of);
    dotted.or_else(|| {
        let mut cur = obj.get(path[0])?;
        for part in &path[1..] {
            cur = cur.as_object()?.get(*part)?;
        }
        text_of(cur)
    })
}

/// A text value: a string, a number, or a language map (`{"en": …, "nl": …}`, English preferred).
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(langs) => langs
            .get("en")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .or_else(|| {
                langs
                    .values()
                    .filter_map(Value::as_str)
                    .find(|s| !s.trim().is_empty())
            })
            .map(str::to_string),
        _ => None,
    }
}

fn preview(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Strips tags, decodes entities and collapses whitespace: titles in anyMeta may hold markup.
///
/// Only a `<` followed by a letter, `/`, `!` or `?` opens a tag, so `a < b` survives. Block-level
/// tags (`br`, `p`, `div`, `li`, headings) become spaces so words on separate lines stay apart.
pub fn html_to_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        text.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let opens_tag = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'));
        match after.find('>') {
            Some(gt) if opens_tag => {
                if is_block_tag(&after[..gt]) {
                    text.push(' ');
                }
                rest = &after[gt + 1..];
            }
            _ => {
                text.push('<');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    let decoded = decode_entities(&text);
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_block_tag(tag: &str) -> bool {
    let name: String = tag
        .trim_start_matches('/')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(
        name.as_str(),
        "br" | "p"
            | "div"
            | "li"
            | "ul"
            | "ol"
            | "tr"
            | "td"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
    )
}

/// Decodes the named entities that occur in practice plus all numeric ones; unknown entities are
/// left as written.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let decoded = after
            .find(';')
            .filter(|&semi| semi <= 10)
            .and_then(|semi| entity(&after[..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        return char::from_u32(code).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "eacute" => 'é',
        "euml" => 'ë',
        "iuml" => 'ï',
        "ouml" => 'ö',
        "uuml" => 'ü',
        "auml" => 'ä',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SITE: &str = "https://www.mediamatic.net";

    fn person(v: Value) -> Person {
        Person::from_identify_answer(&v, SITE).unwrap().unwrap()
    }

    #[test]
    fn falsy_answers_are_unknown_tags() {
        for v in [
            json!(null),
            json!(false),
            json!(""),
            json!("  "),
            json!([]),
            json!({}),
        ] {
            assert_eq!(Person::from_identify_answer(&v, SITE), Ok(None), "{v}");
        }
    }

    #[test]
    fn other_shapes_are_malformed() {
        for v in [
            json!(true),
            json!(3),
            json!("Jan"),
            json!([{"rsc_id": 1}]),
            json!({"title": "x"}),
        ] {
            let e = Person::from_identify_answer(&v, SITE).unwrap_err();
            assert!(matches!(e, AnyMetaError::Malformed { .. }), "{v}: {e:?}");
        }
        let e = Person::from_identify_answer(&json!({"rsc_id": 1.5}), SITE).unwrap_err();
        assert!(matches!(e, AnyMetaError::Malformed { .. }));
        let e = Person::from_identify_answer(&json!({"rsc_id": {"x": 1}}), SITE).unwrap_err();
        assert!(matches!(e, AnyMetaError::Malformed { .. }));
    }

    #[test]
    fn id_as_number_string_or_fallback() {
        assert_eq!(person(json!({"rsc_id": 1234, "title": "A"})).rsc_id, "1234");
        assert_eq!(
            person(json!({"rsc_id": " 1234 ", "title": "A"})).rsc_id,
            "1234"
        );
        assert_eq!(person(json!({"id": "77", "title": "A"})).rsc_id, "77");
        assert_eq!(person(json!({"rsc_id": null, "id": 78})).rsc_id, "78");
        assert_eq!(person(json!({"rsc_id": 5, "id": 78})).rsc_id, "5");
    }

    #[test]
    fn profile_url_from_site() {
        let p = person(json!({"rsc_id": 1234, "title": "A"}));
        assert_eq!(p.profile_url, "https://www.mediamatic.net/id/1234");
        assert_eq!(
            profile_url("http://h:8/sub/", "a b/c"),
            "http://h:8/sub/id/a%20b%2Fc"
        );
    }

    #[test]
    fn display_name_preference_nested_and_dotted() {
        let all = json!({
            "rsc_id": 1, "title": "T",
            "text": {"title": "TT", "title_short": "TS"},
            "name": {"full": "Jan Jansen", "first": "Jan"},
        });
        assert_eq!(person(all).display_name, "Jan");
        assert_eq!(
            person(json!({"rsc_id": 1, "title": "T", "name.full": "Jan Jansen"})).display_name,
            "Jan Jansen"
        );
        assert_eq!(
            person(json!({"rsc_id": 1, "title": "T", "text.title": "TT", "text": {"title_short": "TS"}}))
                .display_name,
            "TS"
        );
        assert_eq!(
            person(json!({"rsc_id": 1, "title": "T", "name": {"first": "  "}})).display_name,
            "T"
        );
        assert_eq!(
            person(json!({"rsc_id": 1, "text": {"title": {"nl": "Hoi", "en": "Hi"}}})).display_name,
            "Hi"
        );
        assert_eq!(person(json!({"rsc_id": 1})).display_name, "");
    }

    #[test]
    fn html_is_stripped_and_decoded() {
        assert_eq!(html_to_text("<b>Jan</b> &amp; <i>Piet</i>"), "Jan & Piet");
        assert_eq!(html_to_text("Line<br/>Two<p>Three</p>"), "Line Two Three");
        assert_eq!(html_to_text("a < b &lt;c&gt;"), "a < b <c>");
        assert_eq!(
            html_to_text("Ren&eacute;e &#233; &#xE9; &#x1F600;"),
            "Renée é é 😀"
        );
        assert_eq!(html_to_text("AT&T &bogus; &#0; &"), "AT&T &bogus; &#0; &");
        assert_eq!(html_to_text("  a \n\t b&nbsp;c "), "a b c");
        assert_eq!(html_to_text("<a href=\"x\">unclosed <b"), "unclosed <b");
        assert_eq!(html_to_text("<!-- c -->x"), "x");
    }

    #[test]
    fn title_html_in_answer() {
        let p =
            person(json!({"rsc_id": "9", "title": "<span class=\"x\">Marie&nbsp;Curie</span>"}));
        assert_eq!(p.display_name, "Marie Curie");
    }
}
