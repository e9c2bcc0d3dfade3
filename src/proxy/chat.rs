//! `POST /v1/chat/completions`: read the body once, route, and run the attempt loop.

use super::ctx::RequestCtx;
use super::relay::{answer_exhausted, Answer, Exchange, Failure, Keep, Outcome, Timeouts};
use super::respond::send_error;
use super::Gateway;
use crate::errors::ApiError;
use crate::limits::slots::Slot;
use crate::observe::metrics;
use crate::providers;
use crate::request::parse_chat;
use crate::responses;
use crate::routing::health::Report;
use crate::routing::Ask;
use crate::state::State;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// Which API the client speaks; both run on chat providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Responses,
}

pub async fn handle(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    api: Api,
) {
    let raw = match read_body(session, state.config.server.max_body_bytes, None).await {
        Ok(b) => b,
        Err(e) => {
            // The rest of the body was not read: the connection cannot be reused.
            session.set_keepalive(None);
            return send_error(session, ctx, &e).await;
        }
    };
    let (raw, responses) = match api {
        Api::Chat => (raw, None),
        Api::Responses => match responses::to_chat(&raw) {
            Ok((chat, meta)) => (Bytes::from(chat), Some(meta)),
            Err(e) => return send_error(session, ctx, &e).await,
        },
    };
    let req = match parse_chat(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = req.model.as_deref().map(str::to_string);
    ctx.prompt_estimate = req.needs.prompt_tokens;
    let metadata = match metadata(session) {
        Ok(m) => m,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let Some(ticket) = super::guard::cache_gate(gw, state, session, ctx, api, &raw, &req).await
    else {
        return; // answered from the cache
    };
    let ask = Ask {
        model: req.model.as_deref(),
        needs: &req.needs,
        fallback_auto: fallback_auto(session),
        metadata: metadata.as_ref(),
        max_attempts: state.config.server.max_attempts,
    };
    let plan = match state
        .router
        .plan(&state.catalog, &state.live(), &ask, Instant::now())
    {
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
    // Candidates in order; a model whose key was rate limited or rejected comes again right
    // away with another key of its provider's pool.
    let mut queue = std::collections::VecDeque::from(plan);
    while let Some(idx) = queue.pop_front() {
        let model = &state.catalog.models[idx];
        let live = &state.models[idx];
        let Some(_slot) = claim(state, idx, ctx) else {
            continue;
        };
        let upstream = &state.upstreams[model.provider];
        ctx.price = Some(model.cost);
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
            responses: responses.clone(),
            keep: Some(Keep {
                cache: &gw.cache,
                ticket: &ticket,
            }),
        };
        let attempt_start = Instant::now();
        let reserved = gw.board.pace.reserve(model, &req.needs);
        match exchange.run(session, ctx).await {
            Outcome::Answered(answer) => {
                gw.board.pace.settle_answer(model, reserved, answer.usage);
                ctx.usage = answer.usage;
                ctx.ttft = Some(attempt_start.duration_since(ctx.start) + answer.first_content);
                metrics::attempt(&model.provider_name, &model.id, attempt_outcome(&answer));
                live.count_request();
                live.report(&if answer.broken {
                    Report::Failed {
                        reason: "stream broke mid-way".into(),
                    }
                } else if answer.status >= 400 {
                    Report::ClientError
                } else {
                    Report::Success {
                        latency: answer.first_content,
                        streamed: ctx.streamed,
                    }
                });
                return;
            }
            Outcome::Retry(failure) => {
                metrics::attempt(&model.provider_name, &model.id, failure_outcome(&failure));
                gw.board.pace.release(model, reserved);
                log::warn!("{}: {} failed: {failure}", ctx.id, model.qualified);
                if record_failure(state, idx, ctx.upstream_key, &failure) {
                    queue.push_front(idx);
                }
                ctx.failures.push(format!("{}: {failure}", model.qualified));
                failures.push((model.provider_name.clone(), failure));
            }
        }
    }
    if failures.is_empty() {
        // Every candidate was claimed by other requests' probes meanwhile.
        let e = ApiError::no_capacity(format!(
            "No capable model can serve this request now: {}.",
            ctx.failures.join("; ")
        ));
        return send_error(session, ctx, &e).await;
    }
    answer_exhausted(session, ctx, failures).await
}

/// `outcome` label of `freeway_upstream_attempts_total` for an answered attempt.
fn attempt_outcome(answer: &Answer) -> &'static str {
    match answer.status {
        _ if answer.broken => "broken_stream",
        400.. => "client_error",
        _ => "success",
    }
}

/// `outcome` label of `freeway_upstream_attempts_total` for a failed attempt.
fn failure_outcome(failure: &Failure) -> &'static str {
    match failure {
        Failure::Status { status: 429, .. } => "rate_limited",
        Failure::Status {
            status: 401 | 403, ..
        } => "auth_error",
        Failure::Status { .. } => "upstream_error",
        Failure::Timeout(_) => "timeout",
        Failure::Connect(_) => "connect_error",
        Failure::Malformed(_) => "malformed",
    }
}

/// Updates health, daily counts and provider state after a failed attempt.
///
/// With a pool of keys, a 429 or a rejected key is the key's, not the model's: the key rests
/// (or is taken out) and, when another key can serve, this returns `true`: try the model
/// again with it.
pub(super) fn record_failure(
    state: &State,
    idx: usize,
    key: Option<usize>,
    failure: &Failure,
) -> bool {
    let model = &state.catalog.models[idx];
    let live = &state.models[idx];
    let upstream = &state.upstreams[model.provider];
    if let (
        Some(k),
        Failure::Status {
            status,
            retry_after,
            ..
        },
    ) = (key, failure)
    {
        let pooled = upstream.keys.len() > 1;
        match status {
            429 if pooled => {
                let wait = retry_after.unwrap_or(KEY_REST);
                upstream.keys[k].rest(wait);
                log::warn!(
                    "provider `{}`: key {} rate limited, resting {} s",
                    model.provider_name,
                    upstream.keys[k].hint,
                    wait.as_secs()
                );
                if upstream.other_key_usable(k) {
                    return true;
                }
            }
            401 | 403 if pooled => {
                let why = format!("the provider rejected this key (HTTP {status})");
                log::error!(
                    "provider `{}`: key {}: {why}: fix or remove it and reload",
                    model.provider_name,
                    upstream.keys[k].hint
                );
                upstream.keys[k].reject(why);
                if upstream.other_key_usable(k) {
                    live.count_request();
                    return true;
                }
            }
            _ => {}
        }
    }
    let report = match failure {
        Failure::Status {
            status: 429,
            retry_after,
            ..
        } => Report::RateLimited {
            retry_after: *retry_after,
        },
        Failure::Status {
            status: status @ (401 | 403),
            ..
        } => {
            // The provider refused our key: no request can succeed there until the config
            // changes. Say so loudly and stop routing to it.
            let why = format!(
                "the provider rejected its API key (HTTP {status}): fix the key and reload"
            );
            log::error!("provider `{}`: {why}", model.provider_name);
            state.providers[model.provider].block(why);
            live.count_request();
            return false;
        }
        Failure::Status { status, .. } => Report::Failed {
            reason: format!("HTTP {status}"),
        },
        Failure::Timeout(_) => Report::TimedOut,
        Failure::Connect(e) => Report::Failed { reason: e.clone() },
        Failure::Malformed(e) => Report::Failed { reason: e.clone() },
    };
    // The provider counted the request unless it refused it (429) or never saw it.
    if matches!(failure, Failure::Malformed(_))
        || matches!(failure, Failure::Status { status, .. } if *status != 429)
    {
        live.count_request();
    }
    live.report(&report);
    false
}

/// How long a pooled key rests after a 429 that did not say (`retry-after`).
const KEY_REST: Duration = Duration::from_secs(30);

/// `x-gateway-fallback: auto`: a pinned model may fall back to `auto` candidates.
pub(super) fn fallback_auto(session: &Session) -> bool {
    header_str(session, "x-gateway-fallback").is_some_and(|v| v == "auto")
}

/// `x-gateway-metadata` (or `cf-aig-metadata`): a JSON object.
pub(super) fn metadata(session: &Session) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(raw) = header_str(session, "x-gateway-metadata")
        .or_else(|| header_str(session, "cf-aig-metadata"))
    else {
        return Ok(None);
    };
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
        _ => Err(ApiError::invalid(
            "x-gateway-metadata must be a JSON object, e.g. {\"team\":\"support\"}.",
        )),
    }
}

pub(super) fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session.req_header().headers.get(name)?.to_str().ok()
}

/// Reads the whole body into one buffer (sized from `content-length`, so a large upload is
/// allocated once), feeding a multipart scanner as it grows.
pub(super) async fn read_body(
    session: &mut Session,
    max: usize,
    mut scanner: Option<&mut crate::multipart::Scanner>,
) -> Result<Bytes, ApiError> {
    let declared = header_str(session, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::body_too_large(max));
    }
    if header_str(session, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
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

/// Claims candidate `idx` for one attempt, and stamps it on `ctx`: a slot at its provider
/// (held for the whole exchange: the provider may have filled up since planning) and, if the
/// model is recovering, its single probe (another request may have taken it since planning).
/// `None`, with the reason in `ctx.failures`, when either is taken.
pub(super) fn claim(state: &State, idx: usize, ctx: &mut RequestCtx) -> Option<Slot> {
    let model = &state.catalog.models[idx];
    let Some(slot) = state.slots[model.provider].try_acquire() else {
        ctx.failures.push(format!(
            "{}: skipped (provider at max_connections)",
            model.qualified
        ));
        return None;
    };
    let key = match state.upstreams[model.provider].pick_key() {
        Ok(k) => k,
        Err(why) => {
            ctx.failures
                .push(format!("{}: skipped ({why})", model.qualified));
            return None;
        }
    };
    if state.models[idx].acquire().is_none() {
        ctx.failures
            .push(format!("{}: skipped (recovering)", model.qualified));
        return None;
    }
    ctx.upstream_key = key;
    ctx.attempts += 1;
    ctx.provider = Some(model.provider_name.clone());
    ctx.model = Some(model.id.clone());
    Some(slot)
}
