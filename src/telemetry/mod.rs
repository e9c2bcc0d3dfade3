//! OpenTelemetry traces (`[telemetry]`): one SERVER span per request and one CLIENT span per
//! upstream attempt, with the GenAI semantic conventions, exported over OTLP/HTTP protobuf.
//!
//! The request path only fills plain fields on its [`TraceSlot`] and, when the request is
//! recorded, hands the finished [`Trace`] to a bounded queue with `try_send`: it never
//! waits, and a full queue drops the spans and counts them
//! (`freeway_otel_dropped_spans_total`). The exporter (a Pingora background service, see
//! [`export`]) turns traces into protobuf, batches them and POSTs them to the collector; when
//! the collector is down the batch is dropped and counted the same way.
//!
//! With telemetry off the request path pays one branch per hook: the slot stays
//! [`TraceSlot::Off`] and nothing is built or allocated.
//!
//! Context: a client's valid W3C `traceparent` is continued (its sampled flag decides), its
//! `tracestate` passed on; every attempt sends `traceparent` with its own span id upstream.

pub mod context;
pub mod export;
pub mod span;

use crate::client_ip::{client_ip, IpNet};
use crate::config::{Config, UpstreamUrl};
use crate::providers::{Body, Outbound, Usage};
use context::{new_span_id, new_trace_id, parse_traceparent, traceparent, valid_tracestate};
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use span::{now_ns, ClientSpan, Pending, ServerEnd, Trace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

/// The most of an upstream request body kept on a span with `capture_content`.
const MAX_CONTENT: usize = 16 * 1024;

/// The process's telemetry, once `[telemetry]` is on.
pub struct Telemetry {
    queue: std::sync::mpsc::SyncSender<Box<Trace>>,
    sample_ratio: f64,
    capture_content: bool,
    /// The limits' client-IP rules, for `client.address`.
    trust_forwarded_for: bool,
    trusted_proxies: Vec<IpNet>,
    /// Unix seconds of the last "dropping spans" warning.
    last_warning: AtomicU64,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// `freeway_otel_*` counters.
pub struct OtelMetrics {
    pub dropped: IntCounter,
    pub exported: IntCounter,
}

pub static METRICS: LazyLock<OtelMetrics> = LazyLock::new(|| {
    let counter = |name: &str, help: &str| {
        let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
        if let Err(e) = prometheus::register(Box::new(c.clone())) {
            log::error!("metric registration failed: {e}");
        }
        c
    };
    OtelMetrics {
        dropped: counter(
            "freeway_otel_dropped_spans_total",
            "Spans dropped: the export queue was full or the collector failed.",
        ),
        exported: counter(
            "freeway_otel_exported_spans_total",
            "Spans the OTLP collector accepted.",
        ),
    }
});

/// Sets telemetry up from `[telemetry]` (once per process) and returns the exporter service
/// to run; `None` when it is off.
pub fn install(config: &Config) -> Option<export::Exporter> {
    LazyLock::force(&METRICS);
    let t = &config.telemetry;
    let url = match t.traces_url() {
        Ok(Some(u)) => u,
        Ok(None) => return None,
        Err(e) => {
            log::error!("telemetry is off: telemetry.otlp_endpoint: {e}");
            return None;
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(t.queue_size);
    let limits = &config.limits;
    let telemetry = Telemetry {
        queue: tx,
        sample_ratio: t.sample_ratio,
        capture_content: t.capture_content,
        trust_forwarded_for: limits.trust_forwarded_for,
        trusted_proxies: limits
            .trusted_proxies
            .iter()
            .filter_map(|p| IpNet::parse(p).ok())
            .collect(),
        last_warning: AtomicU64::new(0),
    };
    if TELEMETRY.set(telemetry).is_err() {
        log::warn!("telemetry was already set up in this process");
        return None;
    }
    log::info!(
        "telemetry: OTLP traces to {}://{}:{}{} (sampling {})",
        if url.tls { "https" } else { "http" },
        url.host,
        url.port,
        url.path,
        t.sample_ratio
    );
    Some(export::Exporter::new(rx, url, t))
}

/// Whether telemetry is on in this process.
pub fn enabled() -> bool {
    TELEMETRY.get().is_some()
}

/// A request's trace: decided on first use (the first attempt, the passthrough rewrite, or
/// the record), so requests never traced cost nothing.
#[derive(Debug, Default)]
pub enum TraceSlot {
    #[default]
    Undecided,
    /// Telemetry off, or the request is not sampled and has no client trace to pass on.
    Off,
    On(Box<Trace>),
}

impl TraceSlot {
    /// The request's trace (deciding now if not yet decided); `None` when not traced.
    #[inline]
    pub fn get(&mut self, req: &RequestHeader, start: Instant) -> Option<&mut Trace> {
        if let TraceSlot::Undecided = self {
            *self = decide(req, start);
        }
        match self {
            TraceSlot::On(t) => Some(t),
            _ => None,
        }
    }

    /// The trace, when decided and on.
    #[inline]
    pub fn trace(&mut self) -> Option<&mut Trace> {
        match self {
            TraceSlot::On(t) => Some(t),
            _ => None,
        }
    }
}

#[cold]
fn decide(req: &RequestHeader, start: Instant) -> TraceSlot {
    let Some(tel) = TELEMETRY.get() else {
        return TraceSlot::Off;
    };
    let parent = req
        .headers
        .get("traceparent")
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let sampled = match parent {
        Some(p) => p.sampled,
        None => tel.sample_ratio >= 1.0 || fastrand::f64() < tel.sample_ratio,
    };
    if !sampled && parent.is_none() {
        return TraceSlot::Off;
    }
    let tracestate = parent.and(
        req.headers
            .get("tracestate")
            .map(|v| v.as_bytes())
            .filter(|v| valid_tracestate(v))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string),
    );
    let start_ns = now_ns().saturating_sub(start.elapsed().as_nanos() as u64);
    TraceSlot::On(Box::new(Trace {
        trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
        parent: parent.map(|p| p.span_id),
        span_id: new_span_id(),
        sampled,
        tracestate,
        start_ns,
        pending: None,
        attempts: Vec::new(),
        server: ServerEnd::default(),
    }))
}

impl Trace {
    /// Starts an attempt's span (ending any still open, which cannot normally happen).
    fn begin(&mut self, body: Option<&[u8]>) {
        let (temperature, content) = match (self.sampled, body) {
            (true, Some(b)) => (
                span::find_temperature(b),
                TELEMETRY
                    .get()
                    .filter(|t| t.capture_content)
                    .map(|_| capped_text(b)),
            ),
            _ => (None, None),
        };
        self.pending = Some(Pending {
            span_id: new_span_id(),
            start_ns: now_ns(),
            temperature,
            content,
            finish_reasons: Vec::new(),
            target: None,
        });
    }

    /// Writes the current attempt's `traceparent` (and the client's `tracestate`).
    fn propagate(&self, header: &mut RequestHeader) {
        let Some(p) = &self.pending else { return };
        let tp = traceparent(&self.trace_id, &p.span_id, self.sampled);
        if let Ok(v) = http::HeaderValue::from_bytes(&tp) {
            let _ = header.insert_header("traceparent", v);
        }
        match self
            .tracestate
            .as_deref()
            .and_then(|s| http::HeaderValue::from_str(s).ok())
        {
            Some(v) => {
                let _ = header.insert_header("tracestate", v);
            }
            None => {
                header.remove_header("tracestate");
            }
        }
    }
}

fn capped_text(b: &[u8]) -> String {
    let b = &b[..b.len().min(MAX_CONTENT)];
    String::from_utf8_lossy(b).into_owned()
}

/// Before an upstream attempt: opens its span.
#[inline]
pub fn attempt_begin(slot: &mut TraceSlot, req: &RequestHeader, start: Instant, out: &Outbound) {
    if let Some(t) = slot.get(req, start) {
        let body = match &out.body {
            Body::One(b) => Some(&b[..]),
            Body::Pieces(_) => None,
        };
        t.begin(body);
    }
}

/// On the upstream request head: the attempt's `traceparent`.
#[inline]
pub fn attempt_header(slot: &mut TraceSlot, header: &mut RequestHeader) {
    if let Some(t) = slot.trace() {
        t.propagate(header);
    }
}

/// Notes `finish_reason`s (OpenAI, Anthropic `stop_reason`, Gemini `finishReason`) seen in
/// upstream answer bytes.
#[inline]
pub fn answer_bytes(slot: &mut TraceSlot, bytes: &[u8]) {
    if let Some(t) = slot.trace() {
        if let (true, Some(p)) = (t.sampled, &mut t.pending) {
            span::finish_reasons(bytes, &mut p.finish_reasons);
        }
    }
}

/// How an attempt ended.
pub struct AttemptEnd<'a> {
    /// `gen_ai.operation.name`.
    pub operation: &'static str,
    pub provider: &'a str,
    pub model: &'a str,
    pub url: Option<&'a UpstreamUrl>,
    /// `freeway.attempt` (1-based).
    pub attempt: u32,
    pub max_tokens: Option<u32>,
    pub status: u16,
    pub usage: Option<Usage>,
    /// From the attempt's start.
    pub first_content: Option<Duration>,
    pub streamed: bool,
    pub broken: bool,
    pub error_type: Option<String>,
}

/// After an upstream attempt: closes its span.
pub fn attempt_end(slot: &mut TraceSlot, end: AttemptEnd<'_>) {
    let Some(t) = slot.trace() else { return };
    let Some(p) = t.pending.take() else { return };
    if !t.sampled {
        return;
    }
    let (host, port) = end
        .url
        .map_or((String::new(), 0), |u| (u.host.clone(), u.port));
    t.attempts.push(ClientSpan {
        span_id: p.span_id,
        start_ns: p.start_ns,
        end_ns: now_ns(),
        operation: Some(end.operation),
        provider: end.provider.to_string(),
        model: end.model.to_string(),
        server_address: host,
        server_port: port,
        max_tokens: end.max_tokens,
        temperature: p.temperature,
        status: end.status,
        usage: end.usage,
        finish_reasons: p.finish_reasons,
        first_content: end.first_content,
        streamed: end.streamed,
        broken: end.broken,
        error_type: end.error_type,
        attempt: end.attempt,
        content: p.content,
    });
}

/// The `gen_ai.operation.name` for an endpoint label.
pub fn operation(endpoint_label: &'static str) -> &'static str {
    match endpoint_label {
        "chat" | "responses" | "messages" => "chat",
        other => other,
    }
}

/// A passthrough request's upstream head: its span opens, the client's `traceparent` is
/// replaced by the attempt's.
pub fn passthrough_begin(
    slot: &mut TraceSlot,
    upstream: &mut RequestHeader,
    start: Instant,
    provider: &str,
    url: Option<&UpstreamUrl>,
) {
    if let Some(t) = slot.get(upstream, start) {
        t.begin(None);
        if let Some(p) = &mut t.pending {
            p.target = Some((
                provider.to_string(),
                url.map_or(String::new(), |u| u.host.clone()),
                url.map_or(0, |u| u.port),
            ));
        }
        t.propagate(upstream);
    }
}

/// The request's own facts, for its server span.
pub struct RequestEnd<'a> {
    pub method: &'static str,
    pub route: Option<&'static str>,
    pub status: u16,
    pub peer: Option<std::net::IpAddr>,
    pub forwarded_for: http::header::GetAll<'a, http::HeaderValue>,
    pub key_label: Option<&'a str>,
    pub cache_status: &'static str,
    pub cost_usd: f64,
    pub attempts: u32,
    pub request_id: &'a str,
    pub requested_model: Option<&'a str>,
    pub usage: Option<Usage>,
}

/// The request is done: closes the server span (and a passthrough's client span) and
/// queues the trace for export. Never waits.
pub fn request_end(slot: &mut TraceSlot, req: &RequestHeader, start: Instant, end: RequestEnd) {
    let Some(t) = slot.get(req, start) else {
        return;
    };
    let Some(tel) = TELEMETRY.get() else { return };
    if !t.sampled {
        return;
    }
    let end_ns = now_ns();
    if let Some(p) = t.pending.take() {
        // A passthrough attempt ends with the request.
        let (provider, host, port) = p.target.unwrap_or_default();
        t.attempts.push(ClientSpan {
            span_id: p.span_id,
            start_ns: p.start_ns,
            end_ns,
            provider,
            server_address: host,
            server_port: port,
            status: end.status,
            error_type: (end.status >= 500 || end.status == 0).then(|| end.status.to_string()),
            attempt: 1,
            ..Default::default()
        });
    }
    t.server = ServerEnd {
        end_ns,
        method: end.method,
        route: end.route,
        status: end.status,
        client_ip: client_ip(
            end.peer,
            end.forwarded_for.iter().filter_map(|v| v.to_str().ok()),
            tel.trust_forwarded_for,
            &tel.trusted_proxies,
        ),
        key_label: end.key_label.map(str::to_string),
        cache_status: end.cache_status,
        cost_usd: end.cost_usd,
        attempts: end.attempts,
        request_id: end.request_id.to_string(),
        requested_model: end.requested_model.map(str::to_string),
        usage: end.usage,
    };
    if let TraceSlot::On(trace) = std::mem::replace(slot, TraceSlot::Off) {
        tel.push(trace);
    }
}

impl Telemetry {
    fn push(&self, trace: Box<Trace>) {
        let spans = trace.span_count();
        if self.queue.try_send(trace).is_err() {
            METRICS.dropped.inc_by(spans);
            self.warn_dropping("the export queue is full");
        }
    }

    fn warn_dropping(&self, why: &str) {
        warn_rate_limited(&self.last_warning, why);
    }
}

/// A "dropping spans" warning at most every 10 s.
pub(crate) fn warn_rate_limited(last: &AtomicU64, why: &str) {
    let now = now_ns() / 1_000_000_000;
    let prev = last.load(Ordering::Relaxed);
    if now >= prev + 10
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!(
            "telemetry: dropping spans: {why} ({} dropped so far)",
            METRICS.dropped.get()
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(telemetry: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n[telemetry]\n{telemetry}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_collector_url_gets_the_traces_path_unless_it_names_one() {
        let c = parse("otlp_endpoint = \"http://127.0.0.1:4318\"").unwrap();
        let u = c.telemetry.traces_url().unwrap().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        let c = parse("otlp_endpoint = \"https://otlp.example.com/otlp/v1/traces\"").unwrap();
        let u = c.telemetry.traces_url().unwrap().unwrap();
        assert!(u.tls);
        assert_eq!(u.path, "/otlp/v1/traces");
        // Off by default.
        assert!(parse("").unwrap().telemetry.traces_url().unwrap().is_none());
    }

    #[test]
    fn bad_telemetry_settings_name_their_key() {
        for (bad, key) in [
            ("otlp_endpoint = \"udp://x\"", "telemetry.otlp_endpoint"),
            ("sample_ratio = 1.5", "telemetry.sample_ratio"),
            ("queue_size = 0", "telemetry.queue_size"),
            ("headers = { \"bad header\" = \"x\" }", "telemetry.headers"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
