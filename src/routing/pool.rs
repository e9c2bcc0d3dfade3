//! Choosing an endpoint of a provider's pool, and when an endpoint leaves or rejoins it:
//! pure logic over numbers the live state (`live::endpoints`) reads from its atomics.
//!
//! Choice: among healthy endpoints not tried yet by this request and below their own
//! `max_connections`, the fewest requests in flight per unit of weight; ties go to a
//! markedly faster endpoint (latency EWMA), else to the first in a weighted rotation, so an
//! idle pool still spreads requests over its endpoints in proportion to their weights.

/// What the chooser knows about one endpoint right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointLoad {
    pub healthy: bool,
    pub in_flight: usize,
    /// Latency EWMA in ms (0: no sample yet).
    pub latency_ms: f64,
    pub weight: u32,
    /// 0: no cap of its own.
    pub max_connections: usize,
}

/// A latency counts as better only below this share of the other and by at least
/// [`MARGIN_MS`]: replicas within ~30% of each other are peers, and the rotation shares
/// load between them; a connection set-up or a little jitter in one sample never starves
/// an endpoint of the requests that would refresh its average.
const FASTER: f64 = 0.75;
const MARGIN_MS: f64 = 25.0;

/// Whether `a` should be chosen over `b`.
fn better(a: &EndpointLoad, b: &EndpointLoad) -> bool {
    // in_flight / weight, compared without division.
    let la = a.in_flight as u64 * u64::from(b.weight);
    let lb = b.in_flight as u64 * u64::from(a.weight);
    if la != lb {
        return la < lb;
    }
    a.latency_ms > 0.0
        && b.latency_ms > 0.0
        && a.latency_ms < b.latency_ms * FASTER
        && a.latency_ms + MARGIN_MS < b.latency_ms
}

/// The endpoint for the next attempt: `turn` is a counter that advances per choice (the
/// rotation), `tried` a bitmask of endpoints this request already tried. `None` when no
/// healthy endpoint is left to try.
pub fn choose(loads: &[EndpointLoad], turn: usize, tried: u64) -> Option<usize> {
    let n = loads.len();
    if n == 0 {
        return None;
    }
    let start = rotation_start(loads, turn);
    let mut best: Option<usize> = None;
    for j in 0..n {
        let i = (start + j) % n;
        let l = &loads[i];
        if !l.healthy || tried & (1 << i) != 0 {
            continue;
        }
        if l.max_connections > 0 && l.in_flight >= l.max_connections {
            continue;
        }
        if best.is_none_or(|b| better(l, &loads[b])) {
            best = Some(i);
        }
    }
    best
}

/// Where the scan starts: endpoint `i` for `weight[i]` of every `sum(weights)` turns.
fn rotation_start(loads: &[EndpointLoad], turn: usize) -> usize {
    let total: u64 = loads.iter().map(|l| u64::from(l.weight.max(1))).sum();
    let mut at = turn as u64 % total.max(1);
    for (i, l) in loads.iter().enumerate() {
        let w = u64::from(l.weight.max(1));
        if at < w {
            return i;
        }
        at -= w;
    }
    0
}

/// An endpoint's standing: in the pool, or out until it passes enough checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub ejected: bool,
    /// Failures in a row while in the pool; passed checks in a row while out.
    pub streak: u32,
}

impl Standing {
    /// A real request or a check failed. `true` when this takes the endpoint out.
    pub fn failed(&mut self, unhealthy_after: u32) -> bool {
        if self.ejected {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak >= unhealthy_after.max(1) {
            *self = Standing {
                ejected: true,
                streak: 0,
            };
            return true;
        }
        false
    }

    /// A real request succeeded: the failure streak ends (an ejected endpoint gets no real
    /// requests; one that finished after the ejection does not bring it back).
    pub fn served(&mut self) {
        if !self.ejected {
            self.streak = 0;
        }
    }

    /// A check passed. `true` when this brings the endpoint back.
    pub fn passed(&mut self, healthy_after: u32) -> bool {
        if !self.ejected {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak >= healthy_after.max(1) {
            *self = Standing::default();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<EndpointLoad> {
        vec![
            EndpointLoad {
                healthy: true,
                in_flight: 0,
                latency_ms: 0.0,
                weight: 1,
                max_connections: 0,
            };
            n
        ]
    }

    #[test]
    fn an_idle_pool_rotates_over_its_endpoints() {
        let loads = idle(3);
        let picks: Vec<usize> = (0..6).map(|t| choose(&loads, t, 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_least_loaded_endpoint_wins_whatever_the_rotation() {
        let mut loads = idle(3);
        loads[0].in_flight = 2;
        loads[1].in_flight = 1;
        loads[2].in_flight = 3;
        for t in 0..5 {
            assert_eq!(choose(&loads, t, 0), Some(1));
        }
    }

    #[test]
    fn weights_share_idle_turns_and_scale_load() {
        let mut loads = idle(2);
        loads[0].weight = 3;
        let to_first = (0..400)
            .filter(|&t| choose(&loads, t, 0) == Some(0))
            .count();
        assert_eq!(to_first, 300);
        // 2 in flight at weight 3 is less load than 1 at weight 1.
        loads[0].in_flight = 2;
        loads[1].in_flight = 1;
        assert_eq!(choose(&loads, 3, 0), Some(0));
    }

    #[test]
    fn a_markedly_faster_endpoint_breaks_a_tie_a_similar_one_does_not() {
        let mut loads = idle(2);
        loads[0].latency_ms = 400.0;
        loads[1].latency_ms = 100.0;
        assert!((0..10).all(|t| choose(&loads, t, 0) == Some(1)));
        loads[0].latency_ms = 110.0;
        let firsts = (0..10).filter(|&t| choose(&loads, t, 0) == Some(0)).count();
        assert_eq!(firsts, 5);
        // Milliseconds apart (a cold connection, jitter): peers too.
        loads[0].latency_ms = 12.0;
        loads[1].latency_ms = 2.0;
        let firsts = (0..10).filter(|&t| choose(&loads, t, 0) == Some(0)).count();
        assert_eq!(firsts, 5);
    }

    #[test]
    fn unhealthy_tried_and_full_endpoints_are_skipped() {
        let mut loads = idle(4);
        loads[0].healthy = false;
        loads[1].max_connections = 1;
        loads[1].in_flight = 1;
        assert_eq!(choose(&loads, 0, 0b0100), Some(3));
        assert_eq!(choose(&loads, 0, 0b1100), None);
        assert_eq!(choose(&[], 0, 0), None);
    }

    #[test]
    fn standing_ejects_after_a_streak_and_returns_after_passes() {
        let mut s = Standing::default();
        assert!(!s.failed(3));
        s.served(); // a success in between ends the streak
        assert!(!s.failed(3));
        assert!(!s.failed(3));
        assert!(s.failed(3));
        assert!(s.ejected);
        assert!(!s.passed(2));
        assert!(!s.failed(3), "a failed check restarts the count");
        assert!(!s.passed(2));
        s.served(); // a late answer from before the ejection changes nothing
        assert!(s.passed(2));
        assert!(!s.ejected);
    }
}
