//! What runs between authentication and routing: the per-client limits (charged once per
//! client request) and the response cache (lookup, coalescing, storing). The logic lives
//! in `crate::limits` and `crate::cache`; this file only connects it to the session.

use super::ctx::RequestCtx;
use super::respond::{names, send, send_error, Head};
use super::Gateway;
use crate::cache::{self, sse, Cache, Cached, Key, LeadGuard, Turn};
use crate::client_ip::{bucket_id, client_ip, IpNet};
use crate::errors::ApiError;
use crate::limits::bucket::Rule;
use crate::limits::{Charge, Verdict};
use crate::request::ChatRequest;
use crate::state::State;
use bytes::Bytes;
use http::HeaderValue;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the limits and the cache add to a response's headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamp {
    /// `HIT`, `MISS`; `BYPASS` when unset.
    pub cache: Option<&'static str>,
    pub limit: Option<Verdict>,
}

impl Stamp {
    pub fn write(&self, head: &mut impl Head) {
        let cache = HeaderValue::from_static(self.cache.unwrap_or("BYPASS"));
        head.put(names::CACHE_STATUS, cache);
        if let Some(v) = &self.limit {
            head.put(names::RATELIMIT_LIMIT, HeaderValue::from(v.limit));
            head.put(names::RATELIMIT_REMAINING, HeaderValue::from(v.remaining));
        }
    }
}

/// Charges a model request against its client's buckets. `false` when it was refused (a
/// 429 has been sent). Local endpoints (health, models, status) are never charged, so
/// probes never eat a client's budget (see `endpoint::Endpoint::model`).
pub async fn admit(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> bool {
    let limits = &state.config.limits;
    let mut charges = Vec::with_capacity(2);
    if let Some((burst, per_minute)) = limits.per_ip.enabled() {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted: Vec<IpNet> = limits
            .trusted_proxies
            .iter()
            .filter_map(|p| IpNet::parse(p).ok())
            .collect();
        let forwarded = session.req_header().headers.get_all("x-forwarded-for");
        let ip = client_ip(
            peer,
            forwarded.iter().filter_map(|v| v.to_str().ok()),
            limits.trust_forwarded_for,
            &trusted,
        );
        if let Some(ip) = ip {
            charges.push(Charge {
                scope: "ip",
                id: format!("ip:{}", bucket_id(ip)),
                rule: Rule { burst, per_minute },
            });
        }
    }
    if let (Some((burst, per_minute)), Some(label)) = (limits.per_key.enabled(), &ctx.key_label) {
        charges.push(Charge {
            scope: "key",
            id: format!("key:{label}"),
            rule: Rule { burst, per_minute },
        });
    }
    if let Some((id, rpm)) = super::spend::rpm(ctx) {
        charges.push(Charge {
            scope: "key",
            id,
            rule: Rule {
                burst: rpm,
                per_minute: rpm,
            },
        });
    }
    let Some(verdict) = gw.limiter.charge(&charges).await else {
        return true;
    };
    ctx.stamp.limit = Some(verdict);
    if verdict.admitted {
        return true;
    }
    let who = if verdict.scope == "key" {
        "gateway key"
    } else {
        "client IP"
    };
    let err = ApiError {
        status: 429,
        kind: "rate_limit_error",
        code: Some("rate_limit_exceeded"),
        param: None,
        message: format!(
            "Rate limit reached for this {who} ({} requests burst, [limits].per_{}). Retry after {} s.",
            verdict.limit,
            verdict.scope,
            verdict.retry_after_secs()
        ),
        retry_after: Some(verdict.retry_after_secs()),
    };
    log::info!("{}: refused by the per-{} limit", ctx.id, verdict.scope);
    send_error(session, ctx, &err).await;
    false
}

/// A request that goes upstream, and what to do with its answer.
pub struct Ticket {
    key: Option<Key>,
    ttl: Duration,
    /// Held while this request fetches the key: identical requests wait for it.
    _lead: Option<LeadGuard>,
}

impl Ticket {
    fn bypass() -> Ticket {
        Ticket {
            key: None,
            ttl: Duration::ZERO,
            _lead: None,
        }
    }

    /// Whether the answer should be kept (the relay then assembles streams).
    pub fn capture(&self) -> bool {
        self.key.is_some()
    }

    /// Stores a successful, complete answer (before the lead is released).
    pub async fn store(&self, cache: &Cache, ctx: &RequestCtx, body: Bytes) {
        let Some(key) = self.key else {
            return;
        };
        let cached = Cached {
            provider: ctx.provider.clone().unwrap_or_default(),
            model: ctx.model.clone().unwrap_or_default(),
            body,
        };
        cache.put(key, cached, self.ttl).await;
    }
}

/// What the cache needs to know of a request: its endpoint (each has its own entries), the
/// model it names, and how a hit is answered.
pub struct CacheAsk<'a> {
    pub endpoint: &'static str,
    pub model: Option<&'a str>,
    /// A hit is replayed as SSE.
    pub stream: bool,
    /// The replayed stream ends with a usage chunk.
    pub include_usage: bool,
}

impl<'a> CacheAsk<'a> {
    pub fn chat(req: &'a ChatRequest<'_>) -> CacheAsk<'a> {
        CacheAsk {
            endpoint: "chat",
            model: req.model.as_deref(),
            stream: req.stream,
            include_usage: req.include_usage,
        }
    }
}

impl Ticket {
    /// Keeps the answer no longer than `max` (it links to something that expires).
    pub fn cap_ttl(&mut self, max: Duration) {
        self.ttl = self.ttl.min(max);
    }
}

/// Looks the request up in the cache. `None` when it was answered (a HIT, or a bad cache
/// header); otherwise the ticket for the upstream attempt.
pub async fn cache_gate(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    cacheable: bool,
    raw: &[u8],
    req: &CacheAsk<'_>,
) -> Option<Ticket> {
    let cfg = &gw.cache.config;
    let c = &ctx.controls;
    // A client's own provider key: its answers are never cached nor served from the cache.
    if !cfg.enabled || !cacheable || c.skip_cache || ctx.spend.byok.is_some() {
        return Some(Ticket::bypass());
    }
    let ttl = c.cache_ttl.unwrap_or(cfg.default_ttl_seconds);
    if ttl == 0 {
        return Some(Ticket::bypass());
    }
    let key = match c.cache_key.as_deref() {
        // The client's own name for the entry replaces the body (Cloudflare's semantics).
        Some(name) => cache::custom_key(req.endpoint, name),
        None => {
            let model = req.model.unwrap_or("auto");
            let Ok(key) = cache::key(req.endpoint, model, raw, None) else {
                return Some(Ticket::bypass());
            };
            key
        }
    };
    // Each gateway key has its own entries unless the operator shares them.
    let key = if cfg.shared {
        key
    } else {
        cache::scoped(key, ctx.key_label.as_deref().unwrap_or(""))
    };
    // Answers guarded by answer guardrails are kept apart (stored after them).
    let key = match super::guardrails::cache_scope(ctx) {
        Some(scope) => cache::scoped(key, &scope),
        None => key,
    };
    let ttl = Duration::from_secs(ttl);
    let deadline = Instant::now() + Duration::from_millis(state.config.server.upstream_timeout_ms);
    let mut waited = false;
    loop {
        if let Some(hit) = gw.cache.get(&key).await {
            if serve_hit(session, ctx, req, &hit).await {
                return None;
            }
        }
        if waited {
            // The request we waited for stored nothing: go upstream ourselves rather than
            // queue behind another leader.
            ctx.stamp.cache = Some("MISS");
            return Some(Ticket {
                key: Some(key),
                ttl,
                _lead: None,
            });
        }
        match gw.cache.turn(&key) {
            Turn::Lead(lead) => {
                ctx.stamp.cache = Some("MISS");
                return Some(Ticket {
                    key: Some(key),
                    ttl,
                    _lead: Some(lead),
                });
            }
            Turn::Follow(mut done) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, done.changed()).await;
                waited = true;
            }
        }
    }
}

/// Answers from the cache; `false` if the entry could not be rendered (treated as a miss).
async fn serve_hit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &CacheAsk<'_>,
    hit: &Arc<Cached>,
) -> bool {
    let (content_type, body): (&str, Bytes) = if req.stream {
        match sse::replay(&hit.body, req.include_usage) {
            Ok(b) => ("text/event-stream", b),
            Err(e) => {
                log::warn!("{}: unreadable cache entry ignored: {e}", ctx.id);
                return false;
            }
        }
    } else {
        // A cache hit costs nothing.
        let body = super::spend::price_json(ctx, None, hit.body.clone(), None);
        ("application/json", body)
    };
    let mut body = body;
    if req.stream {
        let mut events = body.to_vec();
        super::spend::price_events(ctx, None, &mut events);
        body = Bytes::from(events);
    }
    ctx.spend.header = Some(0.0);
    ctx.stamp.cache = Some("HIT");
    ctx.provider = Some(hit.provider.clone());
    ctx.model = Some(hit.model.clone());
    ctx.streamed = req.stream;
    send(session, ctx, 200, content_type, body, &[]).await;
    true
}

/// `/health`'s `storage` field: the Redis link and the cache.
pub fn storage_health(gw: &Gateway) -> serde_json::Value {
    let (entries, bytes) = gw.cache.usage();
    let redis = match &gw.redis {
        None => serde_json::json!({"configured": false}),
        Some(link) => {
            let (up, error) = link.status();
            serde_json::json!({
                "configured": true, "up": up, "error": error,
                "mode": if up { "shared" } else { "local fallback" },
            })
        }
    };
    serde_json::json!({
        "redis": redis,
        "cache": {"enabled": gw.cache.config.enabled, "entries": entries, "bytes": bytes},
        "budgets": {"mode": gw.budgets.mode()},
    })
}

/// The limiter, cache and Redis link built from the config, before the server starts.
pub struct Guards {
    limiter: Arc<crate::limits::Limiter>,
    budgets: Arc<crate::limits::budget::Budgets>,
    cache: Arc<cache::Cache>,
    redis: Option<Arc<crate::live::redis_link::RedisLink>>,
}

impl Guards {
    /// Opens the cache (loading stored entries; the SQLite connection is closed again
    /// before the fork). The Redis link connects later, in its keeper task.
    pub fn build(config: &crate::config::Config) -> Result<Guards, String> {
        let url = &config.storage.redis_url;
        let redis = (!url.is_empty()).then(|| crate::live::redis_link::RedisLink::new(url));
        let cache = cache::Cache::open(
            std::path::Path::new(&config.storage.path),
            &config.cache,
            redis.clone(),
        )
        .map_err(|e| format!("config error at `storage.path`: the cache cannot load: {e}"))?;
        Ok(Guards {
            limiter: Arc::new(crate::limits::Limiter::new(redis.clone())),
            budgets: Arc::new(crate::limits::budget::Budgets::new(
                redis.clone(),
                Arc::new(crate::limits::budget::SystemClock),
            )),
            cache: Arc::new(cache),
            redis,
        })
    }

    /// Hands them to the gateway and adds their background tasks to the server.
    pub fn install(
        self,
        gw: &mut Gateway,
        server: &mut pingora::server::Server,
        board: &Arc<crate::live::Board>,
    ) {
        use pingora::services::background::background_service;
        if let Some(link) = &self.redis {
            log::info!("shared mode: limits, daily counts and the cache live in Redis");
            server.add_service(background_service(
                "redis link",
                crate::live::redis_link::RedisKeeper {
                    link: link.clone(),
                    board: board.clone(),
                },
            ));
        }
        server.add_service(background_service(
            "limit sweeper",
            Sweeper {
                limiter: self.limiter.clone(),
                budgets: self.budgets.clone(),
            },
        ));
        gw.budgets = self.budgets;
        gw.limiter = self.limiter;
        gw.cache = self.cache;
        gw.redis = self.redis;
    }
}

/// Forgets idle in-process buckets every minute.
struct Sweeper {
    limiter: Arc<crate::limits::Limiter>,
    budgets: Arc<crate::limits::budget::Budgets>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {
                    self.limiter.sweep();
                    self.budgets.sweep();
                }
            }
        }
    }
}
