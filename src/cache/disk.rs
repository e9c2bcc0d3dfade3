//! Persistence of the response cache in the embedded SQLite store (same file as the daily
//! counters). Entries are loaded once at start, before Pingora forks (the connection is
//! closed again); afterwards one writer thread, started on first use, owns its own
//! connection and applies puts and deletes in batches, off the request path.

use super::{Cached, Key};
use bytes::Bytes;
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

pub enum Op {
    Put {
        key: Key,
        answer: std::sync::Arc<Cached>,
        expires_ms: u64,
        used_ms: u64,
    },
    Delete(Key),
}

const SCHEMA: &str = "PRAGMA journal_mode = WAL;
     PRAGMA synchronous = NORMAL;
     PRAGMA busy_timeout = 5000;
     CREATE TABLE IF NOT EXISTS response_cache (
         key BLOB PRIMARY KEY,
         provider TEXT NOT NULL,
         model TEXT NOT NULL,
         body BLOB NOT NULL,
         expires_ms INTEGER NOT NULL,
         used_ms INTEGER NOT NULL
     );";

fn open(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let conn =
        Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.execute_batch(SCHEMA)
        .map_err(|e| format!("cannot initialise the cache in {}: {e}", path.display()))?;
    Ok(conn)
}

/// Live entries, least recently used first; expired rows are deleted.
pub fn load(path: &Path, now_ms: u64) -> Result<Vec<(Key, Cached, u64)>, String> {
    let conn = open(path)?;
    conn.execute(
        "DELETE FROM response_cache WHERE expires_ms <= ?1",
        params![now_ms as i64],
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare(
            "SELECT key, provider, model, body, expires_ms FROM response_cache ORDER BY used_ms",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in rows {
        let (key, provider, model, body, expires) = row.map_err(|e| e.to_string())?;
        // A row with a malformed key is skipped, not fatal.
        let Ok(key) = <Key>::try_from(key.as_slice()) else {
            continue;
        };
        out.push((
            key,
            Cached {
                provider,
                model,
                body: Bytes::from(body),
            },
            expires.max(0) as u64,
        ));
    }
    Ok(out)
}

/// The writer: a channel to a thread started on first use (after the fork).
pub struct Writer {
    path: PathBuf,
    tx: OnceLock<Option<Mutex<mpsc::Sender<Op>>>>,
}

impl Writer {
    pub fn new(path: PathBuf) -> Writer {
        Writer {
            path,
            tx: OnceLock::new(),
        }
    }

    pub fn send(&self, op: Op) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let path = self.path.clone();
            std::thread::Builder::new()
                .name("cache-writer".into())
                .spawn(move || run(&path, rx))
                .map_err(|e| log::error!("cache will not persist: no writer thread: {e}"))
                .ok()?;
            Some(Mutex::new(tx))
        });
        if let Some(tx) = tx {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(op);
            }
        }
    }
}

fn run(path: &Path, rx: mpsc::Receiver<Op>) {
    let mut conn = match open(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("cache will not persist: {e}");
            // Drain so senders never block (they never do on an unbounded channel anyway).
            for _ in rx {}
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
            if batch.len() >= 256 {
                break;
            }
        }
        if let Err(e) = apply(&mut conn, &batch) {
            log::error!("cache write failed ({} changes lost): {e}", batch.len());
        }
    }
}

fn apply(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO response_cache (key, provider, model, body, expires_ms, used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM response_cache WHERE key = ?1")?;
        for op in batch {
            match op {
                Op::Put {
                    key,
                    answer,
                    expires_ms,
                    used_ms,
                } => {
                    put.execute(params![
                        &key[..],
                        answer.provider,
                        answer.model,
                        &answer.body[..],
                        *expires_ms as i64,
                        *used_ms as i64
                    ])?;
                }
                Op::Delete(key) => {
                    del.execute(params![&key[..]])?;
                }
            }
        }
    }
    tx.commit()
}
