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
//!
//! One file per job, each using only the ones listed before it (and `insert.rs` this
//! file's [`open`]):
//! - `schema.rs`: the raw table, the field order of its `record` column, the view, and
//!   the one-time move of old stores.
//! - `encode.rs`: a record written as its `record` JSON array (the writer's hand-made
//!   encoder).
//! - `aggregate.rs`: sums, latency histograms and percentiles, shared by the rollup and
//!   the queries.
//! - `decode.rs`: a raw row read back for analytics.
//! - `rollup.rs`: `request_hourly`, its cells and id spans, its backfill, and retention.
//! - `insert.rs`: [`LogDb`], the writer's connection and its raw FFI insert.
//! - `query.rs`: [`analytics`] and [`recent_failures`].
//! - `testing.rs`: helpers for the files' tests.
//!
//! This file is the public surface and [`open`], which runs the schema's and the rollup's
//! setup in order.

mod aggregate;
mod decode;
mod encode;
mod insert;
mod query;
mod rollup;
mod schema;
#[cfg(test)]
mod testing;

use rollup::ensure_rollup;
use rusqlite::Connection;
use schema::{schema, upgrade_v1, upgrade_view};
use std::path::Path;

pub use aggregate::{lat_bucket, Aggregate, Percentiles};
pub use insert::LogDb;
pub use query::{analytics, recent_failures, Analytics, FailureRow, GroupBy};
pub use rollup::retain;

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
    .and_then(|_| upgrade_view(&conn))
    .and_then(|_| ensure_rollup(&conn))
    .map_err(|e| {
        format!(
            "cannot initialise the request log in {}: {e}",
            path.display()
        )
    })?;
    Ok(conn)
}
