//! The chat request, parsed once into a borrowed view, and rewritten for the upstream.
//!
//! Parsing validates the whole body as JSON but only materialises the fields routing needs;
//! everything else stays as raw bytes. The rewrite splices the new model id into the original
//! bytes, so the upstream receives exactly what the client sent except for `model`.

use crate::errors::ApiError;
use crate::routing::Needs;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// The fields of a chat completion request the gateway looks at.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// The `model` field, if present and not null.
    pub model: Option<Cow<'a, str>>,
    /// Byte range of the `model` value (quotes included) in the body.
    model_span: Option<Range<usize>>,
    pub stream: bool,
    /// `stream_options.include_usage`: the client wants the usage chunk.
    pub include_usage: bool,
    /// Whether the body has a `stream_options` field at all.
    pub has_stream_options: bool,
    pub needs: Needs,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    functions: Option<&'a RawValue>,
    #[serde(borrow)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_effort: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// Tokens charged for one image part by the estimator (OpenAI's high-detail tile count for a
/// typical image is in this range; providers differ, so this errs on the large side).
const IMAGE_TOKENS: u32 = 1_000;
/// Per-message overhead in tokens (role and separators).
const MESSAGE_TOKENS: u32 = 4;

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn bad_type(param: &'static str, expected: &str) -> ApiError {
    ApiError::invalid_param(param, format!("`{param}` must be {expected}."))
}

fn parse_u32(raw: Option<&RawValue>, param: &'static str) -> Result<Option<u32>, ApiError> {
    match raw {
        None => Ok(None),
        Some(r) if is_null(r) => Ok(None),
        Some(r) => serde_json::from_str::<u32>(r.get())
            .map(Some)
            .map_err(|_| bad_type(param, "a non-negative integer")),
    }
}

/// Parses and validates a chat completion body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest<'_>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty: send a JSON chat completion request.",
        ));
    }
    // serde_json skips ignored strings without checking their UTF-8 (found by fuzzing):
    // check the whole body, so nothing invalid is ever forwarded to a provider.
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(format!("The request body is not valid UTF-8 JSON: {e}."))
    })?;
    let fields: Fields = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            // Valid JSON, wrong shape (not an object, duplicate field, …).
            ApiError::invalid(format!(
                "The request body is not a chat completion request: {e}."
            ))
        } else {
            ApiError::invalid(format!("The request body is not valid JSON: {e}."))
        }
    })?;

    let (model, model_span) = match fields.model {
        None => (None, None),
        Some(r) if is_null(r) => (None, Some(span_of(body, r))),
        Some(r) => {
            let name: Cow<str> =
                serde_json::from_str(r.get()).map_err(|_| bad_type("model", "a string"))?;
            (Some(name), Some(span_of(body, r)))
        }
    };

    let stream = match fields.stream {
        None => false,
        Some(r) if is_null(r) => false,
        Some(r) => {
            serde_json::from_str::<bool>(r.get()).map_err(|_| bad_type("stream", "a boolean"))?
        }
    };

    let stream_options = fields.stream_options.filter(|r| !is_null(r));
    let include_usage = match stream_options {
        None => false,
        Some(r) => serde_json::from_str::<StreamOptions>(r.get())
            .map_err(|_| bad_type("stream_options", "an object"))?
            .include_usage
            .unwrap_or(false),
    };

    let messages_raw = fields
        .messages
        .filter(|r| !is_null(r))
        .ok_or_else(|| ApiError::invalid_param("messages", "`messages` is required."))?;
    let messages: Vec<Message> = serde_json::from_str(messages_raw.get())
        .map_err(|_| bad_type("messages", "an array of message objects"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }

    let mut needs = Needs {
        stream,
        ..Needs::default()
    };
    let mut chars: u64 = 0;
    for m in &messages {
        match m.role {
            Some(r) if r.get().starts_with('"') => {}
            _ => {
                return Err(bad_type(
                    "messages",
                    "an array of objects that each have a string `role`",
                ))
            }
        }
        needs.prompt_tokens = needs.prompt_tokens.saturating_add(MESSAGE_TOKENS);
        let Some(content) = m.content else { continue };
        match content.get().as_bytes().first() {
            Some(b'"') => chars += content.get().len() as u64,
            Some(b'n') => {}
            Some(b'[') => {
                let parts: Vec<Part> = serde_json::from_str(content.get()).map_err(|_| {
                    bad_type("messages", "content that is a string or an array of parts")
                })?;
                for p in parts {
                    match p.kind.as_deref() {
                        Some("image_url") | Some("image") => {
                            needs.vision = true;
                            needs.prompt_tokens = needs.prompt_tokens.saturating_add(IMAGE_TOKENS);
                        }
                        _ => chars += p.text.map_or(0, |t| t.get().len() as u64),
                    }
                }
            }
            _ => {
                return Err(bad_type(
                    "messages",
                    "content that is a string or an array of parts",
                ))
            }
        }
    }
    // Estimator: ~4 bytes of JSON text per token (English averages 4 characters per token
    // with the common BPE vocabularies), plus fixed costs for messages and images above.
    needs.prompt_tokens = needs
        .prompt_tokens
        .saturating_add(u32::try_from(chars / 4).unwrap_or(u32::MAX));

    for (raw, param) in [(fields.tools, "tools"), (fields.functions, "functions")] {
        if let Some(r) = raw.filter(|r| !is_null(r)) {
            let tools: Vec<&RawValue> =
                serde_json::from_str(r.get()).map_err(|_| bad_type(param, "an array"))?;
            needs.tools |= !tools.is_empty();
        }
    }
    if let Some(r) = fields.response_format.filter(|r| !is_null(r)) {
        let rf: ResponseFormat = serde_json::from_str(r.get())
            .map_err(|_| bad_type("response_format", "an object with a string `type`"))?;
        needs.json = matches!(rf.kind.as_ref(), "json_object" | "json_schema");
    }
    match parse_u32(fields.n, "n")? {
        Some(0) => return Err(bad_type("n", "an integer of at least 1")),
        Some(n) => needs.several_choices = n > 1,
        None => {}
    }
    needs.max_output_tokens =
        match parse_u32(fields.max_completion_tokens, "max_completion_tokens")? {
            Some(v) => Some(v),
            None => parse_u32(fields.max_tokens, "max_tokens")?,
        };
    if let Some(r) = fields.reasoning_effort.filter(|r| !is_null(r)) {
        let effort: Cow<str> =
            serde_json::from_str(r.get()).map_err(|_| bad_type("reasoning_effort", "a string"))?;
        needs.reasoning_effort = match effort.as_ref() {
            "minimal" | "low" => Some(crate::config::Tier::Low),
            "medium" => Some(crate::config::Tier::Medium),
            "high" => Some(crate::config::Tier::High),
            _ => {
                return Err(bad_type(
                    "reasoning_effort",
                    "one of minimal, low, medium, high",
                ))
            }
        };
    }

    Ok(ChatRequest {
        model,
        model_span,
        stream,
        include_usage,
        has_stream_options: stream_options.is_some(),
        needs,
    })
}

/// Byte range of a borrowed raw value inside the buffer it was parsed from.
fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

impl ChatRequest<'_> {
    /// The body to send upstream: the client's bytes with `model` set to `model`, and, for a
    /// stream whose client did not ask for usage, `stream_options.include_usage` added so
    /// the gateway can still account tokens (the translator hides that chunk again).
    pub fn rewrite_for_upstream(&self, body: &[u8], model: &str) -> Vec<u8> {
        let quoted = serde_json::to_string(model).unwrap_or_default();
        let inject_usage = self.stream && !self.has_stream_options;
        let mut out = Vec::with_capacity(body.len() + quoted.len() + 48);
        // Insertions go right after the opening brace; `messages` is required, so the object
        // is never empty and a comma may always follow.
        let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
        out.extend_from_slice(&body[..=open]);
        if inject_usage {
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
        }
        match &self.model_span {
            Some(span) => {
                out.extend_from_slice(&body[open + 1..span.start]);
                out.extend_from_slice(quoted.as_bytes());
                out.extend_from_slice(&body[span.end..]);
            }
            None => {
                out.extend_from_slice(b"\"model\":");
                out.extend_from_slice(quoted.as_bytes());
                out.push(b',');
                out.extend_from_slice(&body[open + 1..]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(body: &str) -> ApiError {
        parse_chat(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_the_fields_routing_needs() {
        let body = br#"{"model":"auto","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:"}}]}],"tools":[{"type":"function"}],"response_format":{"type":"json_object"},"max_tokens":100}"#;
        let r = parse_chat(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("auto"));
        assert!(r.stream && r.needs.stream && r.needs.vision && r.needs.tools && r.needs.json);
        assert_eq!(r.needs.max_output_tokens, Some(100));
        assert!(r.needs.prompt_tokens >= IMAGE_TOKENS);
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let body = br#"{ "messages": [{"role":"user","content":"x"}],  "model" : "groq/llama" , "temperature": 0.5 }"#;
        let r = parse_chat(body).unwrap();
        let out = r.rewrite_for_upstream(body, "llama-3.3-70b-versatile");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "messages": [{"role":"user","content":"x"}],  "model" : "llama-3.3-70b-versatile" , "temperature": 0.5 }"#
        );
    }

    #[test]
    fn rewrite_inserts_missing_model() {
        let body = br#" {"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse_chat(body).unwrap();
        let out = r.rewrite_for_upstream(body, "m\"1");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "m\"1");
        assert_eq!(v["messages"][0]["content"], "x");
    }

    #[test]
    fn streams_without_stream_options_ask_for_usage() {
        let body = br#"{"model":"a","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse_chat(body).unwrap();
        assert!(!r.include_usage);
        let out = r.rewrite_for_upstream(body, "b");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"b","stream":true,"messages":[{"role":"user","content":"x"}]}"#
        );
        let body = br#"{"model":"a","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse_chat(body).unwrap();
        assert!(r.include_usage);
        let out = r.rewrite_for_upstream(body, "b");
        let want = String::from_utf8_lossy(body).replacen(r#""model":"a""#, r#""model":"b""#, 1);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn escaped_model_names_are_unescaped() {
        let body = br#"{"model":"a\/b","messages":[{"role":"user","content":"x"}]}"#;
        assert_eq!(parse_chat(body).unwrap().model.as_deref(), Some("a/b"));
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(err_of("").message.contains("empty"));
        assert!(err_of("{not json").message.contains("not valid JSON"));
        assert!(err_of("[1,2]").message.contains("not a chat completion"));
        assert_eq!(err_of(r#"{"model":5,"messages":[]}"#).param, Some("model"));
        assert_eq!(
            err_of(r#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#)
                .param,
            Some("stream")
        );
        assert_eq!(err_of(r#"{"model":"a"}"#).param, Some("messages"));
        assert_eq!(
            err_of(r#"{"model":"a","messages":"hi"}"#).param,
            Some("messages")
        );
        assert_eq!(
            err_of(r#"{"model":"a","messages":[]}"#).param,
            Some("messages")
        );
        assert_eq!(
            err_of(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#).param,
            Some("max_tokens")
        );
        assert_eq!(
            err_of(r#"{"messages":[{"content":"x"}]}"#).param,
            Some("messages")
        );
        assert!(err_of(r#"{"model":"a","model":"b","messages":[]}"#)
            .message
            .contains("duplicate"));
    }

    #[test]
    fn invalid_utf8_anywhere_is_refused() {
        // Regression (fuzz: parse_chat): invalid UTF-8 inside an ignored field was accepted.
        let mut body =
            br#"{"messages":[{"role":"user","content":"x"}],"other":{"k":"v"}}"#.to_vec();
        let at = body.len() - 5;
        body[at] = 0xff;
        assert!(err_of_bytes(&body).message.contains("UTF-8"));
    }

    fn err_of_bytes(body: &[u8]) -> ApiError {
        parse_chat(body).unwrap_err()
    }

    #[test]
    fn n_above_one_needs_several_choices() {
        let r = parse_chat(br#"{"messages":[{"role":"user","content":"x"}],"n":3}"#).unwrap();
        assert!(r.needs.several_choices);
        let r = parse_chat(br#"{"messages":[{"role":"user","content":"x"}],"n":1}"#).unwrap();
        assert!(!r.needs.several_choices);
        assert_eq!(
            err_of(r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#).param,
            Some("n")
        );
    }

    #[test]
    fn token_estimate_grows_with_text() {
        let small = parse_chat(br#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let text = "x".repeat(4000);
        let big_body = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let big = parse_chat(big_body.as_bytes()).unwrap();
        assert!(big.needs.prompt_tokens >= 1000 && small.needs.prompt_tokens < 10);
    }
}
