//! Whole answers: a chat completion → a Messages `message`; an Anthropic provider's
//! `message` → the same bytes with the gateway's `model`.

use super::{span_of, splice_model, Meta};
use crate::providers::Usage;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Anthropic's `stop_reason` (and `stop_sequence`) for a chat `finish_reason`. `matched`:
/// the stop string a provider says it stopped at, if it says.
pub fn stop_reason(
    finish: Option<&str>,
    matched: Option<&str>,
    meta: &Meta,
) -> (&'static str, Option<String>) {
    match finish {
        Some("length") => ("max_tokens", None),
        Some("tool_calls") | Some("function_call") => ("tool_use", None),
        Some("content_filter") => ("refusal", None),
        _ => match matched.filter(|m| meta.stop_sequences.iter().any(|s| s == m)) {
            Some(s) => ("stop_sequence", Some(s.to_string())),
            None => ("end_turn", None),
        },
    }
}

/// The stop string a chat choice names, where the provider says (vLLM's `stop_reason`,
/// SGLang's `matched_stop`).
pub fn matched_stop(choice: &Value) -> Option<&str> {
    choice["stop_reason"]
        .as_str()
        .or_else(|| choice["matched_stop"].as_str())
}

/// A tool call's arguments as the `input` object (`{}` when they are not a JSON object).
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Reasoning text a provider put in a chat message or delta.
pub fn reasoning_of(v: &Value) -> Option<&str> {
    v["reasoning_content"]
        .as_str()
        .or_else(|| v["reasoning"].as_str())
        .filter(|r| !r.is_empty())
}

pub fn usage_json(u: Usage) -> Value {
    json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens})
}

/// A chat completion (OpenAI JSON, after the provider's translator) → a `message`.
pub fn from_chat_completion(
    meta: &Meta,
    chat: &[u8],
    usage: Option<Usage>,
) -> Result<Bytes, String> {
    let v: Value = serde_json::from_slice(chat).map_err(|e| format!("bad chat completion: {e}"))?;
    let choice = &v["choices"][0];
    if !choice.is_object() {
        return Err("the chat completion has no choice".into());
    }
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(r) = reasoning_of(message) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        content.push(json!({
            "type": "tool_use",
            "id": call["id"].as_str().map_or_else(tool_id, str::to_string),
            "name": call["function"]["name"].as_str().unwrap_or(""),
            "input": tool_input(call["function"]["arguments"].as_str().unwrap_or("{}")),
        }));
    }
    if content.is_empty() {
        content.push(json!({"type": "text", "text": ""}));
    }
    let (reason, sequence) =
        stop_reason(choice["finish_reason"].as_str(), matched_stop(choice), meta);
    let usage = usage.unwrap_or_else(|| Usage {
        prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    });
    let m = json!({
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": v["model"].as_str().unwrap_or(""),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_json(usage),
    });
    Ok(Bytes::from(m.to_string()))
}

/// A fresh `toolu_…` id, for a provider that gave a call none.
pub fn tool_id() -> String {
    format!("toolu_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// Anthropic's usage object (input counted with cache reads and writes, as the chat path
/// counts it; output as reported).
#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub struct NativeUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl NativeUsage {
    pub fn input(&self) -> Option<u64> {
        let cached = self.cache_creation_input_tokens.unwrap_or(0)
            + self.cache_read_input_tokens.unwrap_or(0);
        self.input_tokens.map(|i| i + cached)
    }
}

#[derive(Deserialize)]
struct NativeMessage<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

/// An Anthropic `message` answer: its bytes with `model` set to `model`, and its usage.
pub fn native(body: &[u8], model: &str) -> Result<(Bytes, Option<Usage>), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the answer is not UTF-8: {e}"))?;
    let m: NativeMessage = serde_json::from_str(text)
        .map_err(|e| format!("the provider's answer is not an Anthropic message: {e}"))?;
    if m.kind != Some("message") {
        return Err(format!(
            "the provider's answer is a `{}`, not an Anthropic message",
            m.kind.unwrap_or("?")
        ));
    }
    let usage = m.usage.and_then(|u| {
        Some(Usage {
            prompt_tokens: u.input()?,
            completion_tokens: u.output_tokens.unwrap_or(0),
        })
    });
    let span = m.model.map(|r| span_of(body, r));
    let out = match span {
        Some(s) => splice_model(body, Some(&s), model),
        None => body.to_vec(),
    };
    Ok((Bytes::from(out), usage))
}
