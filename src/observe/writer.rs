//! The request log's bounded queue and its writer thread.
//!
//! The request path only `try_send`s a record: when the queue is full the record is dropped
//! and counted (`freeway_log_records_dropped_total`, plus a warning at most every 10 s), so
//! a slow disk never slows a request. One dedicated thread writes whatever is queued in one
//! transaction per batch, prints the JSON access-log lines, and applies retention.
//!
//! The thread and its SQLite connection are created by a background service after Pingora
//! has (maybe) forked. At shutdown the service's guard is dropped when Pingora stops the
//! runtimes (after the grace period, when in-flight requests are done): it tells the thread
//! to drain the queue and waits for it, so every accepted record reaches the disk.

use super::db;
use super::metrics::METRICS;
use super::record::{IpCache, IpRedactor, RequestRecord};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most records written in one transaction.
const MAX_BATCH: usize = 2048;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The request path's end of the queue.
pub struct LogQueue {
    /// Boxed: the ring then holds pointers (512 KiB at the default 65536 slots) instead of
    /// whole records (~20 MiB), which kept both threads missing the cache.
    tx: SyncSender<Box<RequestRecord>>,
    /// Unix seconds of the last "dropping records" warning.
    last_warning: AtomicU64,
}

impl LogQueue {
    /// Queues a record; never blocks.
    pub fn push(&self, record: Box<RequestRecord>) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.log_dropped.inc();
                let now = unix_secs();
                let last = self.last_warning.load(Ordering::Relaxed);
                if now >= last + 10
                    && self
                        .last_warning
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    log::warn!(
                        "request log queue full: dropping records ({} dropped so far)",
                        METRICS.log_dropped.get()
                    );
                }
            }
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the writer thread does with each record.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The SQLite store; `None` = no request log (access log only).
    pub db_path: Option<PathBuf>,
    /// Print one line per record to stdout.
    pub access_log: bool,
    /// The access line as JSON (with the other logs as JSON), else as text.
    pub access_json: bool,
    pub retention_days: u32,
    pub max_rows: u64,
    /// How long the writer waits for more records after the first of a batch.
    pub linger: Duration,
    /// How client IPs are written (log and store alike).
    pub redactor: IpRedactor,
}

/// Creates the queue (before the fork: it is plain memory) and the service that will drain it.
pub fn queue(capacity: usize, config: WriterConfig) -> (LogQueue, LogWriterService) {
    let (tx, rx) = sync_channel(capacity);
    (
        LogQueue {
            tx,
            last_warning: AtomicU64::new(0),
        },
        LogWriterService {
            rx: Mutex::new(Some(rx)),
            config,
        },
    )
}

/// Starts the writer thread and, at shutdown, drains and joins it.
pub struct LogWriterService {
    rx: Mutex<Option<Receiver<Box<RequestRecord>>>>,
    config: WriterConfig,
}

/// Stops and joins the writer thread when dropped.
struct WriterGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the request log writer panicked");
            }
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for LogWriterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let config = self.config.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || run(rx, config, flag));
        let guard = match thread {
            Ok(t) => WriterGuard {
                stop,
                thread: Some(t),
            },
            Err(e) => {
                log::error!("cannot start the request log writer: {e}");
                return;
            }
        };
        let _ = shutdown.changed().await;
        // In-flight requests still log during the grace period: keep the writer running
        // until Pingora drops this future (runtime shutdown), which drops the guard.
        std::future::pending::<()>().await;
        drop(guard);
    }
}

/// The writer thread.
fn run(rx: Receiver<Box<RequestRecord>>, config: WriterConfig, stop: Arc<AtomicBool>) {
    let mut conn = config.db_path.as_ref().and_then(|p| {
        db::LogDb::open(p)
            .map_err(|e| log::error!("request log disabled: {e}"))
            .ok()
    });
    let mut batch: Vec<Box<RequestRecord>> = Vec::with_capacity(MAX_BATCH);
    let mut last_retention: Option<Instant> = None;
    let stdout = std::io::stdout();
    let mut line = Vec::with_capacity(1024);
    let mut ips = IpCache::new(config.redactor.clone());
    loop {
        let stopping = stop.load(Ordering::Acquire);
        match rx.recv_timeout(Duration::from_millis(if stopping { 0 } else { 100 })) {
            Ok(first) => {
                batch.push(first);
                // Linger: let records gather so a busy gateway writes few large transactions
                // and its pushes rarely need to wake this thread (measured: per-record
                // wake-ups and one-row transactions cost ~30% of the gateway's CPU).
                if !stopping {
                    std::thread::sleep(config.linger);
                }
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) if stopping => return,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if batch.is_empty() {
            if let Some(c) = conn.as_ref() {
                if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                    last_retention = Some(Instant::now());
                    retention(c, &config);
                }
            }
            continue;
        }
        if config.access_log {
            let mut out = stdout.lock();
            for r in &batch {
                line.clear();
                let client_ip = r.client_ip.map(|ip| ips.get(ip));
                let access = AccessLine {
                    record: r,
                    client_ip,
                };
                let written = if config.access_json {
                    serde_json::to_writer(&mut line, &access).is_ok()
                } else {
                    access.write_text(&mut line).is_ok()
                };
                if written {
                    line.push(b'\n');
                    let _ = out.write_all(&line);
                }
            }
            let _ = out.flush();
        }
        if let Some(c) = conn.as_mut() {
            match c.insert(&batch, &mut ips) {
                Ok(()) => METRICS.log_written.inc_by(batch.len() as u64),
                Err(e) => {
                    // The disk is the problem, not the request: count and move on.
                    METRICS.log_dropped.inc_by(batch.len() as u64);
                    log::error!("cannot write {} request log records: {e}", batch.len());
                }
            }
        }
        batch.clear();
    }
}

fn retention(conn: &rusqlite::Connection, config: &WriterConfig) {
    let cutoff = (config.retention_days > 0).then(|| {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        now_ms - i64::from(config.retention_days) * 86_400_000
    });
    match db::retain(conn, cutoff, config.max_rows) {
        Ok(0) => {}
        Ok(n) => log::info!("request log retention: deleted {n} old records"),
        Err(e) => log::error!("request log retention failed: {e}"),
    }
}

/// The access-log line: the record, its redacted client IP, and a `type` so log shippers
/// can pick it out.
struct AccessLine<'a> {
    record: &'a RequestRecord,
    client_ip: Option<&'a str>,
}

impl AccessLine<'_> {
    /// The line for a person reading a terminal, in the shape of the other log lines.
    fn write_text(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let r = self.record;
        let at = UNIX_EPOCH + Duration::from_millis(r.ts_ms.max(0) as u64);
        let served = if r.provider.is_empty() {
            "-".to_string()
        } else {
            format!("{}/{}", r.provider, r.model)
        };
        write!(
            out,
            "{}  INFO access: {} {} {} {served} attempts={} cache={} {:.1}ms {} {}",
            crate::time::rfc3339(at),
            r.method,
            r.endpoint,
            r.status,
            r.attempts,
            r.cache_status,
            r.duration_ms,
            self.client_ip.unwrap_or("-"),
            r.request_id,
        )
    }
}

impl serde::Serialize for AccessLine<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            client_ip: Option<&'a str>,
            #[serde(flatten)]
            record: &'a RequestRecord,
        }
        Line {
            kind: "access",
            client_ip: self.client_ip,
            record: self.record,
        }
        .serialize(s)
    }
}
