//! Incremental server-sent-events reader and writer, shared by every stream translator.
//!
//! The reader is correct for events split across any chunk boundary: bytes are buffered
//! until a blank line ends the event. Lines end with `\n` or `\r\n`; `:` comment lines and
//! unknown fields are ignored; several `data:` lines join with `\n` (the SSE standard).

use bytes::{Buf, BytesMut};
use memchr::memchr;

/// One event: its `event:` name (if any) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: Vec<u8>,
}

/// Buffers upstream bytes and yields complete events.
#[derive(Debug, Default)]
pub struct SseReader {
    buf: BytesMut,
    /// Bytes of `buf` already split into lines of the current event.
    scanned: usize,
    current: SseEvent,
    has_data: bool,
    /// Whether the current event had an `event:` line (`current.event` keeps its buffer
    /// between events to save an allocation each).
    has_event: bool,
}

impl SseReader {
    pub fn new() -> SseReader {
        SseReader::default()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received but not yet part of a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut ev = SseEvent::default();
        self.next_event_into(&mut ev).then_some(ev)
    }

    /// Like [`next_event`](Self::next_event), but fills `ev`, reusing its buffers: a stream
    /// translator keeps one `SseEvent` and allocates nothing per event once warm.
    pub fn next_event_into(&mut self, ev: &mut SseEvent) -> bool {
        loop {
            let Some(nl) = memchr(b'\n', &self.buf[self.scanned..]) else {
                return false;
            };
            let end = self.scanned + nl;
            let line_end = if end > self.scanned && self.buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            let start = self.scanned;
            self.scanned = end + 1;
            if line_end == start {
                // Blank line: the event is complete.
                self.buf.advance(self.scanned);
                self.scanned = 0;
                if self.has_data {
                    self.take_into(ev);
                    return true;
                }
                self.current.data.clear();
                self.has_event = false;
                continue;
            }
            let line = &self.buf[start..line_end];
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match memchr(b':', line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.current.data.push(b'\n');
                    }
                    self.current.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"event" => {
                    let name = self.current.event.get_or_insert_with(String::new);
                    name.clear();
                    match std::str::from_utf8(value) {
                        Ok(v) => name.push_str(v),
                        Err(_) => name.push_str(&String::from_utf8_lossy(value)),
                    }
                    self.has_event = true;
                }
                _ => {}
            }
        }
    }

    /// Moves the completed current event into `ev`; `ev`'s old buffers become the next
    /// event's.
    fn take_into(&mut self, ev: &mut SseEvent) {
        if !self.has_event {
            self.current.event = None;
        }
        std::mem::swap(&mut self.current, ev);
        self.current.data.clear();
        self.has_data = false;
        self.has_event = false;
    }

    /// At end of stream: an event the upstream did not close with a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            self.buf.extend_from_slice(b"\n\n");
            if let Some(ev) = self.next_event() {
                return Some(ev);
            }
        }
        self.has_data.then(|| {
            let mut ev = SseEvent::default();
            self.take_into(&mut ev);
            ev
        })
    }
}

/// Appends `data: <payload>\n\n`.
pub fn write_data(out: &mut Vec<u8>, payload: &[u8]) {
    out.reserve(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

/// Appends `event: <name>\ndata: <payload>\n\n`.
pub fn write_event(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    out.reserve(payload.len() + name.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, payload);
}

/// An SSE event carrying an OpenAI error envelope, ending a failed stream (never `[DONE]`).
pub fn error_event(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_data(&mut out, envelope);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut r = SseReader::new();
        let mut out = Vec::new();
        for c in chunks {
            r.push(c);
            while let Some(e) = r.next_event() {
                out.push(e);
            }
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn reads_events_split_anywhere() {
        let stream = b"event: a\ndata: {\"x\":1}\n\n: comment\n\ndata: line1\r\ndata: line2\r\n\r\ndata: [DONE]\n\n";
        let whole = all(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event.as_deref(), Some("a"));
        assert_eq!(whole[1].data, b"line1\nline2");
        assert_eq!(whole[2].data, b"[DONE]");
        for cut in 0..stream.len() {
            assert_eq!(
                all(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&bytes), whole);
    }

    #[test]
    fn reused_events_do_not_leak_fields() {
        let mut r = SseReader::new();
        r.push(b"event: a\ndata: one\n\ndata: two\n\nevent: b\ndata: 3\n\n");
        let mut ev = SseEvent::default();
        let mut seen = Vec::new();
        while r.next_event_into(&mut ev) {
            seen.push(ev.clone());
        }
        let names: Vec<Option<&str>> = seen.iter().map(|e| e.event.as_deref()).collect();
        assert_eq!(names, [Some("a"), None, Some("b")]);
        let data: Vec<&[u8]> = seen.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"one"[..], b"two", b"3"]);
    }

    #[test]
    fn unterminated_last_event_is_kept_at_finish() {
        let ev = all(&[b"data: a\n\ndata: tail"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].data, b"tail");
    }

    #[test]
    fn data_without_space_and_empty_events() {
        let ev = all(&[b"data:x\n\n\n\nevent: ping\n\n"]);
        assert_eq!(
            ev,
            vec![SseEvent {
                event: None,
                data: b"x".to_vec()
            }]
        );
    }
}
