//! Anthropic's Messages API (`POST /messages`, `anthropic-version: 2023-06-01`).
//!
//! Requests: system messages → top-level `system`; images → `image` blocks (base64 or url
//! sources); tools → `input_schema`; assistant tool calls → `tool_use` blocks; tool messages →
//! `tool_result` blocks in a user turn; consecutive turns of one role are merged, as the API
//! wants strict alternation. `max_tokens` is required by Anthropic: without one from the
//! client the gateway sends [`DEFAULT_MAX_TOKENS`]. Temperatures above Anthropic's maximum
//! of 1.0 are clamped.
//!
//! JSON mode (`response_format` `json_schema` / `json_object`) has no native switch: it
//! becomes a forced call of one tool, [`JSON_TOOL`], whose `input_schema` is the client's
//! schema (`tool_choice: {"type": "tool", "name": JSON_TOOL}`), and the input of that call
//! comes back as the message's `content` (the JSON text), in answers and streams (its
//! `input_json_delta`s become content deltas). With tools of the client's own as well, the
//! model must call one of the tools (`any`): the JSON tool answers, the others are tool calls.

use crate::errors::ApiError;
use crate::providers::chat::{
    ChatEvents, ChatStream, ErrorFn, Handled, NativeChat, NativeEvents, StreamState,
};
use crate::providers::common::{
    self, ChunkWriter, Image, JsonMode, Meta, OutToolCall, Part, ToolChoice,
};
use crate::providers::{BuiltRequest, StreamError, Translated, UpstreamRequest, Usage};
use crate::request::ChatRequest;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

pub struct Anthropic;

/// `max_tokens` when the client sets none. The translator only knows the model id, not its
/// configured `max_output_tokens`; 4096 fits every current Claude model.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub const API_VERSION: &str = "2023-06-01";

/// The tool JSON mode forces: its input is the answer.
pub const JSON_TOOL: &str = "json_answer";

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

fn blocks_of(content: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    common::content_parts(content)?
        .into_iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| {
            Ok(match p {
                Part::Text(t) => json!({"type": "text", "text": t}),
                Part::Image(Image::Inline { mime, data }) => json!({"type": "image",
                    "source": {"type": "base64", "media_type": mime, "data": data}}),
                Part::Image(Image::Url(url)) => {
                    json!({"type": "image", "source": {"type": "url", "url": url}})
                }
            })
        })
        .collect()
}

/// Appends a turn, merged into the previous one when the role repeats (strict alternation).
fn push_turn(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    common::push_turn(messages, role, "content", blocks);
}

/// The native request body for an OpenAI chat request.
pub fn build_request(body: &[u8], model: &str, stream: bool) -> Result<Value, ApiError> {
    let req = common::parse_body(body)?;
    common::one_choice_only(&req, "Anthropic Messages")?;
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| common::bad("messages", "an array of message objects"))?;

    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in list {
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => {
                let t = common::content_text(m.get("content"))?;
                if !t.is_empty() {
                    system.push(t);
                }
            }
            "user" => push_turn(&mut messages, "user", blocks_of(m.get("content"))?),
            "assistant" => {
                let mut blocks = blocks_of(m.get("content"))?;
                for c in common::tool_calls(m)? {
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.args}),
                    );
                }
                push_turn(&mut messages, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        common::bad("messages", "tool messages with a `tool_call_id` string")
                    })?;
                let text = common::content_text(m.get("content"))?;
                push_turn(
                    &mut messages,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
                );
            }
            other => return Err(common::unknown_role(other)),
        }
    }
    if messages.is_empty() {
        return Err(common::no_turns("Anthropic"));
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert(
        "max_tokens".into(),
        json!(common::max_tokens(&req).unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    if stream {
        out.insert("stream".into(), json!(true));
    }
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.get("top_p").filter(|v| v.is_number()) {
        out.insert("top_p".into(), p.clone());
    }
    let stop = common::stop_sequences(&req)?;
    if !stop.is_empty() {
        out.insert("stop_sequences".into(), json!(stop));
    }

    let tools = common::tools(&req)?;
    let json_tool = json_tool(&req, &tools)?;
    if !tools.is_empty() || json_tool.is_some() {
        let mut list: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name,
                    "input_schema": t.parameters.cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
                if let Some(desc) = t.description {
                    d["description"] = json!(desc);
                }
                d
            })
            .collect();
        let no_parallel = req.get("parallel_tool_calls") == Some(&Value::Bool(false));
        let client_choice = common::tool_choice(&req)?;
        let mut choice = match (&client_choice, json_tool.is_some()) {
            (Some(ToolChoice::Function(name)), _) => json!({"type": "tool", "name": name}),
            // JSON mode, no tools of the client's (or none allowed): the JSON tool.
            (Some(ToolChoice::None), true) => json!({"type": "tool", "name": JSON_TOOL}),
            (_, true) if tools.is_empty() => json!({"type": "tool", "name": JSON_TOOL}),
            // JSON mode beside the client's tools: some tool must be called.
            (_, true) => json!({"type": "any"}),
            (None | Some(ToolChoice::Auto), false) => json!({"type": "auto"}),
            (Some(ToolChoice::None), false) => json!({"type": "none"}),
            (Some(ToolChoice::Required), false) => json!({"type": "any"}),
        };
        list.extend(json_tool);
        out.insert("tools".into(), Value::Array(list));
        if no_parallel && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        if no_parallel
            || json_tool_forced(&choice)
            || choice["type"] == "any"
            || req.get("tool_choice").is_some_and(|c| !c.is_null())
        {
            out.insert("tool_choice".into(), choice);
        }
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    Ok(Value::Object(out))
}

/// The tool JSON mode adds, if the client asked for JSON.
fn json_tool(
    req: &Map<String, Value>,
    tools: &[common::Tool<'_>],
) -> Result<Option<Value>, ApiError> {
    // Calls of the JSON tool are read back as content, so no tool of the client's may share
    // its name (with or without JSON mode).
    if tools.iter().any(|t| t.name == JSON_TOOL) {
        return Err(ApiError::invalid_param(
            "tools",
            format!("On Anthropic models freeway serves JSON mode with a tool named `{JSON_TOOL}`: rename your tool of that name."),
        ));
    }
    let (name, schema) = match common::json_mode(req) {
        JsonMode::Off => return Ok(None),
        JsonMode::Object => (None, None),
        JsonMode::Schema { name, schema } => (name, schema),
    };
    let what = name.map_or_else(String::new, |n| format!(" (`{n}`)"));
    let schema = schema
        .filter(|s| {
            s.get("type").and_then(Value::as_str) == Some("object") || s.get("$ref").is_some()
        })
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    Ok(Some(json!({
        "name": JSON_TOOL,
        "description": format!("Give your final answer by calling this tool: its input is the answer{what}, a JSON object. Call it exactly once."),
        "input_schema": schema,
    })))
}

fn json_tool_forced(choice: &Value) -> bool {
    choice["type"] == "tool" && choice["name"] == JSON_TOOL
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Vec<Block<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<&'a str>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct NativeUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl NativeUsage {
    /// All input tokens: Anthropic counts cached ones apart.
    fn input(&self) -> Option<u64> {
        let cached = self.cache_creation_input_tokens.unwrap_or(0)
            + self.cache_read_input_tokens.unwrap_or(0);
        self.input_tokens.map(|i| i + cached)
    }
}

fn stop_reason(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

pub fn translate_response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String> {
    let m: Message = serde_json::from_slice(body)
        .map_err(|e| format!("the provider's answer is not an Anthropic message: {e}"))?;
    if m.kind != "message" {
        return Err(format!(
            "the provider's answer is a `{}`, not an Anthropic message",
            m.kind
        ));
    }
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for b in &m.content {
        match b.kind.as_ref() {
            "text" => text
                .get_or_insert_with(String::new)
                .push_str(b.text.as_deref().unwrap_or("")),
            // JSON mode: the forced tool's input is the answer.
            "tool_use" if b.name.as_deref() == Some(JSON_TOOL) => {
                text.get_or_insert_with(String::new).push_str(
                    &b.input
                        .map_or_else(|| "{}".into(), |i| common::compact_json(i.get())),
                )
            }
            "tool_use" => calls.push(OutToolCall {
                id: b.id.as_deref().unwrap_or("").to_string(),
                name: b.name.as_deref().unwrap_or("").to_string(),
                arguments: b
                    .input
                    .map_or_else(|| "{}".into(), |i| common::compact_json(i.get())),
            }),
            // thinking, redacted_thinking, server tool blocks: not part of the OpenAI answer.
            _ => {}
        }
    }
    let reason = match stop_reason(m.stop_reason.unwrap_or("end_turn")) {
        // Only the JSON tool was called: a finished answer.
        "tool_calls" if calls.is_empty() => "stop",
        r => r,
    };
    let usage = m.usage.map(|u| Usage {
        prompt_tokens: u.input().unwrap_or(0),
        completion_tokens: u.output_tokens.unwrap_or(0),
    });
    Ok(Translated {
        body: common::completion(meta, model, text, calls, reason, usage),
        usage,
        usage_at: None,
    })
}

/// One streamed event (`data:` of an Anthropic SSE event), borrowed.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<NativeUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<NativeUsage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    /// Kept raw: already a JSON string literal.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    partial_json: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stop_reason: Option<&'a str>,
}

/// Translates one Anthropic message stream.
pub type AnthropicStream = ChatStream<AnthropicEvents>;

/// Anthropic's stream events, ended by `message_stop`.
pub struct AnthropicEvents {
    writer: ChunkWriter,
    /// (content block index, tool call index) of the tool_use blocks seen.
    tool_blocks: Vec<(usize, usize)>,
    /// The content block of the JSON tool's call (JSON mode), streamed as content.
    json_block: Option<usize>,
    finish: Option<&'static str>,
    input_tokens: u64,
    output_tokens: u64,
}

impl AnthropicEvents {
    fn take_usage(&mut self, s: &mut StreamState, u: &NativeUsage) {
        let mut seen = false;
        if let Some(i) = u.input() {
            self.input_tokens = self.input_tokens.max(i);
            seen = true;
        }
        if let Some(o) = u.output_tokens {
            self.output_tokens = o;
            seen = true;
        }
        if seen {
            s.usage = Some(Usage {
                prompt_tokens: self.input_tokens,
                completion_tokens: self.output_tokens,
            });
        }
    }

    fn tool_index(&self, block: usize) -> Option<usize> {
        self.tool_blocks
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }
}

impl NativeEvents for AnthropicEvents {
    fn new(model: &str, meta: &Meta) -> AnthropicEvents {
        AnthropicEvents {
            writer: ChunkWriter::new(meta, model),
            tool_blocks: Vec::new(),
            json_block: None,
            finish: None,
            input_tokens: 0,
            output_tokens: 0,
        }
    }
}

impl ChatEvents for AnthropicEvents {
    const UNFINISHED: &'static str = "the Anthropic stream ended without message_stop";

    fn event(&mut self, s: &mut StreamState, data: &[u8], out: &mut Vec<u8>) -> Handled {
        let ev: Event = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad Anthropic stream event: {e}")))?;
        match ev.kind.as_ref() {
            "message_start" => {
                if let Some(u) = ev.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    self.take_usage(s, u);
                }
                s.role(&self.writer, out);
            }
            "content_block_start" => {
                s.role(&self.writer, out);
                let (Some(index), Some(block)) = (ev.index, ev.content_block.as_ref()) else {
                    return Err(StreamError::Malformed(
                        "content_block_start without index or content_block".into(),
                    ));
                };
                match block.kind.as_ref() {
                    "tool_use" if block.name.as_deref() == Some(JSON_TOOL) => {
                        self.json_block = Some(index);
                    }
                    "tool_use" => {
                        let t = self.tool_blocks.len();
                        self.tool_blocks.push((index, t));
                        self.writer.tool_call_start(
                            out,
                            t,
                            block.id.as_deref().unwrap_or(""),
                            block.name.as_deref().unwrap_or(""),
                            "",
                        );
                        s.started = true;
                    }
                    "text" => {
                        if let Some(t) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            self.writer.content(out, t);
                            s.started = true;
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                s.role(&self.writer, out);
                let Some(d) = ev.delta.as_ref() else {
                    return Err(StreamError::Malformed(
                        "content_block_delta without delta".into(),
                    ));
                };
                match d.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(t) = d.text.filter(|t| !common::raw_is_empty(t.get())) {
                            self.writer.content_raw(out, t.get());
                            s.started = true;
                        }
                    }
                    Some("input_json_delta")
                        if ev.index.is_some() && ev.index == self.json_block =>
                    {
                        if let Some(p) = d.partial_json.filter(|p| !common::raw_is_empty(p.get())) {
                            self.writer.content_raw(out, p.get());
                            s.started = true;
                        }
                    }
                    Some("input_json_delta") => {
                        let block = ev.index.unwrap_or(usize::MAX);
                        let Some(t) = self.tool_index(block) else {
                            return Err(StreamError::Malformed(format!(
                                "input_json_delta for block {block}, which is not a tool_use block"
                            )));
                        };
                        if let Some(p) = d.partial_json.filter(|p| !common::raw_is_empty(p.get())) {
                            self.writer.tool_args_raw(out, t, p.get());
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta: not in the OpenAI answer.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    self.take_usage(s, u);
                }
                if let Some(r) = ev.delta.as_ref().and_then(|d| d.stop_reason) {
                    self.finish = Some(match stop_reason(r) {
                        // Only the JSON tool was called: a finished answer.
                        "tool_calls" if self.tool_blocks.is_empty() => "stop",
                        r => r,
                    });
                    s.started = true;
                }
            }
            "message_stop" => {
                s.role(&self.writer, out);
                s.close(&self.writer, out, self.finish.unwrap_or("stop"));
            }
            "error" => {
                let msg = ev.error.map_or_else(
                    || String::from_utf8_lossy(data).into_owned(),
                    |e| e.get().to_string(),
                );
                return Err(StreamError::Upstream(msg));
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }
}

impl NativeChat for Anthropic {
    type Events = AnthropicEvents;
    const ERROR: ErrorFn = super::error::translate_error;

    fn request(req: &ChatRequest, body: &[u8], model: &str) -> BuiltRequest {
        let native = build_request(body, model, req.stream)?;
        let mut up = UpstreamRequest::json("/messages".into(), &native);
        up.headers.push((
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        ));
        Ok(up)
    }

    fn response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String> {
        translate_response(body, model, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::testing::{self, chunks};
    use crate::providers::{StreamTranslator, Translator};

    fn req(v: Value) -> Value {
        build_request(v.to_string().as_bytes(), "claude-x", false).unwrap()
    }

    fn run(stream: &[u8], include_usage: bool) -> (String, Result<(), StreamError>, bool) {
        testing::run(
            &mut AnthropicStream::new("claude-x", include_usage, &Meta::fixed()),
            stream,
        )
    }

    #[test]
    fn system_joined_max_tokens_defaulted_temperature_clamped() {
        let v = req(json!({"messages": [
            {"role": "system", "content": "one"}, {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "two"}]},
        ], "temperature": 1.7, "stop": ["X", "Y"], "user": "u1"}));
        assert_eq!(v["system"], "one\n\ntwo");
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["stop_sequences"], json!(["X", "Y"]));
        assert_eq!(v["model"], "claude-x");
        assert_eq!(v["metadata"]["user_id"], "u1");
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
        let v = req(
            json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 77}),
        );
        assert_eq!(v["max_tokens"], 77);
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let v = req(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a"}},
            {"type": "text", "text": "what?"}]}]}));
        let c = &v["messages"][0]["content"];
        assert_eq!(
            c[0]["source"],
            json!({"type": "base64", "media_type": "image/jpeg", "data": "/9j/"})
        );
        assert_eq!(
            c[1]["source"],
            json!({"type": "url", "url": "https://x.test/a"})
        );
    }

    #[test]
    fn tool_calls_and_results_become_blocks_in_alternating_turns() {
        let v = req(json!({"messages": [
            {"role": "user", "content": "weather in Oslo and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Oslo\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "3C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "20C"}]},
            {"role": "user", "content": "thanks"},
        ], "tools": [{"type": "function", "function": {"name": "w", "description": "weather",
            "parameters": {"type": "object", "properties": {"c": {"type": "string"}}}}}],
           "tool_choice": {"type": "function", "function": {"name": "w"}}, "parallel_tool_calls": false}));
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "text", "text": "Checking."})
        );
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Oslo"}})
        );
        assert_eq!(m[2]["role"], "user");
        assert_eq!(
            m[2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3C"},
                   {"type": "tool_result", "tool_use_id": "toolu_2", "content": "20C"},
                   {"type": "text", "text": "thanks"}])
        );
        assert_eq!(
            v["tools"][0]["input_schema"]["properties"]["c"]["type"],
            "string"
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": "w", "disable_parallel_tool_use": true})
        );
        for (choice, want) in [("auto", "auto"), ("required", "any"), ("none", "none")] {
            let v = req(
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
                "tools": [{"type": "function", "function": {"name": "w"}}]}),
            );
            assert_eq!(v["tool_choice"]["type"], want);
        }
    }

    #[test]
    fn json_mode_becomes_a_forced_tool() {
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        let v = req(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": schema}}}));
        assert!(v.get("system").is_none());
        assert_eq!(v["tools"][0]["name"], JSON_TOOL);
        assert_eq!(v["tools"][0]["input_schema"], schema);
        assert!(v["tools"][0]["description"]
            .as_str()
            .unwrap()
            .contains("`n`"));
        assert_eq!(v["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));
        let v = req(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"}}));
        assert_eq!(v["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(v["tool_choice"]["name"], JSON_TOOL);
        // Beside the client's tools: one of them must be called.
        let v = req(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "w"}}]}));
        let names: Vec<&str> = v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["w", JSON_TOOL]);
        assert_eq!(v["tool_choice"], json!({"type": "any"}));
        let e = build_request(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
                   "tools": [{"type": "function", "function": {"name": JSON_TOOL}}]})
            .to_string()
            .as_bytes(),
            "m",
            false,
        )
        .unwrap_err();
        assert_eq!(e.param, Some("tools"));
    }

    #[test]
    fn json_tool_calls_come_back_as_content() {
        let body = br#"{"type":"message","content":[{"type":"tool_use","id":"toolu_1","name":"json_answer","input":{"a": 1, "b": "x y"}}],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}"#;
        let v: Value =
            serde_json::from_slice(&translate_response(body, "m", &Meta::fixed()).unwrap().body)
                .unwrap();
        let c = &v["choices"][0];
        assert_eq!(c["message"]["content"], r#"{"a":1,"b":"x y"}"#);
        assert!(c["message"].get("tool_calls").is_none());
        assert_eq!(c["finish_reason"], "stop");

        let s = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"json_answer\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\": \"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":6}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (out, r, started) = run(s, false);
        r.unwrap();
        assert!(started);
        let c = chunks(&out);
        let text: String = c
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, r#"{"a": 1}"#);
        assert!(!out.contains("tool_calls"));
        assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn n_above_one_is_refused() {
        let e = build_request(
            json!({"messages": [{"role": "user", "content": "x"}], "n": 3})
                .to_string()
                .as_bytes(),
            "m",
            false,
        )
        .unwrap_err();
        assert_eq!(
            (e.status, e.kind, e.param),
            (400, "invalid_request_error", Some("n"))
        );
        assert!(
            e.message.contains("Anthropic") && e.message.contains("one choice"),
            "{}",
            e.message
        );
    }

    #[test]
    fn request_carries_the_version_header() {
        let body = br#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let r = crate::request::parse_chat(body).unwrap();
        let u = Anthropic.chat_request(&r, body, "claude-x").unwrap();
        assert_eq!(u.path, "/messages");
        assert_eq!(u.headers[0].1, "2023-06-01");
        let v: Value = serde_json::from_slice(&u.body).unwrap();
        assert_eq!(v["stream"], true);
    }

    #[test]
    fn response_blocks_become_content_and_tool_calls() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_9","name":"w","input":{"c":"Oslo"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":12,"cache_read_input_tokens":3,"output_tokens":8}}"#;
        let t = translate_response(body, "claude-x", &Meta::fixed()).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Let me look.");
        assert_eq!(m["tool_calls"][0]["id"], "toolu_9");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            r#"{"c":"Oslo"}"#
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["prompt_tokens"], 15);
        assert_eq!(v["usage"]["total_tokens"], 23);
        for (native, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
        ] {
            let body = format!(
                r#"{{"type":"message","content":[{{"type":"text","text":"x"}}],"stop_reason":"{native}"}}"#
            );
            let v: Value = serde_json::from_slice(
                &translate_response(body.as_bytes(), "m", &Meta::fixed())
                    .unwrap()
                    .body,
            )
            .unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], want);
        }
        assert!(translate_response(b"[]", "m", &Meta::fixed()).is_err());
    }

    const STREAM: &[u8] = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \\\"there\\\"\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"w\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"c\\\": \\\"Os\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"lo\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn stream_text_and_tool_use_translate() {
        let (out, c) = testing::opened(run, STREAM);
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "Hi \"there\"");
        let tc = &c[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (tc["index"].as_u64(), tc["id"].as_str()),
            (Some(0), Some("toolu_1"))
        );
        assert_eq!(tc["function"]["name"], "w");
        assert_eq!(tc["function"]["arguments"], "");
        let args: String = c[3..5]
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(args, r#"{"c": "Oslo"}"#);
        assert_eq!(c[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            c[6]["usage"],
            json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        let (out, _, _) = run(STREAM, false);
        assert!(!out.contains("\"usage\""));
    }

    #[test]
    fn stream_errors_and_truncation() {
        let (_, r, _) = run(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", false);
        assert!(matches!(r, Err(StreamError::Upstream(m)) if m.contains("Overloaded")));
        let cut = STREAM.len() - 50;
        let (_, r, _) = run(&STREAM[..cut], false);
        assert!(matches!(r, Err(StreamError::Malformed(_))));
        let mut t = AnthropicStream::new("m", false, &Meta::fixed());
        let mut out = Vec::new();
        let first = STREAM.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        t.feed(&STREAM[..first], &mut out).unwrap();
        assert!(!t.started(), "message_start alone is not content");
        assert_eq!(t.usage().unwrap().prompt_tokens, 25);
    }
}
