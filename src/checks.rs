//! Active health checks of providers' endpoint pools: a background service that sends each
//! endpoint `GET {base}{health_check.path}` with the provider's key every
//! `interval_seconds` (±20% jitter, so several gateways do not check in lockstep) and moves
//! it out of or back into its pool (`live::endpoints`).
//!
//! One check is pingora-load-balancing's `HttpHealthCheck::check` (a pooled connection,
//! `reuse_connection`, a validator for `expect_status`), built per endpoint with the
//! provider's headers. Its `Backends`/`LoadBalancer` are not used: they identify a backend
//! by address and weight only and keep health in their own counters, while an endpoint
//! here is a URL with its own `Host`, path, key and DNS, and its health is shared with the
//! passive checks of real requests (`routing::pool::Standing`), which decide together.

use crate::live::endpoints::EndpointState;
use crate::providers::Upstream;
use crate::state::State;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(50);

/// The background service.
pub struct Checker {
    pub state: Arc<ArcSwap<State>>,
    /// One `HttpHealthCheck` per endpoint of the running config (its connection pool is
    /// reused from check to check), rebuilt when a reload or a DNS change replaces it.
    checks: Mutex<HashMap<(usize, usize), Built>>,
}

struct Built {
    upstream: Weak<Upstream>,
    peer: Arc<pingora::upstreams::peer::HttpPeer>,
    check: Arc<HttpHealthCheck>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The next check time: `interval` ±20%.
fn jittered(now_ms: u64, interval_s: f64) -> u64 {
    let ms = interval_s * 1000.0 * (0.8 + 0.4 * fastrand::f64());
    now_ms + ms.max(1.0) as u64
}

impl Checker {
    pub fn new(state: Arc<ArcSwap<State>>) -> Checker {
        Checker {
            state,
            checks: Mutex::new(HashMap::new()),
        }
    }

    /// Starts every check that is due (each on its own task, at most one per endpoint).
    async fn round(&self) {
        let state = self.state.load_full();
        let now = unix_ms();
        for (p, up) in state.upstreams.iter().enumerate() {
            let (Some(hc), Some(pool)) = (&up.health_check, &state.pools[p]) else {
                continue;
            };
            if up.unavailable.is_some() {
                continue;
            }
            for (i, ep) in pool.endpoints.iter().enumerate() {
                let due = ep.next_check.load(Ordering::Relaxed);
                if due == 0 {
                    // First sight (start-up, or added by a reload): soon, at a random point
                    // of the first second (or interval, if shorter) to spread checks out.
                    let spread = hc.interval_seconds.min(1.0) * 1000.0 * fastrand::f64();
                    ep.next_check
                        .store(now + 1 + spread as u64, Ordering::Relaxed);
                    continue;
                }
                if due > now || ep.checking.swap(true, Ordering::AcqRel) {
                    continue;
                }
                ep.next_check
                    .store(jittered(now, hc.interval_seconds), Ordering::Relaxed);
                let check = match self.built(up, i).await {
                    Ok(c) => c,
                    Err(why) => {
                        finish(ep, Err(why), hc);
                        continue;
                    }
                };
                let (ep, hc) = (ep.clone(), hc.clone());
                let secrets = state.secrets.clone();
                tokio::spawn(async move {
                    let timeout = Duration::from_millis(hc.timeout_ms);
                    let result = match tokio::time::timeout(timeout, run_check(&check)).await {
                        Ok(r) => r.map_err(|e| secrets.scrub(&e).into_owned()),
                        Err(_) => Err(format!("no answer within {} ms", hc.timeout_ms)),
                    };
                    finish(&ep, result, &hc);
                });
            }
        }
    }

    /// The check of endpoint `ep` of `up`, built once per endpoint and peer.
    async fn built(&self, up: &Arc<Upstream>, ep: usize) -> Result<Arc<HttpHealthCheck>, String> {
        let peer = up.peer(ep).await?;
        let key = (Arc::as_ptr(up) as usize, ep);
        let mut checks = self.checks.lock();
        if let Some(b) = checks.get(&key) {
            if b.upstream.upgrade().is_some_and(|u| Arc::ptr_eq(&u, up))
                && Arc::ptr_eq(&b.peer, &peer)
            {
                return Ok(b.check.clone());
            }
        }
        checks.retain(|_, b| b.upstream.strong_count() > 0);
        let hc = up.health_check.as_ref().ok_or("not a pool")?;
        let path = hc.path.as_deref().unwrap_or("/models");
        let endpoint = up.endpoint(ep);
        let tls = endpoint.url.as_ref().is_some_and(|u| u.tls);
        let mut check = HttpHealthCheck::new(&endpoint.address, tls);
        check.req = up.check_header(ep, path).map_err(|e| e.to_string())?;
        let mut template = (*peer).clone();
        let timeout = Duration::from_millis(hc.timeout_ms);
        template.options.connection_timeout = Some(
            template
                .options
                .connection_timeout
                .map_or(timeout, |c| c.min(timeout)),
        );
        template.options.read_timeout = Some(timeout);
        template.options.write_timeout = Some(timeout);
        check.peer_template = template;
        check.reuse_connection = true;
        let expect = hc.expect_status;
        check.validator = Some(Box::new(move |resp| {
            let status = resp.status.as_u16();
            if status == expect {
                Ok(())
            } else {
                pingora::Error::e_explain(
                    pingora::ErrorType::CustomCode("unexpected health check status", status),
                    "health check",
                )
            }
        }));
        let check = Arc::new(check);
        checks.insert(
            key,
            Built {
                upstream: Arc::downgrade(up),
                peer,
                check: check.clone(),
            },
        );
        Ok(check)
    }
}

/// Runs one check against the peer's address.
async fn run_check(check: &HttpHealthCheck) -> Result<(), String> {
    let addr: SocketAddr = check.peer_template._address.clone();
    let backend = Backend {
        addr,
        weight: 1,
        ext: Default::default(),
    };
    check.check(&backend).await.map_err(|e| match e.etype() {
        pingora::ErrorType::CustomCode(_, status) => format!("health check answered HTTP {status}"),
        _ => format!(
            "health check failed: {}",
            crate::proxy::attempt::describe(&e)
        ),
    })
}

fn finish(ep: &EndpointState, result: Result<(), String>, hc: &crate::config::HealthCheckConfig) {
    ep.checked(result, unix_ms(), (hc.unhealthy_after, hc.healthy_after));
    ep.checking.store(false, Ordering::Release);
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Checker {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => self.round().await,
            }
        }
    }
}
