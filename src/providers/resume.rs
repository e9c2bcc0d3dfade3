//! Stream resume, the pure parts: the continuation request (the client's chat request plus
//! the text already delivered, as a partial assistant turn in the form the provider
//! understands), the overlap cut at the seam, and [`Seam`], the translator layer that
//! records what a stream delivered and splices a continuation's chunks into it.
//!
//! A `Seam` sits above the provider's (guarded) translator and below the Responses/Messages
//! reshapers, only when resume is on for the request: it records the text the client was
//! sent, and every layer above it sees one continuous chat stream. A splice replaces the
//! guarded translator under it with the continuation's.

use super::{StreamError, StreamTranslator, Usage};
use crate::config::Continuation;
use crate::sse::SseReader;
use serde_json::{json, Value};

/// The user turn that asks a model without a prefix mode to continue.
pub const CONTINUE_INSTRUCTION: &str = "Your previous message was cut off. Continue it \
     exactly where it stopped, without repeating any of it and without any preamble.";

/// The most of a continuation's first text held to look for a repeat of the seam (it is
/// sent as soon as it can no longer be a repeat).
const OVERLAP_WINDOW: usize = 160;

/// The client's OpenAI chat body with `partial` (the text delivered so far) as a partial
/// assistant turn, asked in `mode`. Anthropic's prefill may not end in whitespace: the
/// partial turn is trimmed (the seam puts the whitespace back, see [`seam_cut`]).
pub fn continuation_body(
    chat_body: &[u8],
    mode: Continuation,
    partial: &str,
) -> Result<Vec<u8>, String> {
    let mut v: Value =
        serde_json::from_slice(chat_body).map_err(|e| format!("the request is not JSON: {e}"))?;
    let Some(messages) = v.get_mut("messages").and_then(Value::as_array_mut) else {
        return Err("the request has no messages".into());
    };
    match mode {
        Continuation::Prefill => {
            messages.push(json!({"role": "assistant", "content": partial.trim_end()}));
        }
        Continuation::Prefix => {
            messages.push(json!({"role": "assistant", "content": partial, "prefix": true}));
        }
        Continuation::ContinueFinalMessage => {
            messages.push(json!({"role": "assistant", "content": partial}));
            v["continue_final_message"] = json!(true);
            v["add_generation_prompt"] = json!(false);
        }
        Continuation::Instruct => {
            messages.push(json!({"role": "assistant", "content": partial}));
            messages.push(json!({"role": "user", "content": CONTINUE_INSTRUCTION}));
        }
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric()
}

/// What of a continuation's first text `cont` to send after `delivered`: a repeat of the
/// delivered tail (whole words, at least two words or 8 characters) is cut, and whitespace
/// at the seam comes from one side only (a prefill is sent without its trailing space).
pub fn seam_cut<'a>(delivered: &str, cont: &'a str) -> &'a str {
    let d = delivered.trim_end();
    let c = cont.trim_start();
    let mut best = 0;
    for (k, _) in c
        .char_indices()
        .skip(1)
        .chain(std::iter::once((c.len(), ' ')))
    {
        if k > d.len() {
            break;
        }
        let head = &c[..k];
        let long_enough = head.len() >= 8 || head.split_whitespace().nth(1).is_some();
        let ends_word =
            !c[k..].starts_with(word_char) && head.ends_with(|ch: char| !ch.is_whitespace());
        let start = d.len() - k;
        let starts_word = d.is_char_boundary(start) && !d[..start].ends_with(word_char);
        if long_enough && ends_word && starts_word && d.ends_with(head) {
            best = k;
        }
    }
    let rest = if best > 0 { &c[best..] } else { cont };
    if delivered.ends_with(char::is_whitespace) {
        rest.trim_start()
    } else {
        rest
    }
}

/// Two attempts' usage together.
pub fn add(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            prompt_tokens: a.prompt_tokens + b.prompt_tokens,
            completion_tokens: a.completion_tokens + b.completion_tokens,
        }),
        (a, b) => a.or(b),
    }
}

/// A continuation's first text, held until the overlap with the delivered text is known.
struct Held {
    text: String,
    /// The chunk the text is sent in (its `delta.content` replaced).
    chunk: Value,
}

/// The translator layer that makes a resumable stream: records the text delivered and
/// whether anything but text went out; after [`Seam::splice`], rewrites the continuation's
/// chunks into the same stream (same `id` and `created`, no second role chunk, the seam's
/// overlap cut, usage added to the earlier attempts').
pub struct Seam {
    inner: Box<dyn StreamTranslator>,
    reader: SseReader,
    scratch: Vec<u8>,
    /// The text content the client's stream carries so far, every attempt.
    text: String,
    /// A tool call, reasoning or a second choice went out: the stream is not resumable.
    other: bool,
    id: Value,
    created: Value,
    /// Usage of the attempts before the current one.
    carried: Option<Usage>,
    continuing: bool,
    held: Option<Held>,
    /// The continuation has sent content or its end: the client's stream goes on.
    joined: bool,
}

impl Seam {
    pub fn new(inner: Box<dyn StreamTranslator>) -> Seam {
        Seam {
            inner,
            reader: SseReader::new(),
            scratch: Vec::new(),
            text: String::new(),
            other: false,
            id: Value::Null,
            created: Value::Null,
            carried: None,
            continuing: false,
            held: None,
            joined: false,
        }
    }

    /// The text delivered so far.
    pub fn partial(&self) -> &str {
        &self.text
    }

    /// Only text went out (no tool call, reasoning, or second choice), and some did.
    pub fn resumable(&self) -> bool {
        !self.other && !self.text.trim().is_empty()
    }

    /// The continuation has joined the stream (its failover gate is passed).
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Continues the stream with `next`, a continuation's translator; `spent` is what the
    /// attempt that broke off used.
    pub fn splice(&mut self, next: Box<dyn StreamTranslator>, spent: Option<Usage>) {
        self.inner = next;
        self.reader = SseReader::new();
        self.scratch.clear();
        self.carried = add(self.carried, spent);
        self.continuing = true;
        self.joined = false;
        self.held = None;
    }

    fn pump(&mut self, r: Result<(), StreamError>, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.reader.push(&self.scratch);
        self.scratch.clear();
        while let Some(ev) = self.reader.next_event() {
            self.event(&ev.data, out);
        }
        r
    }

    /// Notes what a chunk's first choice carries: its text, or anything else.
    fn observe(&mut self, v: &Value) {
        for c in v["choices"].as_array().into_iter().flatten() {
            if c["index"].as_u64().unwrap_or(0) != 0 {
                self.other = true;
                continue;
            }
            let d = &c["delta"];
            if let Some(t) = d["content"].as_str() {
                self.text.push_str(t);
            }
            let set = |k: &str| match &d[k] {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            };
            if set("tool_calls")
                || set("function_call")
                || set("reasoning_content")
                || set("reasoning")
            {
                self.other = true;
            }
        }
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if data == b"[DONE]" {
            self.release(out);
            crate::sse::write_data(out, data);
            return;
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            crate::sse::write_data(out, data);
            return;
        };
        if !self.continuing {
            if self.id.is_null() {
                self.id = v["id"].clone();
                self.created = v["created"].clone();
            }
            self.observe(&v);
            crate::sse::write_data(out, data);
            return;
        }
        if !self.id.is_null() && v.get("id").is_some() {
            v["id"] = self.id.clone();
            v["created"] = self.created.clone();
        }
        if let (Some(u), Some(c)) = (v.get_mut("usage").filter(|u| u.is_object()), self.carried) {
            for (k, n) in [
                ("prompt_tokens", c.prompt_tokens),
                ("completion_tokens", c.completion_tokens),
                ("total_tokens", c.prompt_tokens + c.completion_tokens),
            ] {
                if let Some(t) = u[k].as_u64() {
                    u[k] = json!(t + n);
                }
            }
        }
        let first = v["choices"].get_mut(0);
        let (text, bare) = match first {
            Some(c) => {
                if let Some(d) = c["delta"].as_object_mut() {
                    d.remove("role");
                }
                let text = c["delta"]["content"].as_str().map(str::to_string);
                let empty_delta = c["delta"].as_object().is_none_or(|d| {
                    d.iter().all(|(k, x)| {
                        k == "content" && x.as_str().is_some_and(str::is_empty) || x.is_null()
                    })
                });
                (text, empty_delta && c["finish_reason"].is_null())
            }
            None => (None, v["usage"].is_null()),
        };
        if bare && text.as_deref().is_none_or(str::is_empty) {
            return; // the continuation's role chunk: the client has had one
        }
        if !self.joined {
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                let held = self.held.get_or_insert_with(|| Held {
                    text: String::new(),
                    chunk: v.clone(),
                });
                held.text.push_str(&t);
                // Once the held text is no longer found in what was delivered, no longer
                // repeat can come: send it (at the latest after the window).
                let repeat_possible = self.text.trim_end().contains(held.text.trim_start());
                if !repeat_possible || held.text.len() >= OVERLAP_WINDOW {
                    self.release(out);
                }
                return;
            }
            self.release(out);
            self.joined = true;
        }
        self.observe(&v);
        crate::sse::write_data(out, v.to_string().as_bytes());
    }

    /// Sends the held first text of a continuation, its repeat of the seam cut.
    fn release(&mut self, out: &mut Vec<u8>) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        let piece = seam_cut(&self.text, &held.text).to_string();
        self.joined = true;
        if piece.is_empty() {
            return;
        }
        held.chunk["choices"][0]["delta"]["content"] = json!(piece);
        held.chunk["choices"][0]["finish_reason"] = Value::Null;
        self.observe(&held.chunk);
        crate::sse::write_data(out, held.chunk.to_string().as_bytes());
    }
}

impl StreamTranslator for Seam {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let r = self.inner.feed(chunk, &mut self.scratch);
        self.pump(r, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let r = self.inner.finish(&mut self.scratch);
        let r = self.pump(r, out);
        if r.is_ok() {
            self.release(out);
        }
        r
    }

    fn started(&self) -> bool {
        self.continuing || self.inner.started()
    }

    fn usage(&self) -> Option<Usage> {
        add(self.carried, self.inner.usage())
    }

    fn seam(&mut self) -> Option<&mut Seam> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::testing::chunks;

    #[test]
    fn continuation_bodies_per_mode() {
        let body =
            br#"{"model":"auto","stream":true,"messages":[{"role":"user","content":"tell"}]}"#;
        let parse = |m| -> Value {
            serde_json::from_slice(&continuation_body(body, m, "Once upon a ").unwrap()).unwrap()
        };
        let v = parse(Continuation::Prefill);
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Once upon a"})
        );
        let v = parse(Continuation::Prefix);
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Once upon a ", "prefix": true})
        );
        let v = parse(Continuation::ContinueFinalMessage);
        assert_eq!(v["messages"][1]["content"], "Once upon a ");
        assert_eq!(
            (
                v["continue_final_message"].clone(),
                v["add_generation_prompt"].clone()
            ),
            (json!(true), json!(false))
        );
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        let v = parse(Continuation::Instruct);
        assert_eq!(v["messages"][1]["role"], "assistant");
        assert_eq!(
            v["messages"][2],
            json!({"role": "user", "content": CONTINUE_INSTRUCTION})
        );
        assert_eq!(v["stream"], true);
        assert!(continuation_body(b"[1]", Continuation::Prefix, "x").is_err());
    }

    #[test]
    fn the_seam_cuts_a_repeated_tail_and_one_side_of_whitespace() {
        // A repeat of the last words is cut, wherever the whitespace is.
        assert_eq!(seam_cut("the quick brown fox", "brown fox jumps"), " jumps");
        assert_eq!(seam_cut("the quick brown fox ", "brown fox jumps"), "jumps");
        assert_eq!(
            seam_cut("the quick brown fox ", " quick brown fox jumps"),
            "jumps"
        );
        // No repeat: the continuation as it came, but one space at the seam.
        assert_eq!(seam_cut("the quick brown", " fox jumps"), " fox jumps");
        assert_eq!(seam_cut("the quick brown ", " fox jumps"), "fox jumps");
        assert_eq!(seam_cut("the quick bro", "wn fox"), "wn fox");
        // A single short word is not taken for a repeat; a word's tail is not a word.
        assert_eq!(seam_cut("it was a", "a good day"), "a good day");
        assert_eq!(seam_cut("a sandbox", "box of sand"), "box of sand");
        assert_eq!(seam_cut("", "hello"), "hello");
    }

    /// An inner translator that passes chat chunks through (the OpenAI format's shape).
    struct Pass(bool);
    impl StreamTranslator for Pass {
        fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
            self.0 = true;
            out.extend_from_slice(chunk);
            Ok(())
        }
        fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), StreamError> {
            Ok(())
        }
        fn started(&self) -> bool {
            self.0
        }
        fn usage(&self) -> Option<Usage> {
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 3,
            })
        }
    }

    fn chunk(id: &str, delta: Value, finish: Value) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": id, "created": id.len(), "model": id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    }

    #[test]
    fn a_continuation_is_spliced_into_the_same_stream() {
        let mut s = Seam::new(Box::new(Pass(false)));
        let mut out = Vec::new();
        let first = [
            chunk(
                "a",
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ),
            chunk("a", json!({"content": "one two "}), Value::Null),
            chunk("a", json!({"content": "three"}), Value::Null),
        ]
        .concat();
        s.feed(first.as_bytes(), &mut out).unwrap();
        assert_eq!(s.partial(), "one two three");
        assert!(s.resumable());
        out.clear();
        s.splice(
            Box::new(Pass(false)),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
            }),
        );
        assert!(!s.joined());
        let next = [
            chunk(
                "bbb",
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ),
            chunk("bbb", json!({"content": "two three"}), Value::Null),
        ]
        .concat();
        s.feed(next.as_bytes(), &mut out).unwrap();
        assert!(
            out.is_empty() && !s.joined(),
            "held until the overlap is known"
        );
        let end = [chunk("bbb", json!({"content": " four"}), Value::Null), chunk("bbb", json!({}), json!("stop")), "data: {\"id\":\"bbb\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\ndata: [DONE]\n\n".to_string()].concat();
        s.feed(end.as_bytes(), &mut out).unwrap();
        assert!(s.joined());
        let text = String::from_utf8(out).unwrap();
        let c = chunks(&text);
        let content: String = c
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, " four");
        assert!(
            c.iter().all(|c| c["id"] == "a" && c["created"] == 1),
            "{text}"
        );
        assert!(c.iter().all(|c| c["choices"][0]["delta"]["role"].is_null()));
        assert_eq!(
            c.iter()
                .filter(|c| c["choices"][0]["finish_reason"] == "stop")
                .count(),
            1
        );
        assert_eq!(c.last().unwrap()["usage"]["prompt_tokens"], 6);
        assert_eq!(c.last().unwrap()["usage"]["total_tokens"], 9);
        assert_eq!(text.matches("[DONE]").count(), 1);
        assert_eq!(s.partial(), "one two three four");
        assert_eq!(s.usage().unwrap().prompt_tokens, 15);
    }

    #[test]
    fn a_continuation_that_cannot_be_a_repeat_joins_at_once() {
        let mut s = Seam::new(Box::new(Pass(false)));
        let mut out = Vec::new();
        let first = chunk("a", json!({"content": "one two three "}), Value::Null);
        s.feed(first.as_bytes(), &mut out).unwrap();
        s.splice(Box::new(Pass(false)), None);
        out.clear();
        s.feed(
            chunk("b", json!({"content": "four "}), Value::Null).as_bytes(),
            &mut out,
        )
        .unwrap();
        assert!(s.joined(), "`four` is not in what was delivered");
        let c = chunks(std::str::from_utf8(&out).unwrap());
        assert_eq!(c[0]["choices"][0]["delta"]["content"], "four ");
    }

    #[test]
    fn a_tool_call_makes_a_stream_unresumable() {
        let mut s = Seam::new(Box::new(Pass(false)));
        let mut out = Vec::new();
        let ev = [
            chunk("a", json!({"content": "let me look "}), Value::Null),
            chunk(
                "a",
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
                Value::Null,
            ),
        ]
        .concat();
        s.feed(ev.as_bytes(), &mut out).unwrap();
        assert!(!s.resumable());
        let mut s = Seam::new(Box::new(Pass(false)));
        s.feed(
            chunk("a", json!({"reasoning_content": "hmm"}), Value::Null).as_bytes(),
            &mut out,
        )
        .unwrap();
        assert!(!s.resumable(), "reasoning alone");
    }
}
