//! Per-key spend series: `freeway_key_spend_usd_total{key}` and
//! `freeway_budget_rejections_total{key,window}` (key = the key's label; requests sent with
//! a client's own provider key are not counted, they are not the gateway's spend).

use prometheus::{CounterVec, IntCounterVec, Opts};
use std::sync::LazyLock;

struct KeyMetrics {
    spend: CounterVec,
    rejections: IntCounterVec,
}

static KEYS: LazyLock<KeyMetrics> = LazyLock::new(|| {
    let spend = CounterVec::new(
        Opts::new(
            "freeway_key_spend_usd_total",
            "USD spent per gateway key (settled cost of its answers).",
        ),
        &["key"],
    )
    .unwrap_or_else(|e| panic!("spend counter: {e}"));
    let rejections = IntCounterVec::new(
        Opts::new(
            "freeway_budget_rejections_total",
            "Requests refused by a key's budget (daily, monthly) or tokens per minute (tpm).",
        ),
        &["key", "window"],
    )
    .unwrap_or_else(|e| panic!("rejection counter: {e}"));
    for c in [
        Box::new(spend.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(rejections.clone()),
    ] {
        if let Err(e) = prometheus::register(c) {
            log::error!("metric registration failed: {e}");
        }
    }
    KeyMetrics { spend, rejections }
});

pub fn spend(key: &str, usd: f64) {
    if usd > 0.0 && usd.is_finite() {
        KEYS.spend.with_label_values(&[key]).inc_by(usd);
    }
}

pub fn rejection(key: &str, window: &str) {
    KEYS.rejections.with_label_values(&[key, window]).inc();
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_render() {
        super::spend("unit-key", 0.25);
        super::rejection("unit-key", "daily");
        let text = String::from_utf8(crate::observe::metrics::render()).unwrap();
        assert!(
            text.contains("freeway_key_spend_usd_total{key=\"unit-key\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("freeway_budget_rejections_total{key=\"unit-key\",window=\"daily\"} 1")
        );
    }
}
