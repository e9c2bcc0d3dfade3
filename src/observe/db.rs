//! The request log's table in the embedded SQLite store (the same file as the daily
//! counters, its own connections): schema, batched inserts, retention, and the analytics
//! queries. Every call blocks: run them on the writer thread or `spawn_blocking`.

use super::record::RequestRecord;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS request_log (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    key_label TEXT NOT NULL,
    client_ip TEXT,
    method TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    path TEXT NOT NULL,
    requested_model TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failures TEXT,
    status INTEGER NOT NULL,
    cache_status TEXT NOT NULL,
    streamed INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    tokens_estimated INTEGER NOT NULL,
    ttft_ms REAL,
    duration_ms REAL NOT NULL,
    overhead_ms REAL NOT NULL,
    lat_bucket INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    metadata TEXT
);
-- Covering index: every analytics aggregate is a range scan of this index alone.
CREATE INDEX IF NOT EXISTS request_log_time ON request_log (
    ts_ms, provider, model, key_label, status, cache_status, attempts, lat_bucket,
    prompt_tokens, completion_tokens, cost_usd, overhead_ms
);
-- Recent failures (errors and failed-over attempts) without scanning the successes.
CREATE INDEX IF NOT EXISTS request_log_failed ON request_log (ts_ms)
    WHERE status >= 400 OR failures IS NOT NULL;
";

/// Opens a connection to the store at `path` (WAL) and makes sure the table exists.
pub fn open(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let conn =
        Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )
    .and_then(|_| conn.execute_batch(SCHEMA))
    .map_err(|e| {
        format!(
            "cannot initialise the request log in {}: {e}",
            path.display()
        )
    })?;
    Ok(conn)
}

/// Latency bucket: 16 per e-fold of (1 + ms), about 6% wide. Percentiles are read from
/// bucket counts, so they are exact to within one bucket.
pub fn lat_bucket(ms: f64) -> i64 {
    ((ms.max(0.0) + 1.0).ln() * 16.0).round() as i64
}

fn bucket_ms(b: i64) -> f64 {
    ((b as f64) / 16.0).exp() - 1.0
}

/// Writes `records` in one transaction.
pub fn insert(conn: &mut Connection, records: &[RequestRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO request_log (ts_ms, request_id, key_label, client_ip, method, endpoint,
                path, requested_model, provider, model, attempts, failures, status, cache_status,
                streamed, prompt_tokens, completion_tokens, tokens_estimated, ttft_ms,
                duration_ms, overhead_ms, lat_bucket, cost_usd, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
        )?;
        for r in records {
            let failures = (!r.failures.is_empty())
                .then(|| serde_json::to_string(&r.failures).unwrap_or_default());
            stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.key_label,
                r.client_ip,
                r.method,
                r.endpoint,
                r.path,
                r.requested_model,
                r.provider,
                r.model,
                r.attempts,
                failures,
                r.status,
                r.cache_status,
                r.streamed,
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                r.tokens_estimated,
                r.ttft_ms,
                r.duration_ms,
                r.overhead_ms,
                lat_bucket(r.duration_ms),
                r.cost_usd,
                r.metadata,
            ])?;
        }
    }
    tx.commit()
}

/// Deletes records older than `cutoff_ms` and beyond the newest `max_rows` (0 = no cap).
/// Returns how many were deleted.
pub fn retain(conn: &Connection, cutoff_ms: Option<i64>, max_rows: u64) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    if let Some(cutoff) = cutoff_ms {
        // ids grow with time: delete by id range, found through the time index.
        let first_kept: Option<i64> = conn
            .query_row(
                "SELECT min(id) FROM request_log WHERE ts_ms >= ?1",
                [cutoff],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        deleted += match first_kept {
            Some(id) => conn.execute("DELETE FROM request_log WHERE id < ?1", [id])?,
            None => conn.execute("DELETE FROM request_log WHERE ts_ms < ?1", [cutoff])?,
        };
    }
    if max_rows > 0 {
        let max_id: Option<i64> =
            conn.query_row("SELECT max(id) FROM request_log", [], |r| r.get(0))?;
        if let Some(max_id) = max_id {
            let keep_from = max_id - max_rows as i64 + 1;
            deleted += conn.execute("DELETE FROM request_log WHERE id < ?1", [keep_from])?;
        }
    }
    Ok(deleted)
}

/// How `/v1/analytics` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    None,
    Provider,
    Model,
    Key,
    Day,
    Hour,
    Minute,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "" | "none" => GroupBy::None,
            "provider" => GroupBy::Provider,
            "model" => GroupBy::Model,
            "key" => GroupBy::Key,
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            "minute" => GroupBy::Minute,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::None => "none",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Minute => "minute",
        }
    }

    /// Two SQL expressions naming the group (the second only used by `model`).
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            GroupBy::None => ("''", "''"),
            GroupBy::Provider => ("provider", "''"),
            GroupBy::Model => ("provider", "model"),
            GroupBy::Key => ("key_label", "''"),
            GroupBy::Day => ("ts_ms / 86400000 * 86400", "''"),
            GroupBy::Hour => ("ts_ms / 3600000 * 3600", "''"),
            GroupBy::Minute => ("ts_ms / 60000 * 60", "''"),
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Aggregates over a set of requests.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Aggregate {
    pub requests: u64,
    pub success: u64,
    pub failure: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Served after at least one failed attempt.
    pub failovers: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub cache_hits: u64,
    pub cache_hit_rate: f64,
    pub avg_overhead_ms: f64,
    pub latency_ms: Percentiles,
    #[serde(skip)]
    buckets: Vec<(i64, u64)>,
    #[serde(skip)]
    overhead_sum: f64,
}

impl Aggregate {
    fn add(&mut self, row: &Row) {
        self.requests += row.n;
        self.success += row.ok;
        self.failure += row.n - row.ok;
        self.rate_limited += row.limited;
        self.failovers += row.failovers;
        self.prompt_tokens += row.prompt;
        self.completion_tokens += row.completion;
        self.cost_usd += row.cost;
        self.cache_hits += row.hits;
        self.overhead_sum += row.overhead;
        match self.buckets.binary_search_by_key(&row.bucket, |b| b.0) {
            Ok(i) => self.buckets[i].1 += row.n,
            Err(i) => self.buckets.insert(i, (row.bucket, row.n)),
        }
    }

    fn finish(&mut self) {
        if self.requests == 0 {
            return;
        }
        self.cache_hit_rate = self.cache_hits as f64 / self.requests as f64;
        self.avg_overhead_ms = self.overhead_sum / self.requests as f64;
        let quantile = |q: f64| {
            let rank = (q * self.requests as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for &(b, n) in &self.buckets {
                seen += n;
                if seen >= rank {
                    return (bucket_ms(b) * 10.0).round() / 10.0;
                }
            }
            0.0
        };
        self.latency_ms = Percentiles {
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
        };
    }
}

struct Row {
    bucket: i64,
    n: u64,
    ok: u64,
    limited: u64,
    failovers: u64,
    prompt: u64,
    completion: u64,
    cost: f64,
    hits: u64,
    overhead: f64,
}

/// The totals and per-group aggregates for `[from_ms, to_ms)`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analytics {
    pub totals: Aggregate,
    /// Group key → aggregate, in key order.
    pub groups: BTreeMap<String, Aggregate>,
}

/// One pass over the covering index: counts per (group, latency bucket), folded here.
pub fn analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    group: GroupBy,
) -> rusqlite::Result<Analytics> {
    let (g1, g2) = group.columns();
    let sql = format!(
        "SELECT {g1}, {g2}, lat_bucket, count(*), sum(status < 400), sum(status = 429),
                sum(attempts > 1 AND status < 400), sum(prompt_tokens), sum(completion_tokens),
                sum(cost_usd), sum(cache_status = 'HIT'), sum(overhead_ms)
         FROM request_log WHERE ts_ms >= ?1 AND ts_ms < ?2
         GROUP BY 1, 2, 3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![from_ms, to_ms])?;
    let mut out = Analytics::default();
    let text = |v: rusqlite::types::ValueRef<'_>| match v {
        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
        _ => String::new(),
    };
    while let Some(r) = rows.next()? {
        let row = Row {
            bucket: r.get(2)?,
            n: r.get::<_, i64>(3)?.max(0) as u64,
            ok: r.get::<_, i64>(4)?.max(0) as u64,
            limited: r.get::<_, i64>(5)?.max(0) as u64,
            failovers: r.get::<_, i64>(6)?.max(0) as u64,
            prompt: r.get::<_, i64>(7)?.max(0) as u64,
            completion: r.get::<_, i64>(8)?.max(0) as u64,
            cost: r.get::<_, f64>(9)?,
            hits: r.get::<_, i64>(10)?.max(0) as u64,
            overhead: r.get::<_, f64>(11)?,
        };
        out.totals.add(&row);
        if group != GroupBy::None {
            let mut key = text(r.get_ref(0)?);
            if group == GroupBy::Model {
                key = format!("{key}/{}", text(r.get_ref(1)?));
            }
            if key.is_empty() || key == "/" {
                key = "(none)".into();
            }
            out.groups.entry(key).or_default().add(&row);
        }
    }
    out.totals.finish();
    for a in out.groups.values_mut() {
        a.finish();
    }
    Ok(out)
}

/// A failed request, or one that needed failover, for the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct FailureRow {
    pub ts_ms: i64,
    pub request_id: String,
    pub endpoint: String,
    pub key_label: String,
    pub requested_model: Option<String>,
    pub provider: String,
    pub model: String,
    pub status: u16,
    pub attempts: u32,
    pub failures: Vec<String>,
    pub duration_ms: f64,
}

/// The newest failed or failed-over requests in `[from_ms, to_ms)`, newest first.
pub fn recent_failures(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    limit: u32,
) -> rusqlite::Result<Vec<FailureRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts_ms, request_id, endpoint, key_label, requested_model, provider, model,
                status, attempts, failures, duration_ms
         FROM request_log INDEXED BY request_log_failed
         WHERE (status >= 400 OR failures IS NOT NULL) AND ts_ms >= ?1 AND ts_ms < ?2
         ORDER BY ts_ms DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![from_ms, to_ms, limit], |r| {
        let failures: Option<String> = r.get(9)?;
        Ok(FailureRow {
            ts_ms: r.get(0)?,
            request_id: r.get(1)?,
            endpoint: r.get(2)?,
            key_label: r.get(3)?,
            requested_model: r.get(4)?,
            provider: r.get(5)?,
            model: r.get(6)?,
            status: r.get(7)?,
            attempts: r.get(8)?,
            failures: failures
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or_default(),
            duration_ms: r.get(10)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts_ms: i64, provider: &str, status: u16, ms: f64) -> RequestRecord {
        RequestRecord {
            ts_ms,
            request_id: format!("r{ts_ms}"),
            key_label: "k".into(),
            method: "POST".into(),
            endpoint: "chat",
            path: "/v1/chat/completions".into(),
            provider: provider.into(),
            model: "m".into(),
            attempts: 1,
            status,
            cache_status: "BYPASS",
            prompt_tokens: 10,
            completion_tokens: 5,
            duration_ms: ms,
            cost_usd: 0.001,
            ..Default::default()
        }
    }

    fn temp_db(name: &str) -> Connection {
        let dir = std::env::temp_dir().join(format!("freeway-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        open(&dir.join("t.db")).unwrap()
    }

    #[test]
    fn analytics_counts_groups_and_percentiles() {
        let mut c = temp_db("agg");
        let mut rs: Vec<RequestRecord> = (0..100)
            .map(|i| rec(1000 + i, "a", 200, (i + 1) as f64 * 10.0))
            .collect();
        rs.push(rec(2000, "b", 429, 5.0));
        let mut failed = rec(2001, "b", 502, 5.0);
        failed.failures = vec!["b/m: HTTP 500".into()];
        rs.push(failed);
        rs.push(rec(99_999, "a", 200, 1.0)); // outside the range
        insert(&mut c, &rs).unwrap();
        let a = analytics(&c, 0, 10_000, GroupBy::Provider).unwrap();
        assert_eq!(a.totals.requests, 102);
        assert_eq!(a.totals.success, 100);
        assert_eq!(a.totals.failure, 2);
        assert_eq!(a.totals.rate_limited, 1);
        assert_eq!(a.totals.prompt_tokens, 1020);
        assert_eq!(a.groups["a"].requests, 100);
        assert_eq!(a.groups["b"].failure, 2);
        let p50 = a.groups["a"].latency_ms.p50;
        assert!((p50 - 500.0).abs() / 500.0 < 0.07, "p50 {p50}");
        let p99 = a.groups["a"].latency_ms.p99;
        assert!((p99 - 990.0).abs() / 990.0 < 0.07, "p99 {p99}");
        let f = recent_failures(&c, 0, 10_000, 10).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, 502);
        assert_eq!(f[0].failures, vec!["b/m: HTTP 500".to_string()]);
        let m = analytics(&c, 0, 10_000, GroupBy::Model).unwrap();
        assert!(m.groups.contains_key("a/m"));
    }

    #[test]
    fn retention_by_age_and_rows() {
        let mut c = temp_db("ret");
        let rs: Vec<RequestRecord> = (0..50).map(|i| rec(i * 100, "a", 200, 1.0)).collect();
        insert(&mut c, &rs).unwrap();
        assert_eq!(retain(&c, Some(1000), 0).unwrap(), 10);
        assert_eq!(retain(&c, None, 15).unwrap(), 25);
        let n: i64 = c
            .query_row("SELECT count(*) FROM request_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 15);
        let min_ts: i64 = c
            .query_row("SELECT min(ts_ms) FROM request_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(min_ts, 3500);
    }
}
