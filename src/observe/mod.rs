//! What the gateway did, for operators: Prometheus metrics, the per-request log (SQLite,
//! through a bounded queue and a writer thread), the JSON access log, `/v1/analytics` and
//! the `/usage` dashboard.
//!
//! Every request is recorded in one place, `proxy::record`, called from the `logging`
//! phase, which Pingora runs for every request (answered locally, proxied, rejected or
//! failed); it counts the metrics here and pushes a [`RequestRecord`] to the log queue.

pub mod analytics;
pub mod dashboard;
pub mod db;
pub mod keys;
pub mod metrics;
pub mod record;
pub mod writer;

use crate::config::Config;
use parking_lot::Mutex;
use record::{IpRedactor, RequestRecord};
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
                    access_json: json_logs(),
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

    /// Queues a finished request's record for the request log (and the access log).
    pub fn push(&self, record: Box<RequestRecord>) {
        if let Some(queue) = &self.queue {
            queue.push(record);
        }
    }

    /// Whether records are written anywhere (else building one is wasted work).
    pub fn logging(&self) -> bool {
        self.queue.is_some()
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

/// Whether logs are JSON lines, one format for every line on stdout: yes when stdout is not
/// a terminal (a service, a pipe, a log shipper), no (text for a person) when it is.
/// `FREEWAY_LOG_FORMAT=json` or `text` overrides.
pub fn json_logs() -> bool {
    use std::io::IsTerminal;
    match std::env::var("FREEWAY_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
