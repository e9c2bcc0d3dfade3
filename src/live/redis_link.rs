//! The optional Redis link (`[storage].redis_url`): limits, daily counts and the cache shared
//! by every instance.
//!
//! Redis is never on the critical path for long: every call has a short deadline, and the
//! first failure marks the link down, after which requests use local state without trying
//! Redis at all. A keeper task (after Pingora's fork) connects, pings every half second,
//! logs each transition, and marks the link up again when Redis answers; shared state then
//! resumes (daily counts kept locally meanwhile are pushed, see `routing::board`).

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Deadline of one Redis call made on a request's behalf.
pub const OP_TIMEOUT: Duration = Duration::from_millis(150);
const PING_EVERY: Duration = Duration::from_millis(500);

pub struct RedisLink {
    url: String,
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    /// Why the link is down (for `/health`).
    last_error: Mutex<Option<String>>,
}

impl RedisLink {
    pub fn new(url: &str) -> Arc<RedisLink> {
        Arc::new(RedisLink {
            url: url.to_string(),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            last_error: Mutex::new(Some("not connected yet".into())),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// `/health`'s view: `up` and, when down, why.
    pub fn status(&self) -> (bool, Option<String>) {
        let up = self.is_up();
        (
            up,
            if up {
                None
            } else {
                self.last_error.lock().clone()
            },
        )
    }

    fn mark_down(&self, why: String) {
        if self.up.swap(false, Ordering::AcqRel) {
            log::error!("redis unreachable, serving from local state until it returns: {why}");
        }
        *self.last_error.lock() = Some(why);
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            log::warn!(
                "redis reachable at {}: shared state resumes",
                self.redacted()
            );
        }
        *self.last_error.lock() = None;
    }

    fn redacted(&self) -> String {
        // redis://user:password@host → redis://host
        match self.url.split_once('@') {
            Some((scheme_creds, host)) => {
                let scheme = scheme_creds.split("://").next().unwrap_or("redis");
                format!("{scheme}://{host}")
            }
            None => self.url.clone(),
        }
    }

    /// Runs `op` if the link is up, within [`OP_TIMEOUT`]. `None` (and the link marked
    /// down) on any failure: the caller falls back to local state.
    pub async fn call<T, F, Fut>(&self, what: &str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let conn = self.conn.load_full()?;
        match tokio::time::timeout(OP_TIMEOUT, op((*conn).clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.mark_down(format!("{what}: {e}"));
                None
            }
            Err(_) => {
                self.mark_down(format!(
                    "{what}: no answer within {} ms",
                    OP_TIMEOUT.as_millis()
                ));
                None
            }
        }
    }

    async fn connect(&self) -> Result<ConnectionManager, String> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(300)))
            .set_response_timeout(Some(Duration::from_millis(300)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        match tokio::time::timeout(
            Duration::from_secs(1),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    /// One keeper round: connect if needed, then ping.
    pub async fn check(&self) {
        let conn = match self.conn.load_full() {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => {
                    let c = Arc::new(c);
                    self.conn.store(Some(c.clone()));
                    c
                }
                Err(e) => return self.mark_down(format!("connect: {e}")),
            },
        };
        let mut c = (*conn).clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut c);
        match tokio::time::timeout(Duration::from_millis(500), ping).await {
            Ok(Ok(_)) => self.mark_up(),
            Ok(Err(e)) => self.mark_down(format!("ping: {e}")),
            Err(_) => self.mark_down("ping: no answer within 500 ms".into()),
        }
    }
}

/// Keeps the link's state current, and runs `on_tick` (shared-state sync) while it is up.
pub struct RedisKeeper {
    pub link: Arc<RedisLink>,
    pub board: Arc<crate::live::Board>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for RedisKeeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut ticks = 0u32;
        loop {
            self.link.check().await;
            ticks = ticks.wrapping_add(1);
            if self.link.is_up() && ticks.is_multiple_of(2) {
                self.board.sync_shared(&self.link).await;
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    self.board.sync_shared(&self.link).await;
                    return;
                }
                _ = tokio::time::sleep(PING_EVERY) => {}
            }
        }
    }
}
