//! `request_hourly`, the hourly rollup: its table, the cells a batch adds (each with the
//! span of raw row ids it counts), the backfill on open, and retention, which finds the raw
//! rows to delete through those spans. Separate because the writer, `open` and the queries
//! all rely on its layout, and it relies on none of them.

use super::aggregate::{row_at, Aggregate, Row};
use super::decode::{RawRow, RAW_ROW};
use super::schema::once;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::hash::Hash;

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

pub(super) const HOUR_MS: i64 = 3_600_000;

/// Creates the rollup if missing (or from before its id spans) and fills it from the raw
/// rows.
pub(super) fn ensure_rollup(conn: &Connection) -> rusqlite::Result<()> {
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

/// (hour_ms, provider, model, key_label): one rollup row.
pub(super) type CellKey<S> = (i64, S, S, S);
/// A batch's rollup rows (foldhash: SipHash was ~600 instructions a record here).
pub(super) type Cells<S> = HashMap<CellKey<S>, Cell, foldhash::fast::RandomState>;

/// A rollup row being built: its sums and the span of raw row ids it counts.
#[derive(Debug)]
pub(super) struct Cell {
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
    pub(super) fn add(&mut self, row: &Row, id: i64) {
        self.sums.add(row);
        self.first_id = self.first_id.min(id);
        self.last_id = self.last_id.max(id);
    }
}

/// Adds `cells` to the rollup rows they belong to.
pub(super) fn upsert_cells<S: AsRef<str> + Eq + Hash>(
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

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_same, insert, rec, spread, temp_db};
    use super::*;
    use crate::observe::db::{analytics, GroupBy};
    use crate::observe::record::RequestRecord;

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
}
