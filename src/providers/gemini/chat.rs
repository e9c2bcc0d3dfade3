//! Google AI Studio's native Gemini API (`generateContent` / `streamGenerateContent`).
//!
//! Requests: system messages → `systemInstruction`; assistant → role `model`; images →
//! `inlineData` (data: URLs) or `fileData` (http URLs); tools → `functionDeclarations`;
//! assistant tool calls → `functionCall` parts; tool messages → `functionResponse` parts in a
//! user turn. Gemini has no tool-call ids, so answers get deterministic ones (`call_<n>`,
//! the call's position in the answer) and tool results are matched back to their function
//! name through the assistant message that made the call.
//! JSON schemas are reduced to Gemini's OpenAPI-subset `Schema` dialect.

use crate::errors::ApiError;
use crate::providers::chat::{
    ChatEvents, ChatStream, ErrorFn, Handled, NativeChat, NativeEvents, StreamState,
};
use crate::providers::common::{
    self, ChunkWriter, Image, JsonMode, Meta, OutToolCall, Part, ToolChoice,
};
use crate::providers::{StreamError, Translated, UpstreamRequest, Usage};
use crate::request::ChatRequest;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub struct Gemini;

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// Keys of Gemini's `Schema` object; everything else (additionalProperties, $schema,
/// strict, $defs…) is dropped.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// A JSON schema in Gemini's dialect.
pub fn gemini_schema(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        match k.as_str() {
            // `"type": ["string", "null"]` → `"type": "string", "nullable": true`.
            "type" => match v {
                Value::Array(types) => {
                    let mut non_null = types.iter().filter(|t| t.as_str() != Some("null"));
                    if let Some(t) = non_null.next() {
                        out.insert("type".into(), t.clone());
                    }
                    if types.iter().any(|t| t.as_str() == Some("null")) {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), Value::Array(vec![v.clone()]));
            }
            // Gemini enums are strings; null is said by `nullable`.
            "enum" => {
                if let Value::Array(values) = v {
                    let values: Vec<Value> =
                        values.iter().filter(|x| !x.is_null()).cloned().collect();
                    if values.len() < values_len(v) {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    out.insert(k.clone(), Value::Array(values));
                }
            }
            "properties" => {
                if let Value::Object(props) = v {
                    let props = props
                        .iter()
                        .map(|(name, s)| (name.clone(), gemini_schema(s)))
                        .collect();
                    out.insert(k.clone(), Value::Object(props));
                }
            }
            "items" => {
                out.insert(k.clone(), gemini_schema(v));
            }
            "anyOf" | "oneOf" => {
                if let Value::Array(alts) = v {
                    out.insert(
                        "anyOf".into(),
                        Value::Array(alts.iter().map(gemini_schema).collect()),
                    );
                }
            }
            _ if SCHEMA_KEYS.contains(&k.as_str()) => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

fn values_len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

fn image_part(img: Image<'_>) -> Result<Value, ApiError> {
    Ok(match img {
        Image::Inline { mime, data } => json!({"inlineData": {"mimeType": mime, "data": data}}),
        Image::Url(url) => {
            let mime = common::guess_image_mime(url).ok_or_else(|| {
                ApiError::invalid_param(
                    "messages",
                    format!(
                        "Gemini needs the image type of `{url}`: use a URL ending in .png, .jpg, .jpeg, .webp, .gif, .heic or .heif, or send the image as a base64 `data:` URL."
                    ),
                )
            })?;
            json!({"fileData": {"mimeType": mime, "fileUri": url}})
        }
    })
}

fn parts_of(content: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    common::content_parts(content)?
        .into_iter()
        // Gemini rejects empty text parts (an assistant turn with `content: ""`).
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| match p {
            Part::Text(t) => Ok(json!({"text": t})),
            Part::Image(img) => image_part(img),
        })
        .collect()
}

/// Appends a turn, merging it into the previous one when the role repeats (Gemini wants
/// all responses to one turn's function calls in one turn).
fn push_turn(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    common::push_turn(contents, role, "parts", parts);
}

/// The native request body for an OpenAI chat request.
pub fn build_request(body: &[u8]) -> Result<Value, ApiError> {
    let req = common::parse_body(body)?;
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| common::bad("messages", "an array of message objects"))?;

    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool-call id → function name, for the tool messages that answer them.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" => system.extend(parts_of(m.get("content"))?),
            "user" => push_turn(&mut contents, "user", parts_of(m.get("content"))?),
            "assistant" => {
                let mut parts = parts_of(m.get("content"))?;
                for c in common::tool_calls(m)? {
                    call_names.insert(c.id, c.name);
                    parts.push(json!({"functionCall": {"name": c.name, "args": c.args}}));
                }
                push_turn(&mut contents, "model", parts);
            }
            "tool" | "function" => {
                let name = match m.get("name").and_then(Value::as_str) {
                    Some(n) => n,
                    None => {
                        let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                        call_names.get(id).copied().ok_or_else(|| {
                            ApiError::invalid_param(
                                "messages",
                                format!("The tool message for `{id}` answers no tool call of an earlier assistant message."),
                            )
                        })?
                    }
                };
                let text = common::content_text(m.get("content"))?;
                // `response` must be an object: JSON objects go as they are, anything else
                // is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    Ok(v) => json!({ "result": v }),
                    Err(_) => json!({ "result": text }),
                };
                push_turn(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("Unknown message role `{other}`."),
                ))
            }
        }
    }
    if contents.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "Gemini needs at least one user or assistant message besides the system prompt.",
        ));
    }

    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }

    let tools = common::tools(&req)?;
    if !tools.is_empty() {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name});
                if let Some(desc) = t.description {
                    d["description"] = json!(desc);
                }
                // A function without parameters must omit them (an empty object schema is
                // rejected).
                if let Some(p) = t.parameters {
                    let has_props = p
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|m| !m.is_empty());
                    if has_props {
                        d["parameters"] = gemini_schema(p);
                    }
                }
                d
            })
            .collect();
        out.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
    }
    if let Some(choice) = common::tool_choice(&req)? {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        if !tools.is_empty() {
            out.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": config }),
            );
        }
    }

    let mut gen = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = req.get(from).filter(|v| v.is_number()) {
            gen.insert(to.into(), v.clone());
        }
    }
    if let Some(n) = common::max_tokens(&req) {
        gen.insert("maxOutputTokens".into(), json!(n));
    }
    let stop = common::stop_sequences(&req)?;
    if !stop.is_empty() {
        gen.insert("stopSequences".into(), json!(stop));
    }
    match common::json_mode(&req) {
        JsonMode::Off => {}
        JsonMode::Object => {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        JsonMode::Schema { schema, .. } => {
            gen.insert("responseMimeType".into(), json!("application/json"));
            if let Some(s) = schema {
                gen.insert("responseSchema".into(), gemini_schema(s));
            }
        }
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// A `GenerateContentResponse`, borrowed from the bytes it was parsed from.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default, rename = "promptFeedback")]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default, rename = "finishReason")]
    finish_reason: Option<&'a str>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<ResponsePart<'a>>,
}

#[derive(Deserialize)]
struct ResponsePart<'a> {
    /// Kept raw: it is already a JSON string literal.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    thought: bool,
    #[serde(borrow, default, rename = "functionCall")]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct UsageMetadata {
    #[serde(default, rename = "promptTokenCount")]
    prompt: u64,
    #[serde(default, rename = "candidatesTokenCount")]
    candidates: u64,
    #[serde(default, rename = "thoughtsTokenCount")]
    thoughts: u64,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Usage {
        // Thinking tokens are billed as output, as OpenAI counts reasoning tokens.
        Usage {
            prompt_tokens: u.prompt,
            completion_tokens: u.candidates + u.thoughts,
        }
    }
}

#[derive(Deserialize)]
struct PromptFeedback<'a> {
    #[serde(borrow, default, rename = "blockReason")]
    block_reason: Option<&'a str>,
}

/// Gemini's finish reason → OpenAI's.
fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

fn args_text(args: Option<&RawValue>) -> String {
    args.map_or_else(|| "{}".to_string(), |a| common::compact_json(a.get()))
}

fn decode_text(raw: &RawValue) -> Result<String, String> {
    serde_json::from_str(raw.get()).map_err(|e| format!("a text part is not a string: {e}"))
}

pub fn translate_response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String> {
    let r: Response = serde_json::from_slice(body).map_err(|e| {
        format!("the provider's answer is not a Gemini GenerateContentResponse: {e}")
    })?;
    if let Some(e) = r.error {
        return Err(format!("the provider answered an error: {}", e.get()));
    }
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    let reason = match r.candidates.first() {
        Some(c) => {
            for p in c.content.iter().flat_map(|c| &c.parts) {
                if let Some(t) = p.text.filter(|_| !p.thought) {
                    text.get_or_insert_with(String::new)
                        .push_str(&decode_text(t)?);
                }
                if let Some(f) = &p.function_call {
                    calls.push(OutToolCall {
                        id: format!("call_{}", calls.len()),
                        name: f.name.to_string(),
                        arguments: args_text(f.args),
                    });
                }
            }
            finish_reason(c.finish_reason.unwrap_or("STOP"), !calls.is_empty())
        }
        None if r
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some()) =>
        {
            "content_filter"
        }
        None => return Err("the provider's answer has no candidates".into()),
    };
    let usage = r.usage_metadata.map(Usage::from);
    Ok(Translated {
        body: common::completion(meta, model, text, calls, reason, usage),
        usage,
    })
}

/// Translates one `streamGenerateContent?alt=sse` answer.
pub type GeminiStream = ChatStream<GeminiEvents>;

/// Gemini's stream events. Gemini sends no end marker, so the finish chunk, the usage
/// chunk and `[DONE]` are written when the upstream ends.
pub struct GeminiEvents {
    writer: ChunkWriter,
    tool_calls: usize,
    finish: Option<&'static str>,
}

impl NativeEvents for GeminiEvents {
    fn new(model: &str, meta: &Meta) -> GeminiEvents {
        GeminiEvents {
            writer: ChunkWriter::new(meta, model),
            tool_calls: 0,
            finish: None,
        }
    }
}

impl ChatEvents for GeminiEvents {
    const UNFINISHED: &'static str = "the Gemini stream ended without a finish reason";

    fn event(&mut self, s: &mut StreamState, data: &[u8], out: &mut Vec<u8>) -> Handled {
        let r: Response = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad Gemini stream event: {e}")))?;
        if let Some(e) = r.error {
            return Err(StreamError::Upstream(e.get().to_string()));
        }
        s.role(&self.writer, out);
        if let Some(u) = r.usage_metadata {
            s.usage = Some(u.into());
        }
        if r.candidates.is_empty()
            && r.prompt_feedback
                .as_ref()
                .is_some_and(|f| f.block_reason.is_some())
        {
            self.finish = Some("content_filter");
            s.started = true;
        }
        for c in r.candidates.iter().take(1) {
            for p in c.content.iter().flat_map(|c| &c.parts) {
                if let Some(t) = p
                    .text
                    .filter(|t| !p.thought && !common::raw_is_empty(t.get()))
                {
                    self.writer.content_raw(out, t.get());
                    s.started = true;
                }
                if let Some(f) = &p.function_call {
                    let i = self.tool_calls;
                    self.tool_calls += 1;
                    self.writer.tool_call_start(
                        out,
                        i,
                        &format!("call_{i}"),
                        &f.name,
                        &args_text(f.args),
                    );
                    s.started = true;
                }
            }
            if let Some(reason) = c.finish_reason {
                self.finish = Some(finish_reason(reason, self.tool_calls > 0));
                s.started = true;
            }
        }
        Ok(())
    }

    fn end(&mut self, s: &mut StreamState, out: &mut Vec<u8>) -> Handled {
        let Some(reason) = self.finish else {
            return Err(StreamError::Malformed(Self::UNFINISHED.into()));
        };
        // A tool call seen after the finish reason still makes this a tool-call answer.
        let reason = if reason == "stop" && self.tool_calls > 0 {
            "tool_calls"
        } else {
            reason
        };
        s.close(&self.writer, out, reason);
        Ok(())
    }
}

impl NativeChat for Gemini {
    type Events = GeminiEvents;
    const ERROR: ErrorFn = super::error::translate_error;

    fn request(req: &ChatRequest, body: &[u8], model: &str) -> Result<UpstreamRequest, ApiError> {
        let path = if req.stream {
            format!("/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("/models/{model}:generateContent")
        };
        Ok(UpstreamRequest::json(path, &build_request(body)?))
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
        build_request(v.to_string().as_bytes()).unwrap()
    }

    fn run(stream: &[u8], include_usage: bool) -> (String, Result<(), StreamError>, bool) {
        testing::run(
            &mut GeminiStream::new("gemini-2.5-flash", include_usage, &Meta::fixed()),
            stream,
        )
    }

    #[test]
    fn system_and_turns_map_to_gemini_roles() {
        let v = req(json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ], "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": "END"}));
        assert_eq!(
            v["systemInstruction"],
            json!({"parts": [{"text": "be brief"}]})
        );
        assert_eq!(
            v["contents"][0],
            json!({"role": "user", "parts": [{"text": "hi"}]})
        );
        assert_eq!(v["contents"][1]["role"], "model");
        assert_eq!(v["contents"][2]["parts"][0]["text"], "again");
        assert_eq!(
            v["generationConfig"],
            json!({"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "stopSequences": ["END"]})
        );
    }

    #[test]
    fn images_become_inline_or_file_data() {
        let v = req(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "image_url", "image_url": {"url": "https://img.test/cat.webp"}},
        ]}]}));
        let parts = &v["contents"][0]["parts"];
        assert_eq!(
            parts[1],
            json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
        );
        assert_eq!(
            parts[2],
            json!({"fileData": {"mimeType": "image/webp", "fileUri": "https://img.test/cat.webp"}})
        );
        let err = build_request(
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://img.test/cat"}}]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("data:"), "{}", err.message);
    }

    #[test]
    fn tool_round_trip_resolves_names_from_call_ids() {
        let v = req(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\":3}"},
            {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
        ], "tools": [{"type": "function", "function": {"name": "get_weather", "description": "w",
            "parameters": {"type": "object", "additionalProperties": false, "$schema": "x",
                           "properties": {"city": {"type": ["string", "null"]}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}],
           "tool_choice": "required"}));
        assert_eq!(
            v["contents"][1]["parts"][0],
            json!({"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}})
        );
        let responses = &v["contents"][2];
        assert_eq!(responses["role"], "user");
        assert_eq!(
            responses["parts"],
            json!([{"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
                   {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}}])
        );
        let decl = &v["tools"][0]["functionDeclarations"];
        assert_eq!(
            decl[0]["parameters"],
            json!({"type": "object", "properties": {"city": {"type": "string", "nullable": true}}, "required": ["city"]})
        );
        assert!(decl[1].get("parameters").is_none());
        assert_eq!(v["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    }

    #[test]
    fn empty_assistant_text_is_not_sent() {
        let v = req(json!({"messages": [{"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}));
        assert_eq!(
            v["contents"][1]["parts"],
            json!([{"functionCall": {"name": "f", "args": {}}}])
        );
    }

    #[test]
    fn unknown_tool_call_id_is_a_clear_400() {
        let e = build_request(
            json!({"messages": [{"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "nope", "content": "1"}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap_err();
        assert!(e.message.contains("nope"));
    }

    #[test]
    fn json_schema_mode_sets_mime_and_schema() {
        let v = req(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true,
                "schema": {"type": "object", "additionalProperties": false,
                           "properties": {"a": {"type": "integer"}, "k": {"const": "x"}}}}}}));
        assert_eq!(
            v["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(
            v["generationConfig"]["responseSchema"],
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "k": {"enum": ["x"]}}})
        );
    }

    #[test]
    fn stream_and_plain_paths() {
        let body = br#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let r = crate::request::parse_chat(body).unwrap();
        let u = Gemini.chat_request(&r, body, "gemini-2.5-flash").unwrap();
        assert_eq!(
            u.path,
            "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        let body = br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
        let r = crate::request::parse_chat(body).unwrap();
        let u = Gemini.chat_request(&r, body, "gemini-2.5-flash").unwrap();
        assert_eq!(u.path, "/models/gemini-2.5-flash:generateContent");
    }

    #[test]
    fn response_with_text_tool_calls_and_usage() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"think","thought":true},{"text":"Let me "},{"text":"check."},{"functionCall":{"name":"get_weather","args":{"city":"Oslo"}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":2,"totalTokenCount":17},"modelVersion":"gemini-2.5-flash"}"#;
        let t = translate_response(body, "gemini-2.5-flash", &Meta::fixed()).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let c = &v["choices"][0];
        assert_eq!(c["message"]["content"], "Let me check.");
        assert_eq!(c["message"]["tool_calls"][0]["id"], "call_0");
        assert_eq!(
            c["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Oslo"}"#
        );
        assert_eq!(c["finish_reason"], "tool_calls");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17})
        );
        assert_eq!(t.usage.unwrap().completion_tokens, 7);
    }

    #[test]
    fn finish_reasons_map() {
        for (native, want) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("OTHER", "stop"),
        ] {
            let body = format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}},"finishReason":"{native}"}}]}}"#
            );
            let t = translate_response(body.as_bytes(), "m", &Meta::fixed()).unwrap();
            let v: Value = serde_json::from_slice(&t.body).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], want, "{native}");
        }
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#;
        let v: Value = serde_json::from_slice(
            &translate_response(blocked, "m", &Meta::fixed())
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert!(translate_response(b"{\"candidates\":[]}", "m", &Meta::fixed()).is_err());
        assert!(translate_response(b"<html>", "m", &Meta::fixed()).is_err());
    }

    const STREAM: &[u8] = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"totalTokenCount\": 4}}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo \\\"w\\u00e9\\\"\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 3,\"totalTokenCount\": 7}}\r\n\r\n";

    #[test]
    fn stream_emits_role_content_finish_usage_done() {
        let (out, r, started) = run(STREAM, true);
        r.unwrap();
        assert!(started);
        let c = chunks(&out);
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(c[2]["choices"][0]["delta"]["content"], "lo \"w\u{e9}\"");
        assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(c[4]["usage"]["total_tokens"], 7);
        assert!(out.ends_with("data: [DONE]\n\n"));
        let (out, _, _) = run(STREAM, false);
        assert!(!out.contains("usage"));
    }

    #[test]
    fn stream_tool_calls_get_ids_and_finish_tool_calls() {
        let s = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"a\",\"args\":{\"x\":1}}},{\"functionCall\":{\"name\":\"b\",\"args\":{}}}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}\n\n";
        let (out, r, _) = run(s, false);
        r.unwrap();
        let c = chunks(&out);
        let tc = &c[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["index"], 0);
        assert_eq!(tc["id"], "call_0");
        assert_eq!(tc["function"]["name"], "a");
        assert_eq!(tc["function"]["arguments"], r#"{"x":1}"#);
        assert_eq!(c[2]["choices"][0]["delta"]["tool_calls"][0]["id"], "call_1");
        assert_eq!(c[3]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn role_chunk_alone_is_not_a_start_and_truncation_is_an_error() {
        let mut t = GeminiStream::new("m", false, &Meta::fixed());
        let mut out = Vec::new();
        t.feed(
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}]}}]}\n\n",
            &mut out,
        )
        .unwrap();
        assert!(!t.started());
        assert!(matches!(t.finish(&mut out), Err(StreamError::Malformed(_))));
        let (_, r, _) = run(
            b"data: {\"error\":{\"code\":500,\"message\":\"boom\",\"status\":\"INTERNAL\"}}\n\n",
            false,
        );
        assert!(matches!(r, Err(StreamError::Upstream(m)) if m.contains("boom")));
        let (_, r, _) = run(b"data: {not json\n\n", false);
        assert!(matches!(r, Err(StreamError::Malformed(_))));
    }
}
