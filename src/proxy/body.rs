//! Reading a client's request body, once, for every model endpoint: JSON bodies whole,
//! multipart uploads scanned as they arrive (see `multipart`).
//!
//! Memory grows with the bytes received, never with the length a client declares: the
//! buffer starts small and doubles as data arrives. Only once a client has really sent
//! [`TRUST_DECLARED_AFTER`] bytes is the rest of its declared length reserved in one step
//! (a 25 MiB upload is then not copied through a chain of doublings whose freed buffers
//! the allocator keeps for a while).

use super::ctx::RequestCtx;
use super::respond::send_error;
use crate::errors::ApiError;
use crate::multipart::{self, Form};
use crate::state::State;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

/// The buffer a body starts with (a chat request usually fits).
const INITIAL_CAPACITY: usize = 16 * 1024;
/// Bytes a client must have sent before its declared length is reserved at once.
pub const TRUST_DECLARED_AFTER: usize = 1024 * 1024;

/// Reads the whole body. `None` when it was refused (the error has been answered).
pub async fn read_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &State,
) -> Option<Bytes> {
    match read(session, state.config.server.max_body_bytes, None).await {
        Ok(b) => Some(b),
        Err(e) => {
            refuse_unread(session, ctx, &e).await;
            None
        }
    }
}

/// Reads a multipart upload, scanning it as it arrives. `None` when it was refused.
pub async fn read_form(session: &mut Session, ctx: &mut RequestCtx, state: &State) -> Option<Form> {
    let ctype = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = match multipart::boundary(ctype) {
        Ok(b) => b,
        Err(e) => {
            refuse_unread(session, ctx, &ApiError::invalid(e)).await;
            return None;
        }
    };
    let mut scanner = multipart::Scanner::new(&boundary);
    let body = match read(
        session,
        state.config.server.max_body_bytes,
        Some(&mut scanner),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            refuse_unread(session, ctx, &e).await;
            return None;
        }
    };
    match scanner.finish(body) {
        Ok(form) => Some(form),
        Err(e) => {
            let e = ApiError::invalid(format!("The multipart body is malformed: {e}."));
            send_error(session, ctx, &e).await;
            None
        }
    }
}

/// An error answered before the whole body was read: the connection cannot be reused.
async fn refuse_unread(session: &mut Session, ctx: &mut RequestCtx, e: &ApiError) {
    session.set_keepalive(None);
    send_error(session, ctx, e).await
}

/// Reads the body into one buffer, feeding a multipart scanner as it grows.
async fn read(
    session: &mut Session,
    max: usize,
    mut scanner: Option<&mut multipart::Scanner>,
) -> Result<Bytes, ApiError> {
    let headers = &session.req_header().headers;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::body_too_large(max));
    }
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|e| ApiError::invalid(format!("could not answer Expect: {e}")))?;
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(INITIAL_CAPACITY));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                let want = body.len() + chunk.len();
                if want > max {
                    return Err(ApiError::body_too_large(max));
                }
                if want > body.capacity() && want > TRUST_DECLARED_AFTER {
                    if let Some(d) = declared.filter(|&d| d >= want) {
                        body.reserve(d - body.len());
                    }
                }
                body.extend_from_slice(&chunk);
                if let Some(s) = scanner.as_deref_mut() {
                    s.feed(&body).map_err(|e| {
                        ApiError::invalid(format!("The multipart body is malformed: {e}."))
                    })?;
                }
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(ApiError::invalid(format!(
                    "The request body could not be read: {e}"
                )))
            }
        }
    }
}
