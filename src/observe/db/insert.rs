//! The writer's connection, [`LogDb`]: multi-row INSERTs prepared once through the SQLite C
//! API with their text bound in place (`SQLITE_STATIC`), each batch and its rollup cells in
//! one transaction. Separate because it holds the module's `unsafe` code, whose contract is
//! easiest to check in one place.

use super::aggregate::Row;
use super::encode::encode;
use super::open;
use super::rollup::{upsert_cells, Cells, HOUR_MS};
use crate::observe::record::{IpCache, RequestRecord};
use rusqlite::{ffi, Connection};
use std::borrow::Borrow;
use std::ffi::c_int;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::super::testing::{insert, temp_db};
    use super::*;

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
            guardrails: vec!["no-pii".into(), "words".into()],
            images: 2,
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
                overhead_ms, cost_usd, metadata, guardrails, images";
            c.query_row(
                &format!("SELECT {cols} FROM request_log WHERE id = ?1"),
                [id],
                |r| (0..25).map(|i| r.get::<_, Value>(i)).collect(),
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
                t("[\"no-pii\",\"words\"]"),
                I(2),
            ]
        );
        let bare = row(2);
        assert_eq!(bare[2], Null, "no failures");
        assert_eq!((&bare[5], &bare[8], &bare[18]), (&Null, &Null, &Null));
        assert_eq!((&bare[14], &bare[17]), (&I(0), &I(0)));
        assert_eq!(bare[23], Null, "no guardrail matched");
        assert_eq!(bare[24], I(0), "no images");
    }
}
