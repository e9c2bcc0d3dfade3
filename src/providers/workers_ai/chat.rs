//! Cloudflare Workers AI's REST API (`POST {base}/run/{model}`, base
//! `…/client/v4/accounts/{account}/ai`). Model ids such as `@cf/meta/llama-3.1-8b-instruct`
//! go into the path as they are: Cloudflare's documented URLs keep the `@` and slashes.
//!
//! Answers come wrapped in `{"result":…,"success":…,"errors":[…],"messages":[…]}`; streams
//! are `data: {"response":"…"}` events (some with `p` padding, the last with `usage`) ended
//! by `data: [DONE]`. Tool calls arrive either in the legacy `{name, arguments: {…}}` shape or
//! OpenAI's `{id, type, function: {name, arguments: "…"}}`; both are read.

use crate::errors::ApiError;
use crate::providers::chat::{
    ChatEvents, ChatStream, ErrorFn, Handled, NativeChat, NativeEvents, StreamState,
};
use crate::providers::common::{self, ChunkWriter, Image, JsonMode, Meta, OutToolCall, Part};
use crate::providers::{BuiltRequest, StreamError, Translated, UpstreamRequest, Usage};
use crate::request::ChatRequest;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub struct WorkersAi;

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// A message's content: a string, or OpenAI-style parts when it carries images (the vision
/// models take `image_url` parts with base64 `data:` URLs only).
fn content_of(content: Option<&Value>) -> Result<Value, ApiError> {
    let parts = common::content_parts(content)?;
    if !parts.iter().any(|p| matches!(p, Part::Image(_))) {
        return Ok(json!(common::content_text(content)?));
    }
    parts
        .into_iter()
        .map(|p| match p {
            Part::Text(t) => Ok(json!({"type": "text", "text": t})),
            Part::Image(Image::Inline { mime, data }) => Ok(json!({"type": "image_url",
                "image_url": {"url": format!("data:{mime};base64,{data}")}})),
            Part::Image(Image::Url(url)) => Err(ApiError::invalid_param(
                "messages",
                format!("Workers AI takes images only as base64 `data:` URLs, not `{url}`: download the image and send it inline."),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// The native request body for an OpenAI chat request.
pub fn build_request(body: &[u8], stream: bool) -> Result<Value, ApiError> {
    let req = common::parse_body(body)?;
    common::one_choice_only(&req, "Workers AI")?;
    let list = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| common::bad("messages", "an array of message objects"))?;
    let mut messages = Vec::with_capacity(list.len());
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" => messages.push(
                json!({"role": "system", "content": common::content_text(m.get("content"))?}),
            ),
            "user" => {
                messages.push(json!({"role": "user", "content": content_of(m.get("content"))?}))
            }
            "assistant" => {
                let mut msg = json!({"role": "assistant", "content": common::content_text(m.get("content"))?});
                let calls = common::tool_calls(m)?;
                if !calls.is_empty() {
                    msg["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            call_names.insert(c.id, c.name);
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.args.to_string()}})
                        })
                        .collect();
                }
                messages.push(msg);
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let mut msg = json!({"role": "tool", "tool_call_id": id,
                                     "content": common::content_text(m.get("content"))?});
                if let Some(name) = call_names.get(id) {
                    msg["name"] = json!(name);
                }
                messages.push(msg);
            }
            other => return Err(common::unknown_role(other)),
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    out.insert("stream".into(), json!(stream));
    if let Some(n) = common::max_tokens(&req) {
        out.insert("max_tokens".into(), json!(n));
    }
    for key in [
        "temperature",
        "top_p",
        "seed",
        "frequency_penalty",
        "presence_penalty",
    ] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    let tools = common::tools(&req)?;
    if !tools.is_empty() {
        let list: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name,
                    "parameters": t.parameters.cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
                if let Some(d) = t.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(list));
    }
    // JSON mode: `{"type": "json_object"}`, or `{"type": "json_schema", "json_schema": S}`
    // where S is the JSON schema itself (Workers AI's documented shape), not OpenAI's
    // `{name, schema, strict}` wrapper.
    match common::json_mode(&req) {
        JsonMode::Off => {}
        JsonMode::Object | JsonMode::Schema { schema: None, .. } => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        JsonMode::Schema {
            schema: Some(schema),
            ..
        } => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// The wrapper of every answer, and of error bodies.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    pub(super) errors: Vec<NativeError>,
}

#[derive(Deserialize)]
pub(super) struct NativeError {
    #[serde(default)]
    pub(super) code: Option<Value>,
    #[serde(default)]
    pub(super) message: String,
}

#[derive(Deserialize)]
struct Result_<'a> {
    /// A string; in JSON mode some models answer the parsed object instead.
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    usage: Option<NativeUsage>,
    /// Models served in OpenAI's shape answer `choices` instead of `response`.
    #[serde(default)]
    choices: Option<Vec<Value>>,
}

#[derive(Deserialize, Clone, Copy)]
struct NativeUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<NativeUsage> for Usage {
    fn from(u: NativeUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// `response` as text: a string is decoded, any other JSON value is its JSON text.
fn response_text(raw: &RawValue) -> Result<Option<String>, String> {
    match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| format!("bad `response`: {e}")),
        Some(b'n') => Ok(None),
        _ => Ok(Some(raw.get().to_string())),
    }
}

/// One tool call in either shape: (id, name, arguments as JSON text, index if given).
fn tool_call_of(v: &Value) -> (Option<&str>, Option<&str>, Option<String>, Option<usize>) {
    let f = v.get("function").unwrap_or(v);
    let args = match f.get("arguments") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    (
        v.get("id").and_then(Value::as_str),
        f.get("name").and_then(Value::as_str),
        args,
        v.get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok()),
    )
}

pub fn translate_response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String> {
    let env: Envelope = serde_json::from_slice(body)
        .map_err(|e| format!("the provider's answer is not a Workers AI response: {e}"))?;
    if env.success == Some(false) {
        let why: Vec<&str> = env.errors.iter().map(|e| e.message.as_str()).collect();
        return Err(format!("the provider reported failure: {}", why.join("; ")));
    }
    let raw = env.result.ok_or("the provider's answer has no `result`")?;
    let r: Result_ = serde_json::from_str(raw.get())
        .map_err(|e| format!("the provider's `result` is not a chat answer: {e}"))?;
    let usage = r.usage.map(Usage::from);
    if let Some(choice) = r.choices.as_ref().and_then(|c| c.first()) {
        let msg = &choice["message"];
        let calls = msg["tool_calls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, c)| out_call(meta, i, c))
                    .collect()
            })
            .unwrap_or_default();
        let reason = choice["finish_reason"].as_str().unwrap_or("stop");
        return Ok(Translated {
            body: common::completion(
                meta,
                model,
                msg["content"].as_str().map(str::to_string),
                calls,
                reason,
                usage,
            ),
            usage,
            usage_at: None,
        });
    }
    let text = match r.response {
        Some(raw) => response_text(raw)?,
        None => None,
    };
    let calls: Vec<OutToolCall> = r
        .tool_calls
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| out_call(meta, i, c))
        .collect();
    let reason = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    Ok(Translated {
        body: common::completion(meta, model, text, calls, reason, usage),
        usage,
        usage_at: None,
    })
}

/// A tool call of an answer; one without an id (the legacy shape) gets one unique to the
/// answer.
fn out_call(meta: &Meta, i: usize, c: &Value) -> OutToolCall {
    let (id, name, args, _) = tool_call_of(c);
    OutToolCall {
        id: id.map_or_else(|| meta.call_id(i), str::to_string),
        name: name.unwrap_or("").to_string(),
        arguments: args.unwrap_or_else(|| "{}".into()),
    }
}

#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(default)]
    usage: Option<NativeUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    errors: Option<&'a RawValue>,
}

/// Translates one Workers AI stream.
pub type WorkersAiStream = ChatStream<WorkersAiEvents>;

/// Workers AI's stream events, ended by `data: [DONE]`.
pub struct WorkersAiEvents {
    writer: ChunkWriter,
    meta: Meta,
    /// Tool call indexes already opened.
    tool_calls: Vec<usize>,
}

impl NativeEvents for WorkersAiEvents {
    fn new(model: &str, meta: &Meta) -> WorkersAiEvents {
        WorkersAiEvents {
            writer: ChunkWriter::new(meta, model),
            meta: meta.clone(),
            tool_calls: Vec::new(),
        }
    }
}

impl ChatEvents for WorkersAiEvents {
    const UNFINISHED: &'static str = "the Workers AI stream ended without [DONE]";

    fn event(&mut self, s: &mut StreamState, data: &[u8], out: &mut Vec<u8>) -> Handled {
        s.role(&self.writer, out);
        if data == b"[DONE]" {
            let reason = if self.tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            s.close(&self.writer, out, reason);
            return Ok(());
        }
        let ev: StreamEvent = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad Workers AI stream event: {e}")))?;
        if let Some(e) = ev.error.or(ev.errors.filter(|e| e.get() != "[]")) {
            return Err(StreamError::Upstream(e.get().to_string()));
        }
        if let Some(u) = ev.usage {
            s.usage = Some(u.into());
        }
        if let Some(r) = ev.response {
            match r.get().as_bytes().first() {
                Some(b'"') if !common::raw_is_empty(r.get()) => {
                    self.writer.content_raw(out, r.get());
                    s.started = true;
                }
                Some(b'"') | Some(b'n') => {}
                // JSON mode may stream an object: pass its text on.
                _ => {
                    self.writer.content(out, r.get());
                    s.started = true;
                }
            }
        }
        if let Some(raw) = ev.tool_calls {
            let calls: Vec<Value> = serde_json::from_str(raw.get())
                .map_err(|e| StreamError::Malformed(format!("bad tool_calls in stream: {e}")))?;
            for c in &calls {
                let (id, name, args, index) = tool_call_of(c);
                let index = index.unwrap_or(if name.is_some() {
                    self.tool_calls.len()
                } else {
                    self.tool_calls.len().saturating_sub(1)
                });
                if !self.tool_calls.contains(&index) {
                    self.tool_calls.push(index);
                    let id = id.map_or_else(|| self.meta.call_id(index), str::to_string);
                    self.writer.tool_call_start(
                        out,
                        index,
                        &id,
                        name.unwrap_or(""),
                        args.as_deref().unwrap_or(""),
                    );
                } else if let Some(a) = args.filter(|a| !a.is_empty()) {
                    let mut raw = Vec::with_capacity(a.len() + 2);
                    common::write_json_str(&mut raw, &a);
                    self.writer
                        .tool_args_raw(out, index, &String::from_utf8_lossy(&raw));
                }
                s.started = true;
            }
        }
        Ok(())
    }
}

impl NativeChat for WorkersAi {
    type Events = WorkersAiEvents;
    const ERROR: ErrorFn = super::error::translate_error;

    /// Model ids go into the path as they are: Cloudflare's documented URLs keep the `@`
    /// and slashes.
    fn request(req: &ChatRequest, body: &[u8], model: &str) -> BuiltRequest {
        let native = build_request(body, req.stream)?;
        Ok(UpstreamRequest::json(format!("/run/{model}"), &native))
    }

    fn response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String> {
        translate_response(body, model, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::testing::{self, chunks};
    use crate::providers::Translator;

    fn req(v: Value, stream: bool) -> Value {
        build_request(v.to_string().as_bytes(), stream).unwrap()
    }

    fn run(stream: &[u8], include_usage: bool) -> (String, Result<(), StreamError>, bool) {
        testing::run(
            &mut WorkersAiStream::new("@cf/meta/llama", include_usage, &Meta::fixed()),
            stream,
        )
    }

    #[test]
    fn path_keeps_the_model_id_as_documented() {
        let body = br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
        let r = crate::request::parse_chat(body).unwrap();
        let u = WorkersAi
            .chat_request(&r, body, "@cf/meta/llama-3.1-8b-instruct")
            .unwrap();
        assert_eq!(u.path, "/run/@cf/meta/llama-3.1-8b-instruct");
    }

    #[test]
    fn request_fields_and_messages() {
        let v = req(
            json!({"messages": [{"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_tokens": 9, "temperature": 0.5, "response_format": {"type": "json_object"}}),
            true,
        );
        assert_eq!(
            v,
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a\nb"}],
                   "stream": true, "max_tokens": 9, "temperature": 0.5, "response_format": {"type": "json_object"}})
        );
    }

    #[test]
    fn tools_and_tool_round_trip() {
        let v = req(
            json!({"messages": [{"role": "user", "content": "w?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
                    "function": {"name": "w", "arguments": "{\"c\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "3C"}],
                "tools": [{"type": "function", "function": {"name": "w", "description": "d",
                    "parameters": {"type": "object", "properties": {"c": {"type": "string"}}}}}]}),
            false,
        );
        assert_eq!(v["tools"][0]["function"]["name"], "w");
        assert_eq!(
            v["messages"][1]["tool_calls"][0]["function"]["arguments"],
            r#"{"c":"Oslo"}"#
        );
        assert_eq!(
            v["messages"][2],
            json!({"role": "tool", "tool_call_id": "call_0", "name": "w", "content": "3C"})
        );
    }

    #[test]
    fn images_only_inline() {
        let v = req(
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "what"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
            false,
        );
        assert_eq!(
            v["messages"][0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        let e = build_request(
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]})
            .to_string()
            .as_bytes(),
            false,
        )
        .unwrap_err();
        assert!(e.message.contains("data:"));
    }

    #[test]
    fn responses_in_every_shape() {
        let body = br#"{"result":{"response":"Hello!","usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}},"success":true,"errors":[],"messages":[]}"#;
        let t = translate_response(body, "m", &Meta::fixed()).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 7);

        let body = br#"{"result":{"response":null,"tool_calls":[{"name":"w","arguments":{"c":"Oslo"}}]},"success":true,"errors":[],"messages":[]}"#;
        let v: Value =
            serde_json::from_slice(&translate_response(body, "m", &Meta::fixed()).unwrap().body)
                .unwrap();
        let tc = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(
            (tc["id"].as_str(), tc["function"]["arguments"].as_str()),
            (Some("call_golden_0"), Some(r#"{"c":"Oslo"}"#))
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

        let body = br#"{"result":{"response":{"a":1}},"success":true,"errors":[],"messages":[]}"#;
        let v: Value =
            serde_json::from_slice(&translate_response(body, "m", &Meta::fixed()).unwrap().body)
                .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], r#"{"a":1}"#);

        let body = br#"{"result":{"choices":[{"message":{"content":"hi"},"finish_reason":"length"}]},"success":true}"#;
        let v: Value =
            serde_json::from_slice(&translate_response(body, "m", &Meta::fixed()).unwrap().body)
                .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");

        assert!(translate_response(
            br#"{"success":false,"errors":[{"code":1,"message":"x"}]}"#,
            "m",
            &Meta::fixed()
        )
        .is_err());
    }

    const STREAM: &[u8] = b"data: {\"response\":\"Hel\",\"p\":\"abcdefgh\"}\n\n\
data: {\"response\":\"lo \\u00e9\"}\n\n\
data: {\"response\":\"\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn stream_translates_with_role_finish_usage() {
        testing::assert_two_piece_text_stream(run, STREAM, "lo \u{e9}");
    }

    #[test]
    fn stream_tool_calls_in_both_shapes() {
        let s = b"data: {\"response\":\"\",\"tool_calls\":[{\"name\":\"w\",\"arguments\":{\"c\":\"Oslo\"}}]}\n\ndata: [DONE]\n\n";
        let c = testing::translated(run, s, false);
        let tc = &c[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (tc["id"].as_str(), tc["function"]["arguments"].as_str()),
            (Some("call_golden_0"), Some(r#"{"c":"Oslo"}"#))
        );
        assert_eq!(c[2]["choices"][0]["finish_reason"], "tool_calls");
        let s = b"data: {\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"type\":\"function\",\"function\":{\"name\":\"w\",\"arguments\":\"\"}}]}\n\n\
data: {\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"c\\\":1}\"}}]}\n\ndata: [DONE]\n\n";
        let c = testing::translated(run, s, false);
        assert_eq!(c[1]["choices"][0]["delta"]["tool_calls"][0]["id"], "t1");
        assert_eq!(
            c[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            r#"{"c":1}"#
        );
    }

    #[test]
    fn stream_errors_and_truncation() {
        let (_, r, _) = run(&STREAM[..STREAM.len() - 14], false);
        assert!(matches!(r, Err(StreamError::Malformed(_))));
        let (_, r, _) = run(b"data: {\"errors\":[{\"code\":3040,\"message\":\"Capacity temporarily exceeded\"}]}\n\n", false);
        assert!(matches!(r, Err(StreamError::Upstream(m)) if m.contains("Capacity")));
    }

    #[test]
    fn json_schema_goes_as_the_schema_itself() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let v = req(
            json!({"messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "country", "strict": true, "schema": schema}}}),
            false,
        );
        assert_eq!(
            v["response_format"],
            json!({"type": "json_schema", "json_schema": schema})
        );
        let v = req(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}}),
            false,
        );
        assert!(v.get("response_format").is_none());
    }

    #[test]
    fn n_above_one_is_refused() {
        let e = build_request(
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2})
                .to_string()
                .as_bytes(),
            false,
        )
        .unwrap_err();
        assert_eq!((e.status, e.param), (400, Some("n")));
        assert!(e.message.contains("one choice"), "{}", e.message);
        req(
            json!({"messages": [{"role": "user", "content": "x"}], "n": 1}),
            false,
        );
    }

    #[test]
    fn calls_without_ids_get_ids_unique_per_answer() {
        let body = br#"{"result":{"response":null,"tool_calls":[{"name":"w","arguments":{}},{"name":"w","arguments":{}}]},"success":true}"#;
        let ids = || -> Vec<String> {
            let t = translate_response(body, "m", &Meta::fresh()).unwrap();
            let v: Value = serde_json::from_slice(&t.body).unwrap();
            v["choices"][0]["message"]["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect()
        };
        let (a, b) = (ids(), ids());
        assert_ne!(a[0], a[1]);
        assert!(a.iter().all(|id| !b.contains(id)), "{a:?} {b:?}");
        let s = b"data: {\"tool_calls\":[{\"name\":\"w\",\"arguments\":{}}]}\n\ndata: [DONE]\n\n";
        let first = |out: String| {
            chunks(&out)[1]["choices"][0]["delta"]["tool_calls"][0]["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let one = first(testing::run(&mut WorkersAiStream::new("m", false, &Meta::fresh()), s).0);
        let two = first(testing::run(&mut WorkersAiStream::new("m", false, &Meta::fresh()), s).0);
        assert_ne!(one, two);
    }
}
