//! `POST /v1/chat/completions`: read the body once, route, and run the attempt loop.

use super::ctx::RequestCtx;
use super::relay::{answer_exhausted, Exchange, Outcome, Timeouts};
use super::respond::send_error;
use super::Gateway;
use crate::errors::ApiError;
use crate::providers;
use crate::request::parse_chat;
use crate::state::State;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use std::time::Duration;

pub async fn handle(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let raw = match read_body(session, state.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            // The rest of the body was not read: the connection cannot be reused.
            session.set_keepalive(None);
            return send_error(session, ctx, &e).await;
        }
    };
    let req = match parse_chat(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let fallback_auto = header_str(session, "x-gateway-fallback").is_some_and(|v| v == "auto");
    let plan = match state.router.plan(
        &state.catalog,
        req.model.as_deref(),
        &req.needs,
        fallback_auto,
        state.config.server.max_attempts,
    ) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &e).await,
    };

    let server = &state.config.server;
    let first_byte = header_str(session, "x-gateway-request-timeout")
        .or_else(|| header_str(session, "cf-aig-request-timeout"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .unwrap_or(server.upstream_timeout_ms);
    let timeouts = Timeouts {
        first_byte: Duration::from_millis(first_byte),
        idle: Duration::from_millis(server.stream_idle_timeout_ms),
    };

    let mut failures = Vec::new();
    for &idx in &plan {
        let model = &state.catalog.models[idx];
        let upstream = &state.upstreams[model.provider];
        ctx.attempts += 1;
        ctx.provider = Some(model.provider_name.clone());
        ctx.model = Some(model.id.clone());
        let translator = providers::translator(model.provider_kind);
        let request = match translator.chat_request(&req, &raw, &model.id) {
            Ok(r) => r,
            Err(e) => return send_error(session, ctx, &e).await,
        };
        let exchange = Exchange {
            connector: &gw.connector,
            upstream,
            model,
            translator,
            request,
            stream: req.stream,
            include_usage: req.include_usage,
            timeouts,
        };
        match exchange.run(session, ctx).await {
            Outcome::Answered(_) => return,
            Outcome::Retry(failure) => {
                log::warn!("{}: {} failed: {failure}", ctx.id, model.qualified);
                ctx.failures.push(format!("{}: {failure}", model.qualified));
                failures.push((model.provider_name.clone(), failure));
            }
        }
    }
    answer_exhausted(session, ctx, failures).await
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session.req_header().headers.get(name)?.to_str().ok()
}

/// Reads the whole request body, refusing more than `max` bytes.
async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, ApiError> {
    let declared = header_str(session, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::body_too_large(max));
    }
    let expects_continue =
        header_str(session, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|e| ApiError::invalid(format!("could not answer Expect: {e}")))?;
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(16 * 1024));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(ApiError::body_too_large(max));
                }
                body.extend_from_slice(&chunk);
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
