//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) on any
//! chat provider.
//!
//! Two ways out, chosen per candidate model by the endpoint's `Call` (`proxy/messages.rs`):
//!
//! - **Native**, to `kind = "anthropic"` providers: the client's bytes go out as they came,
//!   only the `model` value spliced ([`Request::rewrite_for_upstream`]), so `cache_control`,
//!   `thinking` / `redacted_thinking` signatures, system blocks, documents and metadata
//!   arrive byte for byte; the answer comes back unchanged but for `model`
//!   ([`answer::native`], [`stream::NativeStream`]), its usage read for the log.
//! - **Translated**, to every other kind: the request becomes the internal chat request
//!   ([`Request::chat`], the same body `/v1/chat/completions` takes), routed and sent by the
//!   provider's own chat translator, and its answer — already OpenAI chat — becomes a
//!   Messages `message` ([`answer::from_chat_completion`]) or, streamed, Anthropic's events
//!   ([`stream::MessagesStream`]), as `responses.rs` does for the Responses API.
//!
//! What chat cannot carry (PDF documents, server tools, …) makes the request
//! [`Request::untranslatable`]: such models are skipped, Anthropic ones still serve it.
//! `thinking` blocks of earlier turns and `cache_control` marks are Anthropic-only and are
//! left out of the translation; an `is_error` tool result is sent as text starting
//! `Error: `.

pub mod answer;
pub mod stream;

pub use stream::{MessagesStream, NativeStream};

use crate::errors::ApiError;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// What a translated answer needs from its request.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// The `msg_…` id of the answer.
    pub id: String,
    /// The client's `stop_sequences`: a provider naming the one it stopped at (vLLM's
    /// `stop_reason`, SGLang's `matched_stop`) gives `stop_reason: "stop_sequence"`.
    pub stop_sequences: Vec<String>,
}

/// A parsed Messages request: the fields routing needs, the splice point of `model`, and
/// its translation to a chat completion request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The `model` field, if present and not null.
    pub model: Option<Cow<'a, str>>,
    /// Byte range of the `model` value in the body.
    model_span: Option<Range<usize>>,
    pub stream: bool,
    /// The chat completion request body it translates to (`stream_options.include_usage`
    /// set on streams, so usage is always read).
    pub chat: Vec<u8>,
    /// Why the request cannot be translated for a non-Anthropic provider, if it cannot.
    pub untranslatable: Option<String>,
    pub meta: Arc<Meta>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
}

fn bad(param: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, msg)
}

/// A fresh `msg_…` id.
pub fn message_id() -> String {
    format!("msg_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// Parses a Messages request (`count`: a `count_tokens` request, which has no
/// `max_tokens`) and translates it to chat.
pub fn parse(body: &[u8], count: bool) -> Result<Request<'_>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty: send an Anthropic Messages request.",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(format!("The request body is not valid UTF-8 JSON: {e}."))
    })?;
    let fields: Fields = serde_json::from_str(text).map_err(|e| {
        ApiError::invalid(format!(
            "The request body is not a Messages request object: {e}."
        ))
    })?;
    let req: Map<String, Value> = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(format!("The request body is not a JSON object: {e}.")))?;
    let (model, model_span) = match fields.model {
        None => (None, None),
        Some(r) if r.get() == "null" => (None, Some(span_of(body, r))),
        Some(r) => {
            let name: Cow<str> = serde_json::from_str(r.get())
                .map_err(|_| bad("model", "`model` must be a string."))?;
            (Some(name), Some(span_of(body, r)))
        }
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b && !count,
        Some(_) => return Err(bad("stream", "`stream` must be a boolean.")),
    };
    let mut t = Translation::default();
    let chat = t.chat(&req, stream, count)?;
    let stop_sequences = req
        .get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Request {
        model,
        model_span,
        stream,
        chat: serde_json::to_vec(&chat).unwrap_or_default(),
        untranslatable: t.untranslatable,
        meta: Arc::new(Meta {
            id: message_id(),
            stop_sequences,
        }),
    })
}

/// Byte range of a borrowed raw value inside the buffer it was parsed from.
pub(crate) fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

/// `body` with the JSON value at `span` replaced by the string `model` (or, without a
/// span, `"model"` inserted first in the object).
pub(crate) fn splice_model(body: &[u8], span: Option<&Range<usize>>, model: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(model).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + quoted.len() + 10);
    match span {
        Some(span) => {
            out.extend_from_slice(&body[..span.start]);
            out.extend_from_slice(quoted.as_bytes());
            out.extend_from_slice(&body[span.end..]);
        }
        None => {
            let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(b"\"model\":");
            out.extend_from_slice(quoted.as_bytes());
            // `messages` is required: the object is never empty.
            out.push(b',');
            out.extend_from_slice(&body[open + 1..]);
        }
    }
    out
}

impl Request<'_> {
    /// The client's body for an Anthropic provider: every byte as sent, `model` set.
    pub fn rewrite_for_upstream(&self, body: &[u8], model: &str) -> Vec<u8> {
        splice_model(body, self.model_span.as_ref(), model)
    }
}

/// The translation of one request, noting what chat cannot carry.
#[derive(Default)]
struct Translation {
    untranslatable: Option<String>,
}

impl Translation {
    fn cannot(&mut self, what: impl Into<String>) {
        if self.untranslatable.is_none() {
            self.untranslatable = Some(format!(
                "{} has no equivalent in the chat format this provider speaks",
                what.into()
            ));
        }
    }

    fn chat(
        &mut self,
        req: &Map<String, Value>,
        stream: bool,
        count: bool,
    ) -> Result<Value, ApiError> {
        let mut messages = Vec::new();
        match req.get("system") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                if !s.is_empty() {
                    messages.push(json!({"role": "system", "content": s}));
                }
            }
            Some(Value::Array(blocks)) => {
                let mut texts = Vec::new();
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => texts.push(text_of(b, "system")?),
                        _ => return Err(bad("system", "`system` blocks must be text blocks.")),
                    }
                }
                let joined = texts.join("\n\n");
                if !joined.is_empty() {
                    messages.push(json!({"role": "system", "content": joined}));
                }
            }
            Some(_) => {
                return Err(bad(
                    "system",
                    "`system` must be a string or an array of text blocks.",
                ))
            }
        }
        let list = match req.get("messages") {
            Some(Value::Array(l)) if !l.is_empty() => l,
            Some(Value::Array(_)) => {
                return Err(bad("messages", "`messages` must not be empty."));
            }
            None | Some(Value::Null) => return Err(bad("messages", "`messages` is required.")),
            Some(_) => return Err(bad("messages", "`messages` must be an array.")),
        };
        for (i, m) in list.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str);
            match role {
                Some("user") => self.user(m.get("content"), i, &mut messages)?,
                Some("assistant") => self.assistant(m.get("content"), i, &mut messages)?,
                _ => {
                    return Err(bad(
                        "messages",
                        format!("messages.{i}.role must be `user` or `assistant`."),
                    ))
                }
            }
        }

        let mut chat = Map::new();
        if let Some(model) = req.get("model") {
            chat.insert("model".into(), model.clone());
        }
        chat.insert("messages".into(), Value::Array(messages));
        match req.get("max_tokens") {
            Some(v) if v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => {
                chat.insert("max_tokens".into(), v.clone());
            }
            None | Some(Value::Null) if count => {}
            None | Some(Value::Null) => {
                return Err(bad("max_tokens", "`max_tokens` is required."));
            }
            Some(_) => {
                return Err(bad(
                    "max_tokens",
                    "`max_tokens` must be a non-negative integer.",
                ))
            }
        }
        for key in ["temperature", "top_p"] {
            match req.get(key) {
                None | Some(Value::Null) => {}
                Some(v) if v.is_number() => {
                    chat.insert(key.into(), v.clone());
                }
                Some(_) => return Err(bad_number(key)),
            }
        }
        match req.get("stop_sequences") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                if !a.is_empty() {
                    chat.insert("stop".into(), Value::Array(a.clone()));
                }
            }
            Some(_) => {
                return Err(bad(
                    "stop_sequences",
                    "`stop_sequences` must be an array of strings.",
                ))
            }
        }
        if let Some(user) = req
            .get("metadata")
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
        {
            chat.insert("user".into(), json!(user));
        }
        if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
            let tools = self.tools(tools)?;
            if !tools.is_empty() {
                chat.insert("tools".into(), Value::Array(tools));
            }
        }
        if let Some(choice) = req.get("tool_choice").filter(|t| !t.is_null()) {
            let (choice, no_parallel) = tool_choice(choice)?;
            if chat.contains_key("tools") {
                if no_parallel && choice != "none" {
                    chat.insert("parallel_tool_calls".into(), json!(false));
                }
                chat.insert("tool_choice".into(), choice);
            }
        }
        if stream {
            chat.insert("stream".into(), json!(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Ok(Value::Object(chat))
    }

    fn user(
        &mut self,
        content: Option<&Value>,
        i: usize,
        messages: &mut Vec<Value>,
    ) -> Result<(), ApiError> {
        let blocks = match content {
            Some(Value::String(s)) => {
                messages.push(json!({"role": "user", "content": s}));
                return Ok(());
            }
            Some(Value::Array(b)) => b,
            _ => return Err(bad_content(i)),
        };
        let mut parts = Vec::new();
        // Tool results answer the previous assistant turn: they come first, as `tool`
        // messages; images inside them follow in a user message (tool messages are text).
        let mut results = Vec::new();
        for b in blocks {
            match block_type(b, i)? {
                "text" => parts.push(json!({"type": "text", "text": text_of(b, "messages")?})),
                "image" => parts.push(self.image(b, i)?),
                "document" => self.document(b, i, &mut parts)?,
                "tool_result" => {
                    let id = b
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            bad(
                                "messages",
                                format!("messages.{i}: a tool_result needs `tool_use_id`."),
                            )
                        })?;
                    let mut text = match b.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(inner)) => {
                            let mut texts = Vec::new();
                            for ib in inner {
                                match block_type(ib, i)? {
                                    "text" => texts.push(text_of(ib, "messages")?),
                                    "image" => parts.push(self.image(ib, i)?),
                                    other => {
                                        self.cannot(format!("a `{other}` block in a tool result"))
                                    }
                                }
                            }
                            texts.join("\n")
                        }
                        Some(_) => return Err(bad_content(i)),
                    };
                    if b.get("is_error") == Some(&Value::Bool(true)) {
                        text = format!("Error: {text}");
                    }
                    results.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                }
                "thinking" | "redacted_thinking" => {}
                other => self.cannot(format!("a `{other}` block")),
            }
        }
        let answered = !results.is_empty();
        messages.extend(results);
        match parts.as_slice() {
            [] if answered => {}
            // Nothing chat can carry (only thinking blocks): the turn stays, empty.
            [] => messages.push(json!({"role": "user", "content": ""})),
            [p] if p["type"] == "text" => {
                messages.push(json!({"role": "user", "content": p["text"]}));
            }
            _ => messages.push(json!({"role": "user", "content": parts})),
        }
        Ok(())
    }

    fn assistant(
        &mut self,
        content: Option<&Value>,
        i: usize,
        messages: &mut Vec<Value>,
    ) -> Result<(), ApiError> {
        let blocks = match content {
            Some(Value::String(s)) => {
                messages.push(json!({"role": "assistant", "content": s}));
                return Ok(());
            }
            Some(Value::Array(b)) => b,
            _ => return Err(bad_content(i)),
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        for b in blocks {
            match block_type(b, i)? {
                "text" => text.push_str(&text_of(b, "messages")?),
                "tool_use" => {
                    let (Some(id), Some(name)) = (
                        b.get("id").and_then(Value::as_str),
                        b.get("name").and_then(Value::as_str),
                    ) else {
                        return Err(bad(
                            "messages",
                            format!("messages.{i}: a tool_use block needs `id` and `name`."),
                        ));
                    };
                    let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                    calls.push(json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": input.to_string()}}));
                }
                // Earlier reasoning is Anthropic's own: other providers take no signatures.
                "thinking" | "redacted_thinking" => {}
                other => self.cannot(format!("a `{other}` block")),
            }
        }
        let mut m = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        messages.push(m);
        Ok(())
    }

    fn image(&mut self, b: &Value, i: usize) -> Result<Value, ApiError> {
        let source = b.get("source").unwrap_or(&Value::Null);
        let url = match source.get("type").and_then(Value::as_str) {
            Some("base64") => {
                let (Some(mime), Some(data)) = (
                    source.get("media_type").and_then(Value::as_str),
                    source.get("data").and_then(Value::as_str),
                ) else {
                    return Err(bad(
                        "messages",
                        format!("messages.{i}: a base64 image needs `media_type` and `data`."),
                    ));
                };
                format!("data:{mime};base64,{data}")
            }
            Some("url") => source
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        "messages",
                        format!("messages.{i}: a url image needs `url`."),
                    )
                })?
                .to_string(),
            Some(other) => {
                self.cannot(format!("an image with a `{other}` source"));
                String::new()
            }
            None => {
                return Err(bad(
                    "messages",
                    format!("messages.{i}: an image block needs a `source`."),
                ))
            }
        };
        Ok(json!({"type": "image_url", "image_url": {"url": url}}))
    }

    /// A plain-text document becomes text; other documents (PDF, files) cannot be sent.
    fn document(&mut self, b: &Value, i: usize, parts: &mut Vec<Value>) -> Result<(), ApiError> {
        let source = b.get("source").unwrap_or(&Value::Null);
        match source.get("type").and_then(Value::as_str) {
            Some("text") => {
                let data = source.get("data").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": data}));
            }
            Some("content") => match source.get("content") {
                Some(Value::String(s)) => parts.push(json!({"type": "text", "text": s})),
                Some(Value::Array(inner)) => {
                    for ib in inner {
                        match block_type(ib, i)? {
                            "text" => parts
                                .push(json!({"type": "text", "text": text_of(ib, "messages")?})),
                            "image" => parts.push(self.image(ib, i)?),
                            other => self.cannot(format!("a `{other}` block in a document")),
                        }
                    }
                }
                _ => self.cannot("a document without content"),
            },
            other => self.cannot(format!("a `{}` document", other.unwrap_or("source-less"))),
        }
        Ok(())
    }

    fn tools(&mut self, tools: &Value) -> Result<Vec<Value>, ApiError> {
        let list = tools
            .as_array()
            .ok_or_else(|| bad("tools", "`tools` must be an array."))?;
        let mut out = Vec::with_capacity(list.len());
        for t in list {
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(server) => {
                    self.cannot(format!("the server tool `{server}`"));
                    continue;
                }
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tools", "every tool needs a `name`."))?;
            let mut f = json!({"name": name});
            if let Some(d) = t.get("description").filter(|d| d.is_string()) {
                f["description"] = d.clone();
            }
            f["parameters"] = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            out.push(json!({"type": "function", "function": f}));
        }
        Ok(out)
    }
}

/// `tool_choice` → chat's, and whether parallel tool use is disabled.
fn tool_choice(choice: &Value) -> Result<(Value, bool), ApiError> {
    let no_parallel = choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true));
    let c = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice", "`tool_choice` of type tool needs `name`."))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(bad(
                "tool_choice",
                "`tool_choice.type` must be auto, any, tool or none.",
            ))
        }
    };
    Ok((c, no_parallel))
}

fn block_type(b: &Value, i: usize) -> Result<&str, ApiError> {
    b.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            "messages",
            format!("messages.{i}: every content block needs a string `type`."),
        )
    })
}

fn text_of(b: &Value, param: &'static str) -> Result<String, ApiError> {
    b.get("text")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(param, "a text block needs a string `text`."))
}

fn bad_content(i: usize) -> ApiError {
    bad(
        "messages",
        format!("messages.{i}.content must be a string or an array of content blocks."),
    )
}

fn bad_number(key: &'static str) -> ApiError {
    bad(key, format!("`{key}` must be a number."))
}

#[cfg(test)]
mod tests;
