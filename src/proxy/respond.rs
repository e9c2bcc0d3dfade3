//! Writing responses the gateway produces itself (local endpoints and errors), and the
//! `x-gateway-*` headers every response carries.

use super::ctx::RequestCtx;
use crate::errors::ApiError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Adds the `x-gateway-*` headers.
pub fn gateway_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) {
    let _ = resp.insert_header("x-gateway-request-id", ctx.id.as_str());
    let _ = resp.insert_header("x-gateway-attempts", ctx.attempts);
    if let Some(p) = &ctx.provider {
        let _ = resp.insert_header("x-gateway-provider", p.as_str());
    }
    if let Some(m) = &ctx.model {
        let _ = resp.insert_header("x-gateway-model", m.as_str());
    }
    ctx.stamp.write(resp);
    let overhead = ctx.overhead().as_secs_f64() * 1000.0;
    let _ = resp.insert_header("x-gateway-overhead-ms", format!("{overhead:.3}"));
}

/// Writes a response head: status, content type, `content-length` (or chunked when the
/// length is not known), `extra` headers and the `x-gateway-*` headers. An event stream is
/// marked `no-cache`. `false` when the client has left.
pub async fn write_head(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    length: Option<u64>,
    extra: &[(&'static str, String)],
) -> bool {
    ctx.status = status;
    let Ok(mut resp) = ResponseHeader::build(status, Some(7 + extra.len())) else {
        return false;
    };
    let _ = resp.insert_header(http::header::CONTENT_TYPE, content_type);
    match length {
        Some(n) => {
            let _ = resp.insert_header(http::header::CONTENT_LENGTH, n);
        }
        None => {
            let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
    }
    if content_type == "text/event-stream" {
        let _ = resp.insert_header(http::header::CACHE_CONTROL, "no-cache");
    }
    for (k, v) in extra {
        let _ = resp.insert_header(*k, v.as_str());
    }
    gateway_headers(&mut resp, ctx);
    session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
}

/// Sends a complete response with a body. Write errors mean the client left: ignored.
pub async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) {
    ctx.response_bytes = body.len() as u64;
    let length = Some(body.len() as u64);
    if write_head(session, ctx, status, content_type, length, extra).await {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

pub async fn send_json(session: &mut Session, ctx: &mut RequestCtx, status: u16, body: Bytes) {
    send(session, ctx, status, "application/json", body, &[]).await
}

/// Sends an OpenAI error envelope.
pub async fn send_error(session: &mut Session, ctx: &mut RequestCtx, err: &ApiError) {
    let extra: Vec<(&'static str, String)> = err
        .retry_after
        .map(|s| vec![("retry-after", s.to_string())])
        .unwrap_or_default();
    send(
        session,
        ctx,
        err.status,
        "application/json",
        err.body(),
        &extra,
    )
    .await
}
