//! Finding one member of a JSON object without parsing the rest.
//!
//! The gateway reads an answer's top-level `usage` to price it and splice `usage.cost` into
//! it. Parsing the whole answer for that (even into ignored values) walked every byte of it
//! through serde: about 9,000 instructions for a short chat answer, on every request. The
//! scanner here skips values instead: strings by `memchr` to their next quote or backslash,
//! containers by counting brackets outside strings. It does not validate: it expects JSON
//! the gateway already parsed or wrote, and on anything else it returns `None` or a range
//! whose bytes the caller parses (it never panics and never reads out of bounds).

use std::ops::Range;

/// The byte range of the value of member `key` of the object `body` holds (the last one if
/// the key repeats), ignoring members of nested objects. `key` is compared with the raw
/// bytes between the quotes of each member name.
pub fn top_level_value(body: &[u8], key: &[u8]) -> Option<Range<usize>> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b'}' => return found,
            b'"' => {}
            _ => return None,
        }
        let name_end = string_end(body, i + 1)?;
        let name = &body[i + 1..name_end - 1];
        i = skip_ws(body, name_end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(body, i + 1);
        let end = value_end(body, start)?;
        if name == key {
            found = Some(start..end);
        }
        i = skip_ws(body, end);
        match body.get(i)? {
            b',' => i += 1,
            b'}' => return found,
            _ => return None,
        }
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = body.get(i) {
        i += 1;
    }
    i
}

/// The index just past the closing quote of the string whose contents start at `i`.
///
/// Most strings of an answer are short (member names, ids): their bytes are looked at one
/// by one, which costs less than a `memchr` call. After 16 plain bytes in a row the rest
/// is searched with `memchr` (a message's content).
fn string_end(body: &[u8], mut i: usize) -> Option<usize> {
    let mut plain = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => return Some(i + 1),
            b'\\' => i += 2, // an escape: the backslash and the byte it escapes
            _ if plain < 16 => {
                plain += 1;
                i += 1;
            }
            _ => i += memchr::memchr2(b'"', b'\\', &body[i..])?,
        }
    }
    None
}

/// The index just past the value starting at `i`.
fn value_end(body: &[u8], i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => string_end(body, i + 1),
        b'{' | b'[' => container_end(body, i),
        _ => {
            // A number, true, false or null: up to the next delimiter.
            let rest = body.get(i..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

/// The index just past the object or array opening at `i` (brackets counted outside
/// strings; JSON's brackets always pair, so one count serves both kinds).
fn container_end(body: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                i = string_end(body, i + 1)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
        top_level_value(body.as_bytes(), key.as_bytes()).map(|r| &body[r])
    }

    #[test]
    fn finds_a_top_level_member_of_any_kind() {
        let body = r#" { "id" : "x\"}" , "n":-1.5e3,"a":[1,{"b":"]"}],"o":{"usage":{"x":1}},
            "usage" : {"prompt_tokens":3,"s":"{\\"} , "t":true}"#;
        assert_eq!(value(body, "id"), Some(r#""x\"}""#));
        assert_eq!(value(body, "n"), Some("-1.5e3"));
        assert_eq!(value(body, "a"), Some(r#"[1,{"b":"]"}]"#));
        assert_eq!(
            value(body, "usage"),
            Some(r#"{"prompt_tokens":3,"s":"{\\"}"#)
        );
        assert_eq!(value(body, "t"), Some("true"));
        assert_eq!(value(body, "x"), None, "nested members are not top-level");
        assert_eq!(value(r#"{"usage":1,"usage":2}"#, "usage"), Some("2"));
        assert_eq!(value("{}", "usage"), None);
    }

    #[test]
    fn anything_else_is_none_or_an_in_bounds_range() {
        for body in [
            "",
            "not json",
            "[1,2]",
            r#"{"usage""#,
            r#"{"usage":"#,
            r#"{"usage":{"a":1"#,
            r#"{"usage":"abc"#,
            r#"{"usage":"ab\"#,
            r#"{"a":1 "usage":{}}"#,
            r#"{"a":}}"#,
            r#"{"usage":{}]]]"#,
        ] {
            if let Some(r) = top_level_value(body.as_bytes(), b"usage") {
                assert!(r.end <= body.len(), "{body}");
            }
        }
        assert_eq!(value(r#"{"usage":{"a":1"#, "usage"), None);
        assert_eq!(value(r#"{"a":1 "usage":{}}"#, "usage"), None);
    }

    proptest::proptest! {
        /// On any JSON object, the scanner agrees with serde_json about the member's value.
        #[test]
        fn agrees_with_serde_on_json_objects(v in json_object()) {
            let text = serde_json::to_string(&v).unwrap();
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            for text in [text, pretty] {
                for key in ["usage", "a", "é\"q"] {
                    let expected = v.get(key);
                    let got = top_level_value(text.as_bytes(), serde_json::to_string(key).unwrap().trim_matches('"').as_bytes())
                        .map(|r| serde_json::from_str::<serde_json::Value>(&text[r]).unwrap());
                    proptest::prop_assert_eq!(got.as_ref(), expected, "{}", text);
                }
            }
        }

        /// On any bytes at all, no panic and the range is in bounds.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Some(r) = top_level_value(&bytes, b"usage") {
                proptest::prop_assert!(r.start <= r.end && r.end <= bytes.len());
            }
        }
    }

    fn json_object() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\{}\\[\\]é ]{0,8}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![Just("usage".to_string()), "[a-z\"é]{1,4}"],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map(
            prop_oneof![
                Just("usage".to_string()),
                Just("a".to_string()),
                Just("é\"q".to_string()),
                "[a-z]{1,3}"
            ],
            value,
            0..5,
        )
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }
}
