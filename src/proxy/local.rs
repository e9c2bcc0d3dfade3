//! Endpoints the gateway answers itself: `/health`, `/v1/models`, `/v1/routing/status`.

use crate::config::ModelType;
use crate::routing::status::{headroom, model_status};
use crate::state::State;
use crate::time::rfc3339;
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// `GET /health`: 200 when at least one model is routable, 503 otherwise.
pub fn health(state: &State, storage: Value) -> (u16, Bytes) {
    let routable = state.catalog.routable_count();
    let ready = routable > 0;
    let body = json!({
        "status": if ready { "ok" } else { "no_routable_models" },
        "ready": ready,
        "version": env!("CARGO_PKG_VERSION"),
        "routable_models": routable,
        "configured_providers": state.upstreams.iter().filter(|u| u.unavailable.is_none()).count(),
        "simulated": state.upstreams.iter().any(|u| u.simulated && u.unavailable.is_none()),
        "storage": storage,
    });
    (if ready { 200 } else { 503 }, to_bytes(&body))
}

/// `GET /v1/models`: the OpenAI list shape, with capability fields. Only routable models
/// are listed (plus `auto`); `/v1/routing/status` shows the rest and why.
pub fn models(state: &State) -> Bytes {
    let created = now_secs();
    let mut data = vec![json!({
        "id": "auto", "object": "model", "created": created, "owned_by": "freeway",
        "type": "chat",
        "description": "The best healthy model with every capability the request needs.",
    })];
    for m in state
        .catalog
        .models
        .iter()
        .filter(|m| m.unavailable.is_none())
    {
        let mut entry = json!({
            "id": m.qualified,
            "object": "model",
            "created": created,
            "owned_by": m.provider_name,
            "provider": m.provider_name,
            "model": m.id,
            "aliases": m.aliases,
            "type": m.model_type.as_str(),
            "context_window": m.context_window,
            "max_output_tokens": m.max_output_tokens,
            "capabilities": m.caps.names(),
            "tier": format!("{:?}", m.tier).to_lowercase(),
            "auto": m.auto,
            "daily_limit": m.daily_limit,
            "simulated": m.simulated,
        });
        if matches!(m.model_type, ModelType::Image | ModelType::Video) {
            entry["sizes"] = json!(m.size_names());
        }
        data.push(entry);
    }
    to_bytes(&json!({"object": "list", "data": data}))
}

/// `GET /v1/routing/status`, in the SPEC shape: one lock per model, bounded work. Key hints
/// of provider key pools are shown only to an authorized caller (`detailed`).
pub fn routing_status(state: &State, detailed: bool) -> Bytes {
    let now = Instant::now();
    let mut providers = serde_json::Map::new();
    for ((up, live), pool) in state
        .upstreams
        .iter()
        .zip(&state.providers)
        .zip(&state.pools)
    {
        let blocked = live.blocked();
        let mut entry = json!({
            "configured": up.unavailable.is_none() && blocked.is_none(),
            "available_models": 0, "cooldown_models": 0,
            "kind": up.kind.as_str(), "simulated": up.simulated,
            "reason": up.unavailable.clone().or(blocked),
        });
        if detailed && up.keys.len() > 1 {
            entry["keys"] = up
                .keys
                .iter()
                .map(|k| match (k.rejected(), k.resting_until()) {
                    (Some(why), _) => json!({"key": k.hint, "status": "rejected", "reason": why}),
                    (None, Some(until)) => json!({
                        "key": k.hint, "status": "resting",
                        "until": rfc3339(UNIX_EPOCH + Duration::from_millis(until)),
                    }),
                    (None, None) => json!({"key": k.hint, "status": "available"}),
                })
                .collect();
        }
        if let Some(pool) = pool {
            entry["endpoints"] = endpoints_status(up, pool, detailed);
        }
        providers.insert(up.name.clone(), entry);
    }
    let mut counts = [0u64; 6]; // configured, available, degraded, cooldown, exhausted, unconfigured
    let mut models = Vec::with_capacity(state.catalog.models.len());
    for (m, live) in state.catalog.models.iter().zip(&state.models) {
        // A pool with every endpoint out is skipped by the router like a blocked provider.
        let blocked = state.providers[m.provider].blocked().or_else(|| {
            state.pools[m.provider]
                .as_ref()
                .and_then(crate::live::endpoints::Pool::all_down)
        });
        let used = live.daily_used();
        let h = live.health.lock();
        let success_rate = h.success_rate();
        let degraded = h.samples() >= 5 && success_rate < 0.8;
        let (status, reason) = model_status(m, used, blocked, &h, now);
        let slot = match status {
            "available" => 1,
            "degraded" => 2,
            "cooldown" => 3,
            "exhausted" => 4,
            _ => 5,
        };
        counts[slot] += 1;
        if slot != 5 {
            counts[0] += 1;
        }
        if let Some(p) = providers.get_mut(&m.provider_name) {
            let key = match status {
                "available" | "degraded" => Some("available_models"),
                "cooldown" => Some("cooldown_models"),
                _ => None,
            };
            if let Some(key) = key {
                p[key] = json!(p[key].as_u64().unwrap_or(0) + 1);
            }
        }
        let headroom = headroom(m, used);
        let (p50, p90, p99) = h.percentiles();
        models.push(json!({
            "id": m.qualified, "provider": m.provider_name, "model": m.id,
            "status": status, "degraded": degraded,
            "success_rate": success_rate,
            "latency_ms": {"avg": h.ewma_latency_ms.round(), "p50": p50.round(), "p90": p90.round(), "p99": p99.round()},
            "ttft_ms": {"avg": h.ewma_ttft_ms.round()},
            "headroom": headroom,
            "daily_used": used, "daily_limit": m.daily_limit,
            "cooldown_until": if status == "cooldown" { h.cooldown_until_wall().map(rfc3339) } else { None },
            "reasons": [reason],
        }));
    }
    to_bytes(&json!({
        "ok": counts[1] + counts[2] > 0,
        "generated_at": rfc3339(SystemTime::now()),
        "summary": {
            "configured_models": counts[0], "available_models": counts[1],
            "degraded_models": counts[2], "cooldown_models": counts[3],
            "exhausted_models": counts[4], "unconfigured_models": counts[5],
        },
        "providers": providers,
        "models": models,
    }))
}

/// A pooled provider's endpoints. Addresses only for an authorized caller (`detailed`);
/// errors never carry addresses or keys (they are written without them, and scrubbed).
fn endpoints_status(
    up: &crate::providers::Upstream,
    pool: &crate::live::endpoints::Pool,
    detailed: bool,
) -> Value {
    pool.endpoints
        .iter()
        .zip(&up.endpoints)
        .enumerate()
        .map(|(i, (live, ep))| {
            let info = live.check_info();
            let mut v = json!({
                "endpoint": format!("#{}", i + 1),
                "healthy": live.healthy(),
                "in_flight": live.in_flight(),
                "latency_ms": live.latency_ms().round(),
                "weight": ep.weight,
                "last_check": info.last_check.map(|ms| rfc3339(UNIX_EPOCH + Duration::from_millis(ms))),
                "last_error": info.last_error,
            });
            if detailed {
                v["address"] = json!(ep.address);
            }
            v
        })
        .collect()
}
