//! The request parser and rewriter: any bytes a client sends. Never panics; a parsed body
//! rewritten for upstream is still valid JSON carrying the new model.
#![no_main]
use freeway::request::parse_chat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_chat(data) {
        let out = req.rewrite_for_upstream(data, "fuzz-model");
        let v: serde_json::Value =
            serde_json::from_slice(&out).expect("a rewritten body must stay valid JSON");
        assert_eq!(v["model"], "fuzz-model");
    }
});
