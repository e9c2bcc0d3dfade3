//! Images kept for `response_format: "url"` answers whose provider gave no URL, served at
//! `GET /v1/images/files/{id}`. They live in the embedded SQLite store (table
//! `image_files`), each for `[images] url_ttl_seconds`, all of them within
//! `[images] max_bytes` (the oldest go first).
//!
//! The id is the only credential: 128 random bits from the operating system, so a URL
//! cannot be guessed, and it can be pasted into an `<img>` tag without a gateway key.
//! Calls block (SQLite): run them with `spawn_blocking`. The connection is opened on first
//! use, after Pingora has forked.

use crate::store::LazyDb;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::PathBuf;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS image_files (
     id TEXT PRIMARY KEY,
     content_type TEXT NOT NULL,
     body BLOB NOT NULL,
     created_ms INTEGER NOT NULL,
     expires_ms INTEGER NOT NULL
 );
 CREATE INDEX IF NOT EXISTS image_files_expiry ON image_files (expires_ms);";

/// Bytes of randomness in an id (hex-encoded: 32 characters).
const ID_BYTES: usize = 16;

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub content_type: String,
    pub body: Vec<u8>,
    pub expires_ms: u64,
}

pub struct ImageFiles {
    db: LazyDb,
}

/// A new unguessable id.
pub fn new_id() -> Result<String, String> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for an image id: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Whether `id` could be one of ours (anything else is not looked up).
pub fn is_id(id: &str) -> bool {
    id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageFiles {
    /// The store in the SQLite file at `path` (opened on first use).
    pub fn new(path: impl Into<PathBuf>) -> ImageFiles {
        ImageFiles {
            db: LazyDb::new(path, SCHEMA, "image store"),
        }
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        self.db.with(work)
    }

    /// Keeps `body` until `now_ms + ttl_ms`, then trims the store to `max_bytes` (oldest
    /// first, this image last). Returns its id.
    pub fn put(
        &self,
        content_type: &str,
        body: &[u8],
        now_ms: u64,
        ttl_ms: u64,
        max_bytes: u64,
    ) -> Result<String, String> {
        if body.len() as u64 > max_bytes {
            return Err(format!(
                "the image ({} bytes) is larger than [images] max_bytes ({max_bytes})",
                body.len()
            ));
        }
        let id = new_id()?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM image_files WHERE expires_ms <= ?1",
                params![now_ms as i64],
            )?;
            tx.execute(
                "INSERT INTO image_files (id, content_type, body, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, content_type, body, now_ms as i64, (now_ms + ttl_ms) as i64],
            )?;
            // Oldest first until the rest fits.
            let total: i64 = tx.query_row(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM image_files",
                [],
                |r| r.get(0),
            )?;
            let mut over = total - max_bytes as i64;
            if over > 0 {
                let old: Vec<(String, i64)> = tx
                    .prepare("SELECT id, LENGTH(body) FROM image_files WHERE id != ?1 ORDER BY created_ms, rowid")?
                    .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (old_id, len) in old {
                    if over <= 0 {
                        break;
                    }
                    tx.execute("DELETE FROM image_files WHERE id = ?1", params![old_id])?;
                    over -= len;
                }
            }
            tx.commit()
        })?;
        Ok(id)
    }

    /// The image `id`, unless it expired (or never was).
    pub fn get(&self, id: &str, now_ms: u64) -> Result<Option<ImageFile>, String> {
        if !is_id(id) {
            return Ok(None);
        }
        self.with(|c| {
            c.query_row(
                "SELECT content_type, body, expires_ms FROM image_files
                 WHERE id = ?1 AND expires_ms > ?2",
                params![id.to_ascii_lowercase(), now_ms as i64],
                |r| {
                    Ok(ImageFile {
                        content_type: r.get(0)?,
                        body: r.get(1)?,
                        expires_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
            .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> ImageFiles {
        let dir =
            std::env::temp_dir().join(format!("freeway-images-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ImageFiles::new(dir.join("t.db"))
    }

    #[test]
    fn images_expire_and_ids_are_random_hex() {
        let s = store("ttl");
        let id = s
            .put("image/png", b"png-bytes", 1_000, 500, 1 << 20)
            .unwrap();
        assert!(is_id(&id), "{id}");
        assert_ne!(id, s.put("image/png", b"x", 1_000, 500, 1 << 20).unwrap());
        let got = s.get(&id, 1_499).unwrap().unwrap();
        assert_eq!(
            (got.content_type.as_str(), got.body.as_slice()),
            ("image/png", &b"png-bytes"[..])
        );
        assert_eq!(s.get(&id, 1_500).unwrap(), None, "expired");
        assert_eq!(s.get("../../etc/passwd", 0).unwrap(), None);
        assert_eq!(s.get(&"0".repeat(32), 0).unwrap(), None);
    }

    #[test]
    fn the_oldest_images_go_when_the_store_is_full() {
        let s = store("full");
        let a = s.put("image/png", &[1; 40], 1, 1_000, 100).unwrap();
        let b = s.put("image/png", &[2; 40], 2, 1_000, 100).unwrap();
        let c = s.put("image/png", &[3; 40], 3, 1_000, 100).unwrap();
        assert_eq!(s.get(&a, 10).unwrap(), None, "the oldest went");
        assert!(s.get(&b, 10).unwrap().is_some());
        assert!(s.get(&c, 10).unwrap().is_some());
        assert!(s.put("image/png", &[4; 101], 4, 1_000, 100).is_err());
    }
}
