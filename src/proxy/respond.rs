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

/// Sends a complete response with a body. Write errors mean the client left: ignored.
pub async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) {
    ctx.status = status;
    ctx.response_bytes = body.len() as u64;
    let Ok(mut resp) = ResponseHeader::build(status, Some(6 + extra.len())) else {
        return;
    };
    let _ = resp.insert_header(http::header::CONTENT_TYPE, content_type);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len());
    for (k, v) in extra {
        let _ = resp.insert_header(*k, v.as_str());
    }
    gateway_headers(&mut resp, ctx);
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
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
