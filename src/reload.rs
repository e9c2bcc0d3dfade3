//! Background upkeep of the running config: reload on SIGHUP or when the file changes, and
//! re-resolve provider hostnames.
//!
//! A reload builds a whole new `State` from the file and swaps it in atomically: requests in
//! flight keep the `State` they started with (they hold an `Arc` to it), new requests get the
//! new one. An invalid file is rejected with a log line naming the key, and the running
//! config stays. Live model state (health, cooldowns, daily counts) lives on the `Board`,
//! keyed by `provider/model`, so models that still exist keep theirs.
//! Listener addresses and thread counts are fixed at start: changing them needs a restart
//! or a binary upgrade (`-u`), which the log says.

use crate::config::Config;
use crate::live::Board;
use crate::state::State;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Upkeep {
    /// The config file; `None` for configs built in code (`freeway demo`).
    pub path: Option<PathBuf>,
    pub state: Arc<ArcSwap<State>>,
    pub board: Arc<Board>,
    pub dns_every: Duration,
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Upkeep {
    /// Re-reads the config; true when the new one is in service.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.path else { return false };
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("config reload rejected, keeping the running config: {e}");
                return false;
            }
        };
        let old = self.state.load_full();
        if config.server.listen != old.config.server.listen
            || config.server.threads != old.config.server.threads
        {
            log::warn!(
                "config reload: server.listen and server.threads take effect only after a \
                 restart or a binary upgrade (-u); the rest is applied now"
            );
        }
        let state = State::new(config, &self.board);
        log::info!(
            "config reloaded from {}: {} of {} models routable",
            path.display(),
            state.catalog.routable_count(),
            state.catalog.models.len()
        );
        self.state.store(Arc::new(state));
        // Endpoints removed from pools leave the board (and their metric); requests still
        // on them finish on the state they hold.
        self.board
            .keep_endpoints(&self.state.load().endpoint_states());
        true
    }

    async fn refresh_dns(&self) {
        let state = self.state.load_full();
        for up in state.upstreams.iter().filter(|u| u.needs_dns()) {
            // Each endpoint of a pool has its own host and peer.
            if let Err(e) = up.resolve_all().await {
                log::warn!("provider `{}`: {e}", up.name);
            }
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP (reload on file change only): {e}");
                None
            }
        };
        let mut seen = self.path.as_ref().and_then(mtime);
        let mut next_dns = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_dns {
                self.refresh_dns().await;
                next_dns = tokio::time::Instant::now() + self.dns_every;
            }
            let hup_recv = async {
                match &mut hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup_recv => {
                    log::info!("SIGHUP: reloading the config");
                    self.reload();
                    seen = self.path.as_ref().and_then(mtime);
                }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    let now = self.path.as_ref().and_then(mtime);
                    if now.is_some() && now != seen {
                        seen = now;
                        log::info!("config file changed: reloading");
                        self.reload();
                    }
                }
            }
        }
    }
}
