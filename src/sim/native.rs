//! The simulated native providers: what every native format shares (the conversation read
//! from the request, the reply chosen for it, and the behaviours), with the wire shapes in
//! one module per format.

use super::{behavior_of, write, write_json, Behavior, SimProvider};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use serde_json::Value;
use std::time::Duration;

/// A native wire format the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gemini,
    Anthropic,
    WorkersAi,
}

impl Format {
    /// The format a request path belongs to, if it is a native chat path.
    pub fn of_path(path: &str) -> Option<Format> {
        if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
            Some(Format::Gemini)
        } else if path.ends_with("/messages") {
            Some(Format::Anthropic)
        } else if path.contains("/run/") {
            Some(Format::WorkersAi)
        } else {
            None
        }
    }
}

/// What the simulated model read from the request, in any format.
#[derive(Debug, Default, PartialEq)]
pub struct Conversation {
    /// Text of the last user turn.
    pub last_user: String,
    /// Images in the last user turn.
    pub images: usize,
    /// Declared tools: (name, parameters schema).
    pub tools: Vec<(String, Option<Value>)>,
    /// The tool the request forces (`tool_choice` naming one), if any.
    pub forced_tool: Option<String>,
    /// The last turn is a tool result: its text.
    pub tool_result: Option<String>,
    /// JSON mode was asked for.
    pub json: bool,
    /// The JSON schema of the answer, when JSON mode has one.
    pub json_schema: Option<Value>,
}

/// What the simulated model answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Text(String),
    ToolCall { name: String, args: Value },
}

impl Reply {
    /// Echo the last user message; call the forced tool, else the first tool when tools are
    /// declared and the last turn is not a tool result (arguments that satisfy the tool's
    /// parameters, strings filled with the last user message); answer JSON in JSON mode
    /// (matching the schema when there is one, strings filled with the echo).
    pub fn choose(c: &Conversation, body_len: usize) -> Reply {
        let call = |name: &str, fill: &str| {
            let schema = c
                .tools
                .iter()
                .find(|t| t.0 == name)
                .and_then(|t| t.1.as_ref());
            let args = match schema {
                Some(s) => sample(s, fill),
                None => Value::Object(serde_json::Map::new()),
            };
            Reply::ToolCall {
                name: name.to_string(),
                args,
            }
        };
        if let Some(name) = &c.forced_tool {
            // freeway's JSON mode on Anthropic: the forced tool's input is the answer.
            if name == crate::providers::anthropic::JSON_TOOL {
                let text = echo_text(c, body_len);
                let schema = c
                    .tools
                    .iter()
                    .find(|t| t.0 == *name)
                    .and_then(|t| t.1.as_ref());
                // `json_object`: any object, the echo as in the other formats' JSON mode.
                if schema.is_none_or(|s| s.get("properties").is_none() && s.get("$ref").is_none()) {
                    return Reply::ToolCall {
                        name: name.clone(),
                        args: serde_json::json!({ "echo": text }),
                    };
                }
                return call(name, &text);
            }
            if c.tool_result.is_none() {
                return call(name, &c.last_user);
            }
        }
        if let Some(result) = &c.tool_result {
            return Reply::Text(format!("echo: the tool said {result}"));
        }
        if let Some((name, _)) = c.tools.first() {
            return call(name, &c.last_user);
        }
        let text = echo_text(c, body_len);
        if c.json {
            return Reply::Text(match &c.json_schema {
                Some(s) => sample(s, &text).to_string(),
                None => serde_json::json!({ "echo": text }).to_string(),
            });
        }
        Reply::Text(text)
    }

    pub fn completion_tokens(&self) -> u64 {
        match self {
            Reply::Text(t) => t.split_whitespace().count() as u64,
            Reply::ToolCall { .. } => 5,
        }
    }
}

/// The echo of the last user message.
fn echo_text(c: &Conversation, body_len: usize) -> String {
    let mut shown: String = c.last_user.chars().take(200).collect();
    if shown.len() < c.last_user.len() {
        shown.push('…');
    }
    let images = match c.images {
        0 => String::new(),
        1 => " [1 image]".into(),
        n => format!(" [{n} images]"),
    };
    format!("echo: {shown}{images} ({body_len} bytes received)")
}

/// A value valid against a JSON schema (the subset models are given: local `$ref`s, `allOf`,
/// `anyOf`/`oneOf`, `enum`/`const`, nullable types, objects with their required properties,
/// arrays, scalars); strings are `fill`. Without `required`, an object gets its first
/// property. Recursion stops at a depth of 8 (null, or an empty object/array).
pub fn sample(schema: &Value, fill: &str) -> Value {
    sample_in(schema, schema, fill, 0)
}

fn sample_in(schema: &Value, root: &Value, fill: &str, depth: usize) -> Value {
    let Value::Object(m) = schema else {
        return Value::String(fill.to_string());
    };
    if depth > 8 {
        return Value::Null;
    }
    let deeper = |s: &Value| sample_in(s, root, fill, depth + 1);
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        let target = r.strip_prefix('#').and_then(|p| root.pointer(p));
        return target.map_or(Value::Null, deeper);
    }
    if let Some(v) = m.get("const") {
        return v.clone();
    }
    if let Some(v) = m
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return v.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = m.get(key).and_then(Value::as_array) {
            let alt = alts.iter().find(|a| a["type"] != "null").or(alts.first());
            return alt.map_or(Value::Null, deeper);
        }
    }
    if let Some(all) = m.get("allOf").and_then(Value::as_array) {
        let mut merged = serde_json::Map::new();
        let mut last = Value::Null;
        for s in all {
            match deeper(s) {
                Value::Object(o) => merged.extend(o),
                v => last = v,
            }
        }
        if merged.is_empty() {
            return last;
        }
        if let Value::Object(own) = sample_object(m, root, fill, depth) {
            merged.extend(own);
        }
        return Value::Object(merged);
    }
    let kind = match m.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if m.contains_key("properties") => "object",
        _ if m.contains_key("items") => "array",
        _ => "string",
    };
    match kind {
        "object" => sample_object(m, root, fill, depth),
        "array" => match m.get("items") {
            Some(items) if depth < 8 => Value::Array(vec![deeper(items)]),
            _ => Value::Array(Vec::new()),
        },
        "integer" => m.get("minimum").cloned().unwrap_or_else(|| 1.into()),
        "number" => m.get("minimum").cloned().unwrap_or_else(|| 1.5.into()),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => Value::String(match m.get("format").and_then(Value::as_str) {
            Some("date") => "2026-01-01".into(),
            Some("date-time") => "2026-01-01T00:00:00Z".into(),
            Some("email") => "sim@example.com".into(),
            Some("uri") => "https://example.com/".into(),
            _ => fill.to_string(),
        }),
    }
}

fn sample_object(
    m: &serde_json::Map<String, Value>,
    root: &Value,
    fill: &str,
    depth: usize,
) -> Value {
    let mut out = serde_json::Map::new();
    let Some(props) = m.get("properties").and_then(Value::as_object) else {
        return Value::Object(out);
    };
    let required: Vec<&str> = m
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, s) in props {
        let wanted = if required.is_empty() {
            out.is_empty()
        } else {
            required.contains(&name.as_str())
        };
        if wanted {
            out.insert(name.clone(), sample_in(s, root, fill, depth + 1));
        }
    }
    Value::Object(out)
}

/// The facts of one simulated answer.
pub struct Turn<'a> {
    pub model: &'a str,
    /// Choices asked for (Gemini's `candidateCount`).
    pub choices: usize,
    pub id: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The words of a text reply, each keeping its trailing space (stream deltas).
pub fn words(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// Text of string-or-parts content (OpenAI/Anthropic/Workers style) and its image count.
pub fn text_and_images(content: &Value) -> (String, usize) {
    match content {
        Value::String(s) => (s.clone(), 0),
        Value::Array(parts) => {
            let text = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            let images = parts
                .iter()
                .filter(|p| {
                    matches!(
                        p.get("type").and_then(Value::as_str),
                        Some("image" | "image_url")
                    )
                })
                .count();
            (text, images)
        }
        _ => (String::new(), 0),
    }
}

impl SimProvider {
    /// Answers a native chat request in `format`.
    pub(super) async fn native(&self, session: &mut Session, format: Format) -> Result<()> {
        let mut body = Vec::new();
        while let Some(c) = session.read_request_body().await? {
            body.extend_from_slice(&c);
        }
        let body = Bytes::from(body);
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let req: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                self.record(session, &body, "");
                let err = error_body(format, 400, &format!("sim: bad JSON: {e}"));
                return write(session, 400, "application/json", err, &[]).await;
            }
        };
        let (model, stream) = match format {
            Format::Gemini => {
                let after = path.rsplit_once("/models/").map_or("", |(_, m)| m);
                let (model, method) = after.split_once(':').unwrap_or((after, ""));
                (model.to_string(), method == "streamGenerateContent")
            }
            Format::Anthropic => (
                req["model"].as_str().unwrap_or("").to_string(),
                req["stream"].as_bool().unwrap_or(false),
            ),
            Format::WorkersAi => (
                path.split_once("/run/").map_or("", |(_, m)| m).to_string(),
                req["stream"].as_bool().unwrap_or(false),
            ),
        };
        self.record(session, &body, &model);
        if format == Format::Gemini && stream && query != "alt=sse" {
            let err = error_body(
                format,
                400,
                "sim: streams are served as SSE only with ?alt=sse",
            );
            return write(session, 400, "application/json", err, &[]).await;
        }
        if format == Format::Anthropic
            && session
                .req_header()
                .headers
                .get("anthropic-version")
                .is_none()
        {
            let err = error_body(format, 400, "anthropic-version: header is required");
            return write(session, 400, "application/json", err, &[]).await;
        }
        let behavior = self.behavior(session, &model);
        let delay = delay_ms(session);
        match behavior {
            Behavior::Fail(status) => {
                let msg = match status {
                    429 => "sim: rate limit reached, retry later",
                    401 => "sim: invalid provider key",
                    _ => "sim: internal error",
                };
                let extra: &[(&str, &str)] = if status == 429 {
                    &[("retry-after", "30")]
                } else {
                    &[]
                };
                return write(
                    session,
                    status,
                    "application/json",
                    error_body(format, status, msg),
                    extra,
                )
                .await;
            }
            Behavior::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            _ => {}
        }

        let conv = match format {
            Format::Gemini => super::gemini::conversation(&req),
            Format::Anthropic => super::anthropic::conversation(&req),
            Format::WorkersAi => super::workers_ai::conversation(&req),
        };
        // Gemini with inline audio: a transcription request.
        let audio = (format == Format::Gemini)
            .then(|| super::media::gemini_audio(&req))
            .flatten();
        let mut reply = match audio {
            Some(t) => Reply::Text(t),
            None => Reply::choose(&conv, body.len()),
        };
        // A story model continues an Anthropic prefill (and refuses one ending in
        // whitespace, as Anthropic does).
        let story = super::story::Story::of_model(&model);
        if let (Some(s), Format::Anthropic) = (story, format) {
            match super::story::anthropic_prefill(&req) {
                Err(msg) => {
                    let err = error_body(format, 400, msg);
                    return write(session, 400, "application/json", err, &[]).await;
                }
                Ok(p) => {
                    if let Some(p) = &p {
                        self.note_partial(p, "prefill");
                    }
                    reply = Reply::Text(s.answer(p.as_deref()));
                }
            }
        }
        let choices = req["generationConfig"]["candidateCount"]
            .as_u64()
            .map_or(1, |n| n.clamp(1, 8) as usize);
        let turn = Turn {
            model: &model,
            choices,
            id: format!("{:016x}", fastrand::u64(..)),
            prompt_tokens: (body.len() / 4) as u64,
            completion_tokens: reply.completion_tokens(),
        };

        if !stream {
            if matches!(behavior, Behavior::Drop | Behavior::DropEarly) {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "sim: dropping the connection",
                );
            }
            if behavior == Behavior::Slow {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let v = match format {
                Format::Gemini => super::gemini::response(&reply, &turn),
                Format::Anthropic => super::anthropic::response(&reply, &turn, &req),
                Format::WorkersAi => super::workers_ai::response(&reply, &turn),
            };
            return write_json(session, 200, &v).await;
        }

        let events = match format {
            Format::Gemini => super::gemini::events(&reply, &turn),
            Format::Anthropic => super::anthropic::events(&reply, &turn, &req),
            Format::WorkersAi => super::workers_ai::events(&reply, &turn),
        };
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header("content-type", "text/event-stream")?;
        resp.insert_header("cache-control", "no-cache")?;
        resp.insert_header("transfer-encoding", "chunked")?;
        session.write_response_header(Box::new(resp), false).await?;
        if behavior == Behavior::DropEarly {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "sim: dropping before any event",
            );
        }
        let last = events.len().saturating_sub(1);
        // Mid-answer: after some content has gone out.
        let drop_at = (events.len() / 2).max(1);
        for (i, ev) in events.into_iter().enumerate() {
            if behavior == Behavior::Slow && i > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if behavior == Behavior::Drop && i == drop_at {
                // Half an event, then the connection dies.
                let half = Bytes::copy_from_slice(&ev.as_bytes()[..ev.len() / 2]);
                session.write_response_body(Some(half), false).await?;
                return Error::e_explain(ErrorType::ConnectionClosed, "sim: dropping mid-stream");
            }
            session
                .write_response_body(Some(Bytes::from(ev)), i == last)
                .await?;
        }
        Ok(())
    }

    /// Anthropic's `POST /v1/messages/count_tokens` (`{"input_tokens": n}`) and Gemini's
    /// `models/{m}:countTokens` (`{"totalTokens": n}`): a quarter of the body's bytes, the
    /// simulator's count everywhere.
    pub(super) async fn count_tokens(&self, session: &mut Session) -> Result<()> {
        let mut body = Vec::new();
        while let Some(c) = session.read_request_body().await? {
            body.extend_from_slice(&c);
        }
        let body = Bytes::from(body);
        let path = session.req_header().uri.path().to_string();
        let gemini = path.contains(":countTokens");
        let format = if gemini {
            Format::Gemini
        } else {
            Format::Anthropic
        };
        let req: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                self.record(session, &body, "");
                let err = error_body(format, 400, &format!("sim: bad JSON: {e}"));
                return write(session, 400, "application/json", err, &[]).await;
            }
        };
        let model = if gemini {
            req["generateContentRequest"]["model"]
                .as_str()
                .unwrap_or("")
                .to_string()
        } else {
            req["model"].as_str().unwrap_or("").to_string()
        };
        self.record(session, &body, &model);
        let malformed = if gemini {
            (!req["generateContentRequest"]["contents"].is_array())
                .then_some("generateContentRequest.contents: required")
        } else if session
            .req_header()
            .headers
            .get("anthropic-version")
            .is_none()
        {
            Some("anthropic-version: header is required")
        } else {
            (!req["messages"].is_array()).then_some("messages: Field required")
        };
        if let Some(msg) = malformed {
            let err = error_body(format, 400, msg);
            return write(session, 400, "application/json", err, &[]).await;
        }
        let n = (body.len() / 4) as u64;
        let v = if gemini {
            serde_json::json!({ "totalTokens": n })
        } else {
            serde_json::json!({ "input_tokens": n })
        };
        write_json(session, 200, &v).await
    }

    fn behavior(&self, session: &Session, model: &str) -> Behavior {
        let header = session
            .req_header()
            .headers
            .get("x-sim-behavior")
            .and_then(|v| v.to_str().ok())
            .map(behavior_of);
        match header.unwrap_or_else(|| behavior_of(model)) {
            Behavior::Flaky if fastrand::bool() => Behavior::Fail(500),
            Behavior::Flaky => Behavior::Echo,
            b => b,
        }
    }
}

fn delay_ms(session: &Session) -> u64 {
    session
        .req_header()
        .headers
        .get("x-sim-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(200)
}

/// A native error body for `status`.
pub fn error_body(format: Format, status: u16, msg: &str) -> Bytes {
    let v = match format {
        Format::Gemini => super::gemini::error(status, msg),
        Format::Anthropic => super::anthropic::error(status, msg),
        Format::WorkersAi => super::workers_ai::error(status, msg),
    };
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_from_paths() {
        assert_eq!(
            Format::of_path("/g/v1beta/models/gemini-2.5-flash:generateContent"),
            Some(Format::Gemini)
        );
        assert_eq!(
            Format::of_path("/g/v1beta/models/x:streamGenerateContent"),
            Some(Format::Gemini)
        );
        assert_eq!(Format::of_path("/a/v1/messages"), Some(Format::Anthropic));
        assert_eq!(
            Format::of_path("/cf/client/v4/accounts/1/ai/run/@cf/meta/llama"),
            Some(Format::WorkersAi)
        );
        assert_eq!(Format::of_path("/x/v1/chat/completions"), None);
    }

    #[test]
    fn reply_calls_a_tool_until_it_has_a_result() {
        let mut c = Conversation {
            last_user: "Oslo".into(),
            tools: vec![(
                "get_weather".into(),
                Some(json!({"type": "object", "properties": {"city": {"type": "string"}}})),
            )],
            ..Conversation::default()
        };
        assert_eq!(
            Reply::choose(&c, 10),
            Reply::ToolCall {
                name: "get_weather".into(),
                args: json!({"city": "Oslo"})
            }
        );
        c.tool_result = Some("3C".into());
        assert_eq!(
            Reply::choose(&c, 10),
            Reply::Text("echo: the tool said 3C".into())
        );
        let c = Conversation {
            last_user: "hi".into(),
            images: 1,
            json: true,
            ..Conversation::default()
        };
        let Reply::Text(t) = Reply::choose(&c, 5) else {
            panic!()
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["echo"], "echo: hi [1 image] (5 bytes received)");
    }

    #[test]
    fn samples_satisfy_their_schemas() {
        let schema = json!({
            "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                                  "required": ["city"]}},
            "type": "object",
            "properties": {
                "name": {"type": "string"}, "age": {"type": "integer", "minimum": 18},
                "score": {"type": "number"}, "ok": {"type": "boolean"},
                "kind": {"enum": ["a", "b"]}, "tags": {"type": "array", "items": {"type": "string"}},
                "home": {"$ref": "#/$defs/Address"},
                "work": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
                "nick": {"type": ["string", "null"]}, "optional": {"type": "string"},
                "when": {"type": "string", "format": "date"}
            },
            "required": ["name", "age", "score", "ok", "kind", "tags", "home", "work", "nick", "when"]
        });
        assert_eq!(
            sample(&schema, "x"),
            json!({"name": "x", "age": 18, "score": 1.5, "ok": true, "kind": "a", "tags": ["x"],
                   "home": {"city": "x"}, "work": {"city": "x"}, "nick": "x", "when": "2026-01-01"})
        );
        // Recursive schemas end.
        let tree = json!({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}, "required": ["next"]}},
                          "$ref": "#/$defs/N"});
        assert!(sample(&tree, "x").is_object());
        // Forced tools are called, JSON answers follow the schema.
        let c = Conversation {
            last_user: "q".into(),
            tools: vec![(
                crate::providers::anthropic::JSON_TOOL.into(),
                Some(schema.clone()),
            )],
            forced_tool: Some(crate::providers::anthropic::JSON_TOOL.into()),
            ..Conversation::default()
        };
        let Reply::ToolCall { args, .. } = Reply::choose(&c, 1) else {
            panic!()
        };
        assert_eq!(args["name"], "echo: q (1 bytes received)");
        let c = Conversation {
            last_user: "q".into(),
            json: true,
            json_schema: Some(schema),
            ..Conversation::default()
        };
        let Reply::Text(t) = Reply::choose(&c, 1) else {
            panic!()
        };
        assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["age"], 18);
    }
}
