//! Live state of providers' endpoint pools: per endpoint, requests in flight, latency EWMA,
//! whether it is in the pool, and its last check. Kept on the board by (provider, URL), so
//! an endpoint that survives a reload keeps its state and in-flight count, and requests
//! that started before a reload finish on the endpoint they began on.
//!
//! The choice and the in/out rules are pure (`routing::pool`); this module holds the
//! atomics and the metrics. A request takes a [`Lease`] on its endpoint for the exchange.

use crate::routing::pool::{self, EndpointLoad, Standing};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

struct EndpointMetrics {
    healthy: IntGaugeVec,
    requests: IntCounterVec,
}

static METRICS: LazyLock<EndpointMetrics> = LazyLock::new(|| {
    let healthy = IntGaugeVec::new(
        Opts::new(
            "freeway_endpoint_healthy",
            "1 while a pooled provider's endpoint is in its pool, 0 while it is out.",
        ),
        &["provider", "endpoint"],
    )
    .unwrap_or_else(|e| panic!("endpoint healthy gauge: {e}"));
    let requests = IntCounterVec::new(
        Opts::new(
            "freeway_endpoint_requests_total",
            "Attempts sent to each endpoint of a pooled provider, by outcome.",
        ),
        &["provider", "endpoint", "outcome"],
    )
    .unwrap_or_else(|e| panic!("endpoint requests counter: {e}"));
    for c in [
        Box::new(healthy.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(requests.clone()),
    ] {
        if let Err(e) = prometheus::register(c) {
            log::error!("metric registration failed: {e}");
        }
    }
    EndpointMetrics { healthy, requests }
});

/// What the status shows of an endpoint's checks.
#[derive(Debug, Clone, Default)]
pub struct CheckInfo {
    /// Unix ms of the last finished check.
    pub last_check: Option<u64>,
    /// The last failure (a request's or a check's), in words without addresses or keys.
    pub last_error: Option<String>,
}

/// One endpoint's live state.
pub struct EndpointState {
    pub provider: String,
    /// `host:port` (the metric label).
    pub label: String,
    in_flight: AtomicUsize,
    /// Mirrors `standing.ejected` for lock-free reads on the request path.
    healthy: AtomicBool,
    /// Latency EWMA in µs as f64 bits (0: no sample).
    latency_us: AtomicU64,
    /// When the last latency sample came, in ms since [`EPOCH`].
    latency_at: AtomicU64,
    standing: Mutex<(Standing, CheckInfo)>,
    /// Unix ms when the next active check is due (0: now).
    pub next_check: AtomicU64,
    /// A check is running (the checker never runs two at once for one endpoint).
    pub checking: AtomicBool,
    healthy_gauge: IntGauge,
}

/// The EWMA weight of a new latency sample.
const ALPHA: f64 = 0.3;
/// An average this old (ms) counts half when choosing: an endpoint that lost the
/// tie-break on an old slow sample gets requests again, which refresh it.
const LATENCY_HALF_AGE_MS: u64 = 10_000;

/// The clock endpoint latency samples are dated by.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn since_epoch_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl EndpointState {
    pub fn new(provider: &str, label: &str) -> EndpointState {
        let healthy_gauge = METRICS.healthy.with_label_values(&[provider, label]);
        healthy_gauge.set(1);
        EndpointState {
            provider: provider.to_string(),
            label: label.to_string(),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            latency_us: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            standing: Mutex::new((Standing::default(), CheckInfo::default())),
            next_check: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            healthy_gauge,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn latency_ms(&self) -> f64 {
        f64::from_bits(self.latency_us.load(Ordering::Relaxed)) / 1000.0
    }

    pub fn check_info(&self) -> CheckInfo {
        self.standing.lock().1.clone()
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
        self.healthy_gauge.set(i64::from(healthy));
    }

    fn record_latency(&self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1e6;
        // A lost race between two updates loses one sample: harmless for an average.
        let old = f64::from_bits(self.latency_us.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample
        } else {
            old + ALPHA * (sample - old)
        };
        self.latency_us.store(new.to_bits(), Ordering::Relaxed);
        self.latency_at.store(since_epoch_ms(), Ordering::Relaxed);
    }

    /// A real request failed at this endpoint (connect, timeout, 5xx).
    pub fn request_failed(&self, why: &str, unhealthy_after: u32) {
        let mut g = self.standing.lock();
        g.1.last_error = Some(why.to_string());
        if g.0.failed(unhealthy_after) {
            self.set_healthy(false);
            log::warn!(
                "provider `{}`: endpoint {} leaves the pool after {unhealthy_after} failed \
                 requests in a row: {why}",
                self.provider,
                self.label
            );
        }
    }

    /// A real request got an answer from this endpoint.
    pub fn request_served(&self, latency: Duration) {
        self.record_latency(latency);
        self.standing.lock().0.served();
    }

    /// An active check finished at `now_ms`: `Ok` passed, `Err` failed and why.
    pub fn checked(&self, result: Result<(), String>, now_ms: u64, after: (u32, u32)) {
        let (unhealthy_after, healthy_after) = after;
        let mut g = self.standing.lock();
        g.1.last_check = Some(now_ms);
        match result {
            Ok(()) => {
                if g.0.passed(healthy_after) {
                    g.1.last_error = None;
                    self.set_healthy(true);
                    log::info!(
                        "provider `{}`: endpoint {} is back in the pool after \
                         {healthy_after} passed checks",
                        self.provider,
                        self.label
                    );
                }
            }
            Err(why) => {
                if g.0.failed(unhealthy_after) {
                    self.set_healthy(false);
                    log::warn!(
                        "provider `{}`: endpoint {} leaves the pool after {unhealthy_after} \
                         failed checks: {why}",
                        self.provider,
                        self.label
                    );
                }
                g.1.last_error = Some(why);
            }
        }
    }

    /// Counts an attempt's outcome in `freeway_endpoint_requests_total`.
    pub fn count(&self, outcome: &str) {
        METRICS
            .requests
            .with_label_values(&[self.provider.as_str(), self.label.as_str(), outcome])
            .inc();
    }

    /// What the chooser reads at `now` (ms since [`EPOCH`]): the latency average fades
    /// with its age.
    fn load(&self, weight: u32, max_connections: usize, now: u64) -> EndpointLoad {
        let age = now.saturating_sub(self.latency_at.load(Ordering::Relaxed));
        let fade = 1.0 + age as f64 / LATENCY_HALF_AGE_MS as f64;
        EndpointLoad {
            healthy: self.healthy(),
            in_flight: self.in_flight(),
            latency_ms: self.latency_ms() / fade,
            weight,
            max_connections,
        }
    }

    /// Takes the endpoint's metric series away (it left the config).
    pub fn retire(&self) {
        let _ = METRICS
            .healthy
            .remove_label_values(&[self.provider.as_str(), self.label.as_str()]);
    }
}

/// One provider's pool for one config generation: its endpoints' shared states, in the
/// order of its `base_urls`, with their weights and caps.
pub struct Pool {
    pub endpoints: Vec<Arc<EndpointState>>,
    weights: Vec<(u32, usize)>,
    turn: AtomicUsize,
    pub unhealthy_after: u32,
}

/// One request's hold on an endpoint (counted in flight until dropped).
pub struct Lease {
    pub index: usize,
    pub state: Arc<EndpointState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// `endpoints`: each state with its weight and `max_connections`.
    pub fn new(endpoints: Vec<(Arc<EndpointState>, u32, usize)>, unhealthy_after: u32) -> Pool {
        let weights = endpoints.iter().map(|(_, w, m)| (*w, *m)).collect();
        Pool {
            endpoints: endpoints.into_iter().map(|(s, _, _)| s).collect(),
            weights,
            turn: AtomicUsize::new(fastrand::usize(..1024)),
            unhealthy_after,
        }
    }

    /// The endpoint for the next attempt, not in `tried` (a bitmask), taken for the
    /// exchange. `None`: no healthy endpoint is left to try.
    pub fn lease(&self, tried: u64) -> Option<Lease> {
        // Small pools choose on the stack; the config caps pools at 64 endpoints.
        let mut buf = [EndpointLoad {
            healthy: false,
            in_flight: 0,
            latency_ms: 0.0,
            weight: 1,
            max_connections: 0,
        }; 16];
        let mut heap;
        let loads: &mut [EndpointLoad] = if self.endpoints.len() <= buf.len() {
            &mut buf[..self.endpoints.len()]
        } else {
            heap = vec![buf[0]; self.endpoints.len()];
            &mut heap
        };
        let now = since_epoch_ms();
        for (i, (s, (w, m))) in self.endpoints.iter().zip(&self.weights).enumerate() {
            loads[i] = s.load(*w, *m, now);
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let index = pool::choose(loads, turn, tried)?;
        let state = self.endpoints[index].clone();
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Lease { index, state })
    }

    /// Why no request can go to this pool now (every endpoint is out), if so.
    pub fn all_down(&self) -> Option<String> {
        if self.endpoints.iter().any(|e| e.healthy()) {
            return None;
        }
        let last = self
            .endpoints
            .iter()
            .find_map(|e| e.check_info().last_error)
            .unwrap_or_else(|| "failed checks".into());
        Some(format!(
            "every endpoint of its provider is unhealthy ({} endpoints; last error: {last})",
            self.endpoints.len()
        ))
    }

    /// Whether an endpoint not in `tried` could take a retry now.
    pub fn another_healthy(&self, tried: u64) -> bool {
        self.endpoints
            .iter()
            .enumerate()
            .any(|(i, e)| tried & (1 << i) == 0 && e.healthy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        Pool::new(
            (0..n)
                .map(|i| {
                    let s = Arc::new(EndpointState::new("pool-test", &format!("h{i}:1")));
                    (s, 1, 0)
                })
                .collect(),
            2,
        )
    }

    #[test]
    fn leases_count_in_flight_and_spread_over_the_pool() {
        let p = pool(3);
        let held: Vec<Lease> = (0..6).map(|_| p.lease(0).unwrap()).collect();
        for e in &p.endpoints {
            assert_eq!(e.in_flight(), 2);
        }
        drop(held);
        assert!(p.endpoints.iter().all(|e| e.in_flight() == 0));
    }

    #[test]
    fn failed_requests_eject_and_checks_bring_back() {
        let p = pool(2);
        p.endpoints[0].request_failed("the provider refused the connection", 2);
        assert!(p.endpoints[0].healthy());
        p.endpoints[0].request_failed("the provider refused the connection", 2);
        assert!(!p.endpoints[0].healthy());
        assert!((0..4).all(|_| p.lease(0).unwrap().index == 1));
        assert!(p.lease(0b10).is_none());
        assert!(p.all_down().is_none());
        p.endpoints[1].checked(Err("HTTP 503".into()), 1, (1, 2));
        let why = p.all_down().unwrap();
        assert!(why.contains("unhealthy"), "{why}");
        p.endpoints[0].checked(Ok(()), 2, (2, 2));
        assert!(!p.endpoints[0].healthy());
        p.endpoints[0].checked(Ok(()), 3, (2, 2));
        assert!(p.endpoints[0].healthy());
        assert_eq!(p.endpoints[0].check_info().last_check, Some(3));
        assert_eq!(p.endpoints[0].check_info().last_error, None);
    }
}
