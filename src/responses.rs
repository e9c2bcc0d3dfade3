//! The OpenAI Responses API (`POST /v1/responses`) on top of any chat provider.
//!
//! A Responses request becomes a chat completion request (items keep their roles, images,
//! tool calls and tool outputs; nothing is flattened into text), goes through the normal
//! routing and failover, and the chat answer — already translated to OpenAI chat format by
//! the provider's translator — is turned into a `response` object, or, streamed, into the
//! Responses event sequence (`response.created`, `response.output_text.delta`,
//! `response.function_call_arguments.delta`, `response.completed`, …).
//! `previous_response_id` needs server-side conversation state, which freeway does not keep:
//! it is refused with a clear 400.

use crate::errors::ApiError;
use crate::providers::chat::{Reshape, Reshaped};
use crate::providers::{StreamError, StreamTranslator, Usage};
use crate::sse::write_event;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the response object echoes back from the request.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created_at: u64,
    echo: Map<String, Value>,
}

fn bad(param: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, msg)
}

fn random_id(prefix: &str) -> String {
    format!(
        "{prefix}_{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// Converts a Responses request body into a chat completion body.
pub fn to_chat(body: &[u8]) -> Result<(Vec<u8>, Arc<Meta>), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty: send a Responses API request.",
        ));
    }
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The request body is not a JSON object: {e}.")))?;
    if req
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(bad(
            "previous_response_id",
            "freeway does not store responses: send the whole conversation in `input` instead of `previous_response_id`.",
        ));
    }
    let mut messages: Vec<Value> = Vec::new();
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("instructions", "`instructions` must be a string.")),
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut messages)?;
            }
        }
        None | Some(Value::Null) => return Err(bad("input", "`input` is required.")),
        Some(_) => {
            return Err(bad(
                "input",
                "`input` must be a string or an array of items.",
            ))
        }
    }
    if messages.iter().all(|m| m["role"] == "system") {
        return Err(bad("input", "`input` has no message to answer."));
    }

    let mut chat = Map::new();
    if let Some(model) = req.get("model") {
        chat.insert("model".into(), model.clone());
    }
    chat.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("max_output_tokens", "max_tokens"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(tools) = req.get("tools").filter(|v| !v.is_null()) {
        chat.insert("tools".into(), chat_tools(tools)?);
    }
    if let Some(choice) = req.get("tool_choice").filter(|v| !v.is_null()) {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(format) = req
        .get("text")
        .and_then(|t| t.get("format"))
        .filter(|v| !v.is_null())
    {
        if let Some(rf) = response_format(format)? {
            chat.insert("response_format".into(), rf);
        }
    }
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream", "`stream` must be a boolean.")),
    };
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }

    let mut echo = Map::new();
    // Required by the schema (null allowed): always echoed; optional ones only when set.
    for key in ["instructions", "metadata", "temperature", "top_p", "text"] {
        echo.insert(key.into(), req.get(key).cloned().unwrap_or(Value::Null));
    }
    for key in ["max_output_tokens", "reasoning", "user"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            echo.insert(key.into(), v.clone());
        }
    }
    echo.insert(
        "tools".into(),
        req.get("tools")
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!([])),
    );
    echo.insert(
        "tool_choice".into(),
        req.get("tool_choice")
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| json!("auto")),
    );
    echo.insert(
        "parallel_tool_calls".into(),
        req.get("parallel_tool_calls")
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or(Value::Bool(true)),
    );
    if echo["text"].is_null() {
        echo.insert("text".into(), json!({"format": {"type": "text"}}));
    }
    if echo["metadata"].is_null() {
        echo.insert("metadata".into(), json!({}));
    }
    let meta = Meta {
        id: random_id("resp"),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        echo,
    };
    let body = serde_json::to_vec(&Value::Object(chat)).unwrap_or_default();
    Ok((body, Arc::new(meta)))
}

/// One `input` item → chat messages (appended).
fn input_item(item: &Value, i: usize, messages: &mut Vec<Value>) -> Result<(), ApiError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer") | Some("system") => "system",
                Some("user") => "user",
                Some("assistant") => "assistant",
                _ => {
                    return Err(bad(
                        "input",
                        format!("input[{i}] needs a role: user, assistant, system or developer."),
                    ))
                }
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for p in parts {
                        out.push(content_part(p, i)?);
                    }
                    if role != "user" && out.iter().all(|p| p["type"] == "text") {
                        // Non-user roles take plain text everywhere; join the parts.
                        Value::String(
                            out.iter()
                                .filter_map(|p| p["text"].as_str())
                                .collect::<Vec<_>>()
                                .join(""),
                        )
                    } else {
                        Value::Array(out)
                    }
                }
                _ => {
                    return Err(bad(
                        "input",
                        format!("input[{i}].content must be a string or an array of parts."),
                    ))
                }
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    "input",
                    format!("input[{i}] (function_call) needs `call_id`."),
                )
            })?;
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("input", format!("input[{i}] (function_call) needs `name`.")))?;
            let arguments = item
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
            // Consecutive calls belong to one assistant turn.
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    "input",
                    format!("input[{i}] (function_call_output) needs `call_id`."),
                )
            })?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Reasoning items carry no text a chat provider can use.
        "reasoning" => {}
        other => {
            return Err(bad(
                "input",
                format!("input[{i}]: item type `{other}` is not supported by freeway."),
            ))
        }
    }
    Ok(())
}

fn content_part(p: &Value, i: usize) -> Result<Value, ApiError> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text") | Some("output_text") | Some("text") => {
            Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")}))
        }
        Some("input_image") => {
            let url = p.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    "input",
                    format!(
                        "input[{i}]: input_image needs `image_url` (file_id is not supported)."
                    ),
                )
            })?;
            let mut image = json!({"url": url});
            if let Some(d) = p.get("detail").filter(|d| !d.is_null()) {
                image["detail"] = d.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some("refusal") => Ok(
            json!({"type": "text", "text": p.get("refusal").and_then(Value::as_str).unwrap_or("")}),
        ),
        other => Err(bad(
            "input",
            format!(
                "input[{i}]: content part `{}` is not supported.",
                other.unwrap_or("?")
            ),
        )),
    }
}

fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
    let list = tools
        .as_array()
        .ok_or_else(|| bad("tools", "`tools` must be an array."))?;
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("tools", "only `function` tools are supported through freeway (built-in tools need OpenAI's servers)."));
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("tools", "every function tool needs a `name`."))?;
        let mut f = json!({"name": name});
        for key in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                f[key] = v.clone();
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice", "needs `name`."))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad(
            "tool_choice",
            "`tool_choice` must be auto, none, required or a function.",
        )),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema =
                json!({"name": format.get("name").cloned().unwrap_or_else(|| json!("response"))});
            for key in ["schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema[key] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(bad(
            "text",
            "`text.format.type` must be text, json_object or json_schema.",
        )),
    }
}

fn usage_json(u: Option<Usage>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }),
    }
}

/// The `response` object.
fn response_object(
    meta: &Meta,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Option<Usage>,
    finish: Option<&str>,
) -> Value {
    let mut r = meta.echo.clone();
    r.insert("id".into(), json!(meta.id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(meta.created_at));
    r.insert("status".into(), json!(status));
    r.insert("model".into(), json!(model));
    r.insert("output".into(), Value::Array(output));
    r.insert("error".into(), Value::Null);
    let incomplete = match (status, finish) {
        ("incomplete", Some("content_filter")) => json!({"reason": "content_filter"}),
        ("incomplete", _) => json!({"reason": "max_output_tokens"}),
        _ => Value::Null,
    };
    r.insert("incomplete_details".into(), incomplete);
    if usage.is_some() {
        r.insert("usage".into(), usage_json(usage));
    }
    Value::Object(r)
}

fn status_for(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") | Some("content_filter") => "incomplete",
        _ => "completed",
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// A chat completion (OpenAI JSON) → a `response` object.
pub fn from_chat_completion(
    meta: &Meta,
    chat: &[u8],
    usage: Option<Usage>,
) -> Result<Bytes, String> {
    let v: Value = serde_json::from_slice(chat).map_err(|e| format!("bad chat completion: {e}"))?;
    let choice = &v["choices"][0];
    let message = &choice["message"];
    let finish = choice["finish_reason"].as_str();
    let mut output = Vec::new();
    let text = message["content"].as_str().unwrap_or("");
    if !text.is_empty() {
        output.push(message_item(&random_id("msg"), text, "completed"));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        output.push(call_item(
            &random_id("fc"),
            call["id"].as_str().unwrap_or(""),
            call["function"]["name"].as_str().unwrap_or(""),
            call["function"]["arguments"].as_str().unwrap_or("{}"),
            "completed",
        ));
    }
    let model = v["model"].as_str().unwrap_or("");
    let r = response_object(meta, model, status_for(finish), output, usage, finish);
    Ok(Bytes::from(serde_json::to_vec(&r).unwrap_or_default()))
}

/// Turns a chat stream (after the provider's own translator) into Responses events.
pub struct ResponsesStream {
    meta: Arc<Meta>,
    seq: u64,
    model: String,
    created: bool,
    /// The open text item: (output index, item id, text so far).
    text: Option<(usize, String, String)>,
    /// Open function calls by chat tool index: (output index, item id, call id, name, args).
    calls: Vec<(u64, usize, String, String, String, String)>,
    output: Vec<Value>,
    finish: Option<String>,
    usage: Option<Usage>,
}

impl ResponsesStream {
    pub fn new(
        inner: Box<dyn StreamTranslator>,
        meta: Arc<Meta>,
        model: &str,
    ) -> Reshaped<ResponsesStream> {
        Reshaped::new(
            inner,
            ResponsesStream {
                meta,
                seq: 0,
                model: model.to_string(),
                created: false,
                text: None,
                calls: Vec::new(),
                output: Vec::new(),
                finish: None,
                usage: None,
            },
        )
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut event: Value) {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.seq);
        self.seq += 1;
        write_event(out, kind, &serde_json::to_vec(&event).unwrap_or_default());
    }

    fn ensure_created(&mut self, out: &mut Vec<u8>) {
        if !self.created {
            self.created = true;
            let r = response_object(
                &self.meta,
                &self.model,
                "in_progress",
                Vec::new(),
                None,
                None,
            );
            self.emit(out, "response.created", json!({"response": r.clone()}));
            self.emit(out, "response.in_progress", json!({"response": r}));
        }
    }

    fn close_text(&mut self, out: &mut Vec<u8>) {
        if let Some((index, id, text)) = self.text.take() {
            self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
            let part =
                json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            self.emit(
                out,
                "response.content_part.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            );
            let item = message_item(&id, &text, "completed");
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": item.clone()}),
            );
            self.output.push(item);
        }
    }

    fn close_calls(&mut self, out: &mut Vec<u8>) {
        for (_, index, id, call_id, name, args) in std::mem::take(&mut self.calls) {
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "name": name, "arguments": args}),
            );
            let item = call_item(&id, &call_id, &name, &args, "completed");
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": item.clone()}),
            );
            self.output.push(item);
        }
    }

    fn next_index(&self) -> usize {
        self.output.len() + usize::from(self.text.is_some()) + self.calls.len()
    }
}

impl Reshape for ResponsesStream {
    fn chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if data == b"[DONE]" {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad chat chunk: {e}")))?;
        if let Some(m) = v["model"].as_str().filter(|m| !m.is_empty()) {
            self.model = m.to_string();
        }
        self.ensure_created(out);
        let Some(choice) = v["choices"].get(0) else {
            return Ok(());
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.text.is_none() {
                let index = self.next_index();
                let id = random_id("msg");
                let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                let part =
                    json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
                self.text = Some((index, id, String::new()));
            }
            let (index, id) = match &mut self.text {
                Some((index, id, acc)) => {
                    acc.push_str(text);
                    (*index, id.clone())
                }
                None => return Ok(()),
            };
            self.emit(out, "response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let tool_index = call["index"].as_u64().unwrap_or(0);
            if !self.calls.iter().any(|c| c.0 == tool_index) {
                self.close_text(out);
                let index = self.next_index();
                let id = random_id("fc");
                let call_id = call["id"]
                    .as_str()
                    .map_or_else(|| random_id("call"), str::to_string);
                let name = call["function"]["name"].as_str().unwrap_or("").to_string();
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                self.calls
                    .push((tool_index, index, id, call_id, name, String::new()));
            }
            if let Some(fragment) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                let Some(pos) = self.calls.iter().position(|c| c.0 == tool_index) else {
                    continue;
                };
                self.calls[pos].5.push_str(fragment);
                let (index, id) = (self.calls[pos].1, self.calls[pos].2.clone());
                self.emit(
                    out,
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": fragment}),
                );
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
        Ok(())
    }

    fn end(&mut self, usage: Option<Usage>, out: &mut Vec<u8>) {
        self.ensure_created(out);
        self.close_text(out);
        self.close_calls(out);
        self.usage = usage;
        let status = status_for(self.finish.as_deref());
        let r = response_object(
            &self.meta,
            &self.model,
            status,
            self.output.clone(),
            self.usage,
            self.finish.as_deref(),
        );
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": r}));
    }

    /// A stream failing mid-way ends as OpenAI's does: an `error` event, then
    /// `response.failed` with the response so far (`status: "failed"`, `error: {code,
    /// message}`; unfinished items `incomplete`), never `response.completed`.
    fn fail(&mut self, err: &ApiError, usage: Option<Usage>, out: &mut Vec<u8>) {
        self.ensure_created(out);
        let code = if err.status == 429 {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        self.emit(
            out,
            "error",
            json!({"code": code, "message": err.message, "param": err.param}),
        );
        let mut output = self.output.clone();
        if let Some((_, id, text)) = &self.text {
            output.push(message_item(id, text, "incomplete"));
        }
        for (_, _, id, call_id, name, args) in &self.calls {
            output.push(call_item(id, call_id, name, args, "incomplete"));
        }
        let mut r = response_object(&self.meta, &self.model, "failed", output, usage, None);
        r["error"] = json!({"code": code, "message": err.message});
        self.emit(out, "response.failed", json!({ "response": r }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::OpenAi;
    use crate::providers::Translator;
    use crate::sse::SseReader;

    #[test]
    fn input_items_keep_roles_images_and_tool_calls() {
        let body = json!({
            "model": "auto", "instructions": "be brief", "max_output_tokens": 50,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                             {"type": "input_image", "image_url": "data:image/png;base64,AAA"}]},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "lookup", "arguments": "{\"q\":2}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": "two"},
            ],
            "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        });
        let (chat, _) = to_chat(body.to_string().as_bytes()).unwrap();
        let chat: Value = serde_json::from_slice(&chat).unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[1]["content"][1]["type"], "image_url");
        assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "one"})
        );
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["tools"][0]["function"]["name"], "lookup");
        assert_eq!(chat["response_format"]["type"], "json_schema");
        let bytes = serde_json::to_vec(&chat).unwrap();
        let parsed = crate::request::parse_chat(&bytes).unwrap();
        assert!(parsed.needs.vision && parsed.needs.tools && parsed.needs.json);
    }

    #[test]
    fn bad_requests_are_named() {
        assert_eq!(to_chat(b"{}").unwrap_err().param, Some("input"));
        assert_eq!(
            to_chat(br#"{"input":"x","previous_response_id":"r"}"#)
                .unwrap_err()
                .param,
            Some("previous_response_id")
        );
        assert_eq!(
            to_chat(br#"{"input":[{"type":"web_search_call"}]}"#)
                .unwrap_err()
                .param,
            Some("input")
        );
        assert_eq!(
            to_chat(br#"{"input":"x","tools":[{"type":"web_search"}]}"#)
                .unwrap_err()
                .param,
            Some("tools")
        );
    }

    #[test]
    fn chat_completion_becomes_a_response() {
        let (_, meta) = to_chat(br#"{"input":"hi"}"#).unwrap();
        let chat = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "let me check",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
        let r = from_chat_completion(
            &meta,
            chat.to_string().as_bytes(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
        )
        .unwrap();
        let r: Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "let me check");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(r["usage"]["total_tokens"], 7);
    }

    fn events(out: &[u8]) -> Vec<Value> {
        let mut r = SseReader::new();
        r.push(out);
        std::iter::from_fn(|| r.next_event())
            .map(|e| serde_json::from_slice(&e.data).unwrap())
            .collect()
    }

    #[test]
    fn chat_stream_becomes_response_events() {
        let (_, meta) = to_chat(br#"{"input":"hi","stream":true}"#).unwrap();
        let chat = b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_9\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n\
data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5}}\n\n\
data: [DONE]\n\n";
        let mut t = ResponsesStream::new(OpenAi.chat_stream("m", true), meta, "m");
        let mut out = Vec::new();
        for piece in chat.chunks(7) {
            t.feed(piece, &mut out).unwrap();
        }
        t.finish(&mut out).unwrap();
        let ev = events(&out);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let seqs: Vec<u64> = ev
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        let done = &ev.last().unwrap()["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["output_tokens"], 5);
    }

    #[test]
    fn a_stream_failing_mid_way_ends_with_response_failed() {
        let (_, meta) = to_chat(br#"{"input":"hi","stream":true}"#).unwrap();
        let chat = b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
        let mut t = ResponsesStream::new(OpenAi.chat_stream("m", true), meta.clone(), "m");
        let mut out = Vec::new();
        t.feed(chat, &mut out).unwrap();
        t.error_event(
            &ApiError::upstream(502, "the stream from `p/m` failed: cut"),
            &mut out,
        );
        let ev = events(&out);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(&kinds[kinds.len() - 2..], &["error", "response.failed"]);
        assert!(!kinds.contains(&"response.completed"));
        let failed = &ev.last().unwrap()["response"];
        assert_eq!(failed["id"], meta.id.as_str());
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["code"], "server_error");
        assert!(failed["error"]["message"].as_str().unwrap().contains("cut"));
        assert_eq!(failed["output"][0]["status"], "incomplete");
        assert_eq!(failed["output"][0]["content"][0]["text"], "Hel");
        let seqs: Vec<u64> = ev
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }
}
