//! The analytics queries behind `/v1/analytics` and the dashboard: totals and groups over
//! a time range (whole hours from the rollup, the partial hours at the ends from the raw
//! rows) and the recent failures. Separate because it only reads, and nothing else in the
//! module depends on it.

use super::aggregate::{row_at, Aggregate};
use super::decode::{RawRow, RAW_ROW};
use super::rollup::HOUR_MS;
use super::schema::field;
use rusqlite::{params, Connection};
use serde::Serialize;
use std::collections::BTreeMap;

/// How `/v1/analytics` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    None,
    Provider,
    Model,
    Key,
    Day,
    Hour,
    Minute,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "" | "none" => GroupBy::None,
            "provider" => GroupBy::Provider,
            "model" => GroupBy::Model,
            "key" => GroupBy::Key,
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            "minute" => GroupBy::Minute,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::None => "none",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Minute => "minute",
        }
    }
}

/// The totals and per-group aggregates for `[from_ms, to_ms)`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analytics {
    pub totals: Aggregate,
    /// Group key → aggregate, in key order.
    pub groups: BTreeMap<String, Aggregate>,
}

impl Analytics {
    /// The aggregate of group `name` (`(none)` when the name is empty).
    fn group_mut(&mut self, name: &str) -> &mut Aggregate {
        let name = if name.is_empty() || name == "/" {
            "(none)"
        } else {
            name
        };
        if !self.groups.contains_key(name) {
            self.groups.insert(name.to_owned(), Aggregate::default());
        }
        self.groups.get_mut(name).expect("just inserted")
    }
}

/// The name of `group` for a request at `time_ms` (arrival, or its rollup hour).
fn group_name(
    group: GroupBy,
    time_ms: i64,
    provider: &str,
    model: &str,
    key: &str,
    name: &mut String,
) {
    use std::fmt::Write;
    name.clear();
    let _ = match group {
        GroupBy::None => Ok(()),
        GroupBy::Provider => name.write_str(provider),
        GroupBy::Model => write!(name, "{provider}/{model}"),
        GroupBy::Key => name.write_str(key),
        GroupBy::Day => write!(name, "{}", time_ms / 86_400_000 * 86_400),
        GroupBy::Hour => write!(name, "{}", time_ms / 3_600_000 * 3600),
        GroupBy::Minute => write!(name, "{}", time_ms / 60_000 * 60),
    };
}

/// The totals and groups for `[from_ms, to_ms)`: whole hours from the rollup, the partial
/// hours at either end from the raw rows (`minute` groups always from the raw rows).
///
/// No request arrives after `now_ms`, so a range that reaches it holds its last hour whole
/// and reads that hour from the rollup too: a dashboard's "up to now" costs no raw reads
/// at that end.
pub fn analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    group: GroupBy,
) -> rusqlite::Result<Analytics> {
    let mut out = Analytics::default();
    let to_ms = if to_ms > now_ms && group != GroupBy::Minute {
        now_ms.div_euclid(HOUR_MS) * HOUR_MS + HOUR_MS
    } else {
        to_ms
    };
    let first_hour = (from_ms + HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS;
    let last_hour = to_ms.div_euclid(HOUR_MS) * HOUR_MS;
    if group == GroupBy::Minute || first_hour >= last_hour {
        raw_analytics(conn, from_ms, to_ms, group, &mut out)?;
    } else {
        raw_analytics(conn, from_ms, first_hour, group, &mut out)?;
        hourly_analytics(conn, first_hour, last_hour, group, &mut out)?;
        raw_analytics(conn, last_hour, to_ms, group, &mut out)?;
    }
    out.totals.finish();
    for a in out.groups.values_mut() {
        a.finish();
    }
    Ok(out)
}

/// Raw rows in `[from_ms, to_ms)`, decoded and folded here (their latency buckets are
/// computed, not stored).
fn raw_analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    group: GroupBy,
    out: &mut Analytics,
) -> rusqlite::Result<()> {
    if from_ms >= to_ms {
        return Ok(());
    }
    // The raw rows of the hours the range touches lie within their cells' id span.
    let (first_id, last_id): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT min(first_id), max(last_id) FROM request_hourly
             WHERE hour_ms >= ?1 AND hour_ms < ?2",
        )?
        .query_row(params![from_ms.div_euclid(HOUR_MS) * HOUR_MS, to_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(first_id), Some(last_id)) = (first_id, last_id) else {
        return Ok(());
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RAW_ROW} FROM request_log_data
         WHERE id BETWEEN ?1 AND ?2 AND ts_ms >= ?3 AND ts_ms < ?4"
    ))?;
    let mut rows = stmt.query(params![first_id, last_id, from_ms, to_ms])?;
    let mut name = String::new();
    while let Some(r) = rows.next()? {
        let raw = RawRow::decode(r)?;
        out.totals.add(&raw.row);
        if group != GroupBy::None {
            group_name(
                group,
                raw.ts_ms,
                &raw.provider,
                &raw.model,
                &raw.key_label,
                &mut name,
            );
            out.group_mut(&name).add(&raw.row);
        }
    }
    Ok(())
}

/// Rollup rows for the whole hours in `[from_ms, to_ms)`, folded here.
fn hourly_analytics(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    group: GroupBy,
    out: &mut Analytics,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT hour_ms, provider, model, key_label, n, ok, limited, failovers, prompt,
                completion, cost, hits, overhead, hist
         FROM request_hourly WHERE hour_ms >= ?1 AND hour_ms < ?2",
    )?;
    let mut rows = stmt.query(params![from_ms, to_ms])?;
    let mut name = String::new();
    while let Some(r) = rows.next()? {
        let row = row_at(r, 4)?;
        let hist = r.get_ref(13)?.as_blob()?;
        out.totals.add_sums(&row);
        out.totals.add_hist(hist);
        if group != GroupBy::None {
            let text = |i| -> rusqlite::Result<&str> { Ok(r.get_ref(i)?.as_str()?) };
            group_name(group, r.get(0)?, text(1)?, text(2)?, text(3)?, &mut name);
            let g = out.group_mut(&name);
            g.add_sums(&row);
            g.add_hist(hist);
        }
    }
    Ok(())
}

/// A failed request, or one that needed failover, for the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct FailureRow {
    pub ts_ms: i64,
    pub request_id: String,
    pub endpoint: String,
    pub key_label: String,
    pub requested_model: Option<String>,
    pub provider: String,
    pub model: String,
    pub status: u16,
    pub attempts: u32,
    pub failures: Vec<String>,
    pub duration_ms: f64,
}

/// The newest failed or failed-over requests in `[from_ms, to_ms)`, newest first.
pub fn recent_failures(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    limit: u32,
) -> rusqlite::Result<Vec<FailureRow>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let f = |names: &[&str]| {
            names
                .iter()
                .map(|n| field(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "SELECT ts_ms, {}, status, {}, failures, {}
             FROM request_log_data INDEXED BY request_log_failed
             WHERE (status >= 400 OR failures IS NOT NULL) AND ts_ms >= ?1 AND ts_ms < ?2
             ORDER BY ts_ms DESC LIMIT ?3",
            f(&[
                "request_id",
                "endpoint",
                "key_label",
                "requested_model",
                "provider",
                "model"
            ]),
            f(&["attempts"]),
            f(&["duration_ms"]),
        )
    });
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![from_ms, to_ms, limit], |r| {
        let failures: Option<String> = r.get(9)?;
        Ok(FailureRow {
            ts_ms: r.get(0)?,
            request_id: r.get(1)?,
            endpoint: r.get(2)?,
            key_label: r.get(3)?,
            requested_model: r.get(4)?,
            provider: r.get(5)?,
            model: r.get(6)?,
            status: r.get(7)?,
            attempts: r.get(8)?,
            failures: failures
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or_default(),
            duration_ms: r.get(10)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_same, insert, rec, spread, temp_db};
    use super::*;
    use crate::observe::record::RequestRecord;

    #[test]
    fn analytics_counts_groups_and_percentiles() {
        let mut c = temp_db("agg");
        let mut rs: Vec<RequestRecord> = (0..100)
            .map(|i| rec(1000 + i, "a", 200, (i + 1) as f64 * 10.0))
            .collect();
        rs.push(rec(2000, "b", 429, 5.0));
        let mut failed = rec(2001, "b", 502, 5.0);
        failed.failures = vec!["b/m: HTTP 500".into()];
        rs.push(failed);
        rs.push(rec(99_999, "a", 200, 1.0)); // outside the range
        insert(&mut c, &rs).unwrap();
        let a = analytics(&c, 0, 10_000, i64::MAX, GroupBy::Provider).unwrap();
        assert_eq!(a.totals.requests, 102);
        assert_eq!(a.totals.success, 100);
        assert_eq!(a.totals.failure, 2);
        assert_eq!(a.totals.rate_limited, 1);
        assert_eq!(a.totals.prompt_tokens, 1020);
        assert_eq!(a.groups["a"].requests, 100);
        assert_eq!(a.groups["b"].failure, 2);
        let p50 = a.groups["a"].latency_ms.p50;
        assert!((p50 - 500.0).abs() / 500.0 < 0.07, "p50 {p50}");
        let p99 = a.groups["a"].latency_ms.p99;
        assert!((p99 - 990.0).abs() / 990.0 < 0.07, "p99 {p99}");
        let f = recent_failures(&c, 0, 10_000, 10).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, 502);
        assert_eq!(f[0].failures, vec!["b/m: HTTP 500".to_string()]);
        let m = analytics(&c, 0, 10_000, i64::MAX, GroupBy::Model).unwrap();
        assert!(m.groups.contains_key("a/m"));
    }

    /// The whole range from raw rows alone: what the rollup must reproduce.
    fn raw_only(c: &Connection, from: i64, to: i64, group: GroupBy) -> Analytics {
        let mut a = Analytics::default();
        raw_analytics(c, from, to, group, &mut a).unwrap();
        a.totals.finish();
        for g in a.groups.values_mut() {
            g.finish();
        }
        a
    }

    #[test]
    fn rollup_answers_exactly_what_the_raw_rows_say() {
        let mut c = temp_db("rollup");
        spread(&mut c);
        let rollup_rows: i64 = c
            .query_row("SELECT count(*) FROM request_hourly", [], |r| r.get(0))
            .unwrap();
        assert!(rollup_rows <= 5 * 3 * 3, "{rollup_rows} rollup rows");
        for (from, to) in [
            (0, 18_000_000),
            (1_234_567, 15_000_001),
            (3_600_000, 7_200_000),
        ] {
            for group in [
                GroupBy::None,
                GroupBy::Provider,
                GroupBy::Model,
                GroupBy::Key,
                GroupBy::Day,
                GroupBy::Hour,
            ] {
                let a = analytics(&c, from, to, i64::MAX, group).unwrap();
                assert!(a.totals.requests > 0);
                assert_same(&a, &raw_only(&c, from, to, group));
            }
        }
    }

    #[test]
    fn a_range_reaching_now_reads_its_last_hour_from_the_rollup_with_the_same_answer() {
        let mut c = temp_db("now");
        spread(&mut c);
        // `spread` fills 5 hours, its last row before 17,999,000 ms: "now" is just after it,
        // in hour 4, and the range runs past it.
        let now = 17_999_100;
        let (from, to) = (1_000_000, now + 60_000);
        for group in [GroupBy::None, GroupBy::Provider, GroupBy::Hour] {
            let fast = analytics(&c, from, to, now, group).unwrap();
            assert!(fast.totals.requests > 0);
            assert_same(&fast, &raw_only(&c, from, now + 1, group));
        }
        // The tail was the rollup's: a raw row stamped after `now` (which cannot happen) is
        // counted with its hour, while the raw-only answer leaves it out.
        insert(&mut c, &[rec(now + 500, "late", 200, 1.0)]).unwrap();
        let fast = analytics(&c, from, to, now, GroupBy::Provider).unwrap();
        assert_eq!(fast.groups["late"].requests, 1);
        let raw = raw_only(&c, from, now + 1, GroupBy::Provider);
        assert!(!raw.groups.contains_key("late"));
    }
}
