//! Where the text is in the bodies guardrails read. A body that is not the expected JSON
//! is left alone: the endpoint's own parser answers the client's mistake.

use super::{Applied, Blocked, Side};
use serde_json::Value;

fn reencode(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `content` as chat has it: a string, or parts with `text`.
fn chat_content(
    g: &Applied,
    side: Side,
    mask: u64,
    content: Option<&mut Value>,
) -> Result<bool, Blocked> {
    let mut changed = false;
    match content {
        Some(Value::String(s)) => changed |= g.text(side, mask, s)?,
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(Value::String(s)) = p.get_mut("text") {
                    changed |= g.text(side, mask, s)?;
                }
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// Every string inside `v` (tool inputs given as JSON objects).
fn strings(g: &Applied, side: Side, mask: u64, v: &mut Value) -> Result<bool, Blocked> {
    let mut changed = false;
    match v {
        Value::String(s) => changed |= g.text(side, mask, s)?,
        Value::Array(a) => {
            for x in a {
                changed |= strings(g, side, mask, x)?;
            }
        }
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                changed |= strings(g, side, mask, x)?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

pub(super) fn chat_prompt(g: &mut Applied, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    g.scope_model(v.get("model").and_then(Value::as_str));
    if g.prompt == 0 {
        return Ok(None);
    }
    let mut changed = false;
    if let Some(msgs) = v.get_mut("messages").and_then(Value::as_array_mut) {
        for m in msgs {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            let mask = g.role_mask(role);
            if mask != 0 {
                changed |= chat_content(g, Side::Prompt, mask, m.get_mut("content"))?;
            }
        }
    }
    Ok(changed.then(|| reencode(&v)))
}

pub(super) fn messages_prompt(g: &mut Applied, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    g.scope_model(v.get("model").and_then(Value::as_str));
    if g.prompt == 0 {
        return Ok(None);
    }
    let mut changed = false;
    let system = g.role_mask("system");
    if system != 0 {
        changed |= chat_content(g, Side::Prompt, system, v.get_mut("system"))?;
    }
    let tool = g.role_mask("tool");
    if let Some(msgs) = v.get_mut("messages").and_then(Value::as_array_mut) {
        for m in msgs {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            let mask = g.role_mask(role);
            match m.get_mut("content") {
                Some(Value::String(s)) if mask != 0 => changed |= g.text(Side::Prompt, mask, s)?,
                Some(Value::Array(blocks)) => {
                    for b in blocks {
                        let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
                        match kind {
                            "text" if mask != 0 => {
                                if let Some(Value::String(s)) = b.get_mut("text") {
                                    changed |= g.text(Side::Prompt, mask, s)?;
                                }
                            }
                            "tool_result" => {
                                changed |=
                                    chat_content(g, Side::Prompt, tool, b.get_mut("content"))?;
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(changed.then(|| reencode(&v)))
}

pub(super) fn image_prompt(g: &mut Applied, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    g.scope_model(v.get("model").and_then(Value::as_str));
    let mask = g.role_mask("user");
    if g.prompt == 0 || mask == 0 {
        return Ok(None);
    }
    let mut changed = false;
    for field in ["prompt", "negative_prompt"] {
        if let Some(Value::String(s)) = v.get_mut(field) {
            changed |= g.text(Side::Prompt, mask, s)?;
        }
    }
    Ok(changed.then(|| reencode(&v)))
}

pub(super) fn chat_answer(g: &Applied, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let mask = g.response;
    let mut changed = false;
    if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            let Some(msg) = c.get_mut("message") else {
                continue;
            };
            changed |= chat_content(g, Side::Response, mask, msg.get_mut("content"))?;
            if let Some(calls) = msg.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                        changed |= g.text(Side::Response, mask, args)?;
                    }
                }
            }
        }
    }
    Ok(changed.then(|| reencode(&v)))
}

pub(super) fn messages_answer(g: &Applied, body: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let mask = g.response;
    let mut changed = false;
    if let Some(blocks) = v.get_mut("content").and_then(Value::as_array_mut) {
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(Value::String(s)) = b.get_mut("text") {
                        changed |= g.text(Side::Response, mask, s)?;
                    }
                }
                Some("tool_use") => {
                    if let Some(input) = b.get_mut("input") {
                        changed |= strings(g, Side::Response, mask, input)?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(changed.then(|| reencode(&v)))
}
