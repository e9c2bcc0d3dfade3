//! Prometheus metrics (names in SPEC.md), registered once in the default registry.
//!
//! Labels are bounded: endpoint names are a fixed set, providers and models come from the
//! config, statuses are HTTP codes. Never a request id, key or IP.

use crate::routing::status::{headroom, model_status};
use crate::state::State;
use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    TextEncoder,
};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// LLM latencies: tens of milliseconds to minutes.
const LLM_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];
/// The gateway's own work: microseconds to a few milliseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
];

pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub overhead: Histogram,
    pub tokens: IntCounterVec,
    pub attempts: IntCounterVec,
    pub cache: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub inflight: IntGauge,
    pub log_dropped: IntCounter,
    pub log_written: IntCounter,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(c.clone()));
    c
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(h.clone()));
    h
}

fn register(c: Box<dyn Collector>) {
    // Only fails on a duplicate name, which the static below rules out.
    if let Err(e) = prometheus::register(c) {
        log::error!("metric registration failed: {e}");
    }
}

/// The gateway's metrics. Names and label sets are fixed here, so `panic!` above can only
/// fire on a programming error caught by the unit test.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let overhead = Histogram::with_opts(
        HistogramOpts::new(
            "freeway_gateway_overhead_seconds",
            "Time the gateway spent on a request itself, excluding upstream waits.",
        )
        .buckets(OVERHEAD_BUCKETS.to_vec()),
    )
    .unwrap_or_else(|e| panic!("overhead histogram: {e}"));
    register(Box::new(overhead.clone()));
    let inflight = IntGauge::new("freeway_inflight_requests", "Requests being handled now.")
        .unwrap_or_else(|e| panic!("inflight gauge: {e}"));
    register(Box::new(inflight.clone()));
    let log_dropped = IntCounter::new(
        "freeway_log_records_dropped_total",
        "Request-log records dropped because the writer queue was full.",
    )
    .unwrap_or_else(|e| panic!("dropped counter: {e}"));
    register(Box::new(log_dropped.clone()));
    let log_written = IntCounter::new(
        "freeway_log_records_written_total",
        "Request-log records committed to the store.",
    )
    .unwrap_or_else(|e| panic!("written counter: {e}"));
    register(Box::new(log_written.clone()));
    Metrics {
        requests: counter_vec(
            "freeway_requests_total",
            "Requests answered, by endpoint, serving provider/model and HTTP status.",
            &["endpoint", "provider", "model", "status"],
        ),
        duration: histogram_vec(
            "freeway_request_duration_seconds",
            "Total time from the request's arrival to its last response byte.",
            &["endpoint"],
            LLM_BUCKETS,
        ),
        ttft: histogram_vec(
            "freeway_time_to_first_token_seconds",
            "Time from the request's arrival to the first content (stream) or the whole answer.",
            &["provider"],
            LLM_BUCKETS,
        ),
        overhead,
        tokens: counter_vec(
            "freeway_tokens_total",
            "Tokens processed, as reported by providers (or estimated when they report none).",
            &["provider", "model", "direction"],
        ),
        attempts: counter_vec(
            "freeway_upstream_attempts_total",
            "Upstream attempts by outcome (success, rate_limited, timeout, upstream_error, …).",
            &["provider", "model", "outcome"],
        ),
        cache: counter_vec(
            "freeway_cache_requests_total",
            "Response-cache lookups by result (hit, miss, bypass).",
            &["result"],
        ),
        rate_limited: counter_vec(
            "freeway_rate_limited_total",
            "Requests answered 429, by who limited them (upstream, ip, key).",
            &["scope"],
        ),
        inflight,
        log_dropped,
        log_written,
    }
});

/// Records one upstream attempt's outcome.
pub fn attempt(provider: &str, model: &str, outcome: &str) {
    METRICS
        .attempts
        .with_label_values(&[provider, model, outcome])
        .inc();
}

/// Counts a request answered 429 by the limiter of `scope` (`upstream`, `ip`, `key`).
pub fn rate_limited(scope: &str) {
    METRICS.rate_limited.with_label_values(&[scope]).inc();
}

/// Holds a request in `freeway_inflight_requests` until dropped.
pub struct InflightGuard(());

impl InflightGuard {
    pub fn new() -> InflightGuard {
        METRICS.inflight.inc();
        InflightGuard(())
    }
}

impl Default for InflightGuard {
    fn default() -> Self {
        InflightGuard::new()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        METRICS.inflight.dec();
    }
}

/// A status code as a label without allocating (the common ones are static).
pub fn status_label(status: u16) -> &'static str {
    const EXACT: [&str; 14] = [
        "200", "400", "401", "404", "405", "408", "413", "422", "429", "499", "500", "502", "503",
        "504",
    ];
    let mut buf = [0u8; 5];
    let text = fmt_status(status, &mut buf);
    if let Some(s) = EXACT.iter().find(|s| **s == text) {
        return s;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn fmt_status(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("")
}

/// `freeway_model_state{provider,model,state}` (1 for the current state, 0 for the others)
/// and `freeway_model_daily_headroom{provider,model}`, read from the live state at scrape
/// time so they are never stale.
pub struct ModelStateCollector {
    pub state: Arc<ArcSwap<State>>,
    descs: Vec<Desc>,
}

const STATES: [&str; 5] = [
    "available",
    "degraded",
    "cooldown",
    "exhausted",
    "unconfigured",
];

impl ModelStateCollector {
    pub fn new(state: Arc<ArcSwap<State>>) -> ModelStateCollector {
        let descs = [
            (
                "freeway_model_state",
                "1 for the state each model is in now.",
                vec!["provider".to_string(), "model".into(), "state".into()],
            ),
            (
                "freeway_model_daily_headroom",
                "Share of the model's daily request limit still unused (1 when unlimited).",
                vec!["provider".to_string(), "model".into()],
            ),
        ]
        .into_iter()
        .filter_map(|(n, h, l)| Desc::new(n.into(), h.into(), l, Default::default()).ok())
        .collect();
        ModelStateCollector { state, descs }
    }
}

impl Collector for ModelStateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let state = self.state.load();
        let now = Instant::now();
        let gauge = |name: &str, help: &str| {
            prometheus::GaugeVec::new(Opts::new(name, help), &["provider", "model", "state"][..])
        };
        let (Ok(states), Ok(room)) = (
            gauge(
                "freeway_model_state",
                "1 for the state each model is in now.",
            ),
            prometheus::GaugeVec::new(
                Opts::new(
                    "freeway_model_daily_headroom",
                    "Share of the model's daily request limit still unused (1 when unlimited).",
                ),
                &["provider", "model"],
            ),
        ) else {
            return Vec::new();
        };
        for (m, live) in state.catalog.models.iter().zip(&state.models) {
            let blocked = state.providers[m.provider].blocked();
            let used = live.daily_used();
            let (current, _) = {
                let h = live.health.lock();
                model_status(m, used, blocked, &h, now)
            };
            for s in STATES {
                states
                    .with_label_values(&[&m.provider_name, &m.id, s])
                    .set(if s == current { 1.0 } else { 0.0 });
            }
            room.with_label_values(&[&m.provider_name, &m.id])
                .set(headroom(m, used));
        }
        let mut out = states.collect();
        out.extend(room.collect());
        out
    }
}

/// Registers the model-state collector for this server's live state (once per process).
pub fn register_model_state(state: Arc<ArcSwap<State>>) {
    LazyLock::force(&METRICS);
    if let Err(e) = prometheus::register(Box::new(ModelStateCollector::new(state))) {
        log::debug!("model state collector already registered: {e}");
    }
}

/// Everything in the default registry, in the Prometheus text format.
pub fn render() -> Vec<u8> {
    LazyLock::force(&METRICS);
    let families = prometheus::gather();
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}

/// Counts one guardrail's hit on one request: `freeway_guardrail_hits_total{guardrail,
/// action,on}` (`on`: `prompt` or `response`).
pub fn guardrail_hit(guardrail: &str, action: &str, on: &str) {
    static HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        counter_vec(
            "freeway_guardrail_hits_total",
            "Requests on which a guardrail matched, by guardrail, action and direction.",
            &["guardrail", "action", "on"],
        )
    });
    HITS.with_label_values(&[guardrail, action, on]).inc();
}

/// Counts a stream that failed mid-answer with resume on: `freeway_stream_resumes_total
/// {outcome}` — `resumed` (another model continued it), `failed` (none did: it ended with
/// the error event), `refused` (not resumable: a tool call or other non-text output).
pub fn stream_resume(outcome: &str) {
    static RESUMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        counter_vec(
            "freeway_stream_resumes_total",
            "Streams that failed mid-answer with resume on, by outcome.",
            &["outcome"],
        )
    });
    RESUMES.with_label_values(&[outcome]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        METRICS
            .requests
            .with_label_values(&["chat", "p", "m", "200"])
            .inc();
        let text = String::from_utf8(render()).unwrap();
        assert!(text.contains("freeway_requests_total"), "{text}");
        assert!(text.contains("freeway_inflight_requests"), "{text}");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(418), "4xx");
    }
}
