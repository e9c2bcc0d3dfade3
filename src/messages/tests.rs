//! The Messages ⇄ chat translation: unit tests and the golden corpus
//! (`tests/fixtures/messages/`), replayed with streams split at every byte.
//!
//! Files: `X.request.json` (Messages) → `X.chat-request.json` (the chat request, and why it
//! cannot be translated, if it cannot); `X.response.chat.json` → `X.response.messages.json`;
//! `X.stream.chat.sse` (an OpenAI-compatible stream) → `X.stream.messages.sse`;
//! `X.stream.anthropic.sse` (an Anthropic provider's stream, relayed natively) →
//! `X.stream.messages.sse`. `FREEWAY_BLESS=1 cargo test --lib messages` rewrites the
//! expected files (review the diff!).

use super::*;
use crate::providers::openai::OpenAi;
use crate::providers::{StreamError, StreamTranslator, Translator, Usage};
use crate::sse::SseReader;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/messages")
}

fn files(suffix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(suffix)?.to_string();
            Some((stem, std::fs::read(dir().join(&name)).ok()?))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no `{suffix}` fixtures");
    out
}

fn check(name: &str, got: &[u8]) {
    let path = dir().join(name);
    if std::env::var_os("FREEWAY_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with FREEWAY_BLESS=1)", path.display()));
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(&want),
        "{}",
        path.display()
    );
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap();
    s.push(b'\n');
    s
}

fn meta() -> Arc<Meta> {
    Arc::new(Meta {
        id: "msg_golden".into(),
        stop_sequences: vec!["END".into()],
    })
}

fn translator(native: bool) -> Box<dyn StreamTranslator> {
    if native {
        Box::new(NativeStream::new("claude-sonnet-4-5"))
    } else {
        Box::new(MessagesStream::new(
            OpenAi.chat_stream("m", true),
            meta(),
            "m",
        ))
    }
}

fn translate(native: bool, pieces: &[&[u8]]) -> Vec<u8> {
    let mut t = translator(native);
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out).unwrap();
    }
    t.finish(&mut out).unwrap();
    assert!(t.started());
    out
}

fn events(out: &[u8]) -> Vec<(String, Value)> {
    let mut r = SseReader::new();
    r.push(out);
    std::iter::from_fn(|| r.next_event())
        .map(|e| {
            (
                e.event.unwrap_or_default(),
                serde_json::from_slice(&e.data).unwrap(),
            )
        })
        .collect()
}

#[test]
fn golden_requests() {
    for (stem, body) in files(".request.json") {
        let r = parse(&body, false).unwrap();
        let chat: Value = serde_json::from_slice(&r.chat).unwrap();
        // Every translation is a chat request the gateway parses.
        crate::request::parse_chat(&r.chat).unwrap();
        let v = json!({"chat": chat, "untranslatable": r.untranslatable});
        check(&format!("{stem}.chat-request.json"), &pretty(&v));
    }
}

#[test]
fn golden_responses() {
    for (stem, body) in files(".response.chat.json") {
        let t = OpenAi.chat_response(bytes::Bytes::from(body), "m").unwrap();
        let m = answer::from_chat_completion(&meta(), &t.body, t.usage).unwrap();
        let v: Value = serde_json::from_slice(&m).unwrap();
        check(&format!("{stem}.response.messages.json"), &pretty(&v));
    }
}

#[test]
fn golden_streams_under_every_split() {
    for (suffix, native) in [(".stream.chat.sse", false), (".stream.anthropic.sse", true)] {
        for (stem, stream) in files(suffix) {
            let whole = translate(native, &[&stream]);
            check(&format!("{stem}.stream.messages.sse"), &whole);
            for cut in 0..=stream.len() {
                let out = translate(native, &[&stream[..cut], &stream[cut..]]);
                assert_eq!(out, whole, "{stem}: cut at {cut}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(translate(native, &bytes), whole, "{stem}: bytewise");
        }
    }
}

#[test]
fn translated_streams_have_ordered_blocks_and_close_once() {
    for (stem, stream) in files(".stream.chat.sse") {
        let ev = events(&translate(false, &[&stream]));
        assert_eq!(ev[0].0, "message_start", "{stem}");
        assert_eq!(ev[ev.len() - 2].1["type"], "message_delta", "{stem}");
        assert_eq!(ev[ev.len() - 1].1["type"], "message_stop", "{stem}");
        let mut next = 0;
        let mut open = None;
        for (name, e) in &ev {
            assert_eq!(name, e["type"].as_str().unwrap(), "{stem}: event name");
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!(open, None, "{stem}: a block opened inside another");
                    assert_eq!(e["index"], next, "{stem}");
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => assert!(e["index"].as_u64() < Some(next), "{stem}"),
                "content_block_stop" => {
                    assert_eq!(e["index"].as_u64(), open, "{stem}");
                    open = None;
                }
                _ => {}
            }
        }
        assert_eq!(open, None, "{stem}: every block is stopped");
    }
}

#[test]
fn native_streams_pass_through_but_for_the_model() {
    let (_, stream) = files(".stream.anthropic.sse").remove(0);
    let out = translate(true, &[&stream]);
    let text = String::from_utf8(stream.clone()).unwrap();
    let want = text.replace("claude-sonnet-4-5-20250929", "claude-sonnet-4-5");
    assert_eq!(String::from_utf8(out).unwrap(), want);
    let mut t = NativeStream::new("x");
    t.feed(&stream, &mut Vec::new()).unwrap();
    // Input counted with cache reads, output from message_delta.
    assert_eq!(
        t.usage(),
        Some(Usage {
            prompt_tokens: 472 + 2048,
            completion_tokens: 15
        })
    );
}

#[test]
fn native_streams_fail_without_message_stop_and_on_error_events() {
    let (_, stream) = files(".stream.anthropic.sse").remove(0);
    let cut = stream.len() - 40;
    let mut t = NativeStream::new("x");
    let mut out = Vec::new();
    t.feed(&stream[..cut], &mut out).unwrap();
    assert!(t.started());
    assert!(matches!(t.finish(&mut out), Err(StreamError::Malformed(_))));
    t.error_event(&ApiError::upstream(502, "cut"), &mut out);
    let ev = events(&out);
    assert_eq!(ev.last().unwrap().0, "error");
    assert_eq!(ev.last().unwrap().1["error"]["type"], "api_error");
    assert!(!ev.iter().any(|(n, _)| n == "message_stop"));

    let mut t = NativeStream::new("x");
    let r = t.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", &mut Vec::new());
    assert!(matches!(r, Err(StreamError::Upstream(m)) if m.contains("Overloaded")));
    assert!(!t.started());
}

#[test]
fn a_translated_stream_failing_mid_way_ends_with_an_error_event() {
    let (_, stream) = files(".stream.chat.sse")
        .into_iter()
        .find(|(s, _)| s == "text")
        .unwrap();
    let first_two = stream
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\n\n")
        .nth(1)
        .unwrap()
        .0
        + 2;
    let mut t = translator(false);
    let mut out = Vec::new();
    t.feed(&stream[..first_two], &mut out).unwrap();
    assert!(t.started());
    t.error_event(&ApiError::upstream(502, "the stream broke"), &mut out);
    let ev = events(&out);
    let kinds: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        ev[3].1,
        json!({"type": "error", "error": {"type": "api_error", "message": "the stream broke"}})
    );
}

#[test]
fn native_bodies_keep_every_byte_but_the_model() {
    let body = br#"{ "system" : [{"type":"text","text":"ctx","cache_control":{"type":"ephemeral"}}],
        "model" :"auto", "max_tokens":10,"messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"sig=="}]},{"role":"user","content":"x"}],"metadata":{"user_id":"u"}}"#;
    let r = parse(body, false).unwrap();
    assert_eq!(r.model.as_deref(), Some("auto"));
    let out = r.rewrite_for_upstream(body, "claude-\"x\"");
    let want = String::from_utf8_lossy(body).replacen(r#""auto""#, r#""claude-\"x\"""#, 1);
    assert_eq!(String::from_utf8(out).unwrap(), want);

    let body = br#"{"max_tokens":10,"messages":[{"role":"user","content":"x"}]}"#;
    let r = parse(body, false).unwrap();
    assert_eq!(r.model, None);
    let out = r.rewrite_for_upstream(body, "c");
    assert_eq!(
        out,
        br#"{"model":"c","max_tokens":10,"messages":[{"role":"user","content":"x"}]}"#
    );
}

#[test]
fn native_answers_keep_every_byte_but_the_model() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-7","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"cache_creation_input_tokens":7,"output_tokens":2}}"#;
    let (out, usage) = answer::native(body, "claude-x").unwrap();
    let want = String::from_utf8_lossy(body).replacen("claude-3-7", "claude-x", 1);
    assert_eq!(String::from_utf8_lossy(&out), want);
    assert_eq!(
        usage,
        Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 2
        })
    );
    assert!(answer::native(br#"{"type":"error"}"#, "m").is_err());
}

#[test]
fn what_chat_cannot_carry_is_named() {
    let pdf = json!({"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]});
    let body = pdf.to_string();
    let r = parse(body.as_bytes(), false).unwrap();
    assert!(r.untranslatable.unwrap().contains("`base64` document"));
    let server = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let body = server.to_string();
    let r = parse(body.as_bytes(), false).unwrap();
    assert!(r.untranslatable.unwrap().contains("web_search_20250305"));
}

#[test]
fn tool_choices_map_to_chat() {
    for (choice, want) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
        ),
    ] {
        let body = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": choice})
        .to_string();
        let chat: Value =
            serde_json::from_slice(&parse(body.as_bytes(), false).unwrap().chat).unwrap();
        assert_eq!(chat["tool_choice"], want);
        assert!(chat.get("parallel_tool_calls").is_none());
    }
}

#[test]
fn bad_requests_are_named() {
    let err = |b: &str| parse(b.as_bytes(), false).unwrap_err();
    assert!(err("").message.contains("empty"));
    assert!(err("[1]").message.contains("JSON object"));
    assert_eq!(
        err(r#"{"messages":[{"role":"user","content":"x"}]}"#).param,
        Some("max_tokens")
    );
    assert_eq!(
        err(r#"{"max_tokens":1,"messages":[]}"#).param,
        Some("messages")
    );
    assert_eq!(
        err(r#"{"max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#).param,
        Some("messages")
    );
    assert_eq!(
        err(r#"{"max_tokens":1,"messages":[{"role":"user","content":5}]}"#).param,
        Some("messages")
    );
    assert_eq!(
        err(r#"{"max_tokens":1,"model":7,"messages":[{"role":"user","content":"x"}]}"#).param,
        Some("model")
    );
    assert_eq!(
        err(r#"{"max_tokens":1,"stream":"y","messages":[{"role":"user","content":"x"}]}"#).param,
        Some("stream")
    );
    // count_tokens takes no max_tokens and never streams.
    let r = parse(
        br#"{"stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        true,
    )
    .unwrap();
    assert!(!r.stream);
}

#[test]
fn every_stop_reason_maps() {
    let m = meta();
    for (finish, matched, want) in [
        (Some("stop"), None, ("end_turn", None)),
        (
            Some("stop"),
            Some("END"),
            ("stop_sequence", Some("END".to_string())),
        ),
        (Some("stop"), Some("other"), ("end_turn", None)),
        (Some("length"), None, ("max_tokens", None)),
        (Some("tool_calls"), None, ("tool_use", None)),
        (None, None, ("end_turn", None)),
    ] {
        assert_eq!(answer::stop_reason(finish, matched, &m), want);
    }
}
