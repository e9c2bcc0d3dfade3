//! Recording a finished request, whichever way it was answered (locally, proxied, refused,
//! failed): the Prometheus series, then one request-log row. Called once, from the
//! `logging` phase. The endpoint label and the controls come from the request context.

use super::ctx::RequestCtx;
use super::endpoint::Handler;
use crate::observe::metrics::{self, status_label, METRICS};
use crate::observe::record::{cap, cost_usd, method_name, ms, RequestRecord, MAX_FIELD};
use crate::observe::Observer;
use pingora::proxy::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Rows a minute for requests refused before any key was accepted (failed authentication,
/// and the per-IP limit refusing such clients). Past it they are counted in the metrics
/// only, so a flood of keyless requests cannot push real rows out of a capped log.
pub const UNAUTHENTICATED_ROWS_PER_MINUTE: u64 = 60;

/// `minute << 16 | rows written in it`.
static UNAUTHENTICATED_ROWS: AtomicU64 = AtomicU64::new(0);

/// Whether another unauthenticated row may be written this minute.
fn unauthenticated_row_allowed(now_ms: u64) -> bool {
    let minute = now_ms / 60_000;
    UNAUTHENTICATED_ROWS
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (m, n) = (v >> 16, v & 0xffff);
            if m != minute {
                Some(minute << 16 | 1)
            } else {
                (n < UNAUTHENTICATED_ROWS_PER_MINUTE).then_some(v + 1)
            }
        })
        .is_ok()
}

/// Records a finished request. Moves strings out of `ctx`, which is done with after this.
pub fn record(observer: &Observer, session: &Session, ctx: &mut RequestCtx) {
    let req = session.req_header();
    let ep = ctx.endpoint;
    let endpoint = ep.label;
    let status = match ctx.status {
        0 => 499, // the client left before any answer
        s => s,
    };
    let elapsed = ctx.start.elapsed();
    let overhead = ctx.overhead();
    let provider = ctx.provider.as_deref().unwrap_or("");
    let model = ctx.model.as_deref().unwrap_or("");

    let (prompt, completion, estimated) = match ctx.usage {
        Some(u) => (u.prompt_tokens, u.completion_tokens, false),
        None if ctx.attempts > 0 && status < 400 => {
            // No usage from the provider: the prompt estimate, and for a chat answer ~4
            // bytes a token, less the JSON wrapper. Other answers (vectors, audio) are not
            // tokens of text.
            let chat = matches!(ep.handler, Handler::Chat | Handler::Responses);
            let completion = if chat && !ctx.streamed {
                ctx.response_bytes.saturating_sub(300) / 4
            } else {
                0
            };
            (u64::from(ctx.prompt_estimate), completion, true)
        }
        None => (0, 0, false),
    };
    let cost = ctx.spend.cost.unwrap_or_else(|| {
        ctx.price.map_or(0.0, |p| {
            cost_usd(prompt, completion, p.input_per_mtok, p.output_per_mtok)
        })
    });

    let guardrails = super::guardrails::record(ctx);
    let m = &*METRICS;
    m.requests
        .with_label_values(&[endpoint, provider, model, status_label(status)])
        .inc();
    m.duration
        .with_label_values(&[endpoint])
        .observe(elapsed.as_secs_f64());
    m.overhead.observe(overhead.as_secs_f64());
    if let Some(v) = ctx.stamp.limit.filter(|v| !v.admitted) {
        metrics::rate_limited(v.scope);
    }
    if ctx.attempts > 0 || ctx.stamp.cache.is_some() {
        let cache = match ctx.stamp.cache {
            Some("HIT") => "hit",
            Some("MISS") => "miss",
            _ => "bypass",
        };
        m.cache.with_label_values(&[cache]).inc();
    }
    if ctx.attempts > 0 {
        if status == 429 {
            metrics::rate_limited("upstream");
        }
        if let (Some(t), true) = (ctx.ttft, status < 400) {
            m.ttft
                .with_label_values(&[provider])
                .observe(t.as_secs_f64());
        }
        if prompt > 0 {
            m.tokens
                .with_label_values(&[provider, model, "prompt"])
                .inc_by(prompt);
        }
        if completion > 0 {
            m.tokens
                .with_label_values(&[provider, model, "completion"])
                .inc_by(completion);
        }
    }

    trace_request(session, ctx, status, cost);
    if !observer.logging() || !ctx.controls.collect_log || (status < 400 && ep.polled) {
        return;
    }
    let now = SystemTime::now();
    let unauthenticated = status == 401 || (status == 429 && ctx.key_label.is_none());
    if unauthenticated {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if !unauthenticated_row_allowed(now_ms) {
            return;
        }
    }
    let started = now.checked_sub(elapsed).unwrap_or(now);
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let path = req.uri.path();
    observer.push(Box::new(RequestRecord {
        ts_ms: started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        request_id: std::mem::take(&mut ctx.id),
        key_label: ctx.key_label.take().unwrap_or_default(),
        client_ip,
        method: method_name(&req.method),
        endpoint,
        path: matches!(ep.handler, Handler::NotFound | Handler::Passthrough)
            .then(|| cap(path.to_string(), MAX_FIELD)),
        requested_model: ctx.requested_model.take(),
        provider: ctx.provider.take().unwrap_or_default(),
        model: ctx.model.take().unwrap_or_default(),
        attempts: ctx.attempts,
        failures: std::mem::take(&mut ctx.failures),
        status,
        cache_status: ctx.stamp.cache.unwrap_or("BYPASS"),
        streamed: ctx.streamed,
        prompt_tokens: prompt,
        completion_tokens: completion,
        tokens_estimated: estimated,
        ttft_ms: ctx.ttft.map(ms),
        duration_ms: ms(elapsed),
        overhead_ms: ms(overhead),
        cost_usd: cost,
        metadata: ctx.controls.metadata_raw.take().map(|m| cap(m, MAX_FIELD)),
        guardrails,
        images: ctx.images,
    }));
}

/// Ends the request's server span and queues its trace (`[telemetry]`; one branch when off).
fn trace_request(session: &Session, ctx: &mut RequestCtx, status: u16, cost: f64) {
    if matches!(ctx.trace, crate::telemetry::TraceSlot::Off) {
        return;
    }
    let req = session.req_header();
    let ep = ctx.endpoint;
    let end = crate::telemetry::RequestEnd {
        method: method_name(&req.method),
        route: match ep.handler {
            Handler::NotFound => None,
            _ => ep.paths.first().copied(),
        },
        status,
        peer: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        forwarded_for: req.headers.get_all("x-forwarded-for"),
        key_label: ctx.key_label.as_deref(),
        cache_status: ctx.stamp.cache.unwrap_or("BYPASS"),
        cost_usd: cost,
        attempts: ctx.attempts,
        request_id: &ctx.id,
        requested_model: ctx.requested_model.as_deref(),
        usage: ctx.usage,
    };
    crate::telemetry::request_end(&mut ctx.trace, req, ctx.start, end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_rows_are_capped_per_minute() {
        let t = 1_000 * 60_000;
        let allowed = (0..1000).filter(|_| unauthenticated_row_allowed(t)).count();
        assert_eq!(allowed as u64, UNAUTHENTICATED_ROWS_PER_MINUTE);
        // A new minute, a new allowance.
        assert!(unauthenticated_row_allowed(t + 60_000));
    }
}
