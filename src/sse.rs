//! Server-sent events helpers shared by every stream path.

use memchr::memmem;

/// Length of the longest prefix of `buf` made of complete SSE events (each ended by a blank
/// line). The gateway forwards only complete events, so that if the upstream dies mid-event
/// the client never sees half an event before the gateway's error event.
pub fn complete_events_len(buf: &[u8]) -> usize {
    let lf = memmem::rfind(buf, b"\n\n").map(|i| i + 2);
    let crlf = memmem::rfind(buf, b"\n\r\n").map(|i| i + 3);
    lf.max(crlf).unwrap_or(0)
}

/// An SSE event carrying an OpenAI error envelope, ending a failed stream (never `[DONE]`).
pub fn error_event(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelope.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(envelope);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_prefix_stops_at_last_blank_line() {
        assert_eq!(complete_events_len(b"data: a\n\ndata: b"), 9);
        assert_eq!(complete_events_len(b"data: a\r\n\r\ndata: b\r\n\r\n"), 22);
        assert_eq!(complete_events_len(b"data: partial"), 0);
        assert_eq!(complete_events_len(b""), 0);
    }
}
