//! Requests in flight per provider, against its `[[providers]].max_connections`.
//!
//! The count lives on the board (one [`SlotCount`] per provider name), so requests that
//! started before a config reload still count after it; the cap is the running config's.
//! A request holds a [`Slot`] for its whole exchange with the provider, streamed answer
//! included. Taking and returning one is an atomic add: no lock on the request path.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

struct SlotMetrics {
    inflight: IntGaugeVec,
    saturated: IntCounterVec,
}

static METRICS: LazyLock<SlotMetrics> = LazyLock::new(|| {
    let inflight = IntGaugeVec::new(
        Opts::new(
            "freeway_upstream_inflight_requests",
            "Requests each provider is serving for this gateway now.",
        ),
        &["provider"],
    )
    .unwrap_or_else(|e| panic!("upstream inflight gauge: {e}"));
    let saturated = IntCounterVec::new(
        Opts::new(
            "freeway_upstream_saturated_total",
            "Candidates skipped because their provider had max_connections requests in flight.",
        ),
        &["provider"],
    )
    .unwrap_or_else(|e| panic!("upstream saturated counter: {e}"));
    for c in [
        Box::new(inflight.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(saturated.clone()),
    ] {
        // Fails only on a duplicate name, which this static rules out.
        if let Err(e) = prometheus::register(c) {
            log::error!("metric registration failed: {e}");
        }
    }
    SlotMetrics {
        inflight,
        saturated,
    }
});

/// One provider's requests in flight, shared by every config generation.
pub struct SlotCount {
    in_use: AtomicUsize,
    inflight: IntGauge,
    saturated: IntCounter,
}

impl SlotCount {
    pub fn new(provider: &str) -> SlotCount {
        SlotCount {
            in_use: AtomicUsize::new(0),
            inflight: METRICS.inflight.with_label_values(&[provider]),
            saturated: METRICS.saturated.with_label_values(&[provider]),
        }
    }
}

/// A provider's count with the running config's cap.
#[derive(Clone)]
pub struct Slots {
    count: Arc<SlotCount>,
    /// 0: no cap (requests are still counted).
    max: usize,
}

/// One request in flight to a provider, until dropped.
pub struct Slot(Arc<SlotCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        self.0.inflight.dec();
    }
}

impl Slots {
    pub fn new(count: Arc<SlotCount>, max: usize) -> Slots {
        Slots { count, max }
    }

    /// The cap (0: none).
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_use(&self) -> usize {
        self.count.in_use.load(Ordering::Acquire)
    }

    /// Why the provider takes no more requests now (it is at its cap), if so. Counts the
    /// skip in `freeway_upstream_saturated_total`.
    pub fn busy(&self) -> Option<String> {
        let n = self.in_use();
        (self.max > 0 && n >= self.max).then(|| {
            self.count.saturated.inc();
            format!("its provider is at max_connections ({n} requests in flight)")
        })
    }

    /// Takes a slot, or `None` (counted as a skip) when the provider is at its cap.
    pub fn try_acquire(&self) -> Option<Slot> {
        let max = if self.max == 0 { usize::MAX } else { self.max };
        let taken = self
            .count
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            self.count.saturated.inc();
            return None;
        }
        self.count.inflight.inc();
        Some(Slot(self.count.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back_when_dropped() {
        let slots = Slots::new(Arc::new(SlotCount::new("slots-test-a")), 2);
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.busy().is_some());
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert!(slots.busy().is_none());
        assert!(slots.try_acquire().is_some());
        assert_eq!(slots.count.saturated.get(), 2);
    }

    #[test]
    fn no_cap_still_counts() {
        let slots = Slots::new(Arc::new(SlotCount::new("slots-test-b")), 0);
        let held: Vec<Slot> = (0..100).map(|_| slots.try_acquire().unwrap()).collect();
        assert_eq!(slots.in_use(), 100);
        assert!(slots.busy().is_none());
        assert_eq!(slots.count.inflight.get(), 100);
        drop(held);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn a_new_cap_applies_to_requests_already_in_flight() {
        let count = Arc::new(SlotCount::new("slots-test-c"));
        let old = Slots::new(count.clone(), 5);
        let _held: Vec<Slot> = (0..3).map(|_| old.try_acquire().unwrap()).collect();
        let reloaded = Slots::new(count, 3);
        assert!(reloaded.try_acquire().is_none());
    }
}
