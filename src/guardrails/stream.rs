//! The answer guard of a streamed chat completion: a [`StreamTranslator`] around the
//! provider's translator (inside the Responses or Messages reshaper, which therefore see
//! guarded chunks). Only `delta.content` is read: each choice's text goes through its own
//! [`TextStream`], and a chunk carries what was released; a chunk left with nothing is
//! dropped. What is held back goes out in a chunk of its own before the choice's tool calls
//! or finish reason, before the usage chunk and before `[DONE]`. Everything else — framing,
//! role, tool-call deltas, usage, errors — passes unchanged. On a block, the text before
//! the match goes out and the stream ends with [`StreamError::Blocked`] (the relay writes
//! the error event); nothing after it is ever released.

use super::{Applied, Side, TextStream};
use crate::providers::{StreamError, StreamTranslator, Usage};
use serde_json::{json, Value};
use std::sync::Arc;

fn write_event(out: &mut Vec<u8>, name: &str, v: &Value) {
    crate::sse::write_event(out, name, v.to_string().as_bytes());
}

pub struct GuardStream {
    inner: Box<dyn StreamTranslator>,
    /// The inner translator writes Anthropic events (native Messages streams), not chat
    /// chunks: `text_delta`s are guarded, held text goes out before `content_block_stop`.
    anthropic: bool,
    applied: Arc<Applied>,
    /// The inner translator's output, not yet guarded.
    scratch: Vec<u8>,
    /// One guard per choice index.
    texts: Vec<Option<TextStream>>,
    /// `id`, `created`, `model` of the stream's chunks, for the chunks of held text.
    head: Option<(Value, Value, Value)>,
    blocked: Option<String>,
}

impl GuardStream {
    pub fn new(inner: Box<dyn StreamTranslator>, applied: Arc<Applied>) -> GuardStream {
        GuardStream {
            inner,
            anthropic: false,
            applied,
            scratch: Vec::new(),
            texts: Vec::new(),
            head: None,
            blocked: None,
        }
    }

    /// The guard of a native Anthropic Messages stream (`messages::NativeStream`).
    pub fn anthropic(inner: Box<dyn StreamTranslator>, applied: Arc<Applied>) -> GuardStream {
        GuardStream {
            anthropic: true,
            ..GuardStream::new(inner, applied)
        }
    }

    /// One Anthropic event: `event: <type>\ndata: <json>\n\n`.
    fn anthropic_event(&mut self, event: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let data = event
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(b"data: "));
        let Some(Ok(mut v)) = data.map(serde_json::from_slice::<Value>) else {
            out.extend_from_slice(event);
            return Ok(());
        };
        let index = v["index"].as_u64().unwrap_or(0) as usize;
        match v["type"].as_str() {
            Some("content_block_delta") if v["delta"]["type"] == "text_delta" => {
                let text = v["delta"]["text"].as_str().unwrap_or("").to_owned();
                let mut released = String::new();
                let r = self.text(index).push(&text, &mut released);
                if !released.is_empty() {
                    if released == text {
                        out.extend_from_slice(event);
                    } else {
                        v["delta"]["text"] = Value::String(released);
                        write_event(out, "content_block_delta", &v);
                    }
                }
                r.map_err(|b| self.blocked_error(b))
            }
            Some("content_block_stop") => {
                let mut released = String::new();
                let r = match self.texts.get_mut(index) {
                    Some(Some(t)) => t.finish(&mut released),
                    _ => Ok(()),
                };
                if !released.is_empty() {
                    let d = json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": released}});
                    write_event(out, "content_block_delta", &d);
                }
                r.map_err(|b| self.blocked_error(b))?;
                out.extend_from_slice(event);
                Ok(())
            }
            _ => {
                out.extend_from_slice(event);
                Ok(())
            }
        }
    }

    fn text(&mut self, i: usize) -> &mut TextStream {
        if self.texts.len() <= i {
            self.texts.resize_with(i + 1, || None);
        }
        let applied = &self.applied;
        self.texts[i].get_or_insert_with(|| applied.answer_stream())
    }

    /// The guarded events of `scratch`, appended to `out`.
    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let data = std::mem::take(&mut self.scratch);
        let mut rest = &data[..];
        let mut result = Ok(());
        while !rest.is_empty() && result.is_ok() {
            let end = memchr::memmem::find(rest, b"\n\n").map_or(rest.len(), |i| i + 2);
            let (event, tail) = rest.split_at(end);
            rest = tail;
            result = self.event(event, out);
        }
        let mut data = data;
        data.clear();
        self.scratch = data;
        for t in self.texts.iter().flatten() {
            self.applied.hit(Side::Response, t.hits());
        }
        result
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.anthropic {
            return self.anthropic_event(event, out);
        }
        let payload = event
            .strip_prefix(b"data: ")
            .map(|p| p.strip_suffix(b"\n\n").unwrap_or(p));
        let Some(payload) = payload else {
            out.extend_from_slice(event);
            return Ok(());
        };
        if payload == b"[DONE]" {
            self.flush_all(out)?;
            out.extend_from_slice(event);
            return Ok(());
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(payload) else {
            out.extend_from_slice(event);
            return Ok(());
        };
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            out.extend_from_slice(event); // an error event
            return Ok(());
        };
        if self.head.is_none() {
            self.head = Some((v["id"].clone(), v["created"].clone(), v["model"].clone()));
        }
        if choices.is_empty() {
            self.flush_all(out)?; // the usage chunk
            out.extend_from_slice(event);
            return Ok(());
        }
        let mut changed = false;
        let mut keep = false;
        for k in 0..choices.len() {
            let c = &v["choices"][k];
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            let delta = &c["delta"];
            // Held text goes out with the choice's tool calls or finish, before them.
            let closing = !c["finish_reason"].is_null() || delta.get("tool_calls").is_some();
            keep |= !c["finish_reason"].is_null()
                || delta
                    .as_object()
                    .is_some_and(|d| d.keys().any(|k| k != "content"));
            let text = delta.get("content").and_then(Value::as_str).unwrap_or("");
            if text.is_empty() && !closing {
                continue;
            }
            let text = text.to_owned();
            let mut released = String::new();
            let mut r = Ok(());
            if !text.is_empty() {
                r = self.text(i).push(&text, &mut released);
            }
            if closing && r.is_ok() {
                if let Some(Some(t)) = self.texts.get_mut(i) {
                    r = t.finish(&mut released);
                }
            }
            if released != text {
                v["choices"][k]["delta"]["content"] = Value::String(released.clone());
                changed = true;
            }
            keep |= !released.is_empty();
            if let Err(b) = r {
                return self.block(b, &v, keep, event, out);
            }
        }
        if keep {
            self.write(&v, changed, event, out);
        }
        Ok(())
    }

    fn write(&self, v: &Value, changed: bool, raw: &[u8], out: &mut Vec<u8>) {
        if changed {
            crate::sse::write_data(out, v.to_string().as_bytes());
        } else {
            out.extend_from_slice(raw);
        }
    }

    /// A chunk of released text for choice `i`.
    fn chunk(&self, i: usize, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        let (id, created, model) = self.head.clone().unwrap_or_default();
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": i, "delta": {"content": text}, "finish_reason": null}],
        });
        crate::sse::write_data(out, c.to_string().as_bytes());
    }

    fn flush(&mut self, i: usize, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let Some(Some(t)) = self.texts.get_mut(i) else {
            return Ok(());
        };
        let mut released = String::new();
        let r = t.finish(&mut released);
        self.applied.hit(Side::Response, t.hits());
        self.chunk(i, &released, out);
        r.map_err(|b| self.blocked_error(b))
    }

    fn flush_all(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        for i in 0..self.texts.len() {
            self.flush(i, out)?;
        }
        Ok(())
    }

    fn blocked_error(&mut self, b: super::Blocked) -> StreamError {
        let name = self.applied.g.rules[b.0].name.clone();
        self.blocked = Some(name.clone());
        self.texts.clear();
        StreamError::Blocked(name)
    }

    fn block(
        &mut self,
        b: super::Blocked,
        v: &Value,
        has_text: bool,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        for t in self.texts.iter().flatten() {
            self.applied.hit(Side::Response, t.hits());
        }
        if has_text {
            // Only the released text of this chunk: its other choices' fields are dropped.
            self.write(v, true, raw, out);
        }
        Err(self.blocked_error(b))
    }
}

impl StreamTranslator for GuardStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let Some(name) = &self.blocked {
            return Err(StreamError::Blocked(name.clone()));
        }
        let r = self.inner.feed(chunk, &mut self.scratch);
        self.drain(out)?;
        r
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let Some(name) = &self.blocked {
            return Err(StreamError::Blocked(name.clone()));
        }
        let r = self.inner.finish(&mut self.scratch);
        self.drain(out)?;
        if r.is_ok() && !self.anthropic {
            // A stream without `[DONE]`: what is held still goes out.
            self.flush_all(out)?;
        }
        for t in self.texts.iter().flatten() {
            self.applied.hit(Side::Response, t.hits());
        }
        r
    }

    fn started(&self) -> bool {
        self.inner.started()
    }

    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }

    fn error_event(&mut self, err: &crate::errors::ApiError, out: &mut Vec<u8>) {
        self.inner.error_event(err, out)
    }
}
