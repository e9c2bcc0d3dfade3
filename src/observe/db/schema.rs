//! The raw table's layout: the order of the fields in `record` ([`FIELDS`]), the table,
//! index and view that read it, and the one-time move of stores from before `record` (with
//! [`once`], the guard the rollup's backfill shares). Separate because every other file
//! reads this layout, and it depends on none of them.

use rusqlite::Connection;

/// One row per request, in `request_log_data`: the arrival time, the status and the
/// failures are columns of their own (the indexes need them); every other field is one
/// position of `record`, a JSON array. The view `request_log` shows every field as a column
/// (`SELECT provider, model, duration_ms FROM request_log` works in any SQLite client), and
/// is what analytics reads.
///
/// Why: each bound column costs the writer ~240 instructions a row (bind, VDBE, record
/// encoding) where a field appended to `record` costs ~30, and the writer's whole cost per
/// request is budgeted at a few percent of the gateway's (README, Performance). Generated
/// columns would read the same but SQLite computes them on every INSERT; a view costs
/// nothing until read.
pub(super) const FIELDS: [&str; 22] = [
    "request_id",
    "key_label",
    "client_ip",
    "method",
    "endpoint",
    "path",
    "requested_model",
    "provider",
    "model",
    "attempts",
    "cache_status",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "tokens_estimated",
    "ttft_ms",
    "duration_ms",
    "overhead_ms",
    "cost_usd",
    "metadata",
    "guardrails",
    "images",
];

/// The fields a store from before `request_log_data` had as columns.
const V1_FIELDS: usize = 20;

/// SQL reading field `name` of a `request_log_data` row.
pub(super) fn field(name: &str) -> String {
    let i = FIELDS.iter().position(|f| *f == name).expect("a field");
    format!("json_extract(record, '$[{i}]')")
}

/// The request log's table, indexes and view.
pub(super) fn schema() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let columns: Vec<String> = FIELDS
            .iter()
            .map(|name| format!("{} AS {name}", field(name)))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS request_log_data (
                 id INTEGER PRIMARY KEY,
                 ts_ms INTEGER,
                 status INTEGER,
                 failures TEXT,
                 record TEXT
             );
             -- Recent failures (errors and failed-over attempts) without the successes.
             CREATE INDEX IF NOT EXISTS request_log_failed ON request_log_data (ts_ms)
                 WHERE status >= 400 OR failures IS NOT NULL;
             CREATE VIEW IF NOT EXISTS request_log AS
                 SELECT id, ts_ms, status, failures, {} FROM request_log_data;",
            columns.join(", ")
        )
    })
}

/// Stores written before `record` existed had a `request_log` table with one column per
/// field: its rows move to `request_log_data` once, in one transaction, on the first open.
fn upgrade_v1_sql() -> String {
    format!(
        "DROP INDEX IF EXISTS request_log_time;
         DROP INDEX IF EXISTS request_log_ts;
         DROP INDEX IF EXISTS request_log_failed;
         ALTER TABLE request_log RENAME TO request_log_v1;
         {}
         INSERT INTO request_log_data (id, ts_ms, status, failures, record)
             SELECT id, ts_ms, status, failures, json_array({}) FROM request_log_v1;
         DROP TABLE request_log_v1;",
        schema(),
        // The fields appended since (`guardrails`, `images`) read NULL in the moved rows.
        FIELDS[..V1_FIELDS].join(", ")
    )
}

/// Runs `work` if `needed`, in one write transaction that checks `needed` again first:
/// readers and the writer may open the store at the same time, and exactly one of them
/// must do the work.
pub(super) fn once(
    conn: &Connection,
    needed: impl Fn(&Connection) -> rusqlite::Result<bool>,
    work: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if !needed(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| {
        if needed(conn)? {
            work(conn)?;
        }
        Ok(())
    })();
    match done {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Moves a store's rows from the one-column-per-field table (before `request_log_data`).
pub(super) fn upgrade_v1(conn: &Connection) -> rusqlite::Result<()> {
    let old = |c: &Connection| {
        c.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'request_log'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    once(conn, old, |c| {
        let n: i64 = c.query_row("SELECT count(*) FROM request_log", [], |r| r.get(0))?;
        log::info!("request log: moving {n} records to the current table");
        c.execute_batch(&upgrade_v1_sql())
    })
}

/// A field appended to [`FIELDS`] (`guardrails`) is a new position of `record`: rows
/// written before read NULL there, and the view of a store from before is recreated once to
/// show it.
pub(super) fn upgrade_view(conn: &Connection) -> rusqlite::Result<()> {
    let last = FIELDS[FIELDS.len() - 1];
    let stale = |c: &Connection| {
        Ok(
            c.prepare(&format!("SELECT {last} FROM request_log LIMIT 0"))
                .is_err(),
        )
    };
    once(conn, stale, |c| {
        log::info!("request log: the view gains the field `{last}`");
        c.execute_batch("DROP VIEW IF EXISTS request_log;")?;
        c.execute_batch(schema())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::db::{analytics, recent_failures, GroupBy, LogDb};

    #[test]
    fn a_store_from_before_request_log_data_is_moved_on_open() {
        let dir = std::env::temp_dir().join(format!("freeway-db-{}-v1", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE request_log (
                    id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, request_id TEXT NOT NULL,
                    key_label TEXT NOT NULL, client_ip TEXT, method TEXT NOT NULL,
                    endpoint TEXT NOT NULL, path TEXT NOT NULL, requested_model TEXT,
                    provider TEXT NOT NULL, model TEXT NOT NULL, attempts INTEGER NOT NULL,
                    failures TEXT, status INTEGER NOT NULL, cache_status TEXT NOT NULL,
                    streamed INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
                    completion_tokens INTEGER NOT NULL, tokens_estimated INTEGER NOT NULL,
                    ttft_ms REAL, duration_ms REAL NOT NULL, overhead_ms REAL NOT NULL,
                    lat_bucket INTEGER NOT NULL, cost_usd REAL NOT NULL, metadata TEXT);
                 CREATE INDEX request_log_ts ON request_log (ts_ms);
                 INSERT INTO request_log VALUES
                    (7, 5000, 'r1', 'k', '10.0.0.0/24', 'POST', 'chat', '/v1/chat/completions',
                     'auto', 'a', 'm', 2, '[\"a/x: HTTP 500\"]', 200, 'MISS', 1, 10, 5, 0,
                     3.5, 40.25, 0.05, 59, 0.001, NULL),
                    (8, 6000, 'r2', 'k', NULL, 'POST', 'chat', '/v1/chat/completions',
                     NULL, 'b', 'm', 1, NULL, 429, 'BYPASS', 0, 0, 0, 0,
                     NULL, 1.0, 0.01, 11, 0, '{\"t\":1}');",
            )
            .unwrap();
        }
        let c = LogDb::open(&path).unwrap();
        use rusqlite::types::Value::{self, Integer as I, Null, Real as R, Text as T};
        let rows: Vec<Vec<Value>> = c
            .prepare(
                "SELECT id, ts_ms, request_id, client_ip, streamed, duration_ms, failures
                 FROM request_log ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| (0..7).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let t = |s: &str| T(s.to_string());
        assert_eq!(
            rows,
            vec![
                vec![
                    I(7),
                    I(5000),
                    t("r1"),
                    t("10.0.0.0/24"),
                    I(1),
                    R(40.25),
                    t("[\"a/x: HTTP 500\"]")
                ],
                vec![I(8), I(6000), t("r2"), Null, I(0), R(1.0), Null],
            ]
        );
        let a = analytics(&c, 0, 10_000, i64::MAX, GroupBy::Provider).unwrap();
        assert_eq!(
            (a.totals.requests, a.totals.rate_limited, a.totals.failovers),
            (2, 1, 1)
        );
        let f = recent_failures(&c, 0, 10_000, 10).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].failures, vec!["a/x: HTTP 500".to_string()]);
        assert_eq!(f[1].endpoint, "chat");
    }
}
