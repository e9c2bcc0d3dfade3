//! Simulated providers: an OpenAI-compatible server whose behaviour is chosen by the model
//! name or an `x-sim-behavior` header. It serves `freeway demo` (so a newcomer needs no keys)
//! and the integration tests (which also read what it received from `/_sim/*`).
//!
//! Behaviours: `echo` (default) answers with the last user message; `slow` waits between
//! stream chunks; `fail-429` (with `retry-after: 30`), `fail-500`, `fail-401` fail;
//! `flaky` fails half of the time with 500; `drop` breaks the connection mid-stream;
//! `drop-early` opens a 200 stream and closes it before any event; `drop-after-role` sends
//! the role chunk, then closes; `drop-mid-body` sends half of a JSON answer (its
//! `content-length` promises all of it), then closes; `hang` never answers. `x-sim-retry-after` sets the 429's
//! `retry-after` (default 30). Tests can switch a path prefix to another behaviour at run
//! time: `POST /_sim/override?prefix=/busy/&behavior=echo`.
//! The OpenAI wire format (`…/chat/completions`) is answered here; the native formats —
//! Gemini (`…/models/{m}:generateContent`, `:streamGenerateContent?alt=sse`), Anthropic
//! (`…/messages`) and Workers AI (`…/run/{model}`) — in `native` and one module per format,
//! each in its provider's documented JSON and SSE shapes. Native providers echo the last
//! user message too, call the first declared tool while the last turn is not a tool result,
//! and answer a JSON object in JSON mode. Embeddings, speech-to-text and text-to-speech are
//! answered in `media`, image generation in `images`, video jobs in `videos`.

mod anthropic;
mod gemini;
pub mod images;
pub mod media;
pub mod native;
mod openai;
pub mod png;
pub mod story;
pub mod videos;
mod workers_ai;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RECENT: usize = 256;

#[derive(Default)]
struct Log {
    total: u64,
    /// Requests per first path segment (`/groq/v1/…` → `groq`).
    by_prefix: std::collections::BTreeMap<String, u64>,
    recent: VecDeque<Value>,
    last_body: Bytes,
    /// `GET …/models` requests (a gateway's health checks), and the last one's credentials.
    listings: u64,
    listing_authorization: Option<String>,
}

/// The simulated provider service.
#[derive(Default)]
pub struct SimProvider {
    log: Mutex<Log>,
    /// Path prefix → behaviour name, overriding headers and model names.
    overrides: Mutex<Vec<(String, String)>>,
    /// Video jobs by id (OpenAI's) or operation id (Gemini's).
    videos: Mutex<std::collections::HashMap<String, videos::SimJob>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Echo,
    Slow,
    Fail(u16),
    Flaky,
    Drop,
    DropEarly,
    DropAfterRole,
    DropMidBody,
    Hang,
}

/// A 401 as OpenAI words it: the key it received, masked to its first 8 and last 4
/// characters (`…sim-401-full…` keys are echoed whole, as some compatible servers do).
fn invalid_key_message(session: &Session) -> String {
    let key = session
        .req_header()
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").to_string())
        .unwrap_or_default();
    let shown = if key.contains("full") || key.len() < 12 {
        key
    } else {
        format!(
            "{}{}{}",
            &key[..8],
            "*".repeat(key.len() - 12),
            &key[key.len() - 4..]
        )
    };
    format!(
        "Incorrect API key provided: {shown}. You can find your API key at \
         https://platform.openai.com/account/api-keys."
    )
}

pub(crate) fn behavior_of(name: &str) -> Behavior {
    let n = name.to_ascii_lowercase();
    if n.contains("fail-429") {
        Behavior::Fail(429)
    } else if n.contains("fail-500") {
        Behavior::Fail(500)
    } else if n.contains("fail-401") {
        Behavior::Fail(401)
    } else if n.contains("flaky") {
        Behavior::Flaky
    } else if n.contains("drop-early") {
        Behavior::DropEarly
    } else if n.contains("drop-after-role") {
        Behavior::DropAfterRole
    } else if n.contains("drop-mid-body") {
        Behavior::DropMidBody
    } else if n.contains("drop") {
        Behavior::Drop
    } else if n.contains("hang") {
        Behavior::Hang
    } else if n.contains("slow") {
        Behavior::Slow
    } else {
        Behavior::Echo
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The text of the last user message (string content or text parts).
fn last_user_text(req: &Value) -> String {
    let Some(msgs) = req["messages"].as_array() else {
        return String::new();
    };
    let Some(m) = msgs.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The reply text cut at the first of the request's stop strings (`stop`, or Anthropic's
/// `stop_sequences`) found in it, else after `max_tokens` words: (text, finish reason, the
/// stop string matched).
pub(crate) fn limit_text(req: &Value, text: String) -> (String, &'static str, Option<String>) {
    let stops: Vec<&str> = match (&req["stop"], &req["stop_sequences"]) {
        (Value::String(s), _) => vec![s.as_str()],
        (Value::Array(a), _) | (_, Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(*s).map(|at| (at, *s)))
        .min();
    if let Some((at, s)) = hit {
        return (text[..at].to_string(), "stop", Some(s.to_string()));
    }
    let max = req["max_tokens"]
        .as_u64()
        .or_else(|| req["max_completion_tokens"].as_u64());
    if let Some(max) = max {
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        if words.len() as u64 > max {
            return (words[..max as usize].concat(), "length", None);
        }
    }
    (text, "stop", None)
}

fn reply_text(req: &Value, body_len: usize) -> String {
    let text = last_user_text(req);
    let mut shown: String = text.chars().take(200).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("echo: {shown} ({body_len} bytes received)")
}

pub(crate) async fn write(
    session: &mut Session,
    status: u16,
    ctype: &str,
    body: Bytes,
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", ctype)?;
    resp.insert_header("content-length", body.len())?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), *v)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// A JSON answer.
pub(crate) async fn write_json(session: &mut Session, status: u16, v: &Value) -> Result<()> {
    let body = Bytes::from(v.to_string());
    write(session, status, "application/json", body, &[]).await
}

/// A 200 JSON answer cut half-way: the header promises the whole body, then the
/// connection closes.
async fn write_half(session: &mut Session, v: &Value) -> Result<()> {
    let body = Bytes::from(v.to_string());
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(body.slice(..body.len() / 2)), false)
        .await?;
    Error::e_explain(ErrorType::ConnectionClosed, "sim: dropping mid-body")
}

fn chunk(id: &str, model: &str, created: u64, delta: Value, finish: Value) -> Bytes {
    let v = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {v}\n\n"))
}

impl SimProvider {
    fn record(&self, session: &Session, body: &Bytes, model: &str) {
        self.record_with(session, body, model, serde_json::Map::new())
    }

    /// Notes on the last recorded request the partial answer it carried and how it was
    /// asked (`prefill`, `prefix`, `continue_final_message`, `instruct`): what a test checks
    /// a resumed stream's continuation request against.
    fn note_partial(&self, partial: &str, mode: &str) {
        if let Some(Value::Object(e)) = self.log.lock().recent.back_mut() {
            e.insert("partial".into(), json!(partial));
            e.insert("continuation".into(), json!(mode));
        }
    }

    /// Records a request with extra fields (media requests: audio fingerprint, form fields).
    fn record_with(
        &self,
        session: &Session,
        body: &Bytes,
        model: &str,
        extra: serde_json::Map<String, Value>,
    ) {
        let h = &session.req_header().headers;
        let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let entry = json!({
            "method": session.req_header().method.as_str(),
            "path": session.req_header().uri.path(),
            "model": model,
            "bytes": body.len(),
            "sha256": hex::encode(Sha256::digest(body)),
            "authorization": header("authorization"),
            "x_api_key": header("x-api-key"),
            "x_goog_api_key": header("x-goog-api-key"),
            "anthropic_version": header("anthropic-version"),
            "traceparent": header("traceparent"),
            "tracestate": header("tracestate"),
            "query": session.req_header().uri.query(),
            "accept": header("accept"),
            "content_type": header("content-type"),
            "content_length": header("content-length"),
            "transfer_encoding": header("transfer-encoding"),
            "header_names": h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            "x_gateway_headers": h.keys().filter(|k| k.as_str().starts_with("x-gateway")).map(|k| k.as_str()).collect::<Vec<_>>(),
        });
        let mut entry = entry;
        if let Some(obj) = entry.as_object_mut() {
            obj.extend(extra);
        }
        let prefix = session
            .req_header()
            .uri
            .path()
            .split('/')
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut log = self.log.lock();
        log.total += 1;
        *log.by_prefix.entry(prefix).or_default() += 1;
        if log.recent.len() == RECENT {
            log.recent.pop_front();
        }
        log.recent.push_back(entry);
        log.last_body = body.clone();
    }

    async fn chat(&self, session: &mut Session) -> Result<()> {
        let mut body = Vec::new();
        while let Some(c) = session.read_request_body().await? {
            body.extend_from_slice(&c);
        }
        let body = Bytes::from(body);
        let req: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let err = crate::errors::envelope(
                    "invalid_request_error",
                    None,
                    None,
                    &format!("sim: bad JSON: {e}"),
                );
                return write(session, 400, "application/json", err, &[]).await;
            }
        };
        let model = req["model"].as_str().unwrap_or("").to_string();
        self.record(session, &body, &model);
        let path = session.req_header().uri.path().to_string();
        let overridden = self
            .overrides
            .lock()
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, b)| behavior_of(b));
        let header_behavior = session
            .req_header()
            .headers
            .get("x-sim-behavior")
            .and_then(|v| v.to_str().ok())
            .map(behavior_of);
        // A key the simulated provider limits or refuses: `…sim-429…` is rate limited,
        // `…sim-401…` rejected, whatever the model (keys are per account at real providers).
        let key_behavior = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|k| {
                if k.contains("sim-429") {
                    Some(Behavior::Fail(429))
                } else if k.contains("sim-401") {
                    Some(Behavior::Fail(401))
                } else {
                    None
                }
            });
        let mut behavior = overridden
            .or(header_behavior)
            .or(key_behavior)
            .unwrap_or_else(|| behavior_of(&model));
        let retry_after = session
            .req_header()
            .headers
            .get("x-sim-retry-after")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("30")
            .to_string();
        if behavior == Behavior::Flaky {
            behavior = if fastrand::bool() {
                Behavior::Fail(500)
            } else {
                Behavior::Echo
            };
        }
        let delay = session
            .req_header()
            .headers
            .get("x-sim-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(200);

        match behavior {
            Behavior::Fail(status) => {
                // As OpenAI-compatible providers word them; a 429 as Groq does (its own
                // `type`, which the gateway must not pass on as is).
                let (kind, code, msg) = match status {
                    429 => (
                        "requests",
                        Some("rate_limit_exceeded"),
                        format!(
                            "Rate limit reached for model `{model}` on requests per minute \
                             (RPM): Limit 30, Used 30, Requested 1. Please try again in \
                             {retry_after}s."
                        ),
                    ),
                    401 => (
                        "invalid_request_error",
                        Some("invalid_api_key"),
                        invalid_key_message(session),
                    ),
                    _ => ("server_error", None, "sim: internal error".into()),
                };
                let err = crate::errors::envelope(kind, code, None, &msg);
                let hint = [("retry-after", retry_after.as_str())];
                let extra: &[(&str, &str)] = if status == 429 { &hint } else { &[] };
                return write(session, status, "application/json", err, extra).await;
            }
            Behavior::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            _ => {}
        }

        let stream = req["stream"].as_bool().unwrap_or(false);
        // Tools, tool results and JSON mode get what a model would answer; anything else
        // the echo.
        let conv = openai::conversation(&req);
        let reply = openai::needs_reply(&conv).then(|| native::Reply::choose(&conv, body.len()));
        let (mut text, call) = match reply {
            Some(native::Reply::Text(t)) => (t, None),
            Some(native::Reply::ToolCall { name, args }) => (String::new(), Some((name, args))),
            None => (reply_text(&req, body.len()), None),
        };
        let story = story::Story::of_model(&model);
        if let Some(s) = story.filter(|_| call.is_none()) {
            let partial = story::openai_partial(&req);
            if let Some((p, mode)) = &partial {
                self.note_partial(p, mode);
            }
            text = s.answer(partial.as_ref().map(|p| p.0.as_str()));
        }
        let created = now();
        let id = format!("chatcmpl-sim{:x}", fastrand::u64(..));
        let call_id = format!("call_sim{:x}_0", fastrand::u64(..));
        let prompt_tokens = (body.len() / 4) as u64;
        // `stop` and `max_tokens` are honoured: the text is cut at the first stop string
        // (named in the choice's `stop_reason`, as vLLM does) or after `max_tokens` words.
        let mut finish = if call.is_some() { "tool_calls" } else { "stop" };
        let mut matched: Option<String> = None;
        if call.is_none() {
            (text, finish, matched) = limit_text(&req, text);
        }
        // A model named `…reason…` thinks aloud first (`reasoning_content`, as DeepSeek's API).
        let reasoning = model
            .contains("reason")
            .then(|| format!("thinking about: {}", last_user_text(&req)));
        let completion_tokens = match &call {
            Some(_) => 5,
            None => text.split_whitespace().count() as u64,
        };
        let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});

        if !stream {
            if matches!(
                behavior,
                Behavior::Drop | Behavior::DropEarly | Behavior::DropAfterRole
            ) {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "sim: dropping the connection",
                );
            }
            if behavior == Behavior::Slow {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let message = match &call {
                Some((name, args)) => json!({"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": call_id, "type": "function",
                                    "function": {"name": name, "arguments": args.to_string()}}]}),
                None => json!({"role": "assistant", "content": text, "refusal": null}),
            };
            let mut message = message;
            if let Some(r) = &reasoning {
                message["reasoning_content"] = json!(r);
            }
            let v = json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "fp_freeway_sim",
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish, "stop_reason": matched}],
                "usage": usage,
            });
            if behavior == Behavior::DropMidBody {
                return write_half(session, &v).await;
            }
            return write_json(session, 200, &v).await;
        }

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
        let pause = |b: Behavior| async move {
            if b == Behavior::Slow {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        };
        session
            .write_response_body(
                Some(chunk(
                    &id,
                    &model,
                    created,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )),
                false,
            )
            .await?;
        if behavior == Behavior::DropAfterRole {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "sim: dropping after the role chunk",
            );
        }
        if let Some(r) = &reasoning {
            for word in r.split_inclusive(' ') {
                let d = json!({"reasoning_content": word});
                session
                    .write_response_body(Some(chunk(&id, &model, created, d, Value::Null)), false)
                    .await?;
            }
        }
        if let Some((name, args)) = &call {
            // A story model says a few words first (content, then the call, in one message).
            for word in story
                .iter()
                .flat_map(|_| story::STORY.split_inclusive(' ').take(4))
            {
                let d = json!({"content": word});
                session
                    .write_response_body(Some(chunk(&id, &model, created, d, Value::Null)), false)
                    .await?;
            }
            // The call's head, then its arguments in two pieces, as OpenAI streams them.
            let args = args.to_string();
            let mid = args
                .char_indices()
                .map(|(i, _)| i)
                .nth(args.chars().count() / 2)
                .unwrap_or(0);
            let head = json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]});
            session
                .write_response_body(Some(chunk(&id, &model, created, head, Value::Null)), false)
                .await?;
            if story.is_some_and(|s| s.die_after.is_some()) {
                return Error::e_explain(ErrorType::ConnectionClosed, "sim: the story dies");
            }
            for piece in [&args[..mid], &args[mid..]] {
                pause(behavior).await;
                let d = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                session
                    .write_response_body(Some(chunk(&id, &model, created, d, Value::Null)), false)
                    .await?;
            }
        }
        for (i, word) in text.split_inclusive(' ').enumerate() {
            pause(behavior).await;
            // Half an event, then the connection dies.
            if behavior == Behavior::Drop && i == 2 || story.is_some_and(|s| s.die_after == Some(i))
            {
                session
                    .write_response_body(Some(Bytes::from_static(b"data: {\"id\":\"trunc")), false)
                    .await?;
                return Error::e_explain(ErrorType::ConnectionClosed, "sim: dropping mid-stream");
            }
            if let Some(s) = story {
                if s.stall_after == Some(i) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return Ok(());
                }
                if s.error_after == Some(i) {
                    let err = b"data: {\"error\":{\"message\":\"sim: the model is overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n";
                    return session
                        .write_response_body(Some(Bytes::from_static(err)), true)
                        .await;
                }
            }
            session
                .write_response_body(
                    Some(chunk(
                        &id,
                        &model,
                        created,
                        json!({"content": word}),
                        Value::Null,
                    )),
                    false,
                )
                .await?;
        }
        let mut last = chunk(&id, &model, created, json!({}), json!(finish));
        if let Some(m) = &matched {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": finish, "stop_reason": m}]});
            last = Bytes::from(format!("data: {v}\n\n"));
        }
        session.write_response_body(Some(last), false).await?;
        if req["stream_options"]["include_usage"].as_bool() == Some(true) {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage});
            session
                .write_response_body(Some(Bytes::from(format!("data: {v}\n\n"))), false)
                .await?;
        }
        session
            .write_response_body(Some(Bytes::from_static(b"data: [DONE]\n\n")), true)
            .await
    }

    /// `GET …/models`, also a gateway's health check: an override of the path's prefix makes
    /// it fail (`fail-500` answers 500, `hang` never answers) like a chat request would.
    async fn listing(&self, session: &mut Session, path: &str) -> Result<()> {
        {
            let mut log = self.log.lock();
            log.listings += 1;
            log.listing_authorization = session
                .req_header()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        let overridden = self
            .overrides
            .lock()
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, b)| behavior_of(b));
        match overridden {
            Some(Behavior::Hang) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            Some(Behavior::Fail(status)) => {
                let err = crate::errors::envelope("server_error", None, None, "sim: failing");
                write(session, status, "application/json", err, &[]).await
            }
            _ => write(session, 200, "application/json", self.models(), &[]).await,
        }
    }

    fn models(&self) -> Bytes {
        let data: Vec<Value> = [
            "echo", "slow", "flaky", "fail-429", "fail-500", "drop", "hang",
        ]
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "freeway-sim"}))
        .collect();
        Bytes::from(json!({"object": "list", "data": data}).to_string())
    }
}

#[async_trait]
impl ProxyHttp for SimProvider {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        let media = media::Kind::of_path(&path).filter(|_| method == http::Method::POST);
        let image = images::Kind::of_path(&path).filter(|_| method == http::Method::POST);
        if let Some(kind) = videos::Kind::of(&path, &method) {
            self.videos(session, kind).await?;
        } else if let Some(kind) = image {
            self.images(session, kind).await?;
        } else if let Some(png) = images::linked(&path) {
            write(session, 200, "image/png", Bytes::from(png), &[]).await?;
        } else if let Some(kind) = media {
            self.media(session, kind).await?;
        } else if path.ends_with("/chat/completions") && method == http::Method::POST {
            self.chat(session).await?;
        } else if (path.ends_with("/messages/count_tokens") || path.contains(":countTokens"))
            && method == http::Method::POST
        {
            self.count_tokens(session).await?;
        } else if let Some(format) =
            native::Format::of_path(&path).filter(|_| method == http::Method::POST)
        {
            self.native(session, format).await?;
        } else if path == "/_sim/requests" {
            let body = {
                let log = self.log.lock();
                json!({"total": log.total, "by_prefix": log.by_prefix, "recent": log.recent,
                       "listings": log.listings, "listing_authorization": log.listing_authorization})
                    .to_string()
            };
            write(session, 200, "application/json", Bytes::from(body), &[]).await?;
        } else if path == "/_sim/last-body" {
            let body = self.log.lock().last_body.clone();
            write(session, 200, "application/octet-stream", body, &[]).await?;
        } else if path == "/_sim/override" {
            let query = session.req_header().uri.query().unwrap_or("").to_string();
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            if let (Some(prefix), Some(behavior)) = (param("prefix"), param("behavior")) {
                let mut o = self.overrides.lock();
                o.retain(|(p, _)| *p != prefix);
                o.push((prefix, behavior));
            }
            write(
                session,
                200,
                "application/json",
                Bytes::from_static(b"{}"),
                &[],
            )
            .await?;
        } else if path == "/_sim/reset" {
            *self.log.lock() = Log::default();
            write(
                session,
                200,
                "application/json",
                Bytes::from_static(b"{}"),
                &[],
            )
            .await?;
        } else if path.ends_with("/models") {
            self.listing(session, &path).await?;
        } else {
            let err =
                crate::errors::envelope("invalid_request_error", None, None, "sim: unknown path");
            write(session, 404, "application/json", err, &[]).await?;
        }
        Ok(true)
    }

    /// A deliberate drop (`drop`, `drop-early` behaviours) is the simulator doing its job,
    /// not an error to log: only other failures reach the error log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &(), error: &Error) -> bool {
        error.etype() == &ErrorType::ConnectionClosed
            && error
                .context
                .as_ref()
                .is_some_and(|c| c.as_str().starts_with("sim: dropping"))
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "the simulated provider has no upstream",
        )
    }

    async fn fail_to_proxy(
        &self,
        _session: &mut Session,
        e: &Error,
        _ctx: &mut (),
    ) -> pingora::proxy::FailToProxy {
        // Deliberate drops end here: close the connection without another byte.
        log::debug!("sim: {e}");
        pingora::proxy::FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_from_name() {
        assert_eq!(behavior_of("sim-fail-429"), Behavior::Fail(429));
        assert_eq!(behavior_of("drop-early"), Behavior::DropEarly);
        assert_eq!(behavior_of("drop"), Behavior::Drop);
        assert_eq!(behavior_of("drop-mid-body"), Behavior::DropMidBody);
        assert_eq!(behavior_of("gpt-echo"), Behavior::Echo);
    }

    #[test]
    fn echo_quotes_the_last_user_message() {
        let req = json!({"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                                      {"role": "user", "content": [{"type": "text", "text": "second"}]}]});
        assert_eq!(reply_text(&req, 10), "echo: second (10 bytes received)");
    }
}
