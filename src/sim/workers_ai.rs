//! Simulated Cloudflare Workers AI (`POST …/ai/run/{model}`, JSON and SSE).

use super::native::{text_and_images, words, Conversation, Reply, Turn};
use serde_json::{json, Value};

pub fn conversation(req: &Value) -> Conversation {
    let mut c = Conversation::default();
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    if let Some(last) = messages.last().filter(|m| m["role"] == "tool") {
        c.tool_result = Some(text_and_images(&last["content"]).0);
    }
    if let Some(user) = messages.iter().rev().find(|m| m["role"] == "user") {
        (c.last_user, c.images) = text_and_images(&user["content"]);
    }
    for t in req["tools"].as_array().into_iter().flatten() {
        let f = t.get("function").unwrap_or(t);
        if let Some(name) = f["name"].as_str() {
            c.tools
                .push((name.to_string(), f.get("parameters").cloned()));
        }
    }
    c.json = matches!(
        req["response_format"]["type"].as_str(),
        Some("json_object" | "json_schema")
    );
    // Workers AI's JSON mode: `json_schema` is the schema itself.
    c.json_schema = req["response_format"]
        .get("json_schema")
        .filter(|s| s.is_object())
        .cloned();
    c
}

fn usage(turn: &Turn) -> Value {
    json!({"prompt_tokens": turn.prompt_tokens, "completion_tokens": turn.completion_tokens,
           "total_tokens": turn.prompt_tokens + turn.completion_tokens})
}

pub fn response(reply: &Reply, turn: &Turn) -> Value {
    let result = match reply {
        Reply::Text(t) => json!({"response": t, "tool_calls": [], "usage": usage(turn)}),
        Reply::ToolCall { name, args } => {
            json!({"response": null, "tool_calls": [{"name": name, "arguments": args}], "usage": usage(turn)})
        }
    };
    json!({"result": result, "success": true, "errors": [], "messages": []})
}

pub fn events(reply: &Reply, turn: &Turn) -> Vec<String> {
    let event = |v: Value| format!("data: {v}\n\n");
    let mut out: Vec<String> = match reply {
        Reply::Text(text) => words(text)
            .iter()
            .map(|w| event(json!({"response": w, "p": "abcdefghijklmnopqrstuvwxyz0123456789"})))
            .collect(),
        Reply::ToolCall { name, args } => {
            vec![event(
                json!({"response": "", "tool_calls": [{"name": name, "arguments": args}]}),
            )]
        }
    };
    out.push(event(json!({"response": "", "usage": usage(turn)})));
    out.push("data: [DONE]\n\n".to_string());
    out
}

pub fn error(_status: u16, msg: &str) -> Value {
    json!({"result": null, "success": false, "errors": [{"code": 3040, "message": msg}], "messages": []})
}
