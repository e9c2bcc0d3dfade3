//! Endpoints the gateway answers itself: `/health`, `/v1/models`, `/v1/routing/status`.

use crate::config::ModelType;
use crate::state::State;
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// `GET /health`: 200 when at least one model is routable, 503 otherwise.
pub fn health(state: &State) -> (u16, Bytes) {
    let routable = state.catalog.routable_count();
    let ready = routable > 0;
    let body = json!({
        "status": if ready { "ok" } else { "no_routable_models" },
        "ready": ready,
        "version": env!("CARGO_PKG_VERSION"),
        "routable_models": routable,
        "configured_providers": state.upstreams.iter().filter(|u| u.unavailable.is_none()).count(),
        "simulated": state.upstreams.iter().any(|u| u.simulated && u.unavailable.is_none()),
    });
    (if ready { 200 } else { 503 }, to_bytes(&body))
}

fn type_name(t: ModelType) -> &'static str {
    match t {
        ModelType::Chat => "chat",
        ModelType::Embedding => "embedding",
        ModelType::Transcription => "transcription",
        ModelType::Speech => "speech",
    }
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
        data.push(json!({
            "id": m.qualified,
            "object": "model",
            "created": created,
            "owned_by": m.provider_name,
            "provider": m.provider_name,
            "model": m.id,
            "aliases": m.aliases,
            "type": type_name(m.model_type),
            "context_window": m.context_window,
            "max_output_tokens": m.max_output_tokens,
            "capabilities": m.caps.names(),
            "tier": format!("{:?}", m.tier).to_lowercase(),
            "auto": m.auto,
            "daily_limit": m.daily_limit,
            "simulated": m.simulated,
        }));
    }
    to_bytes(&json!({"object": "list", "data": data}))
}

/// `GET /v1/routing/status`, in the SPEC shape. Health tracking is not in this build, so
/// every routable model reports as available with no history.
pub fn routing_status(state: &State) -> Bytes {
    let mut providers = serde_json::Map::new();
    let mut models = Vec::new();
    let (mut available, mut unconfigured) = (0, 0);
    for up in &state.upstreams {
        providers.insert(
            up.name.clone(),
            json!({"configured": up.unavailable.is_none(), "available_models": 0, "cooldown_models": 0, "simulated": up.simulated}),
        );
    }
    for m in &state.catalog.models {
        let ok = m.unavailable.is_none();
        if ok {
            available += 1;
            if let Some(p) = providers.get_mut(&m.provider_name) {
                p["available_models"] = json!(p["available_models"].as_u64().unwrap_or(0) + 1);
            }
        } else {
            unconfigured += 1;
        }
        models.push(json!({
            "id": m.qualified, "provider": m.provider_name, "model": m.id,
            "status": if ok { "available" } else { "unconfigured" },
            "degraded": false, "success_rate": 1.0,
            "latency_ms": {"avg": 0, "p50": 0, "p90": 0, "p99": 0},
            "headroom": if ok { 1.0 } else { 0.0 },
            "daily_used": 0, "daily_limit": m.daily_limit,
            "cooldown_until": null,
            "reasons": [m.unavailable.clone().unwrap_or_else(|| "healthy".into())],
        }));
    }
    let generated_at = humantime_now();
    to_bytes(&json!({
        "ok": available > 0,
        "generated_at": generated_at,
        "summary": {
            "configured_models": available, "available_models": available,
            "degraded_models": 0, "cooldown_models": 0, "exhausted_models": 0,
            "unconfigured_models": unconfigured,
        },
        "providers": providers,
        "models": models,
    }))
}

/// RFC 3339 UTC timestamp, second precision.
fn humantime_now() -> String {
    let secs = now_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
