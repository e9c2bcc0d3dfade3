//! Health of one model: recent outcomes, latency, cooldown and half-open probing.
//!
//! Pure logic: every method takes `now`, so tests drive time explicitly.
//!
//! Cooldown policy (why each failure costs what it does):
//! - 429: the provider said when to come back (`retry-after`, or `x-ratelimit-reset-*`):
//!   honour it exactly; without a hint, 10 s doubling per consecutive 429, at most 5 min.
//! - 5xx, connection and protocol failures: 1 s doubling per consecutive failure, at most
//!   2 min. A model failing half its requests is out for a second after each failure, which
//!   shrinks its share of traffic without removing it.
//! - timeouts: 0.5 s doubling, at most 30 s (a slow answer is often load, not an outage).
//! - the client's own errors (400/404/422) never count against a model.
//!
//! After a cooldown the model is half-open: exactly one request (the probe) may try it; its
//! success closes the cooldown, its failure opens a longer one. Everyone else skips the
//! model meanwhile, so a recovered model does not get a thundering herd.

use std::time::{Duration, Instant, SystemTime};

/// The reason a model cools down after a 429 (`Snapshot::last_error`).
pub const RATE_LIMITED: &str = "rate limited (429)";

/// Outcomes remembered for the success rate.
const WINDOW: usize = 100;
/// Latency samples remembered for percentiles.
const LATENCY_SAMPLES: usize = 128;
/// EWMA weight of a new latency sample.
const EWMA_ALPHA: f64 = 0.2;
/// A probe that never reported (request abandoned) stops blocking others after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// What happened to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The model answered. `latency`: whole answer, or first content for streams (which
    /// is then also the time to first token).
    Success {
        latency: Duration,
        streamed: bool,
    },
    /// The client's own mistake: no effect on health.
    ClientError,
    /// 429, with the provider's hint of when to come back.
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// 5xx, connection, TLS or protocol failure.
    Failed {
        reason: String,
    },
    TimedOut,
}

/// Whether a model may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Cooling down (until the instant).
    Cooling(Instant),
    /// Half-open and another request holds the probe.
    ProbeBusy,
    /// Half-open and free: the next acquirer becomes the probe.
    ProbeFree,
}

#[derive(Debug)]
pub struct Health {
    outcomes: [bool; WINDOW],
    outcome_len: usize,
    outcome_pos: usize,
    successes: usize,
    latencies_ms: [f32; LATENCY_SAMPLES],
    latency_len: usize,
    latency_pos: usize,
    pub ewma_latency_ms: f64,
    /// EWMA time to first token of streamed answers, ms (0 with none yet).
    pub ewma_ttft_ms: f64,
    consecutive_failures: u32,
    cooldown_until: Option<Instant>,
    cooldown_until_wall: Option<SystemTime>,
    probe_since: Option<Instant>,
    pub last_error: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            outcomes: [true; WINDOW],
            outcome_len: 0,
            outcome_pos: 0,
            successes: 0,
            latencies_ms: [0.0; LATENCY_SAMPLES],
            latency_len: 0,
            latency_pos: 0,
            ewma_latency_ms: 0.0,
            ewma_ttft_ms: 0.0,
            consecutive_failures: 0,
            cooldown_until: None,
            cooldown_until_wall: None,
            probe_since: None,
            last_error: None,
        }
    }
}

fn backoff(base: Duration, cap: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(cap)
}

impl Health {
    /// Whether the model may be tried at `now` (does not change state).
    pub fn gate(&self, now: Instant) -> Gate {
        match self.cooldown_until {
            None => Gate::Open,
            Some(until) if now < until => Gate::Cooling(until),
            Some(_) => match self.probe_since {
                Some(since) if now.duration_since(since) < PROBE_TIMEOUT => Gate::ProbeBusy,
                _ => Gate::ProbeFree,
            },
        }
    }

    /// Claims the right to send a request now. `Some(true)`: this request is the probe.
    pub fn acquire(&mut self, now: Instant) -> Option<bool> {
        match self.gate(now) {
            Gate::Open => Some(false),
            Gate::Cooling(_) | Gate::ProbeBusy => None,
            Gate::ProbeFree => {
                self.probe_since = Some(now);
                Some(true)
            }
        }
    }

    pub fn report(&mut self, report: &Report, now: Instant) {
        match report {
            Report::ClientError => {
                // The model answered: as a probe, that proves it is back.
                self.close_cooldown();
            }
            Report::Success { latency, streamed } => {
                self.push_outcome(true);
                self.push_latency(*latency);
                if *streamed {
                    let ms = latency.as_secs_f64() * 1000.0;
                    self.ewma_ttft_ms = if self.ewma_ttft_ms == 0.0 {
                        ms
                    } else {
                        EWMA_ALPHA * ms + (1.0 - EWMA_ALPHA) * self.ewma_ttft_ms
                    };
                }
                self.consecutive_failures = 0;
                self.close_cooldown();
            }
            Report::RateLimited { retry_after } => {
                self.push_outcome(false);
                self.consecutive_failures += 1;
                let wait = retry_after.unwrap_or_else(|| {
                    backoff(
                        Duration::from_secs(10),
                        Duration::from_secs(300),
                        self.consecutive_failures,
                    )
                });
                self.open_cooldown(now, wait, RATE_LIMITED.into());
            }
            Report::Failed { reason } => {
                self.push_outcome(false);
                self.consecutive_failures += 1;
                let wait = backoff(
                    Duration::from_secs(1),
                    Duration::from_secs(120),
                    self.consecutive_failures,
                );
                self.open_cooldown(now, wait, reason.clone());
            }
            Report::TimedOut => {
                self.push_outcome(false);
                self.consecutive_failures += 1;
                let wait = backoff(
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    self.consecutive_failures,
                );
                self.open_cooldown(now, wait, "timed out".into());
            }
        }
    }

    fn open_cooldown(&mut self, now: Instant, wait: Duration, why: String) {
        let until = now + wait;
        // Keep the later of two overlapping cooldowns (a long 429 is not shortened by a 5xx).
        if self.cooldown_until.is_none_or(|u| u < until) {
            self.cooldown_until = Some(until);
            self.cooldown_until_wall = Some(SystemTime::now() + wait);
        }
        self.probe_since = None;
        self.last_error = Some(why);
    }

    fn close_cooldown(&mut self) {
        self.cooldown_until = None;
        self.cooldown_until_wall = None;
        self.probe_since = None;
    }

    fn push_outcome(&mut self, ok: bool) {
        if self.outcome_len == WINDOW {
            self.successes -= usize::from(self.outcomes[self.outcome_pos]);
        } else {
            self.outcome_len += 1;
        }
        self.outcomes[self.outcome_pos] = ok;
        self.successes += usize::from(ok);
        self.outcome_pos = (self.outcome_pos + 1) % WINDOW;
    }

    fn push_latency(&mut self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        self.ewma_latency_ms = if self.latency_len == 0 {
            ms
        } else {
            EWMA_ALPHA * ms + (1.0 - EWMA_ALPHA) * self.ewma_latency_ms
        };
        self.latencies_ms[self.latency_pos] = ms as f32;
        self.latency_pos = (self.latency_pos + 1) % LATENCY_SAMPLES;
        self.latency_len = (self.latency_len + 1).min(LATENCY_SAMPLES);
    }

    /// Success rate over the window; 1.0 with no history.
    pub fn success_rate(&self) -> f64 {
        if self.outcome_len == 0 {
            1.0
        } else {
            self.successes as f64 / self.outcome_len as f64
        }
    }

    /// Success rate smoothed by two assumed successes: a model with no history counts as
    /// healthy (so a new or idle model is not starved by the ones that served first), and
    /// one failure does not condemn it (1 failure → 2/3; 50 of 100 → 0.51).
    pub fn smoothed_success(&self) -> f64 {
        (self.successes as f64 + 2.0) / (self.outcome_len as f64 + 2.0)
    }

    pub fn samples(&self) -> usize {
        self.outcome_len
    }

    /// (p50, p90, p99) of recent latencies in ms; zeros with no samples.
    pub fn percentiles(&self) -> (f64, f64, f64) {
        if self.latency_len == 0 {
            return (0.0, 0.0, 0.0);
        }
        let mut v: Vec<f32> = self.latencies_ms[..self.latency_len].to_vec();
        v.sort_by(f32::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64;
        (at(0.5), at(0.9), at(0.99))
    }

    pub fn cooldown_until_wall(&self) -> Option<SystemTime> {
        self.cooldown_until_wall
    }
}

/// Parses a rate-limit reset hint: seconds (`30`, `1.5`) or a duration like `1m30s`,
/// `6.5s`, `250ms` (the `x-ratelimit-reset-*` style of OpenAI and Groq).
pub fn parse_reset(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0.0;
    let mut rest = v;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..split].parse().ok()?;
        rest = &rest[split..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_honours_retry_after_then_admits_a_single_probe() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.report(
            &Report::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
            t0,
        );
        assert_eq!(
            h.gate(t0 + Duration::from_secs(29)),
            Gate::Cooling(t0 + Duration::from_secs(30))
        );
        assert_eq!(h.acquire(t0 + Duration::from_secs(29)), None);
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(h.acquire(t1), Some(true), "first caller is the probe");
        assert_eq!(h.acquire(t1), None, "everyone else waits for the probe");
        h.report(
            &Report::Success {
                latency: Duration::from_millis(100),
                streamed: false,
            },
            t1,
        );
        assert_eq!(h.acquire(t1), Some(false));
        assert_eq!(h.acquire(t1), Some(false));
    }

    #[test]
    fn failed_probe_opens_a_longer_cooldown() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.report(
            &Report::Failed {
                reason: "500".into(),
            },
            t0,
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(h.acquire(t1), Some(true));
        h.report(
            &Report::Failed {
                reason: "500".into(),
            },
            t1,
        );
        assert_eq!(
            h.gate(t1 + Duration::from_millis(1500)),
            Gate::Cooling(t1 + Duration::from_secs(2))
        );
    }

    #[test]
    fn abandoned_probe_expires() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.report(&Report::TimedOut, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(h.acquire(t1), Some(true));
        assert_eq!(
            h.gate(t1 + PROBE_TIMEOUT + Duration::from_secs(1)),
            Gate::ProbeFree
        );
    }

    #[test]
    fn client_errors_do_not_count() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for _ in 0..10 {
            h.report(&Report::ClientError, t0);
        }
        assert_eq!(h.gate(t0), Gate::Open);
        assert_eq!(h.samples(), 0);
    }

    #[test]
    fn success_rate_is_a_sliding_window() {
        let t = Instant::now();
        let mut h = Health::default();
        for _ in 0..WINDOW {
            h.report(&Report::Failed { reason: "x".into() }, t);
        }
        assert_eq!(h.success_rate(), 0.0);
        for _ in 0..WINDOW / 2 {
            h.report(
                &Report::Success {
                    latency: Duration::from_millis(10),
                    streamed: false,
                },
                t,
            );
        }
        assert!((h.success_rate() - 0.5).abs() < 1e-9);
        assert!(h.smoothed_success() < 0.51);
    }

    #[test]
    fn no_history_counts_as_healthy_so_idle_models_are_not_starved() {
        let t = Instant::now();
        let fresh = Health::default();
        let mut served = Health::default();
        for _ in 0..20 {
            served.report(
                &Report::Success {
                    latency: Duration::from_millis(10),
                    streamed: false,
                },
                t,
            );
        }
        assert_eq!(fresh.smoothed_success(), served.smoothed_success());
        let mut failed_once = Health::default();
        failed_once.report(&Report::Failed { reason: "x".into() }, t);
        assert!((failed_once.smoothed_success() - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn latency_percentiles_and_ewma() {
        let t = Instant::now();
        let mut h = Health::default();
        for ms in 1..=100 {
            h.report(
                &Report::Success {
                    latency: Duration::from_millis(ms),
                    streamed: false,
                },
                t,
            );
        }
        let (p50, p90, p99) = h.percentiles();
        assert!((49.0..=52.0).contains(&p50) && (89.0..=92.0).contains(&p90) && p99 >= 98.0);
        assert!(h.ewma_latency_ms > 90.0);
    }

    #[test]
    fn longer_cooldown_is_not_shortened() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.report(
            &Report::RateLimited {
                retry_after: Some(Duration::from_secs(60)),
            },
            t0,
        );
        h.report(&Report::Failed { reason: "x".into() }, t0);
        assert_eq!(
            h.gate(t0 + Duration::from_secs(30)),
            Gate::Cooling(t0 + Duration::from_secs(60))
        );
    }

    #[test]
    fn reset_hints_parse() {
        assert_eq!(parse_reset("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_reset("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_reset("6.5s"), Some(Duration::from_millis(6500)));
        assert_eq!(parse_reset("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_reset("soon"), None);
    }
}
