//! The embedded SQLite store (WAL mode): daily per-model request counters, and the opening
//! shared by the other tables kept in the same file (`image_files`). Calls block: run them
//! off the request path (`spawn_blocking` or a background task).

use parking_lot::Mutex;
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::path::Path;

/// A store file opened on first use and kept open, one connection behind a lock: for the
/// small side tables (kept images, video jobs) that are touched a few times per request
/// at most. `name` words its errors.
pub struct LazyDb {
    path: std::path::PathBuf,
    schema: &'static str,
    name: &'static str,
    conn: parking_lot::Mutex<Option<Connection>>,
}

impl LazyDb {
    pub fn new(
        path: impl Into<std::path::PathBuf>,
        schema: &'static str,
        name: &'static str,
    ) -> LazyDb {
        LazyDb {
            path: path.into(),
            schema,
            name,
            conn: parking_lot::Mutex::new(None),
        }
    }

    /// Runs `work` on the connection, opening the file first if need be.
    pub fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let mut slot = self.conn.lock();
        if slot.is_none() {
            *slot = Some(open_db(&self.path, self.schema)?);
        }
        let conn = slot
            .as_mut()
            .ok_or_else(|| format!("the {} is not open", self.name))?;
        work(conn).map_err(|e| format!("{}: {e}", self.name))
    }
}

/// Opens (creating its directory and the file if needed) the store at `path` in WAL mode
/// and runs `schema` (idempotent `CREATE … IF NOT EXISTS` statements).
pub fn open_db(path: &Path, schema: &str) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let conn =
        Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 5000;",
    )
    .and_then(|_| conn.execute_batch(schema))
    .map_err(|e| format!("cannot initialise {}: {e}", path.display()))?;
    Ok(conn)
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database and its schema.
    pub fn open(path: &Path) -> Result<Store, String> {
        let conn = open_db(
            path,
            "CREATE TABLE IF NOT EXISTS daily_usage (
                 day TEXT NOT NULL,
                 model TEXT NOT NULL,
                 requests INTEGER NOT NULL,
                 PRIMARY KEY (day, model)
             );",
        )?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Requests counted per model (`provider/model`) on `day` (`YYYY-MM-DD`).
    pub fn daily_counts(&self, day: &str) -> Result<HashMap<String, u64>, String> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT model, requests FROM daily_usage WHERE day = ?1")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map(params![day], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| e.to_string())?;
        rows.map(|r| {
            r.map(|(m, n)| (m, n.max(0) as u64))
                .map_err(|e| e.to_string())
        })
        .collect()
    }

    /// Adds request counts for `day` in one transaction.
    pub fn add_daily(&self, day: &str, deltas: &[(String, u64)]) -> Result<(), String> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO daily_usage (day, model, requests) VALUES (?1, ?2, ?3)
                     ON CONFLICT (day, model) DO UPDATE SET requests = requests + excluded.requests",
                )
                .map_err(|e| e.to_string())?;
            for (model, n) in deltas {
                stmt.execute(params![day, model, *n as i64])
                    .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_counts_accumulate_and_persist() {
        let dir = std::env::temp_dir().join(format!("freeway-store-{}", std::process::id()));
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let s = Store::open(&path).unwrap();
            s.add_daily("2026-11-22", &[("a/m".into(), 3), ("b/m".into(), 1)])
                .unwrap();
            s.add_daily("2026-11-22", &[("a/m".into(), 2)]).unwrap();
            s.add_daily("2026-11-21", &[("a/m".into(), 9)]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let c = s.daily_counts("2026-11-22").unwrap();
        assert_eq!(c["a/m"], 5);
        assert_eq!(c["b/m"], 1);
    }
}
