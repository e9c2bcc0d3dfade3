//! The stream plumbing every chat format shares, written once: SSE buffering (any chunking
//! in, whole events out), the started/usage/finished bookkeeping, the closing events
//! (finish reason, usage chunk, `[DONE]`) and the check that the provider ended its stream
//! properly. A format supplies only its event handling: a [`ChatEvents`] implementation,
//! wrapped in a [`ChatStream`], is a [`StreamTranslator`].

use super::common::ChunkWriter;
use super::{StreamError, StreamTranslator, Usage};
use crate::sse::{SseEvent, SseReader};

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
        w.finish(out, reason);
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
    fn event(
        &mut self,
        s: &mut StreamState,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError>;

    /// The upstream ended and every event was handled. By default the stream must have been
    /// closed by its end marker; a format without one closes it here.
    fn end(&mut self, s: &mut StreamState, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let _ = out;
        if s.done {
            Ok(())
        } else {
            Err(StreamError::Malformed(Self::UNFINISHED.into()))
        }
    }
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

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.state.done && !E::AFTER_DONE {
            return Ok(());
        }
        self.events.event(&mut self.state, data, out)
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
