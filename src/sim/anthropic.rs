//! Simulated Anthropic Messages API (`POST /messages`, JSON and SSE).

use super::native::{text_and_images, words, Conversation, Reply, Turn};
use serde_json::{json, Value};

pub fn conversation(req: &Value) -> Conversation {
    let mut c = Conversation::default();
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    if let Some(last) = messages.last() {
        let results: Vec<String> = last["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| match &b["content"] {
                Value::String(s) => s.clone(),
                other => text_and_images(other).0,
            })
            .collect();
        if !results.is_empty() {
            c.tool_result = Some(results.join(" "));
        }
    }
    if let Some(user) = messages.iter().rev().find(|m| m["role"] == "user") {
        (c.last_user, c.images) = text_and_images(&user["content"]);
    }
    for t in req["tools"].as_array().into_iter().flatten() {
        if let Some(name) = t["name"].as_str() {
            c.tools
                .push((name.to_string(), t.get("input_schema").cloned()));
        }
    }
    // A forced tool (`tool_choice: {"type": "tool"}`, freeway's JSON mode) is called.
    if req["tool_choice"]["type"] == "tool" {
        c.forced_tool = req["tool_choice"]["name"].as_str().map(str::to_string);
    }
    c
}

fn block(reply: &Reply, turn: &Turn) -> Value {
    match reply {
        Reply::Text(t) => json!({"type": "text", "text": t}),
        Reply::ToolCall { name, args } => {
            json!({"type": "tool_use", "id": format!("toolu_sim{}", turn.id), "name": name, "input": args})
        }
    }
}

/// What the simulated model answers to one request: its thinking (when `thinking` is
/// enabled), its reply cut at a stop sequence or after `max_tokens` words, and why it stopped.
struct Answer {
    thinking: Option<String>,
    reply: Reply,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    output_tokens: u64,
}

fn answer(reply: &Reply, turn: &Turn, req: &Value) -> Answer {
    let thinking = (req["thinking"]["type"] == "enabled")
        .then(|| format!("The user wrote: {}", conversation(req).last_user));
    match reply {
        Reply::Text(t) => {
            let (text, finish, matched) = super::limit_text(req, t.clone());
            let stop_reason = match (finish, &matched) {
                (_, Some(_)) => "stop_sequence",
                ("length", _) => "max_tokens",
                _ => "end_turn",
            };
            let output_tokens = if text.len() == t.len() {
                turn.completion_tokens
            } else {
                text.split_whitespace().count() as u64
            };
            Answer {
                thinking,
                reply: Reply::Text(text),
                stop_reason,
                stop_sequence: matched,
                output_tokens,
            }
        }
        Reply::ToolCall { .. } => Answer {
            thinking,
            reply: reply.clone(),
            stop_reason: "tool_use",
            stop_sequence: None,
            output_tokens: turn.completion_tokens,
        },
    }
}

/// The signature of a simulated thinking block (opaque to clients, as Anthropic's are).
fn signature(thinking: &str) -> String {
    use sha2::Digest;
    format!(
        "sim-sig-{}",
        hex::encode(&sha2::Sha256::digest(thinking.as_bytes())[..12])
    )
}

pub fn response(reply: &Reply, turn: &Turn, req: &Value) -> Value {
    let a = answer(reply, turn, req);
    let mut content = Vec::new();
    if let Some(t) = &a.thinking {
        content.push(json!({"type": "thinking", "thinking": t, "signature": signature(t)}));
    }
    content.push(block(&a.reply, turn));
    json!({
        "id": format!("msg_sim{}", turn.id), "type": "message", "role": "assistant", "model": turn.model,
        "content": content, "stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence,
        "usage": {"input_tokens": turn.prompt_tokens, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": a.output_tokens},
    })
}

pub fn events(reply: &Reply, turn: &Turn, req: &Value) -> Vec<String> {
    let a = answer(reply, turn, req);
    let event = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""));
    let mut out = vec![event(json!({"type": "message_start", "message": {
        "id": format!("msg_sim{}", turn.id), "type": "message", "role": "assistant", "content": [],
        "model": turn.model, "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": turn.prompt_tokens, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 1}}}))];
    let mut index = 0;
    if let Some(t) = &a.thinking {
        out.push(event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
        for w in words(t) {
            out.push(event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": w}})));
        }
        out.push(event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": signature(t)}})));
        out.push(event(json!({"type": "content_block_stop", "index": 0})));
        index = 1;
    }
    match &a.reply {
        Reply::Text(text) => {
            out.push(event(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
            out.push(event(json!({"type": "ping"})));
            for w in words(text) {
                out.push(event(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": w}})));
            }
        }
        Reply::ToolCall { name, args } => {
            out.push(event(json!({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": format!("toolu_sim{}", turn.id), "name": name, "input": {}}})));
            out.push(event(json!({"type": "ping"})));
            let args = args.to_string();
            let mid = args
                .char_indices()
                .map(|(i, _)| i)
                .nth(args.chars().count() / 2)
                .unwrap_or(0);
            for piece in ["", &args[..mid], &args[mid..]] {
                out.push(event(json!({"type": "content_block_delta", "index": index,
                                      "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
        }
    }
    out.push(event(json!({"type": "content_block_stop", "index": index})));
    out.push(event(json!({"type": "message_delta", "delta": {"stop_reason": a.stop_reason, "stop_sequence": a.stop_sequence},
                          "usage": {"output_tokens": a.output_tokens}})));
    out.push(event(json!({"type": "message_stop"})));
    out
}

pub fn error(status: u16, msg: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": msg}})
}
