//! What the simulated OpenAI-format models (`…/chat/completions`, the demo's `auto` and
//! `echo`) read from a request: tools, a forced tool, tool results and JSON mode, so they
//! call tools and answer JSON like the native simulators.

use super::native::{text_and_images, Conversation};
use serde_json::Value;

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
    c.forced_tool = req["tool_choice"]["function"]["name"]
        .as_str()
        .map(str::to_string);
    let rf = &req["response_format"];
    c.json = matches!(rf["type"].as_str(), Some("json_object" | "json_schema"));
    c.json_schema = rf["json_schema"]
        .get("schema")
        .filter(|s| s.is_object())
        .cloned();
    c
}

/// Whether the request asks for more than an echo (tools, a tool result, JSON).
pub fn needs_reply(c: &Conversation) -> bool {
    c.json || c.tool_result.is_some() || !c.tools.is_empty() || c.forced_tool.is_some()
}
