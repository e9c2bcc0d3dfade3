//! A model's status as operators see it (`/v1/routing/status`, `freeway_model_state`):
//! pure functions of its entry, its health and today's count.

use super::health::{Gate, Health};
use super::ModelEntry;
use std::time::Instant;

/// A model's status (`available`, `degraded`, `cooldown`, `exhausted`, `unconfigured`) and
/// why, as `/v1/routing/status` and `freeway_model_state` report it.
pub fn model_status(
    m: &ModelEntry,
    used: u64,
    blocked: Option<String>,
    h: &Health,
    now: Instant,
) -> (&'static str, String) {
    let success_rate = h.success_rate();
    let degraded = h.samples() >= 5 && success_rate < 0.8;
    let exhausted = m.daily_limit > 0 && used >= u64::from(m.daily_limit);
    if let Some(why) = m.unavailable.clone().or(blocked) {
        ("unconfigured", why)
    } else if exhausted {
        (
            "exhausted",
            format!("daily limit reached ({used}/{})", m.daily_limit),
        )
    } else if let Gate::Cooling(_) | Gate::ProbeBusy = h.gate(now) {
        let after = h.last_error.clone().unwrap_or_else(|| "failures".into());
        ("cooldown", format!("cooling down after: {after}"))
    } else if degraded {
        (
            "degraded",
            format!(
                "success rate {:.0}% over the last {} attempts",
                success_rate * 100.0,
                h.samples()
            ),
        )
    } else {
        ("available", "healthy".to_string())
    }
}

/// The share of today's daily limit still unused (1.0 when unlimited).
pub fn headroom(m: &ModelEntry, used: u64) -> f64 {
    match m.daily_limit {
        0 => 1.0,
        limit if used >= u64::from(limit) => 0.0,
        limit => 1.0 - used as f64 / f64::from(limit),
    }
}
