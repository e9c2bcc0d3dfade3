//! The request log's tables in the embedded SQLite store (the same file as the daily
//! counters, its own connections): schema, batched inserts, retention, and the analytics
//! queries. Every call blocks: run them on the writer thread or `spawn_blocking`.
//!
//! Two tables: `request_log`, one row per request, and `request_hourly`, the same requests
//! summed per (hour, provider, model, key) with a latency histogram, written in the same
//! transaction. Analytics reads whole hours from the rollup and only the partial hours at
//! the ends of a range from the raw rows, so a 30-day query reads ~100k summary rows
//! instead of every request (and the raw table needs no wide covering index, which keeps
//! the writer cheap).

use super::record::IpCache;
use super::record::RequestRecord;
use rusqlite::{ffi, params, Connection, OptionalExtension};
use serde::Serialize;
use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_int;
use std::hash::Hash;
use std::path::Path;

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
const FIELDS: [&str; 20] = [
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
];

/// SQL reading field `name` of a `request_log_data` row.
fn field(name: &str) -> String {
    let i = FIELDS.iter().position(|f| *f == name).expect("a field");
    format!("json_extract(record, '$[{i}]')")
}

/// The request log's table, indexes and view.
fn schema() -> &'static str {
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
        FIELDS.join(", ")
    )
}

/// The rollup: one row per (hour, provider, model, key). `hist` is the latency histogram,
/// `(lat_bucket: u8, count: LEB128)` pairs in bucket order. `first_id ..= last_id` spans
/// the ids of the raw rows the cell counts: the raw table has no time index (it would cost
/// the writer ~1,300 instructions a row), so time ranges are found through these spans.
const ROLLUP_SCHEMA: &str = "
CREATE TABLE request_hourly (
    hour_ms INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key_label TEXT NOT NULL,
    n INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    limited INTEGER NOT NULL,
    failovers INTEGER NOT NULL,
    prompt INTEGER NOT NULL,
    completion INTEGER NOT NULL,
    cost REAL NOT NULL,
    hits INTEGER NOT NULL,
    overhead REAL NOT NULL,
    hist BLOB NOT NULL,
    first_id INTEGER,
    last_id INTEGER,
    PRIMARY KEY (hour_ms, provider, model, key_label)
) WITHOUT ROWID;
";

const HOUR_MS: i64 = 3_600_000;

/// Opens a connection to the store at `path` (WAL) and makes sure the tables exist. The
/// first open after an upgrade moves old rows to the current table and builds the rollup.
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
    .and_then(|_| upgrade_v1(&conn))
    .and_then(|_| conn.execute_batch(schema()))
    .and_then(|_| ensure_rollup(&conn))
    .map_err(|e| {
        format!(
            "cannot initialise the request log in {}: {e}",
            path.display()
        )
    })?;
    Ok(conn)
}

/// Runs `work` if `needed`, in one write transaction that checks `needed` again first:
/// readers and the writer may open the store at the same time, and exactly one of them
/// must do the work.
fn once(
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
fn upgrade_v1(conn: &Connection) -> rusqlite::Result<()> {
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

/// Creates the rollup if missing (or from before its id spans) and fills it from the raw
/// rows.
fn ensure_rollup(conn: &Connection) -> rusqlite::Result<()> {
    let missing = |c: &Connection| {
        c.query_row(
            "SELECT count(*) FROM pragma_table_info('request_hourly') WHERE name = 'first_id'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n == 0)
    };
    once(conn, missing, |c| {
        c.execute_batch("DROP TABLE IF EXISTS request_hourly")?;
        c.execute_batch(ROLLUP_SCHEMA)?;
        let mut cells: Cells<String> = Cells::default();
        let mut stmt = c.prepare(&format!("SELECT {RAW_ROW} FROM request_log_data"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let raw = RawRow::decode(r)?;
            let key: CellKey<String> = (
                raw.ts_ms.div_euclid(HOUR_MS) * HOUR_MS,
                raw.provider.into_owned(),
                raw.model.into_owned(),
                raw.key_label.into_owned(),
            );
            cells.entry(key).or_default().add(&raw.row, raw.id);
        }
        drop(rows);
        drop(stmt);
        upsert_cells(c, cells)
    })
}

/// Latency bucket: 16 per e-fold of (1 + ms), about 6% wide. Percentiles are read from
/// bucket counts, so they are exact to within one bucket.
pub fn lat_bucket(ms: f64) -> i64 {
    ((ms.max(0.0) + 1.0).ln() * 16.0).round() as i64
}

fn bucket_ms(b: i64) -> f64 {
    ((b as f64) / 16.0).exp() - 1.0
}

/// Parameters bound per record: `ts_ms, status, failures, record`.
const COLUMNS: usize = 4;
/// Records per multi-row INSERT: SQLite's per-statement work (step, reset, the VDBE
/// preamble) is paid once per chunk instead of once per row.
const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO request_log (…) VALUES (…), (…)…` for `rows` records.
fn insert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO request_log_data (ts_ms, status, failures, record) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", row * COLUMNS + col + 1));
        }
        sql.push(')');
    }
    sql
}

/// The writer thread's connection, with its INSERT statements prepared once. Derefs to the
/// connection for everything else (retention, reads in tests).
pub struct LogDb {
    // Declared before `conn`: statements are finalized before the connection closes.
    many: RawInsert,
    one: RawInsert,
    conn: Connection,
    /// Per row of a chunk: its `failures` and `record` text, alive until the chunk is stepped.
    scratch: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::ops::Deref for LogDb {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl LogDb {
    pub fn open(path: &Path) -> Result<LogDb, String> {
        let conn = open(path)?;
        let prepare = |rows| {
            RawInsert::prepare(&conn, &insert_sql(rows))
                .map_err(|e| format!("cannot prepare the request log insert: {e}"))
        };
        Ok(LogDb {
            many: prepare(ROWS_PER_INSERT)?,
            one: prepare(1)?,
            scratch: vec![Default::default(); ROWS_PER_INSERT],
            conn,
        })
    }

    /// Writes `records` and their rollup in one transaction; `ips` redacts client IPs.
    pub fn insert<'r, R: Borrow<RequestRecord>>(
        &mut self,
        records: &'r [R],
        ips: &mut IpCache,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let mut cells: Cells<&str> = Cells::default();
        // A chunk's rows get consecutive ids ending at the last inserted one: SQLite gives a
        // new row max(id) + 1, and this transaction is the only writer.
        let mut count = |chunk: &'r [R], last_id: i64| {
            let first_id = last_id + 1 - chunk.len() as i64;
            for (i, r) in chunk.iter().enumerate() {
                let r: &RequestRecord = r.borrow();
                let hour = r.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
                let key = (
                    hour,
                    r.provider.as_str(),
                    r.model.as_str(),
                    r.key_label.as_str(),
                );
                cells
                    .entry(key)
                    .or_default()
                    .add(&Row::of(r), first_id + i as i64);
            }
        };
        let mut chunks = records.chunks_exact(ROWS_PER_INSERT);
        for chunk in &mut chunks {
            for (i, r) in chunk.iter().enumerate() {
                let (failures, record) = &mut self.scratch[i];
                encode(r.borrow(), ips, failures, record);
                // SAFETY: `failures` and `record` live in `self.scratch`, untouched until
                // `exec` below has stepped the statement.
                unsafe { self.many.bind(i * COLUMNS, r.borrow(), failures, record)? };
            }
            self.many.exec()?;
            count(chunk, tx.last_insert_rowid());
        }
        let rest = chunks.remainder();
        for (i, r) in rest.iter().enumerate() {
            let (failures, record) = &mut self.scratch[0];
            encode(r.borrow(), ips, failures, record);
            // SAFETY: as above.
            unsafe { self.one.bind(0, r.borrow(), failures, record)? };
            self.one.exec()?;
            count(&rest[i..=i], tx.last_insert_rowid());
        }
        upsert_cells(&tx, cells)?;
        tx.commit()
    }
}

/// `r`'s `failures` (a JSON array; none = empty = NULL) and `record` (the JSON array of
/// [`FIELDS`], in order).
fn encode(r: &RequestRecord, ips: &mut IpCache, failures: &mut Vec<u8>, out: &mut Vec<u8>) {
    failures.clear();
    if !r.failures.is_empty() {
        let _ = serde_json::to_writer(&mut *failures, &r.failures);
    }
    out.clear();
    out.push(b'[');
    json_str(out, &r.request_id);
    out.push(b',');
    json_str(out, &r.key_label);
    out.push(b',');
    match r.client_ip {
        Some(ip) => json_str(out, ips.get(ip)),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    json_plain(out, r.method);
    out.push(b',');
    json_plain(out, r.endpoint);
    out.push(b',');
    json_opt(out, r.path.as_deref());
    out.push(b',');
    json_opt(out, r.requested_model.as_deref());
    out.push(b',');
    json_str(out, &r.provider);
    out.push(b',');
    json_str(out, &r.model);
    out.push(b',');
    json_int(out, u64::from(r.attempts));
    out.push(b',');
    json_plain(out, r.cache_status);
    out.push(b',');
    json_int(out, u64::from(r.streamed));
    out.push(b',');
    json_int(out, r.prompt_tokens);
    out.push(b',');
    json_int(out, r.completion_tokens);
    out.push(b',');
    json_int(out, u64::from(r.tokens_estimated));
    out.push(b',');
    match r.ttft_ms {
        Some(t) => json_ms(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    json_ms(out, r.duration_ms);
    out.push(b',');
    json_ms(out, r.overhead_ms);
    out.push(b',');
    json_f64(out, r.cost_usd);
    out.push(b',');
    json_opt(out, r.metadata.as_deref());
    out.push(b']');
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_int(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A finite number as JSON (`null` otherwise: JSON has no NaN).
fn json_f64(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// Milliseconds to the microsecond (`12.345`), the precision the gateway measures: a third
/// of the cost of the shortest round-trip form of an arbitrary `f64`.
fn json_ms(out: &mut Vec<u8>, ms: f64) {
    if !(0.0..9.0e12).contains(&ms) {
        return json_f64(out, ms);
    }
    let us = (ms * 1000.0 + 0.5) as u64;
    out.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
    let frac = us % 1000;
    if frac != 0 {
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let mut keep = digits.len();
        while digits[keep - 1] == b'0' {
            keep -= 1;
        }
        out.extend_from_slice(&digits[..keep]);
    }
}

/// One of the gateway's own names (method, endpoint, cache status) as a JSON string: they
/// never need escaping.
fn json_plain(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `s` as a JSON string: copied as is when nothing needs escaping (the usual case).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // No early exit: the loop vectorises, and the strings are short.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A prepared INSERT whose text parameters are bound in place (`SQLITE_STATIC`) rather than
/// copied, through the C API: rusqlite copies every bound string (`SQLITE_TRANSIENT`),
/// which was a third of the writer's cost per record.
///
/// The contract: `bind` sets every parameter of a row, `exec` steps and resets. Bound
/// pointers stay in the statement after `exec` (SQLite neither reads nor frees them outside
/// `sqlite3_step`), and every row is bound again before the next step.
struct RawInsert {
    stmt: std::ptr::NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
}

// SAFETY: the statement is only used by the thread that owns the `LogDb` (a connection is
// `Send`, and so is a statement prepared on it and moved along with it).
unsafe impl Send for RawInsert {}

impl RawInsert {
    fn prepare(conn: &Connection, sql: &str) -> rusqlite::Result<RawInsert> {
        // SAFETY: `conn` is open; the statement is finalized (Drop) before `LogDb` drops
        // the connection (field order).
        unsafe {
            let db = conn.handle();
            let mut stmt = std::ptr::null_mut();
            let rc = ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                sql.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            );
            let raw = RawInsert {
                stmt: std::ptr::NonNull::new(stmt)
                    .ok_or_else(|| rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))?,
                db,
            };
            raw.check(rc)?;
            Ok(raw)
        }
    }

    #[inline]
    fn check(&self, rc: c_int) -> rusqlite::Result<()> {
        if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_DONE {
            return Ok(());
        }
        self.error(rc)
    }

    #[cold]
    fn error(&self, rc: c_int) -> rusqlite::Result<()> {
        // SAFETY: `db` is the open connection the statement belongs to.
        let msg = unsafe { std::ffi::CStr::from_ptr(ffi::sqlite3_errmsg(self.db)) };
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(msg.to_string_lossy().into_owned()),
        ))
    }

    /// Binds one row to parameters `base + 1 ..= base + COLUMNS`.
    ///
    /// # Safety
    /// `failures` and `record` must stay alive and unchanged until `exec` has run.
    unsafe fn bind(
        &mut self,
        base: usize,
        r: &RequestRecord,
        failures: &[u8],
        record: &[u8],
    ) -> rusqlite::Result<()> {
        let st = self.stmt.as_ptr();
        let i = |n: usize| (base + n) as c_int;
        let text = |n: usize, b: &[u8]| match b {
            [] => ffi::sqlite3_bind_null(st, i(n)),
            b => {
                let (ptr, len) = (b.as_ptr().cast(), b.len() as c_int);
                ffi::sqlite3_bind_text(st, i(n), ptr, len, ffi::SQLITE_STATIC())
            }
        };
        for rc in [
            ffi::sqlite3_bind_int64(st, i(1), r.ts_ms),
            ffi::sqlite3_bind_int64(st, i(2), i64::from(r.status)),
            text(3, failures),
            text(4, record),
        ] {
            self.check(rc)?;
        }
        Ok(())
    }

    /// Steps the statement bound by `bind` and resets it.
    fn exec(&mut self) -> rusqlite::Result<()> {
        // SAFETY: a valid statement, every parameter bound by `bind`.
        unsafe {
            let rc = ffi::sqlite3_step(self.stmt.as_ptr());
            let reset = ffi::sqlite3_reset(self.stmt.as_ptr());
            self.check(if rc == ffi::SQLITE_DONE { reset } else { rc })
        }
    }
}

impl Drop for RawInsert {
    fn drop(&mut self) {
        // SAFETY: prepared by `prepare`, finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// (hour_ms, provider, model, key_label): one rollup row.
type CellKey<S> = (i64, S, S, S);
/// A batch's rollup rows (foldhash: SipHash was ~600 instructions a record here).
type Cells<S> = HashMap<CellKey<S>, Cell, foldhash::fast::RandomState>;

/// A rollup row being built: its sums and the span of raw row ids it counts.
#[derive(Debug)]
struct Cell {
    sums: Aggregate,
    first_id: i64,
    last_id: i64,
}

impl Default for Cell {
    fn default() -> Cell {
        Cell {
            sums: Aggregate::default(),
            first_id: i64::MAX,
            last_id: i64::MIN,
        }
    }
}

impl Cell {
    fn add(&mut self, row: &Row, id: i64) {
        self.sums.add(row);
        self.first_id = self.first_id.min(id);
        self.last_id = self.last_id.max(id);
    }
}

/// Adds `cells` to the rollup rows they belong to.
fn upsert_cells<S: AsRef<str> + Eq + Hash>(
    conn: &Connection,
    cells: Cells<S>,
) -> rusqlite::Result<()> {
    let mut read = conn.prepare_cached(
        "SELECT n, ok, limited, failovers, prompt, completion, cost, hits, overhead, hist,
                first_id, last_id
         FROM request_hourly
         WHERE hour_ms = ?1 AND provider = ?2 AND model = ?3 AND key_label = ?4",
    )?;
    let mut write = conn.prepare_cached(
        "INSERT OR REPLACE INTO request_hourly (hour_ms, provider, model, key_label, n, ok,
            limited, failovers, prompt, completion, cost, hits, overhead, hist, first_id,
            last_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    for ((hour, provider, model, key), mut cell) in cells {
        let (p, m, k) = (provider.as_ref(), model.as_ref(), key.as_ref());
        let old = read
            .query_row(params![hour, p, m, k], |r| {
                let mut a = Aggregate::default();
                a.add_sums(&row_at(r, 0)?);
                a.add_hist(r.get_ref(9)?.as_blob()?);
                Ok((a, r.get::<_, i64>(10)?, r.get::<_, i64>(11)?))
            })
            .optional()?;
        if let Some((old, first_id, last_id)) = old {
            cell.sums.merge(&old);
            cell.first_id = cell.first_id.min(first_id);
            cell.last_id = cell.last_id.max(last_id);
        }
        let (first_id, last_id) = (cell.first_id, cell.last_id);
        let cell = cell.sums;
        write.execute(params![
            hour,
            p,
            m,
            k,
            cell.requests as i64,
            cell.success as i64,
            cell.rate_limited as i64,
            cell.failovers as i64,
            cell.prompt_tokens as i64,
            cell.completion_tokens as i64,
            cell.cost_usd,
            cell.cache_hits as i64,
            cell.overhead_sum,
            cell.encode_hist(),
            first_id,
            last_id,
        ])?;
    }
    Ok(())
}

/// Deletes records from hours entirely before `cutoff_ms` (retention works in whole hours)
/// and beyond the newest `max_rows` (0 = no cap), raw rows and rollup alike. Returns how many
/// raw rows were deleted.
pub fn retain(conn: &Connection, cutoff_ms: Option<i64>, max_rows: u64) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    if let Some(cutoff) = cutoff_ms {
        let kept_hour = cutoff.div_euclid(HOUR_MS) * HOUR_MS;
        // Every raw row is counted by a rollup cell written in the same transaction, so the
        // cells of the kept hours say where the kept rows start.
        let first_kept: Option<i64> = conn.query_row(
            "SELECT min(first_id) FROM request_hourly WHERE hour_ms >= ?1",
            [kept_hour],
            |r| r.get(0),
        )?;
        deleted += match first_kept {
            Some(id) => conn.execute("DELETE FROM request_log_data WHERE id < ?1", [id])?,
            None => conn.execute("DELETE FROM request_log_data", [])?,
        };
        conn.execute("DELETE FROM request_hourly WHERE hour_ms < ?1", [kept_hour])?;
    }
    if max_rows > 0 {
        let max_id: Option<i64> =
            conn.query_row("SELECT max(id) FROM request_log_data", [], |r| r.get(0))?;
        if let Some(max_id) = max_id {
            let keep_from = max_id - max_rows as i64 + 1;
            deleted += conn.execute("DELETE FROM request_log_data WHERE id < ?1", [keep_from])?;
            // Cells whose rows are all gone go too; a cell with some rows left keeps its
            // whole hour.
            conn.execute("DELETE FROM request_hourly WHERE last_id < ?1", [keep_from])?;
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
    /// Adds requests that share one latency bucket.
    fn add(&mut self, row: &Row) {
        self.add_sums(row);
        self.add_bucket(row.bucket, row.n);
    }

    fn add_sums(&mut self, row: &Row) {
        self.requests += row.n;
        self.success += row.ok;
        self.failure += row.n.saturating_sub(row.ok);
        self.rate_limited += row.limited;
        self.failovers += row.failovers;
        self.prompt_tokens += row.prompt;
        self.completion_tokens += row.completion;
        self.cost_usd += row.cost;
        self.cache_hits += row.hits;
        self.overhead_sum += row.overhead;
    }

    fn add_bucket(&mut self, bucket: i64, n: u64) {
        // Buckets beyond 255 (answers over ~2.4 hours) share the last one.
        let bucket = bucket.clamp(0, 255);
        match self.buckets.binary_search_by_key(&bucket, |b| b.0) {
            Ok(i) => self.buckets[i].1 += n,
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
    }

    fn merge(&mut self, other: &Aggregate) {
        self.add_sums(&Row {
            bucket: 0,
            n: other.requests,
            ok: other.success,
            limited: other.rate_limited,
            failovers: other.failovers,
            prompt: other.prompt_tokens,
            completion: other.completion_tokens,
            cost: other.cost_usd,
            hits: other.cache_hits,
            overhead: other.overhead_sum,
        });
        for &(b, n) in &other.buckets {
            self.add_bucket(b, n);
        }
    }

    /// The histogram as stored in the rollup: `(bucket: u8, count: LEB128)` pairs.
    fn encode_hist(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buckets.len() * 2);
        for &(b, mut n) in &self.buckets {
            out.push(b as u8);
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// Adds a histogram written by [`Aggregate::encode_hist`] (a truncated tail is ignored).
    fn add_hist(&mut self, mut blob: &[u8]) {
        while let [b, rest @ ..] = blob {
            let (mut n, mut shift, mut used) = (0u64, 0u32, 0);
            for &byte in rest {
                used += 1;
                n |= u64::from(byte & 0x7f) << shift.min(63);
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if used == 0 {
                return;
            }
            self.add_bucket(i64::from(*b), n);
            blob = &rest[used..];
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

/// Requests that share one latency bucket, summed.
#[derive(Default)]
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

impl Row {
    fn of(r: &RequestRecord) -> Row {
        let ok = r.status < 400;
        Row {
            bucket: lat_bucket(r.duration_ms),
            n: 1,
            ok: ok.into(),
            limited: (r.status == 429).into(),
            failovers: (ok && r.attempts > 1).into(),
            prompt: r.prompt_tokens,
            completion: r.completion_tokens,
            cost: r.cost_usd,
            hits: (r.cache_status == "HIT").into(),
            overhead: r.overhead_ms,
        }
    }
}

/// Reads `n, ok, limited, failovers, prompt, completion, cost, hits, overhead` (a rollup
/// row's sums) from column `at` on.
fn row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
    let count = |i: usize| r.get::<_, i64>(at + i).map(|v| v.max(0) as u64);
    Ok(Row {
        bucket: 0,
        n: count(0)?,
        ok: count(1)?,
        limited: count(2)?,
        failovers: count(3)?,
        prompt: count(4)?,
        completion: count(5)?,
        cost: r.get(at + 6)?,
        hits: count(7)?,
        overhead: r.get(at + 8)?,
    })
}

/// What analytics reads of one raw row: `ts_ms, status, record` of `request_log_data`,
/// decoded here (one JSON parse a row; the `request_log` view's `json_extract` columns parse
/// the record once per column).
const RAW_ROW: &str = "id, ts_ms, status, record";

/// The analytics fields of a raw row.
#[derive(Default)]
struct RawRow<'a> {
    id: i64,
    ts_ms: i64,
    key_label: Cow<'a, str>,
    provider: Cow<'a, str>,
    model: Cow<'a, str>,
    row: Row,
}

impl<'a> RawRow<'a> {
    /// Decodes a row selected as [`RAW_ROW`]. Fields are read by their position in
    /// [`FIELDS`]; a null or missing one counts as zero or empty.
    fn decode(r: &'a rusqlite::Row<'a>) -> rusqlite::Result<RawRow<'a>> {
        let status: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
        let record = r.get_ref(3)?.as_str_or_null()?.unwrap_or("[]");
        let fields: RecordFields = serde_json::from_str(record).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?;
        let ok = status < 400;
        Ok(RawRow {
            id: r.get(0)?,
            ts_ms: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
            key_label: fields.key_label,
            provider: fields.provider,
            model: fields.model,
            row: Row {
                bucket: lat_bucket(fields.duration_ms),
                n: 1,
                ok: ok.into(),
                limited: (status == 429).into(),
                failovers: (ok && fields.attempts > 1).into(),
                prompt: fields.prompt_tokens,
                completion: fields.completion_tokens,
                cost: fields.cost_usd,
                hits: (fields.cache_status == "HIT").into(),
                overhead: fields.overhead_ms,
            },
        })
    }
}

/// The positions of [`FIELDS`] that analytics reads, out of a `record` array.
#[derive(Default)]
struct RecordFields<'a> {
    key_label: Cow<'a, str>,
    provider: Cow<'a, str>,
    model: Cow<'a, str>,
    attempts: u64,
    cache_status: Cow<'a, str>,
    prompt_tokens: u64,
    completion_tokens: u64,
    duration_ms: f64,
    overhead_ms: f64,
    cost_usd: f64,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RecordFields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        /// One element of the array, as far as analytics cares: text (borrowed from the
        /// input when it has no escapes), a number, or anything else (null, bool, nested).
        enum Elem<'a> {
            Text(Cow<'a, str>),
            Int(u64),
            Real(f64),
            Other,
        }
        impl<'a> Elem<'a> {
            fn text(self) -> Cow<'a, str> {
                match self {
                    Elem::Text(t) => t,
                    _ => Cow::Borrowed(""),
                }
            }
            fn int(self) -> u64 {
                match self {
                    Elem::Int(n) => n,
                    _ => 0,
                }
            }
            fn real(self) -> f64 {
                match self {
                    Elem::Int(n) => n as f64,
                    Elem::Real(x) => x,
                    _ => 0.0,
                }
            }
        }
        impl<'de> serde::Deserialize<'de> for Elem<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Elem<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON value")
                    }
                    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Elem<'de>, E> {
                        Ok(Elem::Text(Cow::Borrowed(v)))
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Elem<'de>, E> {
                        Ok(Elem::Text(Cow::Owned(v.to_owned())))
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<Elem<'de>, E> {
                        Ok(Elem::Int(v))
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<Elem<'de>, E> {
                        Ok(Elem::Int(v.max(0) as u64))
                    }
                    fn visit_f64<E>(self, v: f64) -> Result<Elem<'de>, E> {
                        Ok(Elem::Real(v))
                    }
                    fn visit_unit<E>(self) -> Result<Elem<'de>, E> {
                        Ok(Elem::Other)
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Elem<'de>, E> {
                        Ok(Elem::Other)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Elem<'de>, A::Error> {
                        while a.next_element::<IgnoredAny>()?.is_some() {}
                        Ok(Elem::Other)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Elem<'de>, A::Error> {
                        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok(Elem::Other)
                    }
                }
                d.deserialize_any(V)
            }
        }

        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RecordFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a request log record (a JSON array)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = RecordFields::default();
                let mut i = 0;
                while let Some(v) = seq.next_element::<Elem<'de>>()? {
                    match FIELDS.get(i).copied().unwrap_or("") {
                        "key_label" => out.key_label = v.text(),
                        "provider" => out.provider = v.text(),
                        "model" => out.model = v.text(),
                        "cache_status" => out.cache_status = v.text(),
                        "attempts" => out.attempts = v.int(),
                        "prompt_tokens" => out.prompt_tokens = v.int(),
                        "completion_tokens" => out.completion_tokens = v.int(),
                        "duration_ms" => out.duration_ms = v.real(),
                        "overhead_ms" => out.overhead_ms = v.real(),
                        "cost_usd" => out.cost_usd = v.real(),
                        _ => {}
                    }
                    i += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Fields)
    }
}

/// The totals and per-group aggregates for `[from_ms, to_ms)`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analytics {
    pub totals: Aggregate,
    /// Group key → aggregate, in key order.
    pub groups: BTreeMap<String, Aggregate>,
}

impl Analytics {
    /// The aggregate of group `name` (`(none)` when the name is empty).
    fn group_mut(&mut self, name: &str) -> &mut Aggregate {
        let name = if name.is_empty() || name == "/" {
            "(none)"
        } else {
            name
        };
        if !self.groups.contains_key(name) {
            self.groups.insert(name.to_owned(), Aggregate::default());
        }
        self.groups.get_mut(name).expect("just inserted")
    }
}

/// The name of `group` for a request at `time_ms` (arrival, or its rollup hour).
fn group_name(
    group: GroupBy,
    time_ms: i64,
    provider: &str,
    model: &str,
    key: &str,
    name: &mut String,
) {
    use std::fmt::Write;
    name.clear();
    let _ = match group {
        GroupBy::None => Ok(()),
        GroupBy::Provider => name.write_str(provider),
        GroupBy::Model => write!(name, "{provider}/{model}"),
        GroupBy::Key => name.write_str(key),
        GroupBy::Day => write!(name, "{}", time_ms / 86_400_000 * 86_400),
        GroupBy::Hour => write!(name, "{}", time_ms / 3_600_000 * 3600),
        GroupBy::Minute => write!(name, "{}", time_ms / 60_000 * 60),
    };
}

/// The totals and groups for `[from_ms, to_ms)`: whole hours from the rollup, the partial
/// hours at either end from the raw rows (`minute` groups always from the raw rows).
///
/// No request arrives after `now_ms`, so a range that reaches it holds its last hour whole
/// and reads that hour from the rollup too: a dashboard's "up to now" costs no raw reads
/// at that end.
pub fn analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    group: GroupBy,
) -> rusqlite::Result<Analytics> {
    let mut out = Analytics::default();
    let to_ms = if to_ms > now_ms && group != GroupBy::Minute {
        now_ms.div_euclid(HOUR_MS) * HOUR_MS + HOUR_MS
    } else {
        to_ms
    };
    let first_hour = (from_ms + HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS;
    let last_hour = to_ms.div_euclid(HOUR_MS) * HOUR_MS;
    if group == GroupBy::Minute || first_hour >= last_hour {
        raw_analytics(conn, from_ms, to_ms, group, &mut out)?;
    } else {
        raw_analytics(conn, from_ms, first_hour, group, &mut out)?;
        hourly_analytics(conn, first_hour, last_hour, group, &mut out)?;
        raw_analytics(conn, last_hour, to_ms, group, &mut out)?;
    }
    out.totals.finish();
    for a in out.groups.values_mut() {
        a.finish();
    }
    Ok(out)
}

/// Raw rows in `[from_ms, to_ms)`, decoded and folded here (their latency buckets are
/// computed, not stored).
fn raw_analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    group: GroupBy,
    out: &mut Analytics,
) -> rusqlite::Result<()> {
    if from_ms >= to_ms {
        return Ok(());
    }
    // The raw rows of the hours the range touches lie within their cells' id span.
    let (first_id, last_id): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT min(first_id), max(last_id) FROM request_hourly
             WHERE hour_ms >= ?1 AND hour_ms < ?2",
        )?
        .query_row(params![from_ms.div_euclid(HOUR_MS) * HOUR_MS, to_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(first_id), Some(last_id)) = (first_id, last_id) else {
        return Ok(());
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RAW_ROW} FROM request_log_data
         WHERE id BETWEEN ?1 AND ?2 AND ts_ms >= ?3 AND ts_ms < ?4"
    ))?;
    let mut rows = stmt.query(params![first_id, last_id, from_ms, to_ms])?;
    let mut name = String::new();
    while let Some(r) = rows.next()? {
        let raw = RawRow::decode(r)?;
        out.totals.add(&raw.row);
        if group != GroupBy::None {
            group_name(
                group,
                raw.ts_ms,
                &raw.provider,
                &raw.model,
                &raw.key_label,
                &mut name,
            );
            out.group_mut(&name).add(&raw.row);
        }
    }
    Ok(())
}

/// Rollup rows for the whole hours in `[from_ms, to_ms)`, folded here.
fn hourly_analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    group: GroupBy,
    out: &mut Analytics,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT hour_ms, provider, model, key_label, n, ok, limited, failovers, prompt,
                completion, cost, hits, overhead, hist
         FROM request_hourly WHERE hour_ms >= ?1 AND hour_ms < ?2",
    )?;
    let mut rows = stmt.query(params![from_ms, to_ms])?;
    let mut name = String::new();
    while let Some(r) = rows.next()? {
        let row = row_at(r, 4)?;
        let hist = r.get_ref(13)?.as_blob()?;
        out.totals.add_sums(&row);
        out.totals.add_hist(hist);
        if group != GroupBy::None {
            let text = |i| -> rusqlite::Result<&str> { Ok(r.get_ref(i)?.as_str()?) };
            group_name(group, r.get(0)?, text(1)?, text(2)?, text(3)?, &mut name);
            let g = out.group_mut(&name);
            g.add_sums(&row);
            g.add_hist(hist);
        }
    }
    Ok(())
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
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let f = |names: &[&str]| {
            names
                .iter()
                .map(|n| field(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "SELECT ts_ms, {}, status, {}, failures, {}
             FROM request_log_data INDEXED BY request_log_failed
             WHERE (status >= 400 OR failures IS NOT NULL) AND ts_ms >= ?1 AND ts_ms < ?2
             ORDER BY ts_ms DESC LIMIT ?3",
            f(&[
                "request_id",
                "endpoint",
                "key_label",
                "requested_model",
                "provider",
                "model"
            ]),
            f(&["attempts"]),
            f(&["duration_ms"]),
        )
    });
    let mut stmt = conn.prepare_cached(sql)?;
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
    use crate::config::RedactIp;
    use crate::observe::record::IpRedactor;

    fn rec(ts_ms: i64, provider: &str, status: u16, ms: f64) -> RequestRecord {
        RequestRecord {
            ts_ms,
            request_id: format!("r{ts_ms}"),
            key_label: "k".into(),
            method: "POST",
            endpoint: "chat",
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

    fn temp_db(name: &str) -> LogDb {
        let dir = std::env::temp_dir().join(format!("freeway-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        LogDb::open(&dir.join("t.db")).unwrap()
    }

    fn insert(c: &mut LogDb, records: &[RequestRecord]) -> rusqlite::Result<()> {
        let mut ips = IpCache::new(IpRedactor::new(RedactIp::Off, ""));
        c.insert(records, &mut ips)
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
        let a = analytics(&c, 0, 10_000, i64::MAX, GroupBy::Provider).unwrap();
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
        let m = analytics(&c, 0, 10_000, i64::MAX, GroupBy::Model).unwrap();
        assert!(m.groups.contains_key("a/m"));
    }

    #[test]
    fn retention_by_age_and_rows() {
        let mut c = temp_db("ret");
        // One record every 10 minutes: 50 records over ~8 hours.
        let rs: Vec<RequestRecord> = (0..50).map(|i| rec(i * 600_000, "a", 200, 1.0)).collect();
        insert(&mut c, &rs).unwrap();
        // Whole hours: the cutoff at 3h00m00.1 keeps hour 3 on, all of it.
        assert_eq!(retain(&c, Some(3 * HOUR_MS + 100), 0).unwrap(), 18);
        let oldest_hour: i64 = c
            .query_row("SELECT min(hour_ms) FROM request_hourly", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest_hour, 3 * HOUR_MS);
        assert_eq!(retain(&c, None, 15).unwrap(), 17);
        let (n, min_ts): (i64, i64) = c
            .query_row("SELECT count(*), min(ts_ms) FROM request_log", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, min_ts), (15, 35 * 600_000));
        // Hour 5 (records 30..36) lost some rows and keeps its cell; hours 3 and 4 lost all.
        let oldest_hour: i64 = c
            .query_row("SELECT min(hour_ms) FROM request_hourly", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest_hour, 5 * HOUR_MS);
        let a = analytics(&c, 6 * HOUR_MS, 9 * HOUR_MS, i64::MAX, GroupBy::None).unwrap();
        assert_eq!(a.totals.requests, 14);
    }

    /// The whole range from raw rows alone: what the rollup must reproduce.
    fn raw_only(c: &Connection, from: i64, to: i64, group: GroupBy) -> Analytics {
        let mut a = Analytics::default();
        raw_analytics(c, from, to, group, &mut a).unwrap();
        a.totals.finish();
        for g in a.groups.values_mut() {
            g.finish();
        }
        a
    }

    fn assert_same(a: &Analytics, b: &Analytics) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
        let same = |x: &Aggregate, y: &Aggregate| {
            let mut x = x.clone();
            let mut y = y.clone();
            assert!(close(x.cost_usd, y.cost_usd), "{x:?} {y:?}");
            assert!(close(x.avg_overhead_ms, y.avg_overhead_ms), "{x:?} {y:?}");
            (x.cost_usd, x.avg_overhead_ms, x.overhead_sum) = (0.0, 0.0, 0.0);
            (y.cost_usd, y.avg_overhead_ms, y.overhead_sum) = (0.0, 0.0, 0.0);
            assert_eq!(x, y);
        };
        same(&a.totals, &b.totals);
        assert_eq!(
            a.groups.keys().collect::<Vec<_>>(),
            b.groups.keys().collect::<Vec<_>>()
        );
        for (k, g) in &a.groups {
            same(g, &b.groups[k]);
        }
    }

    /// Records over ~5 hours from several providers, keys and statuses, written in batches
    /// so rollup rows are merged across transactions.
    fn spread(c: &mut LogDb) {
        let mut rng = fastrand::Rng::with_seed(11);
        let all: Vec<RequestRecord> = (0..3000)
            .map(|i| {
                let mut r = rec(
                    i * 6_000 + rng.i64(0..5_000),
                    ["a", "b", "c"][rng.usize(..3)],
                    [200, 200, 200, 429, 502][rng.usize(..5)],
                    (rng.f64() * 20_000_000.0).round() / 1000.0,
                );
                r.key_label = format!("k{}", rng.u32(..3));
                r.attempts = 1 + u32::from(rng.bool());
                r.cache_status = if rng.u32(..4) == 0 { "HIT" } else { "MISS" };
                r.cost_usd = rng.f64() / 1000.0;
                r.overhead_ms = rng.u32(..1000) as f64 / 1000.0;
                r
            })
            .collect();
        for chunk in all.chunks(97) {
            insert(c, chunk).unwrap();
        }
    }

    #[test]
    fn rollup_answers_exactly_what_the_raw_rows_say() {
        let mut c = temp_db("rollup");
        spread(&mut c);
        let rollup_rows: i64 = c
            .query_row("SELECT count(*) FROM request_hourly", [], |r| r.get(0))
            .unwrap();
        assert!(rollup_rows <= 5 * 3 * 3, "{rollup_rows} rollup rows");
        for (from, to) in [
            (0, 18_000_000),
            (1_234_567, 15_000_001),
            (3_600_000, 7_200_000),
        ] {
            for group in [
                GroupBy::None,
                GroupBy::Provider,
                GroupBy::Model,
                GroupBy::Key,
                GroupBy::Day,
                GroupBy::Hour,
            ] {
                let a = analytics(&c, from, to, i64::MAX, group).unwrap();
                assert!(a.totals.requests > 0);
                assert_same(&a, &raw_only(&c, from, to, group));
            }
        }
    }

    #[test]
    fn a_request_logged_hours_after_it_arrived_is_found_in_its_hour() {
        let mut c = temp_db("late");
        let early: Vec<RequestRecord> = (0..5).map(|i| rec(i * 1000, "a", 200, 1.0)).collect();
        insert(&mut c, &early).unwrap();
        let later: Vec<RequestRecord> = (0..5)
            .map(|i| rec(2 * HOUR_MS + i * 1000, "a", 200, 1.0))
            .collect();
        insert(&mut c, &later).unwrap();
        // A two-hour stream that arrived at 0h30 ends and is logged after the rows above.
        insert(&mut c, &[rec(HOUR_MS / 2, "b", 200, 7_200_000.0)]).unwrap();
        let count = |from: i64, to: i64| {
            analytics(&c, from, to, i64::MAX, GroupBy::Provider)
                .unwrap()
                .groups
                .get("b")
                .map_or(0, |g| g.requests)
        };
        assert_eq!(
            count(HOUR_MS / 4, HOUR_MS * 3 / 4),
            1,
            "partial hour, raw rows"
        );
        assert_eq!(count(0, HOUR_MS), 1, "whole hour, rollup");
        assert_eq!(count(HOUR_MS * 3 / 4, 3 * HOUR_MS), 0);
        assert_eq!(count(0, HOUR_MS / 4), 0);
        let all = analytics(&c, 0, 3 * HOUR_MS, i64::MAX, GroupBy::None).unwrap();
        assert_eq!(all.totals.requests, 11);
    }

    #[test]
    fn a_range_reaching_now_reads_its_last_hour_from_the_rollup_with_the_same_answer() {
        let mut c = temp_db("now");
        spread(&mut c);
        // `spread` fills 5 hours, its last row before 17,999,000 ms: "now" is just after it,
        // in hour 4, and the range runs past it.
        let now = 17_999_100;
        let (from, to) = (1_000_000, now + 60_000);
        for group in [GroupBy::None, GroupBy::Provider, GroupBy::Hour] {
            let fast = analytics(&c, from, to, now, group).unwrap();
            assert!(fast.totals.requests > 0);
            assert_same(&fast, &raw_only(&c, from, now + 1, group));
        }
        // The tail was the rollup's: a raw row stamped after `now` (which cannot happen) is
        // counted with its hour, while the raw-only answer leaves it out.
        insert(&mut c, &[rec(now + 500, "late", 200, 1.0)]).unwrap();
        let fast = analytics(&c, from, to, now, GroupBy::Provider).unwrap();
        assert_eq!(fast.groups["late"].requests, 1);
        let raw = raw_only(&c, from, now + 1, GroupBy::Provider);
        assert!(!raw.groups.contains_key("late"));
    }

    #[test]
    fn a_store_without_the_rollup_gets_it_built_on_open() {
        let mut c = temp_db("backfill");
        spread(&mut c);
        let want = analytics(&c, 1_000, 17_000_000, i64::MAX, GroupBy::Model).unwrap();
        c.execute_batch("DROP TABLE request_hourly").unwrap();
        ensure_rollup(&c).unwrap();
        assert_same(
            &analytics(&c, 1_000, 17_000_000, i64::MAX, GroupBy::Model).unwrap(),
            &want,
        );
    }

    #[test]
    fn retention_trims_whole_hours_from_the_rollup() {
        let mut c = temp_db("ret-rollup");
        spread(&mut c);
        retain(&c, Some(7_200_000 + 60_000), 0).unwrap();
        let oldest_hour: i64 = c
            .query_row("SELECT min(hour_ms) FROM request_hourly", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest_hour, 7_200_000);
    }

    #[test]
    fn every_field_reads_back_through_the_view() {
        let mut c = temp_db("fields");
        let full = RequestRecord {
            ts_ms: 1_760_000_000_123,
            request_id: "fw-1".into(),
            key_label: "team \"a\"".into(),
            client_ip: Some("203.0.113.7".parse().unwrap()),
            method: "POST",
            endpoint: "passthrough",
            path: Some("/providers/x/v1/ünï\\côde".into()),
            requested_model: Some("auto".into()),
            provider: "groq".into(),
            model: "llama/3.1".into(),
            attempts: 2,
            failures: vec!["a/m: HTTP 500".into()],
            status: 200,
            cache_status: "MISS",
            streamed: true,
            prompt_tokens: 123_456_789_012,
            completion_tokens: 7,
            tokens_estimated: true,
            ttft_ms: Some(12.345),
            duration_ms: 1234.5,
            overhead_ms: 0.001,
            cost_usd: 1.25e-7,
            metadata: Some("{\"team\":\"x\"}\n\t\u{1}".into()),
        };
        let bare = RequestRecord {
            ts_ms: 1_760_000_000_124,
            method: "GET",
            endpoint: "models",
            status: 401,
            cache_status: "BYPASS",
            ..Default::default()
        };
        insert(&mut c, &[full.clone(), bare]).unwrap();
        use rusqlite::types::Value::{self, Integer as I, Null, Real as R, Text as T};
        let row = |id: i64| -> Vec<Value> {
            let cols =
                "ts_ms, status, failures, request_id, key_label, client_ip, method, endpoint,
                path, requested_model, provider, model, attempts, cache_status, streamed,
                prompt_tokens, completion_tokens, tokens_estimated, ttft_ms, duration_ms,
                overhead_ms, cost_usd, metadata";
            c.query_row(
                &format!("SELECT {cols} FROM request_log WHERE id = ?1"),
                [id],
                |r| (0..23).map(|i| r.get::<_, Value>(i)).collect(),
            )
            .unwrap()
        };
        let t = |s: &str| T(s.to_string());
        assert_eq!(
            row(1),
            vec![
                I(full.ts_ms),
                I(200),
                t("[\"a/m: HTTP 500\"]"),
                t("fw-1"),
                t("team \"a\""),
                t("203.0.113.7"),
                t("POST"),
                t("passthrough"),
                t("/providers/x/v1/ünï\\côde"),
                t("auto"),
                t("groq"),
                t("llama/3.1"),
                I(2),
                t("MISS"),
                I(1),
                I(123_456_789_012),
                I(7),
                I(1),
                R(12.345),
                R(1234.5),
                R(0.001),
                R(1.25e-7),
                t("{\"team\":\"x\"}\n\t\u{1}"),
            ]
        );
        let bare = row(2);
        assert_eq!(bare[2], Null, "no failures");
        assert_eq!((&bare[5], &bare[8], &bare[18]), (&Null, &Null, &Null));
        assert_eq!((&bare[14], &bare[17]), (&I(0), &I(0)));
    }

    #[test]
    fn milliseconds_are_written_to_the_microsecond() {
        for (ms, text) in [
            (0.0, "0"),
            (1.5, "1.5"),
            (12.345, "12.345"),
            (0.001, "0.001"),
            (100.02, "100.02"),
            (1234.5678, "1234.568"),
            (f64::NAN, "null"),
            (-1.0, "-1.0"),
        ] {
            let mut out = Vec::new();
            json_ms(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{ms}");
        }
        for us in [1u64, 999, 1000, 1001, 123_456_789, 86_400_000_000] {
            let ms = us as f64 / 1000.0;
            let mut out = Vec::new();
            json_ms(&mut out, ms);
            let back: f64 = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, ms, "{us} µs");
        }
    }

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

    #[test]
    fn analytics_decodes_records_with_escapes_nulls_and_extra_fields() {
        let decode = |json: &str| {
            let f: RecordFields = serde_json::from_str(json).unwrap();
            (
                f.key_label.into_owned(),
                f.provider.into_owned(),
                f.model.into_owned(),
                f.attempts,
                f.cache_status.into_owned(),
                (f.prompt_tokens, f.completion_tokens),
                (f.duration_ms, f.overhead_ms, f.cost_usd),
            )
        };
        // Written by `encode`, then by a future freeway with one more field, then a
        // hand-made short and null-filled one.
        let mut ips = IpCache::new(IpRedactor::new(RedactIp::Off, ""));
        let (mut failures, mut record) = (Vec::new(), Vec::new());
        let mut r = rec(1, "p\"q\\", 200, 12.5);
        r.cache_status = "HIT";
        r.attempts = 3;
        r.overhead_ms = 0.25;
        encode(&r, &mut ips, &mut failures, &mut record);
        let written = String::from_utf8(record).unwrap();
        let want = (
            "k".to_string(),
            "p\"q\\".to_string(),
            "m".to_string(),
            3,
            "HIT".to_string(),
            (10, 5),
            (12.5, 0.25, 0.001),
        );
        assert_eq!(decode(&written), want);
        let longer = format!("{},\"new\",{{\"x\":[1]}}]", &written[..written.len() - 1]);
        assert_eq!(decode(&longer), want);
        assert_eq!(
            decode("[null,null,null,null,null,null,null,\"p\",null,null]"),
            (
                String::new(),
                "p".into(),
                String::new(),
                0,
                String::new(),
                (0, 0),
                (0.0, 0.0, 0.0)
            )
        );
    }

    #[test]
    fn histograms_round_trip_large_counts() {
        let mut a = Aggregate::default();
        for (b, n) in [
            (0, 1),
            (17, 127),
            (18, 128),
            (200, u64::from(u32::MAX) * 3),
            (300, 5),
        ] {
            a.add_bucket(b, n);
        }
        let mut back = Aggregate::default();
        back.add_hist(&a.encode_hist());
        assert_eq!(back.buckets, a.buckets);
        assert_eq!(a.buckets.last(), Some(&(255, 5)));
        back.add_hist(&[7, 0x80]); // truncated: ignored, no panic
    }
}
