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

fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text(_) => "end_turn",
        Reply::ToolCall { .. } => "tool_use",
    }
}

pub fn response(reply: &Reply, turn: &Turn) -> Value {
    json!({
        "id": format!("msg_sim{}", turn.id), "type": "message", "role": "assistant", "model": turn.model,
        "content": [block(reply, turn)], "stop_reason": stop_reason(reply), "stop_sequence": null,
        "usage": {"input_tokens": turn.prompt_tokens, "output_tokens": turn.completion_tokens},
    })
}

pub fn events(reply: &Reply, turn: &Turn) -> Vec<String> {
    let event = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""));
    let mut out = vec![event(json!({"type": "message_start", "message": {
        "id": format!("msg_sim{}", turn.id), "type": "message", "role": "assistant", "content": [],
        "model": turn.model, "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": turn.prompt_tokens, "output_tokens": 1}}}))];
    match reply {
        Reply::Text(text) => {
            out.push(event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            out.push(event(json!({"type": "ping"})));
            for w in words(text) {
                out.push(event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
            }
        }
        Reply::ToolCall { name, args } => {
            out.push(event(json!({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": format!("toolu_sim{}", turn.id), "name": name, "input": {}}})));
            out.push(event(json!({"type": "ping"})));
            let args = args.to_string();
            let mid = args
                .char_indices()
                .map(|(i, _)| i)
                .nth(args.chars().count() / 2)
                .unwrap_or(0);
            for piece in ["", &args[..mid], &args[mid..]] {
                out.push(event(json!({"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
        }
    }
    out.push(event(json!({"type": "content_block_stop", "index": 0})));
    out.push(event(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
                          "usage": {"output_tokens": turn.completion_tokens}})));
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
