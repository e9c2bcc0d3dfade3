//! The OpenAI-compatible wire format (OpenAI, Groq, Cerebras, SambaNova, NVIDIA NIM,
//! OpenRouter, Mistral, DeepSeek, xAI, local servers): the body passes through with only the
//! model rewritten, so this module only builds the request head.

use super::Upstream;
use http::header;
use pingora::http::RequestHeader;

/// The request head for `POST {base}{api_path}` with a body of `body_len` bytes.
pub fn request_header(
    up: &Upstream,
    api_path: &str,
    body_len: usize,
    stream: bool,
) -> pingora::Result<RequestHeader> {
    let path = up.path(api_path);
    let mut req = RequestHeader::build("POST", path.as_bytes(), Some(8 + up.extra_headers.len()))?;
    req.insert_header(header::HOST, up.host_header.clone())?;
    if let Some(auth) = &up.auth {
        req.insert_header(header::AUTHORIZATION, auth.clone())?;
    }
    req.insert_header(header::CONTENT_TYPE, "application/json")?;
    req.insert_header(header::CONTENT_LENGTH, body_len)?;
    req.insert_header(
        header::ACCEPT,
        if stream {
            "text/event-stream"
        } else {
            "application/json"
        },
    )?;
    req.insert_header(
        header::USER_AGENT,
        concat!("freeway/", env!("CARGO_PKG_VERSION")),
    )?;
    for (k, v) in &up.extra_headers {
        req.insert_header(k.clone(), v.clone())?;
    }
    Ok(req)
}
