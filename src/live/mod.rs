//! Live state, across config generations: every model's health and today's request count
//! (the board, persisted to the store every second and shared through Redis), request/token
//! rates (`pace`), requests in flight per provider (`slots`) and the Redis link (`redis_link`).
//!
//! `routing` is the pure logic that reads this state through its `Live` trait; this module
//! does the I/O (SQLite, Redis) and holds the locks and atomics.

pub mod endpoints;
pub mod pace;
pub mod redis_link;
pub mod slots;

use crate::routing::health::{Gate, Health, Report};
use crate::routing::{Catalog, Live, Snapshot};
use crate::store::Store;
use crate::time::{day_string, utc_day};
use pace::Pace;
use parking_lot::Mutex;
use redis_link::RedisLink;
use slots::{SlotCount, Slots};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// One model's live state.
#[derive(Default)]
pub struct ModelState {
    pub health: Mutex<Health>,
    /// Requests sent today (UTC), as counted against the daily limit.
    used: AtomicU64,
    /// Counted but not yet written to the store.
    pending: AtomicU64,
    /// Counted but not yet added to the shared (Redis) count.
    shared_pending: AtomicU64,
    /// Counted today by this process (to restore a shared count Redis lost).
    own: AtomicU64,
}

impl ModelState {
    pub fn daily_used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts one request against today's limit.
    pub fn count_request(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.shared_pending.fetch_add(1, Ordering::Relaxed);
        self.own.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self, report: &Report) {
        self.health.lock().report(report, Instant::now());
    }

    /// Claims the right to try this model now (`Some(true)`: as the half-open probe).
    pub fn acquire(&self) -> Option<bool> {
        self.health.lock().acquire(Instant::now())
    }
}

/// Why a provider cannot be used right now, beyond its config (a rejected key).
#[derive(Default)]
pub struct ProviderState {
    /// Fast check for the router; the reason is behind the lock.
    is_blocked: std::sync::atomic::AtomicBool,
    reason: Mutex<Option<String>>,
}

impl ProviderState {
    pub fn block(&self, why: String) {
        *self.reason.lock() = Some(why);
        self.is_blocked.store(true, Ordering::Release);
    }

    pub fn blocked(&self) -> Option<String> {
        if self.is_blocked.load(Ordering::Acquire) {
            self.reason.lock().clone()
        } else {
            None
        }
    }
}

/// All models' live state, and the store behind the daily counts.
pub struct Board {
    /// Where the store lives; opened on first flush (after Pingora may have forked:
    /// an SQLite connection must not cross a fork).
    store_path: Option<PathBuf>,
    store: OnceLock<Option<Store>>,
    models: Mutex<HashMap<String, Arc<ModelState>>>,
    /// Requests in flight per provider name.
    slots: Mutex<HashMap<String, Arc<SlotCount>>>,
    /// Endpoints of pooled providers, by provider, configured URL and label.
    endpoints: Mutex<HashMap<(String, String, String), Arc<endpoints::EndpointState>>>,
    /// Counts loaded from the store at start, for models not created yet.
    loaded: Mutex<HashMap<String, u64>>,
    today: AtomicU64,
    /// Request and token rate estimates per model and provider, for the router.
    pub pace: Arc<Pace>,
}

impl Board {
    /// A board backed by the SQLite store at `path`: today's counts are read now (the
    /// connection is closed again before the server forks).
    pub fn open(path: &Path) -> Result<Board, String> {
        let today = utc_day(SystemTime::now());
        let loaded = Store::open(path)?.daily_counts(&day_string(today))?;
        Ok(Board {
            store_path: Some(path.to_path_buf()),
            ..Board::with_counts(loaded, today)
        })
    }

    /// A board with no persistence (tests, benches).
    pub fn in_memory() -> Board {
        Board::with_counts(HashMap::new(), utc_day(SystemTime::now()))
    }

    fn with_counts(loaded: HashMap<String, u64>, today: u64) -> Board {
        Board {
            store_path: None,
            store: OnceLock::new(),
            models: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            loaded: Mutex::new(loaded),
            today: AtomicU64::new(today),
            pace: Arc::new(Pace::default()),
        }
    }

    /// The state of `provider/model`, created (with today's stored count) if new.
    pub fn model(&self, qualified: &str) -> Arc<ModelState> {
        let mut models = self.models.lock();
        models
            .entry(qualified.to_string())
            .or_insert_with(|| {
                let state = ModelState::default();
                if let Some(n) = self.loaded.lock().remove(qualified) {
                    state.used.store(n, Ordering::Relaxed);
                }
                Arc::new(state)
            })
            .clone()
    }

    /// The requests in flight to provider `name` (created at zero if new).
    pub fn provider_slots(&self, name: &str) -> Arc<SlotCount> {
        self.slots
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(SlotCount::new(name)))
            .clone()
    }

    /// The live state of one endpoint of a pooled provider (created healthy if new).
    pub fn endpoint(
        &self,
        provider: &str,
        configured: &str,
        label: &str,
    ) -> Arc<endpoints::EndpointState> {
        self.endpoints
            .lock()
            .entry((provider.into(), configured.into(), label.into()))
            .or_insert_with(|| Arc::new(endpoints::EndpointState::new(provider, label)))
            .clone()
    }

    /// Forgets endpoints the running config no longer has (after a reload); requests still
    /// on one keep its state until they end.
    pub fn keep_endpoints(&self, live: &[Arc<endpoints::EndpointState>]) {
        self.endpoints.lock().retain(|_, e| {
            let keep = live.iter().any(|l| Arc::ptr_eq(l, e));
            if !keep {
                e.retire();
            }
            keep
        });
    }

    /// Writes pending counts; at a new UTC day, starts every counter from zero.
    /// Blocking (SQLite): call it off the request path.
    pub fn flush(&self) {
        let now_day = utc_day(SystemTime::now());
        let day = self.today.load(Ordering::Relaxed);
        let models: Vec<(String, Arc<ModelState>)> = self
            .models
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let deltas: Vec<(String, u64)> = models
            .iter()
            .filter_map(|(k, m)| {
                let n = m.pending.swap(0, Ordering::Relaxed);
                (n > 0).then(|| (k.clone(), n))
            })
            .collect();
        let store = self.store.get_or_init(|| {
            let path = self.store_path.as_ref()?;
            Store::open(path)
                .map_err(|e| log::error!("daily counts will not persist: {e}"))
                .ok()
        });
        if let (Some(store), false) = (store, deltas.is_empty()) {
            if let Err(e) = store.add_daily(&day_string(day), &deltas) {
                log::error!("cannot persist daily counts (will retry): {e}");
                for (k, n) in &deltas {
                    if let Some((_, m)) = models.iter().find(|(name, _)| name == k) {
                        m.pending.fetch_add(*n, Ordering::Relaxed);
                    }
                }
            }
        }
        if now_day != day {
            self.today.store(now_day, Ordering::Relaxed);
            for (_, m) in &models {
                m.used.store(0, Ordering::Relaxed);
                m.shared_pending.store(0, Ordering::Relaxed);
                m.own.store(0, Ordering::Relaxed);
            }
            self.loaded.lock().clear();
        }
    }
}

impl Board {
    /// Shared mode: adds this process's new requests to today's count in Redis and takes
    /// every model's total from there (other instances count too). A count Redis lost (it
    /// restarted empty) is restored from what this process counted today. On failure the
    /// deltas stay pending and go out once Redis is back.
    pub async fn sync_shared(&self, link: &RedisLink) {
        let day = day_string(self.today.load(Ordering::Relaxed));
        let key = format!("fw:daily:{day}");
        let models: Vec<(String, Arc<ModelState>)> = self
            .models
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let deltas: Vec<u64> = models
            .iter()
            .map(|(_, m)| m.shared_pending.swap(0, Ordering::Relaxed))
            .collect();
        let pushed = link
            .call("daily counts", |mut c| {
                let mut pipe = redis::pipe();
                for ((name, _), n) in models.iter().zip(&deltas) {
                    if *n > 0 {
                        pipe.hincr(&key, name, *n).ignore();
                    }
                }
                pipe.expire(&key, 3 * 86_400).ignore();
                pipe.hgetall(&key);
                async move {
                    let (all,): (HashMap<String, u64>,) = pipe.query_async(&mut c).await?;
                    Ok(all)
                }
            })
            .await;
        let Some(all) = pushed else {
            for ((_, m), n) in models.iter().zip(&deltas) {
                m.shared_pending.fetch_add(*n, Ordering::Relaxed);
            }
            return;
        };
        for (name, m) in &models {
            let remote = all.get(name).copied().unwrap_or(0);
            let own = m.own.load(Ordering::Relaxed);
            let pending = m.shared_pending.load(Ordering::Relaxed);
            if remote + pending < own {
                // Redis forgot part of today's count: give back what this process knows.
                m.shared_pending
                    .fetch_add(own - remote - pending, Ordering::Relaxed);
            }
            m.used.store(remote.max(own) + pending, Ordering::Relaxed);
        }
    }
}

/// Flushes the board every second, and once more at shutdown.
pub struct BoardFlusher {
    pub board: Arc<Board>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for BoardFlusher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let stop = tokio::select! {
                _ = shutdown.changed() => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            let board = self.board.clone();
            let _ = tokio::task::spawn_blocking(move || board.flush()).await;
            if stop {
                return;
            }
        }
    }
}

/// The live view the router reads, for one config generation.
pub struct LiveBoard<'a> {
    /// Indexed like the catalog's models.
    pub models: &'a [Arc<ModelState>],
    /// Indexed like the config's providers.
    pub providers: &'a [ProviderState],
    /// Requests in flight per provider, indexed like the config's providers.
    pub slots: &'a [Slots],
    /// Endpoint pools, indexed like the config's providers (`None`: one `base_url`).
    pub pools: &'a [Option<endpoints::Pool>],
    /// The models' names and rate ceilings, and the rate estimates read against them.
    pub catalog: &'a Catalog,
    pub pace: &'a Pace,
}

impl Live for LiveBoard<'_> {
    fn snapshot(&self, model: usize, provider: usize, now: Instant) -> Snapshot {
        let state = &self.models[model];
        let h = state.health.lock();
        let gate = h.gate(now);
        let m = &self.catalog.models[model];
        let load = if m.ceilings().iter().any(|&c| c > 0) {
            self.pace.load(&m.qualified, &m.provider_name)
        } else {
            Default::default()
        };
        Snapshot {
            load,
            gate,
            success: h.smoothed_success(),
            latency_ms: h.ewma_latency_ms,
            daily_used: state.daily_used(),
            blocked: self.providers[provider].blocked().or_else(|| {
                self.pools
                    .get(provider)
                    .and_then(Option::as_ref)
                    .and_then(endpoints::Pool::all_down)
            }),
            busy: self.slots.get(provider).and_then(Slots::busy),
            last_error: if gate == Gate::Open {
                None
            } else {
                h.last_error.clone()
            },
        }
    }
}
