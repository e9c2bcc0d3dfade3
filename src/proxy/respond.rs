//! Writing responses the gateway produces itself (local endpoints and errors), and the
//! `x-gateway-*` headers every response carries.

use super::ctx::RequestCtx;
use crate::errors::ApiError;
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, CACHE_CONTROL, CONTENT_LENGTH,
    CONTENT_TYPE, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Where the gateway's own headers go: a head it builds itself ([`HeaderMap`], no case map)
/// or a provider's head it passes on ([`ResponseHeader`]).
pub trait Head {
    fn put(&mut self, name: HeaderName, value: HeaderValue);
}

impl Head for HeaderMap {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

impl Head for ResponseHeader {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

/// The names of the headers the gateway writes, made once: no parsing or allocation per
/// response.
pub mod names {
    use http::HeaderName;
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-gateway-request-id");
    pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");
    pub const PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
    pub const MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
    pub const COST: HeaderName = HeaderName::from_static("x-gateway-cost-usd");
    pub const GUARDRAILS: HeaderName = HeaderName::from_static("x-gateway-guardrails");
    pub const OVERHEAD: HeaderName = HeaderName::from_static("x-gateway-overhead-ms");
    pub const CACHE_STATUS: HeaderName = HeaderName::from_static("x-gateway-cache-status");
    pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
}

/// A header value from text the gateway holds (ids, names, numbers it formatted): such text
/// is always a valid value; anything else is left out rather than failing the answer.
fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// Adds the `x-gateway-*` headers.
pub fn gateway_headers(head: &mut impl Head, ctx: &RequestCtx) {
    if let Some(v) = value(&ctx.id) {
        head.put(names::REQUEST_ID, v);
    }
    head.put(names::ATTEMPTS, HeaderValue::from(ctx.attempts));
    if let Some(v) = ctx.provider.as_deref().and_then(value) {
        head.put(names::PROVIDER, v);
    }
    if let Some(v) = ctx.model.as_deref().and_then(value) {
        head.put(names::MODEL, v);
    }
    ctx.stamp.write(head);
    if let Some(cost) = ctx.spend.header.filter(|_| ctx.endpoint.model) {
        if let Some(v) = value(&super::spend::format_usd(cost)) {
            head.put(names::COST, v);
        }
    }
    if let Some(v) = super::guardrails::header(ctx).as_deref().and_then(value) {
        head.put(names::GUARDRAILS, v);
    }
    if let Some(origin) = &ctx.cors {
        head.put(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        head.put(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        head.put(VARY, HeaderValue::from_static("origin"));
    }
    if let Some(v) = millis(ctx.overhead()) {
        head.put(names::OVERHEAD, v);
    }
}

/// `d` in milliseconds with three decimals (`12.345`), rounded to the microsecond. Written
/// by hand: formatting an `f64` cost ~1,000 instructions per response.
fn millis(d: std::time::Duration) -> Option<HeaderValue> {
    let mut us = (d.as_nanos() + 500) / 1000;
    let mut digits = [0u8; 48]; // u128::MAX has 39 digits
    let mut at = digits.len();
    let mut n = 0;
    while n < 4 || us > 0 {
        if n == 3 {
            at -= 1;
            digits[at] = b'.';
        }
        at -= 1;
        digits[at] = b'0' + (us % 10) as u8;
        us /= 10;
        n += 1;
    }
    HeaderValue::from_bytes(&digits[at..]).ok()
}

/// Writes a response head: status, content type, `content-length` (or chunked when the
/// length is not known), `extra` headers and the `x-gateway-*` headers. An event stream is
/// marked `no-cache`. `false` when the client has left.
///
/// The head is built as plain `http` parts with names made once (see [`names`]) and no
/// case map: Pingora writes standard names title-cased and the gateway's own as given,
/// the same bytes as `ResponseHeader::insert_header` would, without parsing each name.
pub async fn write_head(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    length: Option<u64>,
    extra: &[(&'static str, String)],
) -> bool {
    ctx.status = status;
    let Ok(code) = http::StatusCode::from_u16(status) else {
        return false;
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = code;
    let head = &mut parts.headers;
    head.reserve(12 + extra.len());
    if let Some(v) = value(content_type) {
        head.put(CONTENT_TYPE, v);
    }
    match length {
        Some(n) => head.put(CONTENT_LENGTH, HeaderValue::from(n)),
        None => head.put(TRANSFER_ENCODING, HeaderValue::from_static("chunked")),
    }
    if content_type == "text/event-stream" {
        head.put(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    for (k, v) in extra {
        if let (Ok(k), Some(v)) = (HeaderName::from_bytes(k.as_bytes()), value(v)) {
            head.put(k, v);
        }
    }
    gateway_headers(head, ctx);
    session
        .write_response_header(Box::new(ResponseHeader::from(parts)), false)
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

/// Sends an error in the envelope of the request's endpoint (OpenAI's, or Anthropic's for
/// the Messages API): every error the gateway answers itself goes through here.
pub async fn send_error(session: &mut Session, ctx: &mut RequestCtx, err: &ApiError) {
    let extra: Vec<(&'static str, String)> = err
        .retry_after
        .map(|s| vec![("retry-after", s.to_string())])
        .unwrap_or_default();
    let body = err.body_in(ctx.endpoint.errors);
    send(session, ctx, err.status, "application/json", body, &extra).await
}

/// Sends a provider's error, kept in the gateway's OpenAI envelope by the attempt engine,
/// in the envelope of the request's endpoint.
pub async fn send_upstream_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    openai: Bytes,
    extra: &[(&'static str, String)],
) {
    let body = crate::errors::reshape(ctx.endpoint.errors, status, openai);
    send(session, ctx, status, "application/json", body, extra).await
}

/// The response headers a browser app may read (CORS).
const EXPOSED: &str = "x-gateway-provider, x-gateway-model, x-gateway-attempts, \
    x-gateway-request-id, x-gateway-cache-status, x-gateway-overhead-ms, \
    x-gateway-transcript, x-gateway-reply-text, x-gateway-transcription-model, \
    x-gateway-chat-model, x-gateway-cost-usd, x-gateway-guardrails, x-ratelimit-limit, \
    x-ratelimit-remaining, retry-after";

/// The request headers a browser app may send (CORS preflight).
const ALLOWED: &str = "authorization, content-type, x-api-key, x-stainless-arch, \
    x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, \
    x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout, \
    openai-organization, openai-project, openai-beta, anthropic-version, anthropic-beta, \
    anthropic-dangerous-direct-browser-access, x-gateway-fallback, x-gateway-cache-ttl, \
    x-gateway-skip-cache, x-gateway-cache-key, x-gateway-metadata, \
    x-gateway-request-timeout, x-gateway-max-attempts, x-gateway-retry-delay, \
    x-gateway-backoff, x-gateway-collect-log, x-gateway-force-provider, \
    x-gateway-provider-key, cf-aig-authorization, cf-aig-cache-ttl, \
    cf-aig-skip-cache, cf-aig-cache-key, cf-aig-metadata, cf-aig-request-timeout, \
    cf-aig-max-attempts, cf-aig-retry-delay, cf-aig-backoff, cf-aig-collect-log";

/// The value for `access-control-allow-origin` when the request's `Origin` is allowed by
/// `[server] cors_origins` (`*` allows any).
pub fn cors_origin(allowed: &[String], session: &Session) -> Option<http::HeaderValue> {
    let origin = session.req_header().headers.get(http::header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    if allowed.iter().any(|a| a == "*") {
        return Some(http::HeaderValue::from_static("*"));
    }
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
        .then(|| origin.clone())
}

/// Answers a CORS preflight: 204 with what may be sent, or 204 without CORS headers when
/// the origin is not allowed (the browser then refuses the real request).
pub async fn preflight(session: &mut Session, ctx: &mut RequestCtx) {
    ctx.status = 204;
    let Ok(mut resp) = ResponseHeader::build(204, Some(8)) else {
        return;
    };
    if let Some(origin) = &ctx.cors {
        let _ = resp.insert_header("access-control-allow-origin", origin.clone());
        let _ = resp.insert_header(
            "access-control-allow-methods",
            "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        );
        let asked = session
            .req_header()
            .headers
            .get("access-control-request-headers")
            .cloned();
        match asked {
            Some(h) => {
                let _ = resp.insert_header("access-control-allow-headers", h);
            }
            None => {
                let _ = resp.insert_header("access-control-allow-headers", ALLOWED);
            }
        }
        let _ = resp.insert_header("access-control-max-age", "86400");
        let _ = resp.insert_header(http::header::VARY, "origin");
    }
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, 0);
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(None, true).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn overhead_is_milliseconds_with_three_decimals() {
        use std::time::Duration;
        for (d, shown) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_nanos(499), "0.000"),
            (Duration::from_nanos(500), "0.001"),
            (Duration::from_micros(42), "0.042"),
            (Duration::from_micros(1_234), "1.234"),
            (Duration::from_nanos(12_345_678), "12.346"),
            (Duration::from_secs(90), "90000.000"),
        ] {
            assert_eq!(super::millis(d).unwrap(), shown, "{d:?}");
        }
    }
}
