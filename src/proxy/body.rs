//! Reading a client's request body, once, for every model endpoint: JSON bodies whole,
//! multipart uploads scanned as they arrive (see `multipart`).
//!
//! Three bounds keep bodies from holding the gateway: the whole body must arrive within
//! `server.body_timeout_seconds` (else 408); all bodies together may hold at most
//! `server.max_buffered_body_bytes` (else 503); and while the gateway waits for a body's
//! next bytes the connection counts as waiting, so at `max_connections` a new client
//! displaces the connection that has waited longest (a slow body as much as a slow head).
//!
//! Memory grows with the bytes received, never with the length a client declares: the
//! buffer starts small and doubles as data arrives. Only once a client has really sent
//! [`TRUST_DECLARED_AFTER`] bytes is the rest of its declared length reserved in one step
//! (a 25 MiB upload is then not copied through a chain of doublings whose freed buffers
//! the allocator keeps for a while).

use super::ctx::RequestCtx;
use super::respond::send_error;
use super::Gateway;
use crate::conn::Waited;
use crate::errors::ApiError;
use crate::multipart::{self, Form};
use crate::state::State;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::time::fast_timeout::fast_timeout;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The buffer a body starts with (a chat request usually fits).
const INITIAL_CAPACITY: usize = 16 * 1024;
/// Bytes a client must have sent before its declared length is reserved at once.
pub const TRUST_DECLARED_AFTER: usize = 1024 * 1024;

/// Request-body bytes held by every request in flight.
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// Body bytes one request holds against [`BUFFERED`], released when the request ends.
#[derive(Debug, Default)]
pub struct Hold(usize);

impl Hold {
    /// Takes `n` more bytes; `false` (and nothing taken) when that would pass `max`.
    fn take(&mut self, n: usize, max: usize) -> bool {
        let ok = BUFFERED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + n <= max).then_some(held + n)
            })
            .is_ok();
        if ok {
            self.0 += n;
            crate::conn::metrics::CONN.body_bytes.add(n as i64);
        }
        ok
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0 > 0 {
            BUFFERED.fetch_sub(self.0, Ordering::AcqRel);
            crate::conn::metrics::CONN.body_bytes.sub(self.0 as i64);
        }
    }
}

/// Request-body bytes held in memory now, across all requests.
pub fn buffered() -> usize {
    BUFFERED.load(Ordering::Acquire)
}

/// The limits one body is read under.
struct Bounds<'a> {
    gw: &'a Gateway,
    max_connections: usize,
    max: usize,
    max_buffered: usize,
    timeout: Duration,
}

impl Bounds<'_> {
    fn of<'a>(gw: &'a Gateway, state: &State) -> Bounds<'a> {
        let s = &state.config.server;
        Bounds {
            gw,
            max_connections: s.max_connections,
            max: s.max_body_bytes,
            max_buffered: s.max_buffered_body_bytes,
            timeout: Duration::from_secs(s.body_timeout_seconds),
        }
    }
}

/// Reads the whole body. `None` when it was refused (the error has been answered).
pub async fn read_body(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &State,
) -> Option<Bytes> {
    match read(session, ctx, &Bounds::of(gw, state), None).await {
        Ok(b) => Some(b),
        Err(e) => {
            refuse_unread(session, ctx, &e).await;
            None
        }
    }
}

/// Reads a multipart upload, scanning it as it arrives. `None` when it was refused.
pub async fn read_form(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &State,
) -> Option<Form> {
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
    let body = match read(session, ctx, &Bounds::of(gw, state), Some(&mut scanner)).await {
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
    ctx: &mut RequestCtx,
    bounds: &Bounds<'_>,
    mut scanner: Option<&mut multipart::Scanner>,
) -> Result<Bytes, ApiError> {
    let max = bounds.max;
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
    let deadline = Instant::now() + bounds.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = fast_timeout(left, session.read_request_body());
        // Near the connection cap, a wait for body bytes may be displaced like a wait for a
        // head; below it (nearly always) the read skips the gate's bookkeeping.
        let gate = &bounds.gw.gate;
        let waited = if gate.open() * 10 >= bounds.max_connections * 9 {
            gate.idle(next).await
        } else {
            Waited::Done(next.await)
        };
        let next = match waited {
            Waited::Done(Ok(next)) => next,
            Waited::Done(Err(_)) => return Err(body_timeout(bounds.timeout)),
            Waited::Displaced => return Err(displaced()),
        };
        match next {
            Ok(Some(chunk)) => {
                let want = body.len() + chunk.len();
                if want > max {
                    return Err(ApiError::body_too_large(max));
                }
                if !ctx.body_hold.take(chunk.len(), bounds.max_buffered) {
                    return Err(buffers_full());
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

fn body_timeout(limit: Duration) -> ApiError {
    ApiError {
        status: 408,
        kind: "invalid_request_error",
        code: Some("body_timeout"),
        param: None,
        message: format!(
            "The request body did not arrive within {} s (server.body_timeout_seconds).",
            limit.as_secs()
        ),
        retry_after: None,
    }
}

fn buffers_full() -> ApiError {
    let mut e = ApiError::no_capacity(
        "The gateway holds as many request bodies as it may (server.max_buffered_body_bytes). \
         Retry shortly.",
    );
    e.code = Some("body_buffers_full");
    e.retry_after = Some(1);
    e
}

fn displaced() -> ApiError {
    let mut e = ApiError::no_capacity(
        "The request body was arriving too slowly while the gateway is at its connection \
         limit (server.max_connections): this connection made room for another. Retry.",
    );
    e.code = Some("too_many_connections");
    e.retry_after = Some(1);
    e
}
