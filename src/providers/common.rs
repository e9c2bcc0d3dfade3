//! Pieces every native translator shares: reading the client's OpenAI request, and writing
//! OpenAI `chat.completion` objects and `chat.completion.chunk` events.
//!
//! Chunks are written by hand around borrowed raw JSON: a native text delta is already a
//! valid JSON string literal, so it is copied into the OpenAI event without being decoded
//! and re-escaped (the stream hot path allocates nothing per event beyond the output).

use super::Usage;
use crate::errors::{envelope, ApiError};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Identity of one translated answer: its `id` and `created` fields.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
}

impl Meta {
    /// A fresh id and the current time.
    pub fn fresh() -> Meta {
        Meta {
            id: format!(
                "chatcmpl-{:016x}{:08x}",
                fastrand::u64(..),
                fastrand::u32(..)
            ),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The id of tool call `n` of this answer, for formats whose calls have none (Gemini,
    /// some Workers AI models): unique per answer (`call_<answer id>_<n>`), so ids never
    /// repeat across the turns of a conversation.
    pub fn call_id(&self, n: usize) -> String {
        let answer = self.id.strip_prefix("chatcmpl-").unwrap_or(&self.id);
        format!("call_{answer}_{n}")
    }

    /// Fixed values, so golden tests and fuzz targets compare bytes.
    pub fn fixed() -> Meta {
        Meta {
            id: "chatcmpl-golden".into(),
            created: 1_700_000_000,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client's request
// ---------------------------------------------------------------------------------------

/// The client's OpenAI body as a JSON object (the request side is not the hot path; the
/// body was already validated by `request::parse_chat`).
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("The request body must be a JSON object.")),
        Err(e) => Err(ApiError::invalid(format!(
            "The request body is not valid JSON: {e}."
        ))),
    }
}

/// `max_completion_tokens`, else `max_tokens`.
pub fn max_tokens(req: &Map<String, Value>) -> Option<u64> {
    req.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64))
}

/// `n`, the number of choices asked for (1 when absent).
pub fn choices(req: &Map<String, Value>) -> Result<u64, ApiError> {
    match req.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(n),
            _ => Err(bad("n", "an integer of at least 1")),
        },
    }
}

/// Refuses `n` > 1 for a format whose API answers one choice per request.
pub fn one_choice_only(req: &Map<String, Value>, format: &str) -> Result<(), ApiError> {
    let n = choices(req)?;
    if n > 1 {
        let mut e = ApiError::invalid_param(
            "n",
            format!("`n` = {n} asks for {n} choices, but the {format} API answers one choice per request: send `n` = 1 (or several requests), or choose a model that serves `n` > 1 (OpenAI-compatible and Gemini providers)."),
        );
        e.code = Some("unsupported_value");
        return Err(e);
    }
    Ok(())
}

/// `stop` as a list (OpenAI accepts a string or an array of strings).
pub fn stop_sequences(req: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match req.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("stop", "a string or an array of strings"))
            })
            .collect(),
        Some(_) => Err(bad("stop", "a string or an array of strings")),
    }
}

pub fn bad(param: &'static str, expected: &str) -> ApiError {
    ApiError::invalid_param(param, format!("`{param}` must be {expected}."))
}

/// One part of a message's content.
pub enum Part<'a> {
    Text(&'a str),
    Image(Image<'a>),
}

/// An image part: inline bytes from a `data:` URL, or a URL to fetch.
pub enum Image<'a> {
    Inline { mime: &'a str, data: &'a str },
    Url(&'a str),
}

/// The parts of a message's `content` (a string is one text part; null is none).
pub fn content_parts(content: Option<&Value>) -> Result<Vec<Part<'_>>, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s)]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | Some("input_text") => {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            out.push(Part::Text(t));
                        }
                    }
                    Some("image_url") => {
                        let url = match p.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(v) => v.get("url").and_then(Value::as_str).ok_or_else(|| {
                                bad("messages", "image parts with an `image_url.url` string")
                            })?,
                            None => {
                                return Err(bad(
                                    "messages",
                                    "image parts with an `image_url.url` string",
                                ))
                            }
                        };
                        out.push(Part::Image(image_of(url)?));
                    }
                    Some(other) => {
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!(
                                "Content parts of type `{other}` are not supported by this provider; send text or image_url parts."
                            ),
                        ))
                    }
                    None => return Err(bad("messages", "content parts with a string `type`")),
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad(
            "messages",
            "content that is a string or an array of parts",
        )),
    }
}

/// A chat message whose role no translator knows.
pub fn unknown_role(role: &str) -> ApiError {
    ApiError::invalid_param("messages", format!("Unknown message role `{role}`."))
}

/// A conversation with nothing but a system prompt, which `provider` cannot take.
pub fn no_turns(provider: &str) -> ApiError {
    ApiError::invalid_param(
        "messages",
        format!(
            "{provider} needs at least one user or assistant message besides the system prompt."
        ),
    )
}

/// The text of a message's content, parts joined (for formats whose field is a string).
pub fn content_text(content: Option<&Value>) -> Result<String, ApiError> {
    let mut s = String::new();
    for p in content_parts(content)? {
        if let Part::Text(t) = p {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(t);
        }
    }
    Ok(s)
}

fn image_of(url: &str) -> Result<Image<'_>, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (head, data) = rest.split_once(',').ok_or_else(|| {
            ApiError::invalid_param(
                "messages",
                "An image `data:` URL has no `,` before its data.",
            )
        })?;
        let mime = head.strip_suffix(";base64").ok_or_else(|| {
            ApiError::invalid_param(
                "messages",
                "Image `data:` URLs must be base64 (`data:image/png;base64,…`).",
            )
        })?;
        return Ok(Image::Inline { mime, data });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Image::Url(url));
    }
    Err(ApiError::invalid_param(
        "messages",
        "An image URL must be an http(s) URL or a base64 `data:` URL.",
    ))
}

/// The image MIME type an http URL's file extension names, if it is a common one.
pub fn guess_image_mime(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

/// A tool call the client sends back in an assistant message.
pub struct ToolCall<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// The JSON arguments, parsed (an empty string is `{}`).
    pub args: Value,
}

pub fn tool_calls(msg: &Value) -> Result<Vec<ToolCall<'_>>, ApiError> {
    let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    calls
        .iter()
        .map(|c| {
            let f = c.get("function");
            let name = f
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("messages", "tool calls with a `function.name` string"))?;
            let args = match f.and_then(|f| f.get("arguments")) {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
                Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                    ApiError::invalid_param(
                        "messages",
                        format!("The arguments of tool call `{name}` are not valid JSON: {e}."),
                    )
                })?,
                Some(v) => v.clone(),
            };
            Ok(ToolCall {
                id: c.get("id").and_then(Value::as_str).unwrap_or(""),
                name,
                args,
            })
        })
        .collect()
}

/// Appends a turn `{"role": role, key: items}` to a native conversation, or merges `items`
/// into the previous turn when it has the same role. Nothing is appended for no items.
pub fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(list) = last[key].as_array_mut() {
                list.extend(items);
                return;
            }
        }
    }
    turns.push(json!({"role": role, key: items}));
}

/// A declared function tool.
pub struct Tool<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub parameters: Option<&'a Value>,
}

pub fn tools(req: &Map<String, Value>) -> Result<Vec<Tool<'_>>, ApiError> {
    let Some(list) = req.get("tools").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|t| {
            let f = t.get("function").unwrap_or(t);
            Ok(Tool {
                name: f
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("tools", "function tools with a `function.name` string"))?,
                description: f.get("description").and_then(Value::as_str),
                parameters: f.get("parameters").filter(|p| !p.is_null()),
            })
        })
        .collect()
}

/// The client's `tool_choice`, normalised.
#[derive(Debug, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    Auto,
    None,
    Required,
    Function(&'a str),
}

pub fn tool_choice(req: &Map<String, Value>) -> Result<Option<ToolChoice<'_>>, ApiError> {
    Ok(match req.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(bad(
                    "tool_choice",
                    "`auto`, `none`, `required` or a function",
                ))
            }
        }),
        Some(v) => Some(ToolChoice::Function(
            v.get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice", "`auto`, `none`, `required` or a function"))?,
        )),
    })
}

/// What `response_format` asks for.
pub enum JsonMode<'a> {
    Off,
    Object,
    /// `json_schema.schema` (and its name).
    Schema {
        name: Option<&'a str>,
        schema: Option<&'a Value>,
    },
}

pub fn json_mode(req: &Map<String, Value>) -> JsonMode<'_> {
    let Some(rf) = req.get("response_format") else {
        return JsonMode::Off;
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("json_object") => JsonMode::Object,
        Some("json_schema") => {
            let js = rf.get("json_schema");
            JsonMode::Schema {
                name: js.and_then(|j| j.get("name")).and_then(Value::as_str),
                schema: js.and_then(|j| j.get("schema")),
            }
        }
        _ => JsonMode::Off,
    }
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// A tool call in a translated answer.
pub struct OutToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// One choice of a translated answer.
pub struct OutChoice {
    pub content: Option<String>,
    pub tool_calls: Vec<OutToolCall>,
    pub finish_reason: &'static str,
}

/// Builds an OpenAI `chat.completion` body.
pub fn completion(
    meta: &Meta,
    model: &str,
    content: Option<String>,
    tool_calls: Vec<OutToolCall>,
    finish_reason: &str,
    usage: Option<Usage>,
) -> Bytes {
    let choice = choice_json(0, content, tool_calls, finish_reason);
    completion_of(meta, model, vec![choice], usage)
}

/// Builds an OpenAI `chat.completion` body with several choices (`n` > 1), indexed in order.
pub fn completion_choices(
    meta: &Meta,
    model: &str,
    choices: Vec<OutChoice>,
    usage: Option<Usage>,
) -> Bytes {
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| choice_json(i, c.content, c.tool_calls, c.finish_reason))
        .collect();
    completion_of(meta, model, choices, usage)
}

fn choice_json(
    index: usize,
    content: Option<String>,
    tool_calls: Vec<OutToolCall>,
    finish_reason: &str,
) -> Value {
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = tool_calls
            .into_iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish_reason})
}

fn completion_of(meta: &Meta, model: &str, choices: Vec<Value>, usage: Option<Usage>) -> Bytes {
    let mut v = json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        v["usage"] = usage_json(u);
    }
    Bytes::from(v.to_string())
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens})
}

/// Writes OpenAI `chat.completion.chunk` SSE events for one answer.
pub struct ChunkWriter {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`
    prefix: Vec<u8>,
}

impl ChunkWriter {
    pub fn new(meta: &Meta, model: &str) -> ChunkWriter {
        let mut prefix = Vec::with_capacity(128);
        prefix.extend_from_slice(b"data: {\"id\":");
        write_json_str(&mut prefix, &meta.id);
        let _ = write!(
            prefix,
            ",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":",
            meta.created
        );
        write_json_str(&mut prefix, model);
        prefix.extend_from_slice(b",\"choices\":[");
        ChunkWriter { prefix }
    }

    fn open(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
    }

    fn close(out: &mut Vec<u8>) {
        out.extend_from_slice(b"]}\n\n");
    }

    /// Opens choice `choice` of a chunk: `{"index":N,"delta":`.
    fn delta(out: &mut Vec<u8>, choice: usize) {
        if choice == 0 {
            out.extend_from_slice(br#"{"index":0,"delta":"#);
        } else {
            let _ = write!(out, r#"{{"index":{choice},"delta":"#);
        }
    }

    /// A whole unfinished chunk of choice `choice`, its delta object written by `fields`
    /// (the fields between the braces).
    fn delta_chunk(&self, out: &mut Vec<u8>, choice: usize, fields: impl FnOnce(&mut Vec<u8>)) {
        self.open(out);
        Self::delta(out, choice);
        out.push(b'{');
        fields(out);
        out.extend_from_slice(br#"},"logprobs":null,"finish_reason":null}"#);
        Self::close(out);
    }

    /// The first chunk: the assistant role with empty content.
    pub fn role(&self, out: &mut Vec<u8>) {
        self.role_at(out, 0);
    }

    /// The role chunk of choice `choice` (answers with several choices, `n` > 1).
    pub fn role_at(&self, out: &mut Vec<u8>, choice: usize) {
        self.delta_chunk(out, choice, |o| {
            o.extend_from_slice(br#""role":"assistant","content":"""#)
        });
    }

    /// A content delta; `raw` is a JSON string literal (quotes included).
    pub fn content_raw(&self, out: &mut Vec<u8>, raw: &str) {
        self.content_raw_at(out, 0, raw);
    }

    /// A content delta of choice `choice`; `raw` is a JSON string literal.
    pub fn content_raw_at(&self, out: &mut Vec<u8>, choice: usize, raw: &str) {
        self.delta_chunk(out, choice, |o| {
            o.extend_from_slice(br#""content":"#);
            o.extend_from_slice(raw.as_bytes());
        });
    }

    /// A content delta from plain text.
    pub fn content(&self, out: &mut Vec<u8>, text: &str) {
        let mut raw = Vec::with_capacity(text.len() + 2);
        write_json_str(&mut raw, text);
        self.content_raw(out, &String::from_utf8_lossy(&raw));
    }

    /// The first delta of a tool call: its id, name and (possibly empty) arguments text.
    pub fn tool_call_start(
        &self,
        out: &mut Vec<u8>,
        index: usize,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        self.tool_call_start_at(out, 0, index, id, name, arguments);
    }

    /// [`tool_call_start`](Self::tool_call_start) in choice `choice`.
    pub fn tool_call_start_at(
        &self,
        out: &mut Vec<u8>,
        choice: usize,
        index: usize,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        self.delta_chunk(out, choice, |o| {
            let _ = write!(o, r#""tool_calls":[{{"index":{index},"id":"#);
            write_json_str(o, id);
            o.extend_from_slice(br#","type":"function","function":{"name":"#);
            write_json_str(o, name);
            o.extend_from_slice(br#","arguments":"#);
            write_json_str(o, arguments);
            o.extend_from_slice(b"}}]");
        });
    }

    /// More arguments of a tool call; `raw` is a JSON string literal.
    pub fn tool_args_raw(&self, out: &mut Vec<u8>, index: usize, raw: &str) {
        self.delta_chunk(out, 0, |o| {
            let _ = write!(
                o,
                r#""tool_calls":[{{"index":{index},"function":{{"arguments":"#
            );
            o.extend_from_slice(raw.as_bytes());
            o.extend_from_slice(b"}}]");
        });
    }

    /// The closing chunk with the finish reason.
    pub fn finish(&self, out: &mut Vec<u8>, reason: &str) {
        self.finish_at(out, 0, reason);
    }

    /// The closing chunk of choice `choice`.
    pub fn finish_at(&self, out: &mut Vec<u8>, choice: usize, reason: &str) {
        self.open(out);
        Self::delta(out, choice);
        out.extend_from_slice(br#"{},"logprobs":null,"finish_reason":"#);
        write_json_str(out, reason);
        out.push(b'}');
        Self::close(out);
    }

    /// The usage chunk (no choices), as OpenAI sends it with `include_usage`.
    pub fn usage(&self, out: &mut Vec<u8>, u: Usage) {
        self.open(out);
        let _ = write!(
            out,
            r#"],"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}}}"#,
            u.prompt_tokens,
            u.completion_tokens,
            u.prompt_tokens + u.completion_tokens
        );
        out.extend_from_slice(b"\n\n");
    }

    pub fn done(out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A JSON text without the whitespace between tokens (providers may pretty-print; OpenAI
/// tool-call arguments are compact). Strings are copied byte for byte.
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Whether a raw JSON string literal is empty (`""`).
pub fn raw_is_empty(raw: &str) -> bool {
    raw.len() <= 2
}

/// An OpenAI error envelope for a native error, with the provider named in the message.
pub fn native_error(
    status: u16,
    provider: &str,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Bytes {
    envelope(
        kind,
        code,
        None,
        &format!("Provider `{provider}` answered {status}: {message}"),
    )
}

/// The gateway's error type for an HTTP status (one table, in `errors`).
pub use crate::errors::kind_for_status;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_valid_json_events() {
        let w = ChunkWriter::new(&Meta::fixed(), "m\"x");
        let mut out = Vec::new();
        w.role(&mut out);
        w.content(&mut out, "a \"quoted\"\nline");
        w.tool_call_start(&mut out, 1, "call_1", "get", "");
        w.tool_args_raw(&mut out, 1, r#""{\"a\":1}""#);
        w.finish(&mut out, "tool_calls");
        w.usage(
            &mut out,
            Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
            },
        );
        ChunkWriter::done(&mut out);
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 7);
        for e in &events[..6] {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["model"], "m\"x");
            assert_eq!(v["object"], "chat.completion.chunk");
        }
        let v: Value = serde_json::from_str(&events[1][6..]).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], "a \"quoted\"\nline");
        let v: Value = serde_json::from_str(&events[3][6..]).unwrap();
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        let v: Value = serde_json::from_str(&events[5][6..]).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["choices"], json!([]));
        assert_eq!(events[6], "data: [DONE]");
    }

    #[test]
    fn image_urls_are_classified() {
        let content = json!([
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.JPG?s=1"}},
        ]);
        let parts = content_parts(Some(&content)).unwrap();
        assert!(matches!(
            parts[1],
            Part::Image(Image::Inline {
                mime: "image/png",
                data: "iVBOR"
            })
        ));
        assert!(
            matches!(parts[2], Part::Image(Image::Url(u)) if guess_image_mime(u) == Some("image/jpeg"))
        );
        assert!(content_parts(Some(
            &json!([{"type": "image_url", "image_url": {"url": "ftp://x"}}])
        ))
        .is_err());
        assert!(content_parts(Some(
            &json!([{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}])
        ))
        .is_err());
        assert!(content_parts(Some(&json!([{"type": "input_audio"}]))).is_err());
    }

    #[test]
    fn compact_json_keeps_strings() {
        assert_eq!(
            compact_json("{\n  \"a b\": \"x \\\" y\",\n  \"c\": [1, 2]\n}"),
            r#"{"a b":"x \" y","c":[1,2]}"#
        );
    }

    #[test]
    fn tool_call_arguments_must_be_json() {
        let m =
            json!({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]});
        assert!(tool_calls(&m).is_err());
        let m = json!({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": ""}}]});
        assert_eq!(tool_calls(&m).unwrap()[0].args, json!({}));
    }
}
