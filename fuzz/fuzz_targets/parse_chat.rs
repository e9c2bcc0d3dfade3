//! The request parser and rewriter: any bytes a client sends. Never panics; a valid JSON
//! body, once parsed and rewritten for upstream, is still valid JSON with the new model.
//! (Fields the gateway does not read are checked for structure and UTF-8, not for the
//! meaning of their escapes: a provider answers 400 to those, passed through.)
//! The one-pass reading answers exactly as the careful field-by-field one, errors included.
#![no_main]
use freeway::request::{parse_chat, parse_chat_careful};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let valid = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    let parsed = parse_chat(data);
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", parse_chat_careful(data)),
        "the one-pass and the careful reading differ"
    );
    if let (Ok(req), true) = (parsed, valid) {
        let out = req.rewrite_for_upstream(data, "fuzz-model");
        let v: serde_json::Value =
            serde_json::from_slice(&out).expect("a rewritten body must stay valid JSON");
        assert_eq!(v["model"], "fuzz-model");
    }
});
