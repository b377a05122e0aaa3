//! PHP-style flattening of nested call arguments (`data[text][title]=…`, `ids[0]=65`), the form
//! anyMeta's PHP back end parses into arrays.

use serde_json::Value;

/// The arguments cannot be sent as an anyMeta call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid call arguments: {0}")]
pub struct ArgsError(pub String);

/// Flattens an argument object into form pairs (list order kept; object key order is serde_json's).
///
/// The top level must be an object (or `null` for no arguments): a bare list has no names, and
/// java-anymeta refuses it too. Scalars: strings as-is, numbers in JSON notation, booleans as
/// PHP does (`1`/`0`), `null` leaves the parameter out. An empty nested object or list sends
/// nothing, as in python-anymeta.
pub fn flatten_args(args: &Value) -> Result<Vec<(String, String)>, ArgsError> {
    let mut out = Vec::new();
    match args {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                if k.is_empty() {
                    return Err(ArgsError("empty argument name".into()));
                }
                flatten_into(k.clone(), v, &mut out);
            }
        }
        other => {
            return Err(ArgsError(format!(
                "top level must be an object, not {}",
                kind(other)
            )));
        }
    }
    Ok(out)
}

fn flatten_into(prefix: String, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix, if *b { "1" } else { "0" }.to_string())),
        Value::Number(n) => out.push((prefix, n.to_string())),
        Value::String(s) => out.push((prefix, s.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten_into(format!("{prefix}[{i}]"), item, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten_into(format!("{prefix}[{k}]"), v, out);
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sorted, because serde_json may or may not preserve object key order (a feature flag).
    fn flat(v: Value) -> Vec<(String, String)> {
        let mut out = flatten_args(&v).unwrap();
        out.sort();
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = p
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn scalars_at_top_level() {
        assert_eq!(
            flat(json!({"type": "rfid", "raw": "urn:rfid:7E6FD7A0"})),
            pairs(&[("type", "rfid"), ("raw", "urn:rfid:7E6FD7A0")])
        );
        assert_eq!(
            flat(json!({"n": 65, "f": 1.5, "t": true, "no": false, "gone": null})),
            pairs(&[("n", "65"), ("f", "1.5"), ("t", "1"), ("no", "0")])
        );
    }

    #[test]
    fn nested_objects_and_lists() {
        assert_eq!(
            flat(json!({
                "data": {"kind": "ARTEFACT", "text": {"title": "Hi", "intro": "x"}},
                "ids": [94, 65],
                "field": ["text.title"],
                "deep": [{"a": [1, {"b": "c"}]}],
            })),
            pairs(&[
                ("data[kind]", "ARTEFACT"),
                ("data[text][title]", "Hi"),
                ("data[text][intro]", "x"),
                ("ids[0]", "94"),
                ("ids[1]", "65"),
                ("field[0]", "text.title"),
                ("deep[0][a][0]", "1"),
                ("deep[0][a][1][b]", "c"),
            ])
        );
    }

    #[test]
    fn empty_containers_send_nothing() {
        assert!(flat(json!({"a": {}, "b": []})).is_empty());
        assert!(flat(Value::Null).is_empty());
        assert!(flat(json!({})).is_empty());
    }

    #[test]
    fn top_level_must_be_an_object() {
        for bad in [json!([1, 2]), json!("x"), json!(3), json!(true)] {
            assert!(flatten_args(&bad).is_err(), "{bad}");
        }
        assert!(flatten_args(&json!({"": 1})).is_err());
    }
}
