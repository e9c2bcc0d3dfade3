//! Keys, budgets, cost and bring-your-own-key in the pipeline: which key called and what it
//! may do (`auth::KeyPolicy`), the allow-list applied to the plan, a budget/tpm reservation
//! per attempt (`limits::budget`) settled with the real cost, the cost told back to the
//! client (`x-gateway-cost-usd`, `usage.cost`), and the client's own provider key.
//!
//! The attempt engine calls [`reserve`] after claiming a candidate and [`settle`] /
//! [`release`] when the attempt ends; the chat relay prices the answer ([`price_json`],
//! [`price_events`]) and counts what a stream delivered ([`content_chars`]).

use super::ctx::RequestCtx;
use super::Gateway;
use crate::auth::{bearer, trim, KeyPolicy};
use crate::config::{Byok, Cost};
use crate::errors::ApiError;
use crate::limits::budget::{self, Limits, Window};
use crate::observe::keys as key_metrics;
use crate::providers::Usage;
use crate::routing::{ModelEntry, Needs};
use crate::state::State;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// Output tokens reserved when neither the request (`max_tokens`) nor the model
/// (`max_output_tokens`) says how many it may write.
pub const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// A client's own provider key (BYOK). Used for one request; its `Debug` shows nothing.
pub struct ClientKey(String);

impl ClientKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey([REDACTED])")
    }
}

/// What the request's key, budget and cost add to its context.
#[derive(Debug, Default)]
pub struct Spend {
    /// The calling key's policy (set by authentication).
    pub policy: Option<Arc<KeyPolicy>>,
    /// The client's own provider key, for this request only.
    pub byok: Option<ClientKey>,
    /// `x-gateway-cost-usd`: the real cost of a JSON answer, a stream's reservation.
    pub header: Option<f64>,
    /// The settled cost (USD) of the answer: the request log's cost.
    pub cost: Option<f64>,
    /// Prompt tokens the provider served from its cache, as its usage reported.
    pub cached_tokens: u64,
    /// Content characters a stream delivered (its cost when it broke off without usage).
    pub delivered_chars: u64,
    /// Images the current attempt asks for (its reservation), then the images its answer
    /// held (its settlement): what `cost.per_image` is charged for. 0 on other endpoints.
    pub images: u32,
    /// Seconds of video the current attempt asks for: what `cost.per_second` is charged
    /// for. 0 on other endpoints.
    pub video_seconds: u32,
}

/// Authenticates the request: the gateway key (in `Authorization` / `x-api-key`, or
/// Cloudflare's `cf-aig-authorization`) and, for model endpoints, the client's provider key
/// (`x-gateway-provider-key`, or `Authorization` in Cloudflare's form). `false` when the
/// gateway key is missing or wrong.
pub fn authenticate(state: &State, headers: &http::HeaderMap, ctx: &mut RequestCtx) -> bool {
    let get = |n: &str| headers.get(n).map(|v| v.as_bytes());
    let authorization = get(http::header::AUTHORIZATION.as_str());
    let (policy, provider_key) = match get("cf-aig-authorization") {
        // Cloudflare's form: the gateway key in cf-aig-authorization, the provider's in
        // Authorization.
        Some(cf) => {
            let gateway = bearer(Some(cf)).unwrap_or(cf);
            (
                state.auth.identify(None, Some(gateway)),
                bearer(authorization),
            )
        }
        None => (
            state.auth.identify(authorization, get("x-api-key")),
            get("x-gateway-provider-key").map(|v| bearer(Some(v)).unwrap_or(v)),
        ),
    };
    let Some(policy) = policy else {
        return false;
    };
    ctx.key_label = Some(policy.label.clone());
    ctx.spend.policy = Some(policy.clone());
    if ctx.endpoint.model {
        ctx.spend.byok = provider_key
            .map(trim)
            .filter(|k| !k.is_empty())
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(|k| ClientKey(k.to_string()));
    }
    true
}

/// The per-key request rate (`[[keys]] rpm`), for the per-client buckets.
pub fn rpm(ctx: &RequestCtx) -> Option<(String, u32)> {
    let p = ctx.spend.policy.as_ref()?;
    (p.rpm > 0).then(|| (format!("krpm:{}", p.label), p.rpm))
}

fn api_error(
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
) -> ApiError {
    ApiError {
        status,
        kind,
        code,
        param: None,
        message,
        retry_after: None,
    }
}

fn not_allowed(what: &str) -> ApiError {
    let mut e = api_error(
        403,
        "permission_error",
        Some("model_not_allowed"),
        format!("This gateway key may not use {what} (see its `models` in [[keys]])."),
    );
    e.param = Some("model");
    e
}

fn names(m: &ModelEntry) -> impl Iterator<Item = &str> + Clone {
    [m.qualified.as_str(), m.id.as_str()]
        .into_iter()
        .chain(m.aliases.iter().map(String::as_str))
}

/// Applies the key's allow-list and BYOK rules to a plan: only allowed models are
/// candidates (also behind `auto`, aliases and routes); a client key goes only to the pinned
/// model of a provider that accepts one; providers that require one get no other request.
pub fn filter_plan(
    state: &State,
    ctx: &RequestCtx,
    requested: Option<&str>,
    planned: Result<Vec<usize>, ApiError>,
) -> Result<Vec<usize>, ApiError> {
    let models = &state.catalog.models;
    let byok_of = |i: usize| state.config.providers[models[i].provider].byok;
    let pinned = requested.and_then(|r| models.iter().position(|m| m.qualified == r));
    if let Some(policy) = &ctx.spend.policy {
        if !policy.allows_selector(requested) {
            return Err(not_allowed(&format!("`{}`", requested.unwrap_or("auto"))));
        }
        // A named model none of whose servers is allowed: refused whatever its state.
        if let Some(r) = requested {
            let serving: Vec<&ModelEntry> = models
                .iter()
                .filter(|m| m.qualified == r || m.id == r || m.aliases.iter().any(|a| a == r))
                .collect();
            if !serving.is_empty() && !serving.iter().any(|m| policy.allows_model(names(m))) {
                return Err(not_allowed(&format!("`{r}`")));
            }
        }
    }
    if ctx.spend.byok.is_some() {
        let Some(i) = pinned.filter(|&i| byok_of(i) != Byok::Off) else {
            let mut e = ApiError::invalid(
                "A provider key (x-gateway-provider-key) is only accepted for a pinned \
                 `provider/model` whose provider has `byok = \"allow\"` or `\"require\"`.",
            );
            e.code = Some("byok_not_allowed");
            return Err(e);
        };
        // Only the pinned model: the client's key is never sent anywhere else.
        return planned.map(|p| p.into_iter().filter(|&j| j == i).collect());
    }
    if pinned.is_some_and(|i| byok_of(i) == Byok::Require) {
        let mut e = ApiError::unauthorized();
        e.code = Some("provider_key_required");
        e.message = format!(
            "`{}` needs your own provider key: send it in `x-gateway-provider-key`.",
            requested.unwrap_or_default()
        );
        return Err(e);
    }
    let mut plan = planned?;
    let before = plan.len();
    plan.retain(|&i| byok_of(i) != Byok::Require);
    if let Some(policy) = ctx.spend.policy.as_ref().filter(|p| !p.models.is_empty()) {
        plan.retain(|&i| policy.allows_model(names(&models[i])));
    }
    if plan.is_empty() && before > 0 {
        return Err(not_allowed(&format!(
            "any candidate for `{}`",
            requested.unwrap_or("auto")
        )));
    }
    Ok(plan)
}

/// USD for `prompt` tokens (of which `cached` served from the provider's cache) and
/// `completion` tokens at `price`.
pub fn cost_usd(price: &Cost, prompt: u64, cached: u64, completion: u64) -> f64 {
    let cached = cached.min(prompt);
    let cached_price = price.cached_input_per_mtok.unwrap_or(price.input_per_mtok);
    ((prompt - cached) as f64 * price.input_per_mtok
        + cached as f64 * cached_price
        + completion as f64 * price.output_per_mtok)
        / 1_000_000.0
        + price.per_request
}

/// The worst case of one attempt at `model`: (USD, tokens).
pub fn worst_case(model: &ModelEntry, ctx: &RequestCtx, needs: &Needs) -> (f64, u64) {
    let prompt = u64::from(ctx.prompt_estimate.max(needs.prompt_tokens));
    let model_max = u64::from(model.max_output_tokens);
    let output = match needs.max_output_tokens.map(u64::from) {
        Some(n) if model_max > 0 => n.min(model_max),
        Some(n) => n,
        None if model_max > 0 => model_max,
        None => DEFAULT_MAX_OUTPUT,
    };
    // Only text endpoints write tokens.
    let output = if needs.model_type == crate::config::ModelType::Chat {
        output
    } else {
        0
    };
    (
        cost_usd(&model.cost, prompt, 0, output) + media_usd(&model.cost, &ctx.spend),
        prompt + output,
    )
}

/// USD for the images and seconds of video an attempt is charged for, at `price`.
pub fn media_usd(price: &Cost, spend: &Spend) -> f64 {
    price.per_image * f64::from(spend.images) + price.per_second * f64::from(spend.video_seconds)
}

/// Reserves one attempt's worst case against the key's budget and tpm. `Err` (and the
/// rejection counted) when a limit refuses it.
pub async fn reserve(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    model: &ModelEntry,
    needs: &Needs,
) -> Result<Option<budget::Hold>, ApiError> {
    let (cost, tokens) = worst_case(model, ctx, needs);
    ctx.spend.header = Some(cost);
    let Some(policy) = ctx.spend.policy.clone().filter(|p| p.metered()) else {
        return Ok(None);
    };
    let mut limits = Limits::of(&policy);
    if ctx.spend.byok.is_some() {
        // The client pays its provider itself: not the gateway's budget.
        limits.daily = 0;
        limits.monthly = 0;
    }
    if limits == Limits::default() {
        return Ok(None);
    }
    let cost_n = if ctx.spend.byok.is_some() {
        0
    } else {
        budget::nanos(cost)
    };
    match gw
        .budgets
        .reserve(&policy.label, limits, cost_n, tokens)
        .await
    {
        Ok(h) => Ok(Some(h)),
        Err(r) => {
            key_metrics::rejection(&policy.label, r.window.as_str());
            crate::observe::metrics::rate_limited("key");
            Err(refusal_error(&policy.label, r))
        }
    }
}

fn refusal_error(label: &str, r: budget::Refusal) -> ApiError {
    let (code, message) = match r.window {
        Window::Tpm => (
            "rate_limit_exceeded",
            format!(
                "Tokens per minute reached for gateway key `{label}` ({} tpm). Retry after {} s.",
                r.limit, r.retry_after_secs
            ),
        ),
        w => (
            "budget_exceeded",
            format!(
                "The {} budget of gateway key `{label}` (${:.4}) is spent. It resets in {} s.",
                w.as_str(),
                budget::usd(r.limit),
                r.retry_after_secs
            ),
        ),
    };
    let mut e = api_error(429, "rate_limit_error", Some(code), message);
    e.retry_after = Some(r.retry_after_secs);
    e
}

/// What an answered attempt really cost (USD) and the tokens it used: the provider's usage
/// (with its cached prompt tokens) when it reported one, else the gateway's estimate — the
/// prompt, and the content a stream delivered before it ended.
pub fn actual(ctx: &RequestCtx, model: &ModelEntry, usage: Option<Usage>) -> (f64, u64) {
    let (prompt, completion, cached) = match usage {
        Some(u) => (
            u.prompt_tokens,
            u.completion_tokens,
            ctx.spend.cached_tokens,
        ),
        None => {
            let completion = if ctx.streamed {
                ctx.spend.delivered_chars.div_ceil(4)
            } else {
                ctx.response_bytes.saturating_sub(300) / 4
            };
            (u64::from(ctx.prompt_estimate), completion, 0)
        }
    };
    let chat = model.model_type == crate::config::ModelType::Chat;
    let completion = if chat { completion } else { 0 };
    (
        cost_usd(&model.cost, prompt, cached, completion) + media_usd(&model.cost, &ctx.spend),
        prompt + completion,
    )
}

/// Settles an answered attempt: its real cost to the key's budget and spend series, and to
/// the request log.
pub async fn settle(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    model: &ModelEntry,
    hold: Option<budget::Hold>,
    usage: Option<Usage>,
) {
    let (cost, tokens) = actual(ctx, model, usage);
    ctx.spend.cost = Some(cost);
    // Answers sent after the engine returns (embeddings, audio) carry their real cost; a
    // stream's head, already sent, carried its reservation.
    if !ctx.streamed {
        ctx.spend.header = Some(cost);
    }
    let byok = ctx.spend.byok.is_some();
    if let Some(label) = ctx.spend.policy.as_ref().map(|p| p.label.clone()) {
        if !byok {
            key_metrics::spend(&label, cost);
        }
        let charged = if byok { 0 } else { budget::nanos(cost) };
        match hold {
            Some(h) => gw.budgets.settle(h, charged, tokens).await,
            None => gw.budgets.note(&label, charged),
        }
    }
}

/// Gives back a failed attempt's reservation.
pub async fn release(gw: &Gateway, hold: Option<budget::Hold>) {
    if let Some(h) = hold {
        gw.budgets.release(h).await;
    }
}

/// Puts the client's own key on an upstream request, in its provider's auth header.
pub fn apply_client_key(
    header: &mut pingora::http::RequestHeader,
    model: &ModelEntry,
    key: &ClientKey,
) -> pingora::Result<()> {
    let auth = crate::providers::format(model.provider_kind).auth;
    let (name, value) = auth.header(key.expose()).map_err(|_| {
        pingora::Error::explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "the provider key is not a valid header value",
        )
    })?;
    header.insert_header(name, value)?;
    Ok(())
}

/// Removes the client's provider key (whole or masked) from upstream text.
pub fn scrub(ctx: &RequestCtx, body: Bytes) -> Bytes {
    match &ctx.spend.byok {
        Some(k) => {
            Bytes::from(crate::secrets::Secrets::new([k.expose().to_string()]).scrub_bytes(&body))
        }
        None => body,
    }
}

/// The number format of costs (USD, up to 10 decimals, no exponent).
pub fn format_usd(usd: f64) -> String {
    let s = format!("{usd:.10}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Reads the usage object of an OpenAI answer or chunk: (prompt, completion, cached).
fn usage_of(v: &serde_json::Value) -> Option<(u64, u64, u64)> {
    let u = v.get("usage")?.as_object()?;
    let prompt = u.get("prompt_tokens")?.as_u64()?;
    let completion = u
        .get("completion_tokens")
        .and_then(|c| c.as_u64())
        .unwrap_or(0);
    let cached = u
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(|c| c.as_u64())
        .unwrap_or(0);
    Some((prompt, completion, cached))
}

fn set_cost(v: &mut serde_json::Value, cost: f64) {
    if let Some(u) = v.get_mut("usage").and_then(|u| u.as_object_mut()) {
        let n = serde_json::Number::from_f64((cost * 1e10).round() / 1e10)
            .unwrap_or_else(|| serde_json::Number::from(0));
        u.insert("cost".into(), serde_json::Value::Number(n));
    }
}

/// A JSON chat answer with `usage.cost` (USD): its cost at `price` (0 for a cache hit,
/// `price` = `None`). Sets the cost header and the cached prompt tokens on `ctx`.
///
/// Only the top-level `usage` object is parsed; the cost is spliced into the answer's
/// bytes, which otherwise pass unchanged (no parse and re-serialisation of the whole
/// answer: that was a seventh of a request's instructions).
///
/// `usage_at` is where the answer's top-level `usage` value is, when the translator found
/// it ([`crate::providers::Translated::usage_at`]); else the answer is scanned for it.
pub fn price_json(
    ctx: &mut RequestCtx,
    price: Option<&Cost>,
    body: Bytes,
    usage_at: Option<Range<usize>>,
) -> Bytes {
    let Some(found) = find_usage(&body, usage_at) else {
        return body;
    };
    let cost = price.map_or(0.0, |p| {
        cost_usd(p, found.prompt, found.cached, found.completion)
    });
    ctx.spend.cached_tokens = found.cached;
    ctx.spend.header = Some(cost);
    let number = serde_json::Number::from_f64((cost * 1e10).round() / 1e10)
        .unwrap_or_else(|| serde_json::Number::from(0))
        .to_string();
    // A provider's own cost is replaced; else the cost joins the object before its `}`.
    let (at, replaced, key) = match found.cost {
        Some(range) => (range.start, range.len(), ""),
        None => (found.close, 0, ",\"cost\":"),
    };
    let mut out = Vec::with_capacity(body.len() + key.len() + number.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(number.as_bytes());
    out.extend_from_slice(&body[at + replaced..]);
    Bytes::from(out)
}

/// What [`price_json`] needs of an answer's top-level `usage` object: its token counts,
/// where its closing brace is, and where an existing `cost` value is (byte offsets).
struct FoundUsage {
    prompt: u64,
    completion: u64,
    cached: u64,
    close: usize,
    cost: Option<std::ops::Range<usize>>,
}

fn find_usage(body: &[u8], usage_at: Option<Range<usize>>) -> Option<FoundUsage> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Usage<'a> {
        prompt_tokens: u64,
        completion_tokens: Option<u64>,
        prompt_tokens_details: Option<Details>,
        #[serde(borrow)]
        cost: Option<&'a RawValue>,
    }
    // Only the usage object is parsed; the scanner skips the rest of the answer.
    let at = match usage_at.filter(|at| named_usage(body, at.start)) {
        Some(at) => at,
        None => crate::json_scan::top_level_value(body, b"usage")?,
    };
    let text = std::str::from_utf8(body.get(at.clone())?).ok()?;
    if !text.starts_with('{') {
        return None;
    }
    let u: Usage = serde_json::from_str(text).ok()?;
    let offset = |inner: &str| at.start + (inner.as_ptr() as usize - text.as_ptr() as usize);
    Some(FoundUsage {
        prompt: u.prompt_tokens,
        completion: u.completion_tokens.unwrap_or(0),
        cached: u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0),
        close: at.end - 1,
        cost: u
            .cost
            .map(|c| offset(c.get())..offset(c.get()) + c.get().len()),
    })
}

/// Whether the member whose value starts at `start` is named `"usage"` in `body`'s raw bytes,
/// the name [`crate::json_scan::top_level_value`] looks for: a translator's serde walk also
/// matches an escaped spelling of it, which the scan does not take for `usage`.
fn named_usage(body: &[u8], start: usize) -> bool {
    let ws = |b: &&u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut before = body[..start.min(body.len())].iter().rev().skip_while(ws);
    if before.next() != Some(&b':') {
        return false;
    }
    let name = before.skip_while(ws).take(7);
    name.eq(b"\"usage\"".iter().rev())
}

/// Adds `usage.cost` to the usage chunk among SSE `events` (the final `include_usage`
/// chunk), in place. Cheap when there is none: one substring search.
pub fn price_events(ctx: &mut RequestCtx, price: Option<&Cost>, events: &mut Vec<u8>) {
    if memchr::memmem::find(events, b"\"usage\":{").is_none() {
        return;
    }
    let text = String::from_utf8_lossy(events).into_owned();
    let mut out = String::with_capacity(text.len() + 32);
    for ev in text.split_inclusive("\n\n") {
        let data = ev.strip_prefix("data: ").map(|d| d.trim_end());
        let priced = data
            .filter(|d| d.contains("\"usage\":{"))
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .and_then(|mut v| {
                let (prompt, completion, cached) = usage_of(&v)?;
                // A resumed stream's chunk counts every attempt: each priced at its model.
                let cost = price.map_or(0.0, |p| {
                    ctx.resume.price(prompt, completion, |pr, co| {
                        cost_usd(p, pr, cached.min(pr), co)
                    })
                });
                ctx.spend.cached_tokens = cached;
                set_cost(&mut v, cost);
                Some(format!("data: {v}\n\n"))
            });
        match priced {
            Some(p) => out.push_str(&p),
            None => out.push_str(ev),
        }
    }
    *events = out.into_bytes();
}

/// Characters of content (`"content"` text and tool-call `"arguments"`) in SSE events: what
/// a stream that ends without usage is charged for.
pub fn content_chars(events: &[u8]) -> u64 {
    let mut n = 0u64;
    for needle in [&b"\"content\":\""[..], &b"\"arguments\":\""[..]] {
        for start in memchr::memmem::find_iter(events, needle) {
            let mut i = start + needle.len();
            let mut escaped = false;
            while i < events.len() {
                let c = events[i];
                if escaped {
                    escaped = false;
                    n += 1;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    break;
                } else if c & 0xC0 != 0x80 {
                    n += 1;
                }
                i += 1;
            }
        }
    }
    n
}

/// `/v1/analytics?group_by=key` with each key's budgets (`budgets: {label: {daily_usd,
/// monthly_usd}}`), for the dashboard's budget lines.
pub fn with_budget_lines(state: &State, query: &str, body: Bytes) -> Bytes {
    if !query.split('&').any(|p| p == "group_by=key") {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let lines: serde_json::Map<String, serde_json::Value> = state
        .auth
        .policies()
        .filter(|p| p.daily_usd > 0.0 || p.monthly_usd > 0.0)
        .map(|p| {
            (
                p.label.clone(),
                serde_json::json!({"daily_usd": p.daily_usd, "monthly_usd": p.monthly_usd}),
            )
        })
        .collect();
    v["budgets"] = serde_json::Value::Object(lines);
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

/// `GET /v1/budget`: the calling key's spend and limits.
pub async fn status(gw: &Gateway, ctx: &RequestCtx) -> serde_json::Value {
    let Some(p) = &ctx.spend.policy else {
        return serde_json::json!({});
    };
    let (day, month) = gw.budgets.status(&p.label).await;
    let window = |w: budget::WindowStatus, limit: f64| {
        serde_json::json!({
            "spent_usd": budget::usd(w.spent),
            "reserved_usd": budget::usd(w.held),
            "limit_usd": limit,
            "resets_at": budget::rfc3339(w.reset_ms),
        })
    };
    serde_json::json!({
        "label": p.label,
        "daily": window(day, p.daily_usd),
        "monthly": window(month, p.monthly_usd),
        "rpm": p.rpm,
        "tpm": p.tpm,
        "models": p.models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_tokens_times_prices_and_cache_aware() {
        let p = Cost {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: Some(0.5),
            per_request: 0.0,
            per_image: 0.0,
            per_second: 0.0,
        };
        assert!((cost_usd(&p, 1_000_000, 0, 0) - 2.0).abs() < 1e-12);
        assert!(
            (cost_usd(&p, 1000, 400, 500) - (600.0 * 2.0 + 400.0 * 0.5 + 500.0 * 8.0) / 1e6).abs()
                < 1e-15
        );
        assert_eq!(format_usd(0.000123), "0.000123");
        assert_eq!(format_usd(0.0), "0");
    }

    #[test]
    fn a_json_answer_gets_its_cost_spliced_into_its_top_level_usage() {
        let p = Cost {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            ..Cost::default()
        };
        let price = |body: &str| {
            let mut ctx = RequestCtx::new();
            let out = price_json(&mut ctx, Some(&p), Bytes::from(body.to_string()), None);
            (String::from_utf8(out.to_vec()).unwrap(), ctx.spend.header)
        };
        // The answer's own bytes and key order stay; the cost joins the usage object.
        let body = r#"{"id":"x","choices":[{"message":{"content":"a \"usage\":{ b"}}], "usage": {"prompt_tokens":10,"completion_tokens":5 } ,"z":1}"#;
        let (out, header) = price(body);
        assert_eq!(
            out,
            body.replace(
                "\"completion_tokens\":5 }",
                "\"completion_tokens\":5 ,\"cost\":0.00002}"
            )
        );
        assert_eq!(header, Some(2e-5));
        // A provider's own cost is replaced, not duplicated.
        let (out, _) = price(r#"{"usage":{"prompt_tokens":10,"cost":0.5,"completion_tokens":5}}"#);
        assert_eq!(
            out,
            r#"{"usage":{"prompt_tokens":10,"cost":0.00002,"completion_tokens":5}}"#
        );
        // Cached prompt tokens are read; a nested `usage` is not the answer's.
        let mut ctx = RequestCtx::new();
        price_json(
            &mut ctx,
            Some(&p),
            Bytes::from_static(br#"{"x":{"usage":{"prompt_tokens":1}},"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4}}}"#),
            None,
        );
        assert_eq!(ctx.spend.cached_tokens, 4);
        // Without a usable usage object, or not JSON: unchanged, no cost.
        for body in [
            r#"{"choices":[]}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"completion_tokens":5}}"#,
            r#"{"usage":[1]}"#,
            "not json",
        ] {
            assert_eq!(price(body), (body.to_string(), None), "{body}");
        }
    }

    /// An OpenAI answer's members, any subset in any order, some repeated or escaped: the
    /// shapes for which the translator's one walk must price as the pricing's own scan does.
    fn answer() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let member = prop_oneof![
            Just(r#""id":"chatcmpl-1""#),
            Just(
                r#""choices":[{"index":0,"message":{"role":"assistant","content":"a \"usage\":{"}}]"#
            ),
            Just(
                r#""choices":[{"message":{"content":null,"tool_calls":[{"id":"c"}]},"usage":{"prompt_tokens":1}}]"#
            ),
            Just(r#""choices":5"#),
            Just(r#""choices":null"#),
            Just(r#""usage":{"prompt_tokens":10,"completion_tokens":5}"#),
            Just(r#""usage" : { "prompt_tokens" : 10 , "cost" : 0.5 }"#),
            Just(
                r#""usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens":1}"#
            ),
            Just(r#""usage":{"completion_tokens":5}"#),
            Just(r#""usage":{"prompt_tokens":-1}"#),
            Just(r#""usage":{"prompt_tokens":1.5}"#),
            Just(r#""usage":[1,2]"#),
            Just(r#""usage":null"#),
            Just(r#""usage":"x""#),
            Just(r#""us\u0061ge":{"prompt_tokens":7}"#),
            Just(r#""error":{"message":"no"}"#),
            Just(r#""x":{"usage":{"prompt_tokens":3}}"#),
        ];
        let cut = proptest::bool::weighted(0.1);
        (proptest::collection::vec(member, 0..5), cut, 0usize..300).prop_map(|(m, cut, at)| {
            let text = format!("{{{}}}", m.join(","));
            match cut {
                true => text[..at.min(text.len())].to_string(),
                false => text,
            }
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The OpenAI translator's usage position changes nothing the answer's pricing gives:
        /// the bytes sent, the cost header, the cached tokens.
        #[test]
        fn pricing_at_the_translators_usage_position_is_pricing_by_scan(text in answer()) {
            let p = Cost { input_per_mtok: 1.0, output_per_mtok: 2.0, ..Cost::default() };
            let body = Bytes::from(text.clone());
            let translator = crate::providers::translator(crate::config::ProviderKind::Openai);
            if let Ok(t) = translator.chat_response(body.clone(), "m") {
                let priced = |at: Option<Range<usize>>| {
                    let mut ctx = RequestCtx::new();
                    let out = price_json(&mut ctx, Some(&p), body.clone(), at);
                    (out, ctx.spend.header, ctx.spend.cached_tokens)
                };
                proptest::prop_assert_eq!(priced(t.usage_at.clone()), priced(None), "{}", text);
            }
        }
    }

    #[test]
    fn the_usage_chunk_gets_its_cost() {
        let mut ctx = RequestCtx::new();
        let p = Cost {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            ..Cost::default()
        };
        let mut ev = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi \\\"x\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5}}\n\n\
            data: [DONE]\n\n"
            .to_vec();
        assert_eq!(content_chars(&ev), 5);
        price_events(&mut ctx, Some(&p), &mut ev);
        let text = String::from_utf8(ev).unwrap();
        assert!(
            text.contains("\"cost\":2e-5") || text.contains("\"cost\":0.00002"),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
