//! Video jobs the gateway has handed to providers (`POST /v1/videos`), kept in the embedded
//! SQLite store (table `video_jobs`) so a restart between creating a job and downloading
//! its video loses nothing. Each row maps the gateway's own job id — `video_` and 128 random
//! bits, so ids cannot be guessed — to the provider, model and the provider's handle (a job
//! id, or Gemini's operation name), with the key that created it.
//!
//! Calls block (SQLite): run them with `spawn_blocking`. The connection is opened on first
//! use, after Pingora has forked.

use crate::store::LazyDb;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::PathBuf;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS video_jobs (
     id TEXT PRIMARY KEY,
     model TEXT NOT NULL,
     upstream TEXT NOT NULL,
     provider_key INTEGER,
     key_label TEXT,
     seconds INTEGER NOT NULL,
     size TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     completed_at INTEGER
 );";

/// What an id starts with (OpenAI's are `video_…` too).
pub const ID_PREFIX: &str = "video_";
/// Bytes of randomness in an id (hex-encoded: 32 characters).
const ID_BYTES: usize = 16;

/// One job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoJob {
    pub id: String,
    /// `provider/model` that accepted it.
    pub model: String,
    /// The provider's handle: its job id, or its operation name.
    pub upstream: String,
    /// Which of the provider's keys created it (a poll from another account's key would
    /// not find it).
    pub provider_key: Option<usize>,
    /// The gateway key that created it: only that key may see it.
    pub key_label: Option<String>,
    pub seconds: u32,
    /// `WIDTHxHEIGHT`.
    pub size: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, once a poll saw it completed.
    pub completed_at: Option<u64>,
}

/// A new unguessable job id.
pub fn new_id() -> Result<String, String> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a job id: {e}"))?;
    Ok(format!("{ID_PREFIX}{}", hex::encode(bytes)))
}

/// Whether `id` could be one of ours (anything else is not looked up).
pub fn is_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX)
        .is_some_and(|h| h.len() == ID_BYTES * 2 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub struct VideoJobs {
    db: LazyDb,
}

impl VideoJobs {
    /// The jobs in the SQLite file at `path` (opened on first use).
    pub fn new(path: impl Into<PathBuf>) -> VideoJobs {
        VideoJobs {
            db: LazyDb::new(path, SCHEMA, "video job store"),
        }
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        self.db.with(work)
    }

    pub fn put(&self, job: &VideoJob) -> Result<(), String> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO video_jobs (id, model, upstream, provider_key, key_label, seconds,
                     size, created_at, completed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                job.id,
                job.model,
                job.upstream,
                job.provider_key.map(|k| k as i64),
                job.key_label,
                job.seconds,
                job.size,
                job.created_at as i64,
                job.completed_at.map(|t| t as i64),
            ])
            .map(|_| ())
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<VideoJob>, String> {
        if !is_id(id) {
            return Ok(None);
        }
        self.with(|c| {
            c.prepare_cached(
                "SELECT id, model, upstream, provider_key, key_label, seconds, size, created_at,
                     completed_at FROM video_jobs WHERE id = ?1",
            )?
            .query_row(params![id], |r| {
                Ok(VideoJob {
                    id: r.get(0)?,
                    model: r.get(1)?,
                    upstream: r.get(2)?,
                    provider_key: r.get::<_, Option<i64>>(3)?.map(|k| k.max(0) as usize),
                    key_label: r.get(4)?,
                    seconds: r.get(5)?,
                    size: r.get(6)?,
                    created_at: r.get::<_, i64>(7)?.max(0) as u64,
                    completed_at: r.get::<_, Option<i64>>(8)?.map(|t| t.max(0) as u64),
                })
            })
            .optional()
        })
    }

    /// Notes when a poll first saw the job completed.
    pub fn completed(&self, id: &str, at: u64) -> Result<(), String> {
        self.with(|c| {
            c.prepare_cached(
                "UPDATE video_jobs SET completed_at = ?2 WHERE id = ?1 AND completed_at IS NULL",
            )?
            .execute(params![id, at as i64])
            .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_persist_across_openings_and_ids_are_checked() {
        let dir = std::env::temp_dir().join(format!("freeway-videos-{}", std::process::id()));
        let path = dir.join("v.db");
        let _ = std::fs::remove_file(&path);
        let id = new_id().unwrap();
        assert!(is_id(&id), "{id}");
        assert!(!is_id("video_123") && !is_id(&id[ID_PREFIX.len()..]));
        let job = VideoJob {
            id: id.clone(),
            model: "p/sora-2".into(),
            upstream: "models/veo/operations/1".into(),
            provider_key: Some(1),
            key_label: Some("app".into()),
            seconds: 8,
            size: "1280x720".into(),
            created_at: 100,
            completed_at: None,
        };
        VideoJobs::new(&path).put(&job).unwrap();
        let again = VideoJobs::new(&path);
        assert_eq!(again.get(&id).unwrap(), Some(job.clone()));
        again.completed(&id, 150).unwrap();
        again.completed(&id, 999).unwrap();
        assert_eq!(again.get(&id).unwrap().unwrap().completed_at, Some(150));
        assert_eq!(again.get(&new_id().unwrap()).unwrap(), None);
        assert_eq!(again.get("nope").unwrap(), None);
    }
}
