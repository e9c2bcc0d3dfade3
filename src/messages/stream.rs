//! Streams in Anthropic's events.
//!
//! - [`MessagesStream`]: a chat stream (after the provider's own translator) → `message_start`,
//!   `content_block_start` / `content_block_delta` (`text_delta`, `thinking_delta`,
//!   `input_json_delta`) / `content_block_stop` with block indexes in order,
//!   `message_delta` (`stop_reason`, usage), `message_stop`.
//! - [`NativeStream`]: an Anthropic provider's events, passed on one by one with their
//!   `data` bytes unchanged except `model` in `message_start`; usage read on the way.
//!
//! Both end a stream failing mid-way with `event: error` in Anthropic's envelope, never a
//! `message_stop`. Output depends only on the bytes fed, never on how they were split.

use super::answer::{self, NativeUsage};
use super::{span_of, splice_model, Meta};
use crate::errors::{anthropic_envelope, anthropic_type, ApiError};
use crate::providers::chat::{Reshape, Reshaped};
use crate::providers::{StreamError, StreamTranslator, Usage};
use crate::sse::{write_event, SseEvent, SseReader};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;

/// The closing `event: error` for a stream failing mid-way.
fn error_event(err: &ApiError, out: &mut Vec<u8>) {
    let body = anthropic_envelope(anthropic_type(err.status, err.code), &err.message);
    write_event(out, "error", &body);
}

// ---------------------------------------------------------------------------------------
// Chat stream → Anthropic events
// ---------------------------------------------------------------------------------------

/// The block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(usize),
    Thinking(usize),
    /// A tool call: its chat `index`, its block index.
    Tool(u64, usize),
}

impl Open {
    fn index(self) -> usize {
        match self {
            Open::Text(i) | Open::Thinking(i) | Open::Tool(_, i) => i,
        }
    }
}

/// Turns a chat stream into Anthropic's events.
pub struct MessagesStream {
    meta: Arc<Meta>,
    model: String,
    /// `message_start` was written.
    begun: bool,
    open: Option<Open>,
    /// Blocks started so far (the next block's index).
    blocks: usize,
    /// Tool calls by chat index → block index.
    tools: Vec<(u64, usize)>,
    finish: Option<String>,
    matched: Option<String>,
}

impl MessagesStream {
    pub fn new(
        inner: Box<dyn StreamTranslator>,
        meta: Arc<Meta>,
        model: &str,
    ) -> Reshaped<MessagesStream> {
        Reshaped::new(
            inner,
            MessagesStream {
                meta,
                model: model.to_string(),
                begun: false,
                open: None,
                blocks: 0,
                tools: Vec::new(),
                finish: None,
                matched: None,
            },
        )
    }

    fn emit(out: &mut Vec<u8>, event: Value) {
        let name = event["type"].as_str().unwrap_or("").to_string();
        write_event(out, &name, event.to_string().as_bytes());
    }

    fn begin(&mut self, out: &mut Vec<u8>) {
        if !self.begun {
            self.begun = true;
            Self::emit(
                out,
                json!({"type": "message_start", "message": {
                    "id": self.meta.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            );
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(open) = self.open.take() {
            Self::emit(
                out,
                json!({"type": "content_block_stop", "index": open.index()}),
            );
        }
    }

    /// Opens a new block (closing the open one): its index.
    fn start(&mut self, out: &mut Vec<u8>, block: Value, open: impl FnOnce(usize) -> Open) {
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        Self::emit(
            out,
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some(open(index));
    }

    fn delta(out: &mut Vec<u8>, index: usize, delta: Value) {
        Self::emit(
            out,
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }
}

impl Reshape for MessagesStream {
    fn chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if data == b"[DONE]" {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad chat chunk: {e}")))?;
        if let Some(m) = v["model"].as_str().filter(|m| !m.is_empty()) {
            if !self.begun {
                self.model = m.to_string();
            }
        }
        self.begin(out);
        let Some(choice) = v["choices"].get(0) else {
            return Ok(());
        };
        let d = &choice["delta"];
        if let Some(r) = answer::reasoning_of(d) {
            if !matches!(self.open, Some(Open::Thinking(_))) {
                self.start(
                    out,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    Open::Thinking,
                );
            }
            let i = self.open.map_or(0, Open::index);
            Self::delta(out, i, json!({"type": "thinking_delta", "thinking": r}));
        }
        if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some(Open::Text(_))) {
                self.start(out, json!({"type": "text", "text": ""}), Open::Text);
            }
            let i = self.open.map_or(0, Open::index);
            Self::delta(out, i, json!({"type": "text_delta", "text": t}));
        }
        for call in d["tool_calls"].as_array().into_iter().flatten() {
            let chat_index = call["index"].as_u64().unwrap_or(0);
            let block = match self.tools.iter().find(|(c, _)| *c == chat_index) {
                Some((_, b)) => *b,
                None => {
                    let id = call["id"]
                        .as_str()
                        .map_or_else(answer::tool_id, str::to_string);
                    let name = call["function"]["name"].as_str().unwrap_or("");
                    self.start(
                        out,
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        |i| Open::Tool(chat_index, i),
                    );
                    let b = self.blocks - 1;
                    self.tools.push((chat_index, b));
                    b
                }
            };
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                Self::delta(
                    out,
                    block,
                    json!({"type": "input_json_delta", "partial_json": args}),
                );
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
            if let Some(m) = answer::matched_stop(choice) {
                self.matched = Some(m.to_string());
            }
        }
        Ok(())
    }

    fn end(&mut self, usage: Option<Usage>, out: &mut Vec<u8>) {
        self.begin(out);
        self.close(out);
        let (reason, sequence) =
            answer::stop_reason(self.finish.as_deref(), self.matched.as_deref(), &self.meta);
        let usage = usage.unwrap_or_default();
        Self::emit(
            out,
            json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                   "usage": answer::usage_json(usage)}),
        );
        Self::emit(out, json!({"type": "message_stop"}));
    }

    fn fail(&mut self, err: &ApiError, _usage: Option<Usage>, out: &mut Vec<u8>) {
        error_event(err, out);
    }
}

// ---------------------------------------------------------------------------------------
// Anthropic events, passed on
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    usage: Option<NativeUsage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

/// An Anthropic provider's stream, relayed event by event.
pub struct NativeStream {
    reader: SseReader,
    scratch: SseEvent,
    model: String,
    started: bool,
    done: bool,
    input: Option<u64>,
    output: Option<u64>,
}

impl NativeStream {
    /// `model`: what the `model` of `message_start` becomes.
    pub fn new(model: &str) -> NativeStream {
        NativeStream {
            reader: SseReader::new(),
            scratch: SseEvent::default(),
            model: model.to_string(),
            started: false,
            done: false,
            input: None,
            output: None,
        }
    }

    fn take_usage(&mut self, u: &NativeUsage) {
        if let Some(i) = u.input() {
            self.input = Some(i);
        }
        if let Some(o) = u.output_tokens {
            self.output = Some(o);
        }
    }

    fn event(
        &mut self,
        name: Option<&str>,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        if self.done {
            return Ok(());
        }
        let text = std::str::from_utf8(data).map_err(|e| {
            StreamError::Malformed(format!("the Anthropic event is not UTF-8: {e}"))
        })?;
        let ev: Event = serde_json::from_str(text)
            .map_err(|e| StreamError::Malformed(format!("bad Anthropic stream event: {e}")))?;
        let kind = ev.kind.unwrap_or("");
        let mut payload = None;
        match kind {
            "message_start" => {
                let Some(m) = ev.message else {
                    return Err(StreamError::Malformed(
                        "message_start without message".into(),
                    ));
                };
                let start: StartMessage = serde_json::from_str(m.get())
                    .map_err(|e| StreamError::Malformed(format!("bad message_start: {e}")))?;
                if let Some(u) = &start.usage {
                    self.take_usage(u);
                }
                if let Some(model) = start.model {
                    let span = span_of(data, model);
                    payload = Some(splice_model(data, Some(&span), &self.model));
                }
            }
            "content_block_start" | "content_block_delta" => self.started = true,
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    self.take_usage(u);
                }
                self.started = true;
            }
            "message_stop" => self.done = true,
            "error" => {
                let msg = ev
                    .error
                    .map_or_else(|| text.to_string(), |e| e.get().to_string());
                return Err(StreamError::Upstream(msg));
            }
            _ => {}
        }
        let name = name.filter(|n| !n.is_empty()).unwrap_or(kind);
        write_event(out, name, payload.as_deref().unwrap_or(data));
        Ok(())
    }
}

impl StreamTranslator for NativeStream {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.reader.push(chunk);
        let mut ev = std::mem::take(&mut self.scratch);
        let mut result = Ok(());
        while result.is_ok() && self.reader.next_event_into(&mut ev) {
            result = self.event(ev.event.as_deref(), &ev.data, out);
        }
        self.scratch = ev;
        result
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let Some(ev) = self.reader.finish() {
            self.event(ev.event.as_deref(), &ev.data, out)?;
        }
        if self.done {
            Ok(())
        } else {
            Err(StreamError::Malformed(
                "the Anthropic stream ended without message_stop".into(),
            ))
        }
    }

    fn started(&self) -> bool {
        self.started
    }

    fn usage(&self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        Some(Usage {
            prompt_tokens: self.input.unwrap_or(0),
            completion_tokens: self.output.unwrap_or(0),
        })
    }

    fn error_event(&mut self, err: &ApiError, out: &mut Vec<u8>) {
        error_event(err, out);
    }
}
