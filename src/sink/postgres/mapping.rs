//! What the read models cannot hold as it is, and how it is mapped (reversibly).
//!
//! The log holds what the bot had: any Unicode string JSON can carry, U+0000 included. Postgres'
//! `text` and `jsonb` cannot hold U+0000, so every text and every string inside a JSON document
//! (object keys too) is mapped on the way in and back on the way out:
//!
//! | in the log | in Postgres |
//! |---|---|
//! | U+0000 | U+E000 `0` |
//! | U+E000 | U+E000 U+E000 |
//! | any other character | itself |
//!
//! U+E000 is the first character of the Private Use Area: text that holds neither U+0000 nor
//! U+E000 (all a bot ever writes in practice) is stored unchanged, so SQL over the tables sees
//! the plain text. The mapping is a bijection, so loading a row gives back exactly what was
//! projected, and `verify` compares the two sides through it.
//!
//! Times need no mapping: the read models keep them as milliseconds since the epoch (`bigint`,
//! migration 0002), which holds every time the log can hold.

use std::borrow::Cow;

use serde_json::Value;

/// The escape character of the mapping.
pub const ESCAPE: char = '\u{E000}';

/// A stored text that the mapping cannot have written (an escape followed by something else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("U+E000 followed by {next:?} is not a mapped character (expected `0` or U+E000)")]
pub struct BadEscape {
    /// What followed the escape (`None`: the end of the text).
    pub next: Option<char>,
}

fn needs_mapping(text: &str) -> bool {
    text.contains(['\0', ESCAPE])
}

/// A text as Postgres stores it.
pub fn text_in(text: &str) -> Cow<'_, str> {
    if !needs_mapping(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\0' => {
                out.push(ESCAPE);
                out.push('0');
            }
            ESCAPE => {
                out.push(ESCAPE);
                out.push(ESCAPE);
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// A stored text as the log had it.
///
/// # Errors
/// [`BadEscape`] for a text the mapping cannot have written.
pub fn text_out(stored: String) -> Result<String, BadEscape> {
    if !stored.contains(ESCAPE) {
        return Ok(stored);
    }
    let mut out = String::with_capacity(stored.len());
    let mut chars = stored.chars();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(ESCAPE) => out.push(ESCAPE),
            next => return Err(BadEscape { next }),
        }
    }
    Ok(out)
}

/// An optional text as Postgres stores it.
pub fn opt_text_in(text: Option<&str>) -> Option<String> {
    text.map(|t| text_in(t).into_owned())
}

/// An optional stored text as the log had it.
///
/// # Errors
/// As [`text_out`].
pub fn opt_text_out(stored: Option<String>) -> Result<Option<String>, BadEscape> {
    stored.map(text_out).transpose()
}

fn json_needs_mapping(value: &Value) -> bool {
    match value {
        Value::String(text) => needs_mapping(text),
        Value::Array(items) => items.iter().any(json_needs_mapping),
        Value::Object(members) => members
            .iter()
            .any(|(key, member)| needs_mapping(key) || json_needs_mapping(member)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn map_json(value: &Value, text: &impl Fn(&str) -> String) -> Value {
    match value {
        Value::String(s) => Value::String(text(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| map_json(v, text)).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, member)| (text(key), map_json(member, text)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A JSON document as Postgres stores it: every string and object key mapped.
pub fn json_in(value: &Value) -> Cow<'_, Value> {
    if !json_needs_mapping(value) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(map_json(value, &|s| text_in(s).into_owned()))
}

/// A stored JSON document as the log had it.
///
/// # Errors
/// As [`text_out`], for any string or key inside it.
pub fn json_out(stored: Value) -> Result<Value, BadEscape> {
    fn has_escape(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains(ESCAPE),
            Value::Array(items) => items.iter().any(has_escape),
            Value::Object(members) => members
                .iter()
                .any(|(key, member)| key.contains(ESCAPE) || has_escape(member)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    fn unmap(value: Value) -> Result<Value, BadEscape> {
        Ok(match value {
            Value::String(s) => Value::String(text_out(s)?),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(unmap).collect::<Result<_, _>>()?)
            }
            Value::Object(members) => Value::Object(
                members
                    .into_iter()
                    .map(|(key, member)| Ok((text_out(key)?, unmap(member)?)))
                    .collect::<Result<_, BadEscape>>()?,
            ),
            other => other,
        })
    }
    if !has_escape(&stored) {
        return Ok(stored);
    }
    unmap(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Proves the mapping is a bijection on texts with NULs and escapes, leaves plain text alone,
    /// and refuses a stored text it cannot have written.
    #[test]
    fn text_round_trips() {
        for text in [
            "",
            "plain",
            "a\0b",
            "\0\0",
            "\u{E000}",
            "\u{E000}0",
            "x\u{E000}\0y\u{E000}",
        ] {
            let stored = text_in(text);
            assert!(!stored.contains('\0'), "{stored:?}");
            assert_eq!(text_out(stored.into_owned()).unwrap(), text);
        }
        assert!(matches!(text_in("plain"), Cow::Borrowed("plain")));
        assert_eq!(text_in("a\0b"), "a\u{E000}0b");
        assert_eq!(
            text_out("a\u{E000}x".into()),
            Err(BadEscape { next: Some('x') })
        );
        assert_eq!(text_out("a\u{E000}".into()), Err(BadEscape { next: None }));
    }

    /// Proves JSON documents map every string and key, nested, and come back equal.
    #[test]
    fn json_round_trips() {
        let value = json!({"k\u{0}": ["\u{0}", {"\u{E000}": "v\u{0}"}], "n": 1, "plain": "x"});
        let stored = json_in(&value).into_owned();
        assert!(!stored.to_string().contains("\\u0000"), "{stored}");
        assert_eq!(json_out(stored).unwrap(), value);
        let plain = json!({"a": ["b", 1, null]});
        assert!(matches!(json_in(&plain), Cow::Borrowed(_)));
    }
}
