//! Spending budgets (USD per UTC day and calendar month) and tokens per minute, per gateway
//! key: a request **reserves** its worst case before it is sent and **settles** with what
//! it really cost when its answer ends (or releases the reservation when it failed).
//!
//! Admission rule: a reservation is admitted while what the window has committed (settled
//! spend + reservations in flight) is below the limit. Every admitted reservation therefore
//! started below the limit, so concurrent requests overshoot by at most one reservation —
//! and a request whose worst case alone is larger than the budget still gets the first turn.
//!
//! Amounts are integers (nano-USD, tokens) so that Redis and the local ledger add exactly.
//! With `[storage].redis_url` the check-and-reserve is one Lua script over the key's window
//! hashes (`fw:bud:{label}:d:{day}`, `…:m:{month}`, `fw:tpm:{label}:{minute}`, fields `s`
//! spent and `h` held), so N instances share one budget exactly. While Redis is down each
//! instance enforces the limit on its own ledger, starting from the last totals Redis told
//! it; what it spends meanwhile is pushed to Redis when the link returns.

use crate::live::redis_link::RedisLink;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const NANOS_PER_USD: f64 = 1e9;
const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;

/// USD → nano-USD (rounded; negative and non-finite amounts are 0).
pub fn nanos(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * NANOS_PER_USD).round() as u64
    } else {
        0
    }
}

/// nano-USD → USD.
pub fn usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// Where budgets read the time: the system clock, or a test's hand.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::Release);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The windows a moment falls in: UTC day, calendar month (`year * 12 + month - 1`), minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub day: i64,
    pub month: i64,
    pub minute: i64,
}

impl Windows {
    pub fn at(now_ms: i64) -> Windows {
        let day = now_ms.div_euclid(DAY_MS);
        let (y, m, _) = civil_from_days(day);
        Windows {
            day,
            month: y * 12 + (m - 1),
            minute: now_ms.div_euclid(MINUTE_MS),
        }
    }

    /// 00:00 UTC of the next day.
    pub fn day_reset_ms(&self) -> i64 {
        (self.day + 1) * DAY_MS
    }

    /// 00:00 UTC of the 1st of the next month.
    pub fn month_reset_ms(&self) -> i64 {
        let next = self.month + 1;
        days_from_civil(next.div_euclid(12), next.rem_euclid(12) + 1, 1) * DAY_MS
    }

    pub fn minute_reset_ms(&self) -> i64 {
        (self.minute + 1) * MINUTE_MS
    }

    fn reset_ms(&self, w: Window) -> i64 {
        match w {
            Window::Daily => self.day_reset_ms(),
            Window::Monthly => self.month_reset_ms(),
            Window::Tpm => self.minute_reset_ms(),
        }
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 (UTC, seconds) of a Unix time in ms.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// A key's limits in the ledger's units (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// nano-USD per UTC day.
    pub daily: u64,
    /// nano-USD per calendar month.
    pub monthly: u64,
    /// Tokens per minute.
    pub tpm: u64,
}

impl Limits {
    pub fn of(policy: &crate::auth::KeyPolicy) -> Limits {
        Limits {
            daily: nanos(policy.daily_usd),
            monthly: nanos(policy.monthly_usd),
            tpm: u64::from(policy.tpm),
        }
    }

    fn of_window(&self, w: Window) -> u64 {
        match w {
            Window::Daily => self.daily,
            Window::Monthly => self.monthly,
            Window::Tpm => self.tpm,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Daily,
    Monthly,
    Tpm,
}

impl Window {
    const ALL: [Window; 3] = [Window::Daily, Window::Monthly, Window::Tpm];

    /// `window` label of `freeway_budget_rejections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Monthly => "monthly",
            Window::Tpm => "tpm",
        }
    }
}

/// A refused reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub window: Window,
    /// The limit (nano-USD, or tokens for `Tpm`).
    pub limit: u64,
    /// Seconds until the window resets (at least 1).
    pub retry_after_secs: u64,
}

/// A reservation, to settle (or release) once.
#[derive(Debug, Clone)]
pub struct Hold {
    label: Arc<str>,
    at: Windows,
    /// Held nano-USD (day and month windows).
    pub cost: u64,
    /// Held tokens (0 when the key has no `tpm`).
    pub tokens: u64,
    /// Made in Redis (else in the local ledger).
    shared: bool,
}

/// One window of a ledger: its id, settled spend, reservations in flight.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    id: i64,
    spent: u64,
    held: u64,
}

impl Slot {
    fn at(&mut self, id: i64) -> &mut Slot {
        if self.id != id {
            *self = Slot {
                id,
                ..Slot::default()
            };
        }
        self
    }

    fn get(&self, id: i64) -> Slot {
        if self.id == id {
            *self
        } else {
            Slot {
                id,
                ..Slot::default()
            }
        }
    }
}

/// A key's local ledger: its own windows and, in shared mode, the last totals Redis gave.
#[derive(Debug, Default)]
struct Ledger {
    local: [Slot; 3],
    /// Shared mode: committed totals (spent + held) Redis reported last, per window.
    shared: [Slot; 3],
}

fn window_id(at: &Windows, w: Window) -> i64 {
    match w {
        Window::Daily => at.day,
        Window::Monthly => at.month,
        Window::Tpm => at.minute,
    }
}

/// A settlement Redis has not seen yet (it was down).
#[derive(Debug, Clone)]
struct Pending {
    label: Arc<str>,
    at: Windows,
    /// Per window: (release from `h`, add to `s`).
    moves: [(u64, u64); 3],
    /// Also taken off the local ledger once pushed (spends made while Redis was down).
    local: bool,
}

/// A key's spend in one window (`GET /v1/budget`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStatus {
    pub spent: u64,
    pub held: u64,
    pub reset_ms: i64,
}

/// The budgets and per-key token limits of every key.
pub struct Budgets {
    clock: Arc<dyn Clock>,
    ledgers: Mutex<HashMap<Arc<str>, Ledger>>,
    redis: Option<Arc<RedisLink>>,
    pending: Mutex<Vec<Pending>>,
}

/// Checks every limited window (`ARGV` 1-3 limits, 0 = none) and, if all are below their
/// limit, holds `ARGV[4]` nano-USD in the day and month windows and `ARGV[5]` tokens in the
/// minute window (when it is limited). `ARGV` 6-8: the windows' TTLs in ms. Returns
/// `{refused window (0 = admitted), s1, h1, s2, h2, s3, h3}`.
const RESERVE_SCRIPT: &str = r"
local lim = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])}
local amt = {tonumber(ARGV[4]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local out = {0}
local cur = {}
for i = 1, 3 do
  local v = redis.call('HMGET', KEYS[i], 's', 'h')
  local s, h = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  cur[i] = {s, h}
  if lim[i] > 0 and s + h >= lim[i] and out[1] == 0 then out[1] = i end
end
if out[1] == 0 then
  for i = 1, 3 do
    if amt[i] > 0 and (i < 3 or lim[3] > 0) then
      cur[i][2] = redis.call('HINCRBY', KEYS[i], 'h', amt[i])
      redis.call('PEXPIRE', KEYS[i], ARGV[5 + i])
    end
  end
end
for i = 1, 3 do
  out[#out + 1] = cur[i][1]
  out[#out + 1] = cur[i][2]
end
return out
";

/// Per window `i`: releases `ARGV[2i-1]` from `h` and adds `ARGV[2i]` to `s`; `ARGV` 7-9
/// are the TTLs in ms.
const SETTLE_SCRIPT: &str = r"
for i = 1, 3 do
  local rel, add = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if rel > 0 then
    if redis.call('HINCRBY', KEYS[i], 'h', -rel) < 0 then
      redis.call('HSET', KEYS[i], 'h', 0)
    end
  end
  if add > 0 then
    redis.call('HINCRBY', KEYS[i], 's', add)
    redis.call('PEXPIRE', KEYS[i], ARGV[6 + i])
  end
end
return 1
";

fn scripts() -> &'static (redis::Script, redis::Script) {
    static S: std::sync::OnceLock<(redis::Script, redis::Script)> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        (
            redis::Script::new(RESERVE_SCRIPT),
            redis::Script::new(SETTLE_SCRIPT),
        )
    })
}

fn redis_keys(label: &str, at: &Windows) -> [String; 3] {
    [
        format!("fw:bud:{label}:d:{}", at.day),
        format!("fw:bud:{label}:m:{}", at.month),
        format!("fw:tpm:{label}:{}", at.minute),
    ]
}

/// How long a window's hash is kept in Redis: until its reset, plus a day.
fn ttls(now_ms: i64, at: &Windows) -> [i64; 3] {
    [
        at.day_reset_ms() - now_ms + DAY_MS,
        at.month_reset_ms() - now_ms + DAY_MS,
        at.minute_reset_ms() - now_ms + MINUTE_MS,
    ]
}

impl Budgets {
    pub fn new(redis: Option<Arc<RedisLink>>, clock: Arc<dyn Clock>) -> Budgets {
        Budgets {
            clock,
            ledgers: Mutex::new(HashMap::new()),
            redis,
            pending: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// `/health`'s view: `shared` (Redis), `local fallback` (Redis down) or `local`.
    pub fn mode(&self) -> &'static str {
        match &self.redis {
            None => "local",
            Some(l) if l.is_up() => "shared",
            Some(_) => "local fallback",
        }
    }

    /// Reserves `cost` nano-USD and `tokens` for `label` (in Redis when it is up).
    pub async fn reserve(
        &self,
        label: &str,
        limits: Limits,
        cost: u64,
        tokens: u64,
    ) -> Result<Hold, Refusal> {
        let now = self.clock.now_ms();
        let at = Windows::at(now);
        let tokens = if limits.tpm > 0 { tokens } else { 0 };
        if let Some(link) = self.redis.as_ref().filter(|l| l.is_up()) {
            self.flush(link).await;
            if let Some(r) = self
                .reserve_redis(link, label, limits, cost, tokens, now, at)
                .await
            {
                return r;
            }
        }
        self.reserve_local(label, limits, cost, tokens, now, at)
    }

    /// The in-process reservation (no Redis, or Redis down).
    pub fn reserve_local(
        &self,
        label: &str,
        limits: Limits,
        cost: u64,
        tokens: u64,
        now: i64,
        at: Windows,
    ) -> Result<Hold, Refusal> {
        let mut ledgers = self.ledgers.lock();
        let ledger = match ledgers.get_mut(label) {
            Some(l) => l,
            None => ledgers.entry(Arc::from(label)).or_default(),
        };
        for (i, w) in Window::ALL.into_iter().enumerate() {
            let limit = limits.of_window(w);
            if limit == 0 {
                continue;
            }
            let id = window_id(&at, w);
            let local = ledger.local[i].get(id);
            let committed = ledger.shared[i].get(id).spent + local.spent + local.held;
            if committed >= limit {
                return Err(refusal(w, limit, now, &at));
            }
        }
        let amounts = [cost, cost, tokens];
        for (i, w) in Window::ALL.into_iter().enumerate() {
            ledger.local[i].at(window_id(&at, w)).held += amounts[i];
        }
        Ok(Hold {
            label: Arc::from(label),
            at,
            cost,
            tokens,
            shared: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn reserve_redis(
        &self,
        link: &RedisLink,
        label: &str,
        limits: Limits,
        cost: u64,
        tokens: u64,
        now: i64,
        at: Windows,
    ) -> Option<Result<Hold, Refusal>> {
        let keys = redis_keys(label, &at);
        let ttl = ttls(now, &at);
        let out: Vec<i64> = link
            .call("budget reserve", |mut conn| async move {
                let mut inv = scripts().0.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(limits.daily)
                    .arg(limits.monthly)
                    .arg(limits.tpm)
                    .arg(cost)
                    .arg(tokens);
                for t in ttl {
                    inv.arg(t);
                }
                inv.invoke_async(&mut conn).await
            })
            .await?;
        if out.len() < 7 {
            return None;
        }
        // The shared totals, for a fallback that starts where Redis was.
        {
            let mut ledgers = self.ledgers.lock();
            let ledger = match ledgers.get_mut(label) {
                Some(l) => l,
                None => ledgers.entry(Arc::from(label)).or_default(),
            };
            for (i, w) in Window::ALL.into_iter().enumerate() {
                let s = ledger.shared[i].at(window_id(&at, w));
                s.spent = (out[1 + 2 * i].max(0) + out[2 + 2 * i].max(0)) as u64;
            }
        }
        let refused = out[0];
        if refused > 0 {
            let w = Window::ALL[(refused as usize - 1).min(2)];
            return Some(Err(refusal(w, limits.of_window(w), now, &at)));
        }
        Some(Ok(Hold {
            label: Arc::from(label),
            at,
            cost,
            tokens,
            shared: true,
        }))
    }

    /// Settles a reservation with what the request really cost.
    pub async fn settle(&self, hold: Hold, cost: u64, tokens: u64) {
        let tokens = if hold.tokens == 0 { 0 } else { tokens };
        let moves = [(hold.cost, cost), (hold.cost, cost), (hold.tokens, tokens)];
        if hold.shared {
            if let Some(link) = self.redis.as_ref() {
                if self.settle_redis(link, &hold.label, &hold.at, moves).await {
                    return;
                }
            }
            // Redis went away: count the spend here for the fallback, push it later.
            self.apply_local(&hold.label, &hold.at, [(0, cost), (0, cost), (0, tokens)]);
            self.pending.lock().push(Pending {
                label: hold.label,
                at: hold.at,
                moves,
                local: true,
            });
            return;
        }
        self.apply_local(&hold.label, &hold.at, moves);
        if self.redis.is_some() && (cost > 0 || tokens > 0) {
            self.pending.lock().push(Pending {
                label: hold.label,
                at: hold.at,
                moves: [(0, cost), (0, cost), (0, tokens)],
                local: true,
            });
        }
    }

    /// Settles a reservation made in the local ledger (no Redis configured).
    pub fn settle_local(&self, hold: Hold, cost: u64, tokens: u64) {
        let tokens = if hold.tokens == 0 { 0 } else { tokens };
        self.apply_local(
            &hold.label,
            &hold.at,
            [(hold.cost, cost), (hold.cost, cost), (hold.tokens, tokens)],
        );
    }

    /// Gives a reservation back (the attempt failed: nothing was spent).
    pub async fn release(&self, hold: Hold) {
        self.settle(hold, 0, 0).await;
    }

    /// Records spend without a reservation (keys without a budget), for `/v1/budget`.
    pub fn note(&self, label: &str, cost: u64) {
        let at = Windows::at(self.clock.now_ms());
        self.apply_local(label, &at, [(0, cost), (0, cost), (0, 0)]);
    }

    fn apply_local(&self, label: &str, at: &Windows, moves: [(u64, u64); 3]) {
        let mut ledgers = self.ledgers.lock();
        let ledger = match ledgers.get_mut(label) {
            Some(l) => l,
            None => ledgers.entry(Arc::from(label)).or_default(),
        };
        for (i, w) in Window::ALL.into_iter().enumerate() {
            let id = window_id(at, w);
            // A window that has ended is gone: nothing to adjust.
            if ledger.local[i].id > id {
                continue;
            }
            let slot = ledger.local[i].at(id);
            slot.held = slot.held.saturating_sub(moves[i].0);
            slot.spent += moves[i].1;
        }
    }

    async fn settle_redis(
        &self,
        link: &RedisLink,
        label: &str,
        at: &Windows,
        moves: [(u64, u64); 3],
    ) -> bool {
        let keys = redis_keys(label, at);
        let ttl = ttls(self.clock.now_ms(), at);
        link.call("budget settle", |mut conn| async move {
            let mut inv = scripts().1.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for (rel, add) in moves {
                inv.arg(rel).arg(add);
            }
            for t in ttl {
                inv.arg(t.max(1));
            }
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await
        .is_some()
    }

    /// Pushes the settlements Redis missed while it was down.
    async fn flush(&self, link: &RedisLink) {
        let pending = {
            let mut p = self.pending.lock();
            if p.is_empty() {
                return;
            }
            std::mem::take(&mut *p)
        };
        let mut left = Vec::new();
        let mut iter = pending.into_iter();
        for p in iter.by_ref() {
            if self.settle_redis(link, &p.label, &p.at, p.moves).await {
                if p.local {
                    let undo = p.moves.map(|(_, add)| add);
                    let mut ledgers = self.ledgers.lock();
                    if let Some(ledger) = ledgers.get_mut(&*p.label) {
                        for (i, w) in Window::ALL.into_iter().enumerate() {
                            let slot = &mut ledger.local[i];
                            if slot.id == window_id(&p.at, w) {
                                slot.spent = slot.spent.saturating_sub(undo[i]);
                            }
                        }
                    }
                }
            } else {
                left.push(p);
                break;
            }
        }
        left.extend(iter);
        if !left.is_empty() {
            let mut p = self.pending.lock();
            left.append(&mut p);
            *p = left;
        }
    }

    /// The key's day and month: spent, held, reset times (Redis's totals when it is up).
    pub async fn status(&self, label: &str) -> (WindowStatus, WindowStatus) {
        let now = self.clock.now_ms();
        let at = Windows::at(now);
        let status = |w: Window, s: Slot| WindowStatus {
            spent: s.spent,
            held: s.held,
            reset_ms: at.reset_ms(w),
        };
        if let Some(link) = self.redis.as_ref().filter(|l| l.is_up()) {
            let keys = redis_keys(label, &at);
            let got = link
                .call("budget status", |mut conn| async move {
                    let mut pipe = redis::pipe();
                    for k in &keys[..2] {
                        pipe.cmd("HMGET").arg(k).arg("s").arg("h");
                    }
                    pipe.query_async::<Vec<Vec<Option<u64>>>>(&mut conn).await
                })
                .await;
            if let Some(v) = got {
                let slot = |i: usize| {
                    let f = |j: usize| v.get(i).and_then(|r| r.get(j)).copied().flatten();
                    Slot {
                        id: 0,
                        spent: f(0).unwrap_or(0),
                        held: f(1).unwrap_or(0),
                    }
                };
                return (
                    status(Window::Daily, slot(0)),
                    status(Window::Monthly, slot(1)),
                );
            }
        }
        let ledgers = self.ledgers.lock();
        let get = |i: usize, w: Window| {
            ledgers.get(label).map_or(Slot::default(), |l| {
                let id = window_id(&at, w);
                let (local, shared) = (l.local[i].get(id), l.shared[i].get(id));
                Slot {
                    id,
                    spent: local.spent + shared.spent,
                    held: local.held,
                }
            })
        };
        (
            status(Window::Daily, get(0, Window::Daily)),
            status(Window::Monthly, get(1, Window::Monthly)),
        )
    }

    /// Forgets ledgers whose windows have all ended (called periodically).
    pub fn sweep(&self) {
        let at = Windows::at(self.clock.now_ms());
        self.ledgers.lock().retain(|_, l| {
            l.local[1].id == at.month
                || l.shared[1].id == at.month
                || l.local.iter().any(|s| s.held > 0)
        });
    }
}

fn refusal(w: Window, limit: u64, now: i64, at: &Windows) -> Refusal {
    let ms = (at.reset_ms(w) - now).max(0);
    Refusal {
        window: w,
        limit,
        retry_after_secs: ((ms + 999) / 1000).max(1) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USD: u64 = 1_000_000_000;

    fn budgets(now_ms: i64) -> (Budgets, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(now_ms));
        (Budgets::new(None, clock.clone()), clock)
    }

    fn daily(usd: u64) -> Limits {
        Limits {
            daily: usd * USD,
            ..Limits::default()
        }
    }

    /// 2026-03-31 23:59:30 UTC.
    const T: i64 = 1_775_001_570_000;

    #[test]
    fn calendar_windows() {
        let at = Windows::at(T);
        assert_eq!(rfc3339(T), "2026-03-31T23:59:30Z");
        assert_eq!(rfc3339(at.day_reset_ms()), "2026-04-01T00:00:00Z");
        assert_eq!(rfc3339(at.month_reset_ms()), "2026-04-01T00:00:00Z");
        let dec = days_from_civil(2026, 12, 15) * DAY_MS;
        assert_eq!(
            rfc3339(Windows::at(dec).month_reset_ms()),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[tokio::test]
    async fn admits_while_below_the_limit_and_settles_real_cost() {
        let (b, _) = budgets(T);
        let limits = daily(3);
        // Three reservations of 1 USD each fill the day; the fourth is refused.
        let holds: Vec<Hold> = futures_hold(&b, limits, 3).await;
        let r = b.reserve("k", limits, USD, 0).await.unwrap_err();
        assert_eq!(r.window, Window::Daily);
        assert_eq!(r.retry_after_secs, 30);
        // Settling below the reservation frees budget.
        for h in holds {
            b.settle(h, USD / 2, 0).await;
        }
        let (d, m) = b.status("k").await;
        assert_eq!((d.spent, d.held, m.spent), (3 * USD / 2, 0, 3 * USD / 2));
        assert!(b.reserve("k", limits, USD, 0).await.is_ok());
    }

    async fn futures_hold(b: &Budgets, limits: Limits, n: usize) -> Vec<Hold> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(b.reserve("k", limits, USD, 0).await.unwrap());
        }
        v
    }

    #[tokio::test]
    async fn overshoot_is_at_most_one_reservation() {
        let (b, _) = budgets(T);
        let limits = daily(1);
        // A reservation bigger than what is left still gets its turn, once.
        let h = b.reserve("k", limits, USD / 2, 0).await.unwrap();
        let h2 = b.reserve("k", limits, USD, 0).await.unwrap();
        assert!(b.reserve("k", limits, 1, 0).await.is_err());
        b.settle(h, USD / 2, 0).await;
        b.settle(h2, USD, 0).await;
        assert_eq!(b.status("k").await.0.spent, 3 * USD / 2);
    }

    #[tokio::test]
    async fn released_reservations_cost_nothing() {
        let (b, _) = budgets(T);
        let h = b.reserve("k", daily(1), USD, 0).await.unwrap();
        assert!(b.reserve("k", daily(1), USD, 0).await.is_err());
        b.release(h).await;
        let (d, _) = b.status("k").await;
        assert_eq!((d.spent, d.held), (0, 0));
        assert!(b.reserve("k", daily(1), USD, 0).await.is_ok());
    }

    #[tokio::test]
    async fn the_day_rolls_over_at_midnight_utc_and_the_month_on_the_first() {
        let (b, clock) = budgets(T);
        let limits = Limits {
            daily: USD,
            monthly: 2 * USD,
            tpm: 0,
        };
        let h = b.reserve("k", limits, USD, 0).await.unwrap();
        b.settle(h, USD, 0).await;
        assert_eq!(
            b.reserve("k", limits, 1, 0).await.unwrap_err().window,
            Window::Daily
        );
        clock.advance(30_000); // 2026-04-01 00:00:00: a new day and a new month
        let h = b.reserve("k", limits, USD, 0).await.unwrap();
        b.settle(h, USD, 0).await;
        let (d, m) = b.status("k").await;
        assert_eq!((d.spent, m.spent), (USD, USD));
        assert_eq!(rfc3339(d.reset_ms), "2026-04-02T00:00:00Z");
        assert_eq!(rfc3339(m.reset_ms), "2026-05-01T00:00:00Z");
        // The next day: the day is fresh, the month is not.
        clock.advance(DAY_MS);
        let h = b.reserve("k", limits, USD, 0).await.unwrap();
        b.settle(h, USD, 0).await;
        clock.advance(DAY_MS);
        let r = b.reserve("k", limits, 1, 0).await.unwrap_err();
        assert_eq!(r.window, Window::Monthly);
        assert!(r.retry_after_secs > 27 * 86_400);
    }

    #[tokio::test]
    async fn tokens_per_minute_reserve_and_settle() {
        let (b, clock) = budgets(T - 29_000); // 23:59:01
        let limits = Limits {
            tpm: 1000,
            ..Limits::default()
        };
        let h = b.reserve("k", limits, 0, 900).await.unwrap();
        let h2 = b.reserve("k", limits, 0, 900).await.unwrap();
        let r = b.reserve("k", limits, 0, 1).await.unwrap_err();
        assert_eq!((r.window, r.retry_after_secs), (Window::Tpm, 59));
        b.settle(h, 0, 100).await;
        b.settle(h2, 0, 100).await;
        assert!(b.reserve("k", limits, 0, 800).await.is_ok());
        assert!(b.reserve("k", limits, 0, 1).await.is_err());
        clock.advance(60_000);
        assert!(b.reserve("k", limits, 0, 1).await.is_ok());
    }

    #[test]
    fn nano_usd_conversions() {
        assert_eq!(nanos(0.000_001), 1000);
        assert_eq!(nanos(-1.0), 0);
        assert_eq!(nanos(f64::NAN), 0);
        assert!((usd(nanos(1.5)) - 1.5).abs() < 1e-12);
    }
}
