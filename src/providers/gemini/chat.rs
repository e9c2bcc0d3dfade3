//! Google AI Studio's native Gemini API (`generateContent` / `streamGenerateContent`).
//!
//! Requests: system messages → `systemInstruction`; assistant → role `model`; images →
//! `inlineData` (data: URLs) or `fileData` (http URLs); tools → `functionDeclarations`;
//! assistant tool calls → `functionCall` parts; tool messages → `functionResponse` parts in a
//! user turn. Gemini has no tool-call ids, so answers get deterministic ones (`call_<n>`,
//! the call's position in the answer) and tool results are matched back to their function
//! name through the assistant message that made the call.
//! JSON schemas are reduced to Gemini's OpenAPI-subset `Schema` dialect.

use super::schema::gemini_schema;
use crate::errors::ApiError;
use crate::providers::chat::{
    ChatEvents, ChatStream, ErrorFn, Handled, NativeChat, NativeEvents, StreamState,
};
use crate::providers::common::{
    self, ChunkWriter, Image, JsonMode, Meta, OutChoice, OutToolCall, Part, ToolChoice,
};
use crate::providers::{BuiltRequest, StreamError, Translated, UpstreamRequest, Usage};
use crate::request::ChatRequest;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub struct Gemini;

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

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
            other => return Err(common::unknown_role(other)),
        }
    }
    if contents.is_empty() {
        return Err(common::no_turns("Gemini"));
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
            .map(|t| -> Result<Value, ApiError> {
                let mut d = json!({"name": t.name});
                if let Some(desc) = t.description {
                    d["description"] = json!(desc);
                }
                // A function without parameters must omit them (an empty object schema is
                // rejected).
                if let Some(p) = t.parameters {
                    let p = gemini_schema(p, "tools")?;
                    let has_props = p
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|m| !m.is_empty());
                    if has_props {
                        d["parameters"] = p;
                    }
                }
                Ok(d)
            })
            .collect::<Result<_, ApiError>>()?;
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
    // `n` choices: Gemini's candidates.
    let n = common::choices(&req)?;
    if n > 1 {
        gen.insert("candidateCount".into(), json!(n));
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
                gen.insert(
                    "responseSchema".into(),
                    gemini_schema(s, "response_format")?,
                );
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
    /// Its position among the candidates (`candidateCount` > 1).
    #[serde(default)]
    index: Option<usize>,
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

/// Candidates an answer may hold (Gemini's `candidateCount` allows up to 8).
const MAX_CANDIDATES: usize = 16;

/// The choice a candidate becomes: its `index`, else its position.
fn choice_index(c: &Candidate<'_>, position: usize) -> Result<usize, String> {
    let i = c.index.unwrap_or(position);
    if i >= MAX_CANDIDATES {
        return Err(format!("candidate index {i} is out of range"));
    }
    Ok(i)
}

pub fn translate_response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String> {
    let r: Response = serde_json::from_slice(body).map_err(|e| {
        format!("the provider's answer is not a Gemini GenerateContentResponse: {e}")
    })?;
    if let Some(e) = r.error {
        return Err(format!("the provider answered an error: {}", e.get()));
    }
    let usage = r.usage_metadata.map(Usage::from);
    if r.candidates.is_empty() {
        if r.prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some())
        {
            return Ok(Translated {
                body: common::completion(meta, model, None, Vec::new(), "content_filter", usage),
                usage,
                usage_at: None,
            });
        }
        return Err("the provider's answer has no candidates".into());
    }
    // Every candidate is a choice; tool-call ids are unique across the whole answer.
    let mut choices: Vec<Option<OutChoice>> = Vec::new();
    let mut call_no = 0;
    for (position, c) in r.candidates.iter().enumerate() {
        let index = choice_index(c, position)?;
        let mut text: Option<String> = None;
        let mut calls = Vec::new();
        for p in c.content.iter().flat_map(|c| &c.parts) {
            if let Some(t) = p.text.filter(|_| !p.thought) {
                text.get_or_insert_with(String::new)
                    .push_str(&decode_text(t)?);
            }
            if let Some(f) = &p.function_call {
                calls.push(OutToolCall {
                    id: meta.call_id(call_no),
                    name: f.name.to_string(),
                    arguments: args_text(f.args),
                });
                call_no += 1;
            }
        }
        let finish = finish_reason(c.finish_reason.unwrap_or("STOP"), !calls.is_empty());
        if choices.len() <= index {
            choices.resize_with(index + 1, || None);
        }
        choices[index] = Some(OutChoice {
            content: text,
            tool_calls: calls,
            finish_reason: finish,
        });
    }
    let choices: Vec<OutChoice> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| format!("the answer has no candidate {i}")))
        .collect::<Result<_, _>>()?;
    let body = if choices.len() == 1 {
        let c = choices.into_iter().next().unwrap_or_else(|| unreachable!());
        common::completion(meta, model, c.content, c.tool_calls, c.finish_reason, usage)
    } else {
        common::completion_choices(meta, model, choices, usage)
    };
    Ok(Translated {
        body,
        usage,
        usage_at: None,
    })
}

/// Translates one `streamGenerateContent?alt=sse` answer.
pub type GeminiStream = ChatStream<GeminiEvents>;

/// One candidate of a streamed answer (a choice).
#[derive(Default)]
struct Streamed {
    role_sent: bool,
    tool_calls: usize,
    finish: Option<&'static str>,
}

/// Gemini's stream events. Gemini sends no end marker, so the finish chunk(s), the usage
/// chunk and `[DONE]` are written when the upstream ends.
pub struct GeminiEvents {
    writer: ChunkWriter,
    meta: Meta,
    /// Per candidate (choice), by index.
    candidates: Vec<Streamed>,
    /// Tool calls in the whole answer (their ids are unique across candidates).
    calls: usize,
}

impl NativeEvents for GeminiEvents {
    fn new(model: &str, meta: &Meta) -> GeminiEvents {
        GeminiEvents {
            writer: ChunkWriter::new(meta, model),
            meta: meta.clone(),
            candidates: Vec::new(),
            calls: 0,
        }
    }
}

impl GeminiEvents {
    fn candidate(&mut self, index: usize) -> &mut Streamed {
        if self.candidates.len() <= index {
            self.candidates.resize_with(index + 1, Streamed::default);
        }
        &mut self.candidates[index]
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
        self.candidate(0).role_sent = true;
        if let Some(u) = r.usage_metadata {
            s.usage = Some(u.into());
        }
        if r.candidates.is_empty()
            && r.prompt_feedback
                .as_ref()
                .is_some_and(|f| f.block_reason.is_some())
        {
            self.candidate(0).finish = Some("content_filter");
            s.started = true;
        }
        for (position, c) in r.candidates.iter().enumerate() {
            let index = choice_index(c, position).map_err(StreamError::Malformed)?;
            if !self.candidate(index).role_sent {
                self.candidate(index).role_sent = true;
                self.writer.role_at(out, index);
            }
            for p in c.content.iter().flat_map(|c| &c.parts) {
                if let Some(t) = p
                    .text
                    .filter(|t| !p.thought && !common::raw_is_empty(t.get()))
                {
                    self.writer.content_raw_at(out, index, t.get());
                    s.started = true;
                }
                if let Some(f) = &p.function_call {
                    let id = self.meta.call_id(self.calls);
                    self.calls += 1;
                    let cand = self.candidate(index);
                    let i = cand.tool_calls;
                    cand.tool_calls += 1;
                    self.writer
                        .tool_call_start_at(out, index, i, &id, &f.name, &args_text(f.args));
                    s.started = true;
                }
            }
            if let Some(reason) = c.finish_reason {
                let cand = self.candidate(index);
                cand.finish = Some(finish_reason(reason, cand.tool_calls > 0));
                s.started = true;
            }
        }
        Ok(())
    }

    fn end(&mut self, s: &mut StreamState, out: &mut Vec<u8>) -> Handled {
        let mut reasons = Vec::with_capacity(self.candidates.len());
        for c in &self.candidates {
            let Some(reason) = c.finish else {
                return Err(StreamError::Malformed(Self::UNFINISHED.into()));
            };
            // A tool call seen after the finish reason still makes this a tool-call answer.
            reasons.push(if reason == "stop" && c.tool_calls > 0 {
                "tool_calls"
            } else {
                reason
            });
        }
        if reasons.is_empty() {
            return Err(StreamError::Malformed(Self::UNFINISHED.into()));
        }
        s.close_choices(&self.writer, out, &reasons);
        Ok(())
    }
}

impl NativeChat for Gemini {
    type Events = GeminiEvents;
    const ERROR: ErrorFn = super::error::translate_error;

    fn request(req: &ChatRequest, body: &[u8], model: &str) -> BuiltRequest {
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
    use crate::providers::chat::testing;
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
        assert_eq!(c["message"]["tool_calls"][0]["id"], "call_golden_0");
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
        testing::assert_two_piece_text_stream(run, STREAM, "lo \"w\u{e9}\"");
    }

    #[test]
    fn stream_tool_calls_get_ids_and_finish_tool_calls() {
        let s = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"a\",\"args\":{\"x\":1}}},{\"functionCall\":{\"name\":\"b\",\"args\":{}}}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}\n\n";
        let c = testing::translated(run, s, false);
        let tc = &c[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["index"], 0);
        assert_eq!(tc["id"], "call_golden_0");
        assert_eq!(tc["function"]["name"], "a");
        assert_eq!(tc["function"]["arguments"], r#"{"x":1}"#);
        assert_eq!(
            c[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "call_golden_1"
        );
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

    #[test]
    fn tool_call_ids_are_unique_per_answer() {
        let body = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"a","args":{}}},{"functionCall":{"name":"b","args":{}}}]},"finishReason":"STOP"}]}"#;
        let ids = |meta: &Meta| -> Vec<String> {
            let t = translate_response(body, "m", meta).unwrap();
            let v: Value = serde_json::from_slice(&t.body).unwrap();
            v["choices"][0]["message"]["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect()
        };
        let (one, two) = (ids(&Meta::fresh()), ids(&Meta::fresh()));
        assert_eq!(one.len(), 2);
        assert_ne!(one[0], one[1]);
        assert!(one.iter().all(|id| !two.contains(id)), "{one:?} {two:?}");
        assert!(one[0].starts_with("call_") && one[0].ends_with("_0"));
        // The ids of one turn map back to their functions on the next.
        let v = req(json!({"messages": [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [
                {"id": one[0], "type": "function", "function": {"name": "a", "arguments": "{}"}},
                {"id": one[1], "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": one[1], "content": "B"},
            {"role": "tool", "tool_call_id": one[0], "content": "A"}]}));
        assert_eq!(
            v["contents"][2]["parts"],
            json!([{"functionResponse": {"name": "b", "response": {"result": "B"}}},
                   {"functionResponse": {"name": "a", "response": {"result": "A"}}}])
        );
    }

    #[test]
    fn n_choices_become_candidates() {
        let v = req(json!({"messages": [{"role": "user", "content": "x"}], "n": 3}));
        assert_eq!(v["generationConfig"]["candidateCount"], 3);
        let v = req(json!({"messages": [{"role": "user", "content": "x"}], "n": 1}));
        assert!(v.get("generationConfig").is_none());
        let e = build_request(
            json!({"messages": [{"role": "user", "content": "x"}], "n": 0})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.param, Some("n"));

        let body = br#"{"candidates":[{"content":{"parts":[{"text":"one"}]},"finishReason":"STOP","index":0},{"content":{"parts":[{"text":"two"}]},"finishReason":"MAX_TOKENS","index":1}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4}}"#;
        let t = translate_response(body, "m", &Meta::fixed()).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let c = v["choices"].as_array().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0]["index"].as_u64(), c[0]["message"]["content"].as_str()),
            (Some(0), Some("one"))
        );
        assert_eq!(
            (c[1]["index"].as_u64(), c[1]["message"]["content"].as_str()),
            (Some(1), Some("two"))
        );
        assert_eq!(c[1]["finish_reason"], "length");
    }

    #[test]
    fn stream_candidates_become_indexed_choices() {
        let s = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]},\"index\":0},{\"content\":{\"parts\":[{\"text\":\"b\"}]},\"index\":1}]}\n\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\",\"index\":0},{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}}]},\"finishReason\":\"STOP\",\"index\":1}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":3}}\n\n";
        let c = testing::translated(run, s, true);
        let text = |i: u64| -> String {
            c.iter()
                .flat_map(|c| c["choices"].as_array().unwrap())
                .filter(|ch| ch["index"] == i)
                .filter_map(|ch| ch["delta"]["content"].as_str())
                .collect()
        };
        assert_eq!((text(0), text(1)), ("a!".to_string(), "b".to_string()));
        let roles = c
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|ch| ch["delta"]["role"] == "assistant")
            .count();
        assert_eq!(roles, 2);
        let finishes: Vec<(u64, &str)> = c
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter_map(|ch| Some((ch["index"].as_u64()?, ch["finish_reason"].as_str()?)))
            .collect();
        assert_eq!(finishes, vec![(0, "stop"), (1, "tool_calls")]);
        assert_eq!(c.last().unwrap()["usage"]["total_tokens"], 5);
    }

    #[test]
    fn tool_and_response_schemas_are_inlined_or_refused() {
        let address = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let schema = json!({"$defs": {"Address": address}, "type": "object",
            "properties": {"home": {"$ref": "#/$defs/Address"},
                           "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]}},
            "required": ["home"]});
        let v = req(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}));
        let mut work = address.clone();
        work["nullable"] = json!(true);
        for s in [
            &v["tools"][0]["functionDeclarations"][0]["parameters"],
            &v["generationConfig"]["responseSchema"],
        ] {
            assert_eq!(s["properties"]["home"], address);
            assert_eq!(s["properties"]["work"], work);
        }
        let recursive = json!({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}},
                               "type": "object", "properties": {"head": {"$ref": "#/$defs/N"}}});
        for body in [
            json!({"messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f", "parameters": recursive}}]}),
            json!({"messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": recursive}}}),
        ] {
            let e = build_request(body.to_string().as_bytes()).unwrap_err();
            assert_eq!((e.status, e.kind), (400, "invalid_request_error"));
            assert!(e.message.contains("recursive"), "{}", e.message);
        }
    }
}
