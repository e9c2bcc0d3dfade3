//! A cached chat completion as a stream, and a stream back into a completion.
//!
//! The cache stores one form, the `chat.completion` JSON, whichever way the answer was first
//! requested: a stream is assembled from its translated `chat.completion.chunk` events (only
//! when it ended cleanly), and a cached answer to a streaming request is replayed as chunks
//! ending with `[DONE]`, as the OpenAI SDKs parse them.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Renders a cached completion as an OpenAI chat-completion event stream.
pub fn replay(completion: &[u8], include_usage: bool) -> Result<Bytes, String> {
    let v: Value = serde_json::from_slice(completion).map_err(|e| e.to_string())?;
    let base = |choices: Value| {
        let mut chunk = json!({
            "id": v["id"], "object": "chat.completion.chunk", "created": v["created"],
            "model": v["model"], "choices": choices,
        });
        if let Some(fp) = v.get("system_fingerprint").filter(|f| !f.is_null()) {
            chunk["system_fingerprint"] = fp.clone();
        }
        chunk
    };
    let mut out = String::new();
    let mut push = |chunk: Value| {
        out.push_str("data: ");
        out.push_str(&chunk.to_string());
        out.push_str("\n\n");
    };
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    for (i, c) in choices.iter().enumerate() {
        let index = c.get("index").cloned().unwrap_or(json!(i));
        let msg = &c["message"];
        let choice = |delta: Value, finish: Value| json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        push(base(choice(
            json!({"role": msg.get("role").cloned().unwrap_or(json!("assistant")), "content": ""}),
            Value::Null,
        )));
        if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
            push(base(choice(json!({"content": text}), Value::Null)));
        }
        if let Some(r) = msg["refusal"].as_str().filter(|t| !t.is_empty()) {
            push(base(choice(json!({"refusal": r}), Value::Null)));
        }
        if let Some(calls) = msg["tool_calls"].as_array() {
            for (ti, call) in calls.iter().enumerate() {
                let delta = json!({"tool_calls": [{
                    "index": ti, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                }]});
                push(base(choice(delta, Value::Null)));
            }
        }
        let finish = c
            .get("finish_reason")
            .cloned()
            .filter(|f| !f.is_null())
            .unwrap_or(json!("stop"));
        push(base(choice(json!({}), finish)));
    }
    if include_usage {
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            let mut chunk = base(json!([]));
            chunk["usage"] = u.clone();
            push(chunk);
        }
    }
    out.push_str("data: [DONE]\n\n");
    Ok(Bytes::from(out))
}

#[derive(Default)]
struct ChoiceAcc {
    role: Option<Value>,
    content: String,
    refusal: String,
    /// Tool calls by their stream index: (id, type, name, arguments).
    tools: Vec<(Value, String, String)>,
    finish: Option<Value>,
}

/// Rebuilds the completion from the chunk events a client was sent.
#[derive(Default)]
pub struct Assembler {
    line: Vec<u8>,
    head: Map<String, Value>,
    choices: Vec<ChoiceAcc>,
    usage: Option<Value>,
    /// An error event or an unreadable chunk: never stored.
    spoiled: bool,
}

impl Assembler {
    /// Feeds bytes of the event stream (any split).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.spoiled {
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            self.spoiled = true;
            return;
        };
        if v.get("error").is_some() || v["object"] != "chat.completion.chunk" {
            self.spoiled = true;
            return;
        }
        for k in ["id", "created", "model", "system_fingerprint"] {
            if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
                self.head.entry(k).or_insert_with(|| x.clone());
            }
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if i > 128 {
                self.spoiled = true;
                return;
            }
            if self.choices.len() <= i {
                self.choices.resize_with(i + 1, ChoiceAcc::default);
            }
            let acc = &mut self.choices[i];
            let d = &c["delta"];
            if let Some(r) = d.get("role").filter(|r| !r.is_null()) {
                acc.role = Some(r.clone());
            }
            if let Some(t) = d["content"].as_str() {
                acc.content.push_str(t);
            }
            if let Some(t) = d["refusal"].as_str() {
                acc.refusal.push_str(t);
            }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let ti = call["index"].as_u64().unwrap_or(0) as usize;
                if ti > 128 {
                    self.spoiled = true;
                    return;
                }
                if acc.tools.len() <= ti {
                    acc.tools
                        .resize_with(ti + 1, || (Value::Null, String::new(), String::new()));
                }
                let slot = &mut acc.tools[ti];
                if let Some(id) = call.get("id").filter(|x| !x.is_null()) {
                    slot.0 = id.clone();
                }
                if let Some(n) = call["function"]["name"].as_str() {
                    slot.1.push_str(n);
                }
                if let Some(a) = call["function"]["arguments"].as_str() {
                    slot.2.push_str(a);
                }
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish = Some(f.clone());
            }
        }
    }

    /// The completion, if the stream was whole: every choice finished, nothing spoiled.
    pub fn finish(self) -> Option<Bytes> {
        if self.spoiled
            || self.choices.is_empty()
            || self.choices.iter().any(|c| c.finish.is_none())
        {
            return None;
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut msg = json!({
                    "role": c.role.unwrap_or(json!("assistant")),
                    "content": if c.content.is_empty() && !c.tools.is_empty() { Value::Null } else { json!(c.content) },
                    "refusal": if c.refusal.is_empty() { Value::Null } else { json!(c.refusal) },
                });
                if !c.tools.is_empty() {
                    msg["tool_calls"] = c
                        .tools
                        .into_iter()
                        .map(|(id, name, args)| {
                            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                        })
                        .collect();
                }
                json!({"index": i, "message": msg, "logprobs": null, "finish_reason": c.finish})
            })
            .collect();
        let mut v = Value::Object(self.head);
        v["object"] = json!("chat.completion");
        v["choices"] = Value::Array(choices);
        if let Some(u) = self.usage {
            v["usage"] = u;
        }
        serde_json::to_vec(&v).ok().map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there",
                "refusal": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        })
    }

    #[test]
    fn replay_is_a_done_terminated_chunk_stream_that_assembles_back() {
        let body = serde_json::to_vec(&completion()).unwrap();
        let sse = replay(&body, true).unwrap();
        let text = String::from_utf8(sse.to_vec()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains("\"object\":\"chat.completion.chunk\""));
        // Fed back in odd pieces, it is the same completion.
        let mut asm = Assembler::default();
        for piece in sse.chunks(7) {
            asm.feed(piece);
        }
        let back: Value = serde_json::from_slice(&asm.finish().unwrap()).unwrap();
        assert_eq!(back["choices"], completion()["choices"]);
        assert_eq!(back["usage"], completion()["usage"]);
        assert_eq!(back["id"], "chatcmpl-1");
    }

    #[test]
    fn a_stream_that_broke_or_carried_an_error_is_not_assembled() {
        let mut asm = Assembler::default();
        asm.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n");
        // No finish_reason yet: the stream broke off.
        let mut broken = Assembler::default();
        broken.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n");
        assert!(broken.finish().is_none());
        asm.feed(b"data: {\"error\":{\"message\":\"x\"}}\n\n");
        assert!(asm.finish().is_none());
    }
}
