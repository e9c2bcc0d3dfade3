//! The per-request context that travels through every phase.

use crate::config::Cost;
use crate::observe::metrics::InflightGuard;
use crate::providers::Usage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the gateway knows about one request, filled in as it goes.
pub struct RequestCtx {
    /// `x-gateway-request-id`.
    pub id: String,
    pub start: Instant,
    /// Time spent waiting on providers (connect, first byte, body reads). The gateway's own
    /// overhead is the elapsed time minus this.
    pub upstream_wait: Duration,
    /// The endpoint serving the request (its label, whether it is limited, its handler).
    pub endpoint: &'static super::endpoint::Endpoint,
    /// The request's `x-gateway-*` controls, parsed once (model endpoints only).
    pub controls: super::controls::Controls,
    /// Label of the gateway key used, once authenticated.
    pub key_label: Option<String>,
    /// The provider and model that served (or last tried) the request.
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Upstream attempts made (`x-gateway-attempts`).
    pub attempts: u32,
    /// Which of the provider's keys the current attempt uses.
    pub upstream_key: Option<usize>,
    /// One line per failed attempt: `provider/model: why`.
    pub failures: Vec<String>,
    /// Status answered to the client.
    pub status: u16,
    pub streamed: bool,
    /// Set for `/providers/{name}/…`: the request continues through the proxy phases.
    pub passthrough: Option<super::passthrough::Target>,
    /// A passthrough error body, held until its end to be scrubbed of secrets.
    pub error_body: Option<bytes::BytesMut>,
    /// When a passthrough request left for its provider (its wait is not gateway overhead).
    pub upstream_started: Option<Instant>,
    /// The `model` field as the client sent it.
    pub requested_model: Option<String>,
    /// The gateway's own prompt-token estimate, used when the provider reports no usage.
    pub prompt_estimate: u32,
    /// Token usage the provider reported for the answer.
    pub usage: Option<Usage>,
    /// Images generated for the answer (`/v1/images/generations`): the request log's count.
    pub images: u32,
    /// Request start to the first content (stream) or the whole answer (JSON).
    pub ttft: Option<Duration>,
    /// Per-million-token prices of the model that answered.
    pub price: Option<Cost>,
    /// Body bytes of the last response written (for a token estimate without usage).
    pub response_bytes: u64,
    /// Counts the request in `freeway_inflight_requests` until the context is dropped.
    pub inflight: InflightGuard,
    /// Cache status and rate-limit headers (`guard`).
    pub stamp: super::guard::Stamp,
    /// The `Origin` allowed to read the answer (CORS), when the request came from one.
    pub cors: Option<http::HeaderValue>,
    /// The request body's bytes, held against `server.max_buffered_body_bytes`.
    pub body_hold: super::body::Hold,
    /// The calling key's policy, its client provider key (BYOK) and the answer's cost.
    pub spend: super::spend::Spend,
    /// The request's OpenTelemetry trace (`[telemetry]`), decided on first use.
    pub trace: crate::telemetry::TraceSlot,
    /// The guardrails applying to this request and what they matched (`None`: none).
    pub guardrails: Option<std::sync::Arc<crate::guardrails::Applied>>,
    /// Stream resume: whether it is on, a stream paused for a continuation, what the
    /// earlier attempts of a resumed stream used.
    pub resume: super::resume::Resume,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn boot_id() -> u32 {
    use std::sync::OnceLock;
    static BOOT: OnceLock<u32> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u32) ^ std::process::id().rotate_left(16)
    })
}

/// `fw-`, then the boot id and the request counter in hex, each padded to at least 8
/// digits: what `format!("fw-{:08x}{:08x}")` wrote, written by hand (the formatting
/// machinery cost ~1,300 instructions per request).
fn request_id(boot: u32, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(24);
    id.push_str("fw-");
    for v in [u64::from(boot), n] {
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(8);
        for i in (0..digits).rev() {
            id.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
        }
    }
    id
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        RequestCtx {
            id: request_id(boot_id(), n),
            start: Instant::now(),
            upstream_wait: Duration::ZERO,
            endpoint: &super::endpoint::NOT_FOUND,
            controls: Default::default(),
            key_label: None,
            provider: None,
            model: None,
            attempts: 0,
            upstream_key: None,
            failures: Vec::new(),
            status: 0,
            streamed: false,
            passthrough: None,
            error_body: None,
            upstream_started: None,
            requested_model: None,
            prompt_estimate: 0,
            usage: None,
            images: 0,
            ttft: None,
            price: None,
            response_bytes: 0,
            inflight: InflightGuard::new(),
            stamp: Default::default(),
            cors: None,
            body_hold: Default::default(),
            spend: Default::default(),
            trace: Default::default(),
            guardrails: None,
            resume: Default::default(),
        }
    }

    /// Gateway time so far, excluding upstream waits.
    pub fn overhead(&self) -> Duration {
        self.start.elapsed().saturating_sub(self.upstream_wait)
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_what_format_would_write() {
        for (boot, n) in [
            (0, 0),
            (0xdead_beef, 1),
            (7, 0xffff_ffff),
            (1, 0x1_0000_0000),
            (u32::MAX, u64::MAX),
        ] {
            assert_eq!(super::request_id(boot, n), format!("fw-{boot:08x}{n:08x}"));
        }
    }
}
