//! Client-connection metrics (names in SPEC.md), in the default registry next to the
//! request metrics of `observe::metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::sync::LazyLock;

pub struct ConnMetrics {
    pub open: IntGauge,
    /// `freeway_request_body_buffered_bytes`: request-body bytes held in memory now.
    pub body_bytes: IntGauge,
    pub accepted: IntCounter,
    /// `freeway_connections_rejected_total{reason="max_connections"}`.
    pub rejected_max: IntCounter,
    /// `freeway_connections_closed_total{reason=…}`: connections the gateway ended early.
    pub closed_header_timeout: IntCounter,
    pub closed_idle_timeout: IntCounter,
    pub closed_evicted: IntCounter,
    pub closed_header_too_large: IntCounter,
    /// Requests refused because their head was malformed or ambiguous (400).
    pub closed_bad_request: IntCounter,
    /// Pipelined requests: the first is answered with `Connection: close`.
    pub closed_pipelined: IntCounter,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Fails only on a duplicate name, which the static below rules out.
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
}

/// The connection metrics; every series exists (at 0) from the first use on.
pub static CONN: LazyLock<ConnMetrics> = LazyLock::new(|| {
    let open = register(
        IntGauge::new("freeway_connections_open", "Client connections open now.")
            .unwrap_or_else(|e| panic!("open gauge: {e}")),
    );
    let accepted = register(
        IntCounter::new(
            "freeway_connections_accepted_total",
            "Client connections admitted (under server.max_connections).",
        )
        .unwrap_or_else(|e| panic!("accepted counter: {e}")),
    );
    let rejected = register(
        IntCounterVec::new(
            Opts::new(
                "freeway_connections_rejected_total",
                "Client connections refused on arrival, by reason (max_connections).",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("rejected counter: {e}")),
    );
    let closed = register(
        IntCounterVec::new(
            Opts::new(
                "freeway_connections_closed_total",
                "Client connections the gateway closed before the client did, by reason \
                 (header_timeout, idle_timeout, evicted, header_too_large, bad_request, pipelined).",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("closed counter: {e}")),
    );
    let body_bytes = register(
        IntGauge::new(
            "freeway_request_body_buffered_bytes",
            "Request-body bytes held in memory now, across all requests \
             (bounded by server.max_buffered_body_bytes).",
        )
        .unwrap_or_else(|e| panic!("body bytes gauge: {e}")),
    );
    ConnMetrics {
        open,
        body_bytes,
        accepted,
        rejected_max: rejected.with_label_values(&["max_connections"]),
        closed_header_timeout: closed.with_label_values(&["header_timeout"]),
        closed_idle_timeout: closed.with_label_values(&["idle_timeout"]),
        closed_evicted: closed.with_label_values(&["evicted"]),
        closed_header_too_large: closed.with_label_values(&["header_too_large"]),
        closed_bad_request: closed.with_label_values(&["bad_request"]),
        closed_pipelined: closed.with_label_values(&["pipelined"]),
    }
});
