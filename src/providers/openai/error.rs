//! OpenAI-compatible error bodies are already OpenAI envelopes: passed through untouched;
//! anything else (a proxy's HTML page) is wrapped with its text.

use bytes::Bytes;

pub fn translate_error(status: u16, body: &[u8], provider: &str) -> Bytes {
    crate::errors::upstream_envelope(status, provider, body)
}
