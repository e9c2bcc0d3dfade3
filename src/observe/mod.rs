//! What the gateway did, for operators: Prometheus metrics, the per-request log (SQLite,
//! through a bounded queue and a writer thread), the JSON access log, `/v1/analytics` and
//! the `/usage` dashboard.
//!
//! Everything is recorded in one place, `Observer::record`, called from the `logging`
//! phase, which Pingora runs for every request (answered locally, proxied, rejected or
//! failed).

pub mod analytics;
pub mod dashboard;
pub mod db;
pub mod metrics;
pub mod record;
pub mod writer;

use crate::config::Config;
use crate::proxy::ctx::RequestCtx;
use metrics::{status_label, METRICS};
use parking_lot::Mutex;
use pingora::proxy::Session;
use record::{cap, cost_usd, method_name, IpRedactor, RequestRecord, MAX_FIELD};
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use writer::{LogQueue, LogWriterService, WriterConfig};

/// The request path's handle on observability.
pub struct Observer {
    /// `None` when neither the request log nor the access log is on.
    queue: Option<LogQueue>,
    /// The store, for analytics reads; `None` when the request log is off.
    db_path: Option<PathBuf>,
    /// Idle read connections for analytics (opened lazily, after any fork).
    readers: Mutex<Vec<Connection>>,
}

impl Observer {
    /// The observer and, when something is to be written, the writer service to run.
    pub fn new(config: &Config) -> (Observer, Option<LogWriterService>) {
        let o = &config.observability;
        let db_path = o.request_log.then(|| PathBuf::from(&config.storage.path));
        // The access log follows RUST_LOG (`access=info`, or any filter enabling info).
        let access_log = tracing::enabled!(target: "access", tracing::Level::INFO);
        let (queue, service) = if db_path.is_some() || access_log {
            let (q, s) = writer::queue(
                o.log_queue,
                WriterConfig {
                    db_path: db_path.clone(),
                    access_log,
                    retention_days: o.retention_days,
                    max_rows: o.max_rows,
                    linger: std::time::Duration::from_millis(o.log_linger_ms),
                    redactor: IpRedactor::new(o.redact_ip, &o.ip_hash_salt),
                },
            );
            (Some(q), Some(s))
        } else {
            (None, None)
        };
        let observer = Observer {
            queue,
            db_path,
            readers: Mutex::new(Vec::new()),
        };
        (observer, service)
    }

    /// Records a finished request: metrics, then (unless it is dashboard or health polling)
    /// a log record. Moves strings out of `ctx`, which is done with after this.
    pub fn record(&self, session: &Session, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let path = req.uri.path();
        let endpoint = endpoint_label(path);
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
                // No usage from the provider: ~4 bytes a token, less the JSON wrapper.
                let completion = if ctx.streamed {
                    0
                } else {
                    ctx.response_bytes.saturating_sub(300) / 4
                };
                (u64::from(ctx.prompt_estimate), completion, true)
            }
            None => (0, 0, false),
        };
        let cost = ctx.price.map_or(0.0, |p| {
            cost_usd(prompt, completion, p.input_per_mtok, p.output_per_mtok)
        });

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

        let Some(queue) = &self.queue else { return };
        if status < 400 && is_polling(endpoint) {
            return;
        }
        let now = SystemTime::now();
        let started = now.checked_sub(elapsed).unwrap_or(now);
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let metadata = header("x-gateway-metadata")
            .or_else(|| header("cf-aig-metadata"))
            .map(|m| cap(m.to_string(), MAX_FIELD));
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        queue.push(Box::new(RequestRecord {
            ts_ms: started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            request_id: std::mem::take(&mut ctx.id),
            key_label: ctx.key_label.take().unwrap_or_default(),
            client_ip,
            method: method_name(&req.method),
            endpoint,
            path: matches!(endpoint, "other" | "passthrough")
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
            ttft_ms: ctx.ttft.map(record::ms),
            duration_ms: record::ms(elapsed),
            overhead_ms: record::ms(overhead),
            cost_usd: cost,
            metadata,
        }));
    }

    /// Runs `f` with a read connection to the store, off the async threads.
    pub async fn with_reader<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let Some(path) = self.db_path.clone() else {
            return Err("the request log is off ([observability] request_log = false)".into());
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match this.readers.lock().pop() {
                Some(c) => c,
                None => db::open(&path)?,
            };
            let out = f(&conn).map_err(|e| format!("request log query failed: {e}"));
            let mut idle = this.readers.lock();
            if idle.len() < 4 {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| format!("request log query failed: {e}"))?
    }
}

/// A fixed name per endpoint: bounded metric labels, and a column to group by.
pub fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" | "/chat/completions" => "chat",
        "/v1/responses" | "/responses" => "responses",
        "/v1/embeddings" | "/embeddings" => "embeddings",
        "/v1/audio/transcriptions" => "transcriptions",
        "/v1/audio/speech" => "speech",
        "/v1/models" | "/models" => "models",
        "/v1/routing/status" => "routing_status",
        "/v1/analytics" => "analytics",
        "/v1/analytics/failures" => "analytics_failures",
        "/health" | "/healthz" => "health",
        "/metrics" => "metrics",
        "/usage" => "usage",
        p if p.starts_with("/providers/") => "passthrough",
        _ => "other",
    }
}

/// Endpoints that dashboards and probes poll: their successes would drown the log.
fn is_polling(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "health" | "metrics" | "usage" | "analytics" | "analytics_failures" | "routing_status"
    )
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
