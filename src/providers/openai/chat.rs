//! The OpenAI wire format (OpenAI, Groq, Cerebras, SambaNova, NVIDIA NIM, OpenRouter,
//! Mistral, DeepSeek, xAI, local servers). Requests pass through with the model spliced in;
//! streams pass through event by event, inspected only for usage, errors and the first
//! content delta.

use crate::providers::chat::{ChatEvents, ChatStream, Handled, StreamState};
use crate::providers::{
    BuiltRequest, StreamError, StreamTranslator, Translated, Translator, UpstreamRequest, Usage,
};
use crate::request::ChatRequest;
use crate::sse::write_data;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

pub struct OpenAi;

/// What the gateway reads from an OpenAI response or chunk.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<PeekChoice<'a>>>,
    #[serde(default)]
    usage: Option<PeekUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PeekChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<std::collections::HashMap<&'a str, &'a RawValue>>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PeekUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<PeekUsage> for Usage {
    fn from(u: PeekUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// A whole (non-streamed) answer as [`Peek`] reads it, with `usage` kept raw so that its
/// position in the answer is known.
#[derive(Deserialize)]
struct Whole<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)] // read for its shape: the answer is checked as `Peek` checks it
    choices: Option<Vec<PeekChoice<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    error: Option<&'a RawValue>,
}

/// A whole answer's usage and the byte range of its top-level `usage` value, read in one
/// walk, so that the pricing need not scan the answer again. `None` when the walk fails:
/// the caller then reads the answer as [`Peek`], which gives the same result or names the
/// error (the two readings agree: `the_one_walk_reads_answers_as_peek_does`).
fn whole_answer(body: &[u8]) -> Option<(Option<Usage>, Option<std::ops::Range<usize>>)> {
    let whole: Whole = serde_json::from_slice(body).ok()?;
    let Some(raw) = whole.usage else {
        return Some((None, None));
    };
    let usage: PeekUsage = serde_json::from_str(raw.get()).ok()?;
    // A borrowed `RawValue` is a slice of `body`.
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    Some((Some(usage.into()), Some(start..start + raw.get().len())))
}

impl Translator for OpenAi {
    fn chat_request(&self, req: &ChatRequest, body: &[u8], model_id: &str) -> BuiltRequest {
        Ok(UpstreamRequest {
            path: "/chat/completions".into(),
            body: Bytes::from(req.rewrite_for_upstream(body, model_id)),
            headers: Vec::new(),
        })
    }

    fn chat_response(&self, body: Bytes, _model_id: &str) -> Result<Translated, String> {
        if let Some((usage, usage_at)) = whole_answer(&body) {
            return Ok(Translated {
                usage,
                usage_at,
                body,
            });
        }
        // Anything the one walk could not read: the careful reading names the problem.
        let peek: Peek = serde_json::from_slice(&body)
            .map_err(|e| format!("the provider's answer is not a chat completion: {e}"))?;
        Ok(Translated {
            usage: peek.usage.map(Usage::from),
            usage_at: None,
            body,
        })
    }

    fn chat_stream(&self, _model_id: &str, include_usage: bool) -> Box<dyn StreamTranslator> {
        Box::new(ChatStream::with(OpenAiEvents, include_usage))
    }

    fn error(&self, status: u16, body: &[u8], provider: &str) -> Bytes {
        super::error::translate_error(status, body, provider)
    }
}

/// OpenAI events pass through as they are, inspected only for usage, errors and the first
/// content delta.
struct OpenAiEvents;

impl ChatEvents for OpenAiEvents {
    const UNFINISHED: &'static str = "the provider ended the stream without [DONE]";
    // Whatever follows `[DONE]` passes through too.
    const AFTER_DONE: bool = true;

    fn event(&mut self, s: &mut StreamState, data: &[u8], out: &mut Vec<u8>) -> Handled {
        if data == b"[DONE]" {
            s.done = true;
            write_data(out, data);
            return Ok(());
        }
        let peek: Peek = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad stream chunk: {e}")))?;
        if let Some(err) = peek.error {
            return Err(StreamError::Upstream(err.get().to_string()));
        }
        let usage_only = peek.choices.as_ref().is_none_or(|c| c.is_empty());
        if let Some(u) = peek.usage {
            s.usage = Some(u.into());
        }
        // Unless the client asked for the usage chunk, the gateway did, and drops it after
        // reading it.
        if usage_only && !s.include_usage {
            return Ok(());
        }
        for c in peek.choices.iter().flatten() {
            let has_content = c.delta.as_ref().is_some_and(|d| {
                d.iter()
                    .any(|(k, v)| *k != "role" && !matches!(v.get(), "null" | "\"\"" | "[]"))
            });
            let finished = c.finish_reason.is_some_and(|f| f.get() != "null");
            s.started |= has_content || finished;
        }
        write_data(out, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        stream: &[u8],
        include_usage: bool,
    ) -> (Vec<u8>, Result<(), StreamError>, bool, Option<Usage>) {
        let mut t = OpenAi.chat_stream("m", include_usage);
        let mut out = Vec::new();
        let r = t.feed(stream, &mut out).and_then(|_| t.finish(&mut out));
        (out, r, t.started(), t.usage())
    }

    const STREAM: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn passes_events_through_and_reads_usage() {
        let (out, r, started, usage) = run(STREAM, true);
        r.unwrap();
        assert!(started);
        assert_eq!(out, STREAM);
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1
            })
        );
    }

    #[test]
    fn hides_the_usage_chunk_the_client_did_not_ask_for() {
        let (out, r, _, usage) = run(STREAM, false);
        r.unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("usage"));
        assert_eq!(usage.unwrap().completion_tokens, 1);
    }

    #[test]
    fn role_chunk_alone_is_not_a_start() {
        let mut t = OpenAi.chat_stream("m", false);
        let mut out = Vec::new();
        t.feed(
            &STREAM[..STREAM.iter().position(|&b| b == b'\n').unwrap() + 2],
            &mut out,
        )
        .unwrap();
        assert!(!t.started());
    }

    #[test]
    fn error_events_and_missing_done_are_errors() {
        let (_, r, _, _) = run(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n", false);
        assert!(matches!(r, Err(StreamError::Upstream(m)) if m.contains("overloaded")));
        let (_, r, _, _) = run(&STREAM[..STREAM.len() - 14], true);
        assert!(matches!(r, Err(StreamError::Malformed(_))));
    }

    /// The one walk of a whole answer reads what the careful `Peek` reading does (usage, or
    /// the same error), and knows where `usage` is when it read it.
    #[test]
    fn the_one_walk_reads_answers_as_peek_does() {
        let careful = |body: &str| {
            serde_json::from_str::<Peek>(body)
                .map(|p| p.usage.map(Usage::from))
                .map_err(|e| format!("the provider's answer is not a chat completion: {e}"))
        };
        let plain = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage": {"prompt_tokens":3,"completion_tokens":1}}"#;
        for body in [
            plain,
            r#"{"choices":[],"usage":null}"#,
            r#"{"usage":[1,2]}"#,
            r#"{"usage":{"prompt_tokens":1.5}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":"x"}"#,
            r#"{"usage":{},"usage":{}}"#,
            r#"{"choices":5}"#,
            r#"{"choices":[{"delta":{"content":"a"}}]}"#,
            r#"[]"#,
            r#"{"us\u0061ge":{"prompt_tokens":7}}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            "not json",
        ] {
            let t = OpenAi.chat_response(Bytes::from(body.to_string()), "m");
            let got = t.as_ref().map(|t| t.usage).map_err(Clone::clone);
            assert_eq!(got, careful(body), "{body}");
            if let Ok(Translated {
                usage_at: Some(at),
                body: b,
                ..
            }) = &t
            {
                let raw = &b[at.clone()];
                assert!(
                    serde_json::from_slice::<serde_json::Value>(raw).is_ok(),
                    "{body}"
                );
            }
        }
        let t = OpenAi.chat_response(Bytes::from(plain), "m").unwrap();
        let at = t
            .usage_at
            .expect("a plain answer's usage is found in the one walk");
        assert_eq!(&plain[at], r#"{"prompt_tokens":3,"completion_tokens":1}"#);
    }

    #[test]
    fn any_chunking_gives_identical_output() {
        let (whole, _, _, _) = run(STREAM, true);
        for cut in 0..STREAM.len() {
            let mut t = OpenAi.chat_stream("m", true);
            let mut out = Vec::new();
            t.feed(&STREAM[..cut], &mut out).unwrap();
            t.feed(&STREAM[cut..], &mut out).unwrap();
            t.finish(&mut out).unwrap();
            assert_eq!(out, whole, "cut {cut}");
        }
    }
}
