//! Simulated Gemini (`generateContent`, `streamGenerateContent?alt=sse`).

use super::native::{words, Conversation, Reply, Turn};
use serde_json::{json, Value};

pub fn conversation(req: &Value) -> Conversation {
    let mut c = Conversation::default();
    let contents = req["contents"].as_array().cloned().unwrap_or_default();
    if let Some(last) = contents.last() {
        let responses: Vec<String> = last["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("functionResponse"))
            .map(|r| r["response"].to_string())
            .collect();
        if !responses.is_empty() {
            c.tool_result = Some(responses.join(" "));
        }
    }
    if let Some(user) = contents.iter().rev().find(|t| {
        t["role"] == "user"
            && t["parts"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p.get("text").is_some()))
    }) {
        let parts = user["parts"].as_array().cloned().unwrap_or_default();
        c.last_user = parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        c.images = parts
            .iter()
            .filter(|p| p.get("inlineData").is_some() || p.get("fileData").is_some())
            .count();
    }
    for t in req["tools"].as_array().into_iter().flatten() {
        for d in t["functionDeclarations"].as_array().into_iter().flatten() {
            if let Some(name) = d["name"].as_str() {
                c.tools
                    .push((name.to_string(), d.get("parameters").cloned()));
            }
        }
    }
    c.json = req["generationConfig"]["responseMimeType"] == "application/json";
    c.json_schema = req["generationConfig"].get("responseSchema").cloned();
    let calling = &req["toolConfig"]["functionCallingConfig"];
    if calling["mode"] == "ANY" {
        c.forced_tool = calling["allowedFunctionNames"][0]
            .as_str()
            .map(str::to_string);
    }
    c
}

fn usage(turn: &Turn, done: bool) -> Value {
    if done {
        json!({"promptTokenCount": turn.prompt_tokens, "candidatesTokenCount": turn.completion_tokens,
               "totalTokenCount": turn.prompt_tokens + turn.completion_tokens})
    } else {
        json!({"promptTokenCount": turn.prompt_tokens, "totalTokenCount": turn.prompt_tokens})
    }
}

fn parts(reply: &Reply) -> Value {
    match reply {
        Reply::Text(t) => json!([{ "text": t }]),
        Reply::ToolCall { name, args } => json!([{"functionCall": {"name": name, "args": args}}]),
    }
}

/// The reply of candidate `i` (`candidateCount` > 1): candidates after the first say which
/// they are.
fn nth(reply: &Reply, i: usize) -> Reply {
    match reply {
        Reply::Text(t) if i > 0 && !t.starts_with('{') => {
            Reply::Text(format!("{t} (candidate {i})"))
        }
        r => r.clone(),
    }
}

pub fn response(reply: &Reply, turn: &Turn) -> Value {
    let candidates: Vec<Value> = (0..turn.choices)
        .map(|i| json!({"content": {"parts": parts(&nth(reply, i)), "role": "model"}, "finishReason": "STOP", "index": i}))
        .collect();
    json!({
        "candidates": candidates,
        "usageMetadata": usage(turn, true),
        "modelVersion": turn.model,
        "responseId": turn.id,
    })
}

pub fn events(reply: &Reply, turn: &Turn) -> Vec<String> {
    let event = |v: Value| format!("data: {v}\r\n\r\n");
    match reply {
        Reply::ToolCall { .. } => vec![event(response(reply, turn))],
        Reply::Text(_) => {
            // Every event carries the next word of every candidate; a candidate that has
            // run out of words sends its finish reason once.
            let texts: Vec<String> = (0..turn.choices)
                .map(|i| match nth(reply, i) {
                    Reply::Text(t) => t,
                    Reply::ToolCall { .. } => String::new(),
                })
                .collect();
            let words: Vec<Vec<&str>> = texts.iter().map(|t| words(t)).collect();
            let rounds = words.iter().map(Vec::len).max().unwrap_or(0);
            (0..rounds)
                .map(|r| {
                    let cands: Vec<Value> = words
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| r < w.len())
                        .map(|(i, w)| {
                            let mut cand = json!({"content": {"parts": [{"text": w[r]}], "role": "model"}, "index": i});
                            if r + 1 == w.len() {
                                cand["finishReason"] = json!("STOP");
                            }
                            cand
                        })
                        .collect();
                    let last = r + 1 == rounds;
                    event(
                        json!({"candidates": cands, "usageMetadata": usage(turn, last),
                                 "modelVersion": turn.model, "responseId": turn.id}),
                    )
                })
                .collect()
        }
    }
}

pub fn error(status: u16, msg: &str) -> Value {
    let s = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": msg, "status": s}})
}
