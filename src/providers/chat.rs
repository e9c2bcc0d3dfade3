//! The chat plumbing every format shares, written once.
//!
//! - Streams: SSE buffering (any chunking in, whole events out), the started/usage/finished
//!   bookkeeping, the closing events (finish reason, usage chunk, `[DONE]`) and the check
//!   that the provider ended its stream properly. A format supplies only its event handling:
//!   a [`ChatEvents`] implementation, wrapped in a [`ChatStream`], is a [`StreamTranslator`].
//! - Translators: a native format supplies its request, answer and event handler as a
//!   [`NativeChat`], and is a [`Translator`] (fresh answer ids, the stream, errors).

use super::common::{ChunkWriter, Meta};
use super::{BuiltRequest, StreamError, StreamTranslator, Translated, Translator, Usage};
use crate::request::ChatRequest;
use crate::sse::{SseEvent, SseReader};
use bytes::Bytes;

/// What handling one stream event gives.
pub type Handled = Result<(), StreamError>;

/// A native error body → OpenAI error envelope: (status, body, provider name).
pub type ErrorFn = fn(u16, &[u8], &str) -> Bytes;

/// A chat format that is not OpenAI's: what it supplies to be a [`Translator`].
pub trait NativeChat: Send + Sync {
    /// The handler of its stream events.
    type Events: NativeEvents + 'static;
    /// Its error translation.
    const ERROR: ErrorFn;

    /// The native request for a chat completion, from the client's OpenAI body.
    fn request(req: &ChatRequest, body: &[u8], model: &str) -> BuiltRequest;

    /// A native non-streamed answer → OpenAI `chat.completion`, with `meta`'s id and time.
    fn response(body: &[u8], model: &str, meta: &Meta) -> Result<Translated, String>;
}

impl<T: NativeChat> Translator for T {
    fn chat_request(&self, req: &ChatRequest, body: &[u8], model_id: &str) -> BuiltRequest {
        T::request(req, body, model_id)
    }

    fn chat_response(&self, body: Bytes, model_id: &str) -> Result<Translated, String> {
        T::response(&body, model_id, &Meta::fresh())
    }

    fn chat_stream(&self, model_id: &str, include_usage: bool) -> Box<dyn StreamTranslator> {
        Box::new(ChatStream::<T::Events>::new(
            model_id,
            include_usage,
            &Meta::fresh(),
        ))
    }

    fn error(&self, status: u16, body: &[u8], provider: &str) -> Bytes {
        (T::ERROR)(status, body, provider)
    }
}

/// The bookkeeping of one translated stream, shared by every format.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Whether the client asked for the usage chunk.
    pub include_usage: bool,
    /// A content delta, tool call or finish reason has been emitted.
    pub started: bool,
    /// Usage seen so far.
    pub usage: Option<Usage>,
    /// The stream was closed (its end marker seen, or the closing events written).
    pub done: bool,
    role_sent: bool,
}

impl StreamState {
    /// The assistant-role chunk, the first time only.
    pub fn role(&mut self, w: &ChunkWriter, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.role_sent = true;
            w.role(out);
        }
    }

    /// Closes the answer: the finish chunk, the usage chunk if the client asked for it, and
    /// `[DONE]`.
    pub fn close(&mut self, w: &ChunkWriter, out: &mut Vec<u8>, reason: &str) {
        self.close_choices(w, out, &[reason]);
    }

    /// Closes an answer of several choices (`n` > 1): one finish chunk per choice, in
    /// order, then the usage chunk and `[DONE]`.
    pub fn close_choices(&mut self, w: &ChunkWriter, out: &mut Vec<u8>, reasons: &[&str]) {
        for (i, reason) in reasons.iter().enumerate() {
            w.finish_at(out, i, reason);
        }
        self.started = true;
        if self.include_usage {
            w.usage(out, self.usage.unwrap_or_default());
        }
        ChunkWriter::done(out);
        self.done = true;
    }
}

/// One format's handling of its stream events.
pub trait ChatEvents: Send {
    /// Why a stream that ended before [`StreamState::done`] is malformed (see [`end`]).
    ///
    /// [`end`]: ChatEvents::end
    const UNFINISHED: &'static str;
    /// Whether events after the end are still handled (pass-through formats); otherwise
    /// they are ignored.
    const AFTER_DONE: bool = false;

    /// Handles one complete event's `data:` payload, appending OpenAI events to `out`.
    fn event(&mut self, s: &mut StreamState, data: &[u8], out: &mut Vec<u8>) -> Handled;

    /// The upstream ended and every event was handled. By default the stream must have been
    /// closed by its end marker; a format without one closes it here.
    fn end(&mut self, s: &mut StreamState, _out: &mut Vec<u8>) -> Handled {
        if s.done {
            Ok(())
        } else {
            Err(StreamError::Malformed(Self::UNFINISHED.into()))
        }
    }
}

/// The event handler of a native format, which writes its own OpenAI chunks.
pub trait NativeEvents: ChatEvents + Sized {
    /// The handler for one streamed answer of `model`, with `meta`'s id and time.
    fn new(model: &str, meta: &Meta) -> Self;
}

/// A format's event handler made a [`StreamTranslator`].
pub struct ChatStream<E> {
    reader: SseReader,
    /// The event buffer the reader fills, reused (no allocation per event).
    scratch: SseEvent,
    state: StreamState,
    events: E,
}

impl<E: ChatEvents> ChatStream<E> {
    pub fn with(events: E, include_usage: bool) -> ChatStream<E> {
        ChatStream {
            reader: SseReader::new(),
            scratch: SseEvent::default(),
            state: StreamState {
                include_usage,
                ..StreamState::default()
            },
            events,
        }
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Handled {
        if self.state.done && !E::AFTER_DONE {
            return Ok(());
        }
        self.events.event(&mut self.state, data, out)
    }
}

impl<E: NativeEvents> ChatStream<E> {
    /// A translator for one streamed answer of `model`, with `meta`'s id and time.
    pub fn new(model: &str, include_usage: bool, meta: &Meta) -> ChatStream<E> {
        ChatStream::with(E::new(model, meta), include_usage)
    }
}

impl<E: ChatEvents> StreamTranslator for ChatStream<E> {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.reader.push(chunk);
        let mut ev = std::mem::take(&mut self.scratch);
        let mut result = Ok(());
        while result.is_ok() && self.reader.next_event_into(&mut ev) {
            result = self.event(&ev.data, out);
        }
        self.scratch = ev;
        result
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        // An event the provider did not close with a blank line.
        if let Some(ev) = self.reader.finish() {
            self.event(&ev.data, out)?;
        }
        self.events.end(&mut self.state, out)
    }

    fn started(&self) -> bool {
        self.state.started
    }

    fn usage(&self) -> Option<Usage> {
        self.state.usage
    }
}

/// What the stream tests of every format share.
/// A provider's chat translator whose output is read back event by event: the plumbing every
/// client-API reshaper (the Responses API, Anthropic Messages) wraps around it, written once.
pub struct Rechunk {
    /// The provider's translator (its `started` and `usage` are the reshaper's too).
    pub inner: Box<dyn StreamTranslator>,
    reader: crate::sse::SseReader,
    scratch: Vec<u8>,
}

impl Rechunk {
    pub fn new(inner: Box<dyn StreamTranslator>) -> Rechunk {
        Rechunk {
            inner,
            reader: crate::sse::SseReader::new(),
            scratch: Vec::new(),
        }
    }

    /// Feeds upstream bytes (`None`: the upstream ended) to the provider's translator; its
    /// complete chat events are then read with [`Self::next_event`].
    pub fn pump(&mut self, chunk: Option<&[u8]>) -> Result<(), StreamError> {
        let r = match chunk {
            Some(c) => self.inner.feed(c, &mut self.scratch),
            None => self.inner.finish(&mut self.scratch),
        };
        self.reader.push(&self.scratch);
        self.scratch.clear();
        r
    }

    /// The next complete chat event, if one is buffered.
    pub fn next_event(&mut self) -> Option<crate::sse::SseEvent> {
        self.reader.next_event()
    }
}

/// A client API's reshaping of the chat events a provider's translator produces (the
/// Responses API, Anthropic Messages): it supplies only what differs, and [`Reshaped`] makes
/// it a [`StreamTranslator`].
pub trait Reshape: Send {
    /// One chat event (its `data:` payload): append the client API's events to `out`.
    fn chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError>;
    /// The provider's stream ended well (`usage`: what it reported): the closing events.
    fn end(&mut self, usage: Option<Usage>, out: &mut Vec<u8>);
    /// The events that end a stream failing mid-way (never a fake completion).
    fn fail(&mut self, err: &crate::errors::ApiError, usage: Option<Usage>, out: &mut Vec<u8>);
}

/// A reshaper over the provider's translator: feeds it, reads its chat events back and hands
/// each to the reshaper.
pub struct Reshaped<R> {
    chat: Rechunk,
    api: R,
}

impl<R: Reshape> Reshaped<R> {
    pub fn new(inner: Box<dyn StreamTranslator>, api: R) -> Reshaped<R> {
        Reshaped {
            chat: Rechunk::new(inner),
            api,
        }
    }

    /// Hands every buffered chat event to the reshaper.
    fn reshape(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        while let Some(ev) = self.chat.next_event() {
            self.api.chunk(&ev.data, out)?;
        }
        Ok(())
    }
}

impl<R: Reshape> StreamTranslator for Reshaped<R> {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let r = self.chat.pump(Some(chunk));
        self.reshape(out)?;
        r
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let r = self.chat.pump(None);
        self.reshape(out)?;
        r?;
        self.api.end(self.chat.inner.usage(), out);
        Ok(())
    }

    fn started(&self) -> bool {
        self.chat.inner.started()
    }

    fn usage(&self) -> Option<Usage> {
        self.chat.inner.usage()
    }

    fn error_event(&mut self, err: &crate::errors::ApiError, out: &mut Vec<u8>) {
        self.api.fail(err, self.chat.inner.usage(), out)
    }

    fn seam(&mut self) -> Option<&mut super::resume::Seam> {
        self.chat.inner.seam()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::{StreamError, StreamTranslator};
    use serde_json::Value;

    /// Feeds `stream` whole and finishes: the output, the result, whether it started.
    pub fn run(
        t: &mut dyn StreamTranslator,
        stream: &[u8],
    ) -> (String, Result<(), StreamError>, bool) {
        let mut out = Vec::new();
        let r = t.feed(stream, &mut out).and_then(|_| t.finish(&mut out));
        (String::from_utf8(out).unwrap(), r, t.started())
    }

    /// Asserts the translation of a native stream of two text pieces, `Hel` and `second`,
    /// that ends with `stop` and 7 tokens in all: role, both pieces, finish, usage (only
    /// when `include_usage`), `[DONE]`. `run(stream, include_usage)` translates.
    pub fn assert_two_piece_text_stream(
        run: impl Fn(&[u8], bool) -> (String, Result<(), StreamError>, bool),
        stream: &[u8],
        second: &str,
    ) {
        let (out, c) = opened(&run, stream);
        assert_eq!(c[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(c[2]["choices"][0]["delta"]["content"], second);
        assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(c[4]["usage"]["total_tokens"], 7);
        assert_eq!(c.len(), 5);
        assert!(out.ends_with("data: [DONE]\n\n"));
        let (out, _, _) = run(stream, false);
        assert!(!out.contains("usage"));
    }

    /// `stream` translated by `run` with usage, and its JSON chunks: the translation must
    /// succeed, have started and open with the assistant's role.
    pub fn opened(
        run: impl Fn(&[u8], bool) -> (String, Result<(), StreamError>, bool),
        stream: &[u8],
    ) -> (String, Vec<Value>) {
        let (out, r, started) = run(stream, true);
        r.unwrap();
        assert!(started);
        let c = chunks(&out);
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        (out, c)
    }

    /// The JSON chunks of `stream` translated by `run` (which must succeed).
    pub fn translated(
        run: impl Fn(&[u8], bool) -> (String, Result<(), StreamError>, bool),
        stream: &[u8],
        include_usage: bool,
    ) -> Vec<Value> {
        let (out, r, _) = run(stream, include_usage);
        r.unwrap();
        chunks(&out)
    }

    /// The JSON chunks of a translated stream (`[DONE]` left out).
    pub fn chunks(out: &str) -> Vec<Value> {
        out.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}
