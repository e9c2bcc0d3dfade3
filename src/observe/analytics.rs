//! `GET /v1/analytics` and `GET /v1/analytics/failures`: aggregates over the request log.
//!
//! `from` / `to` are RFC 3339 (`2025-11-22T10:00:00Z`, offsets allowed, a bare date means
//! its midnight UTC) or unix seconds; the default range is the last 24 hours.

use super::db::{self, GroupBy};
use super::{now_ms, Observer};
use crate::errors::ApiError;
use crate::time::rfc3339;
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Validated query parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: GroupBy,
    pub limit: u32,
}

/// Parses the query string (`from`, `to`, `group_by`, `limit`) at `now_ms`.
pub fn parse_query(query: &str, now_ms: i64) -> Result<Query, ApiError> {
    let mut q = Query {
        from_ms: now_ms - 86_400_000,
        to_ms: now_ms,
        group_by: GroupBy::None,
        limit: 50,
    };
    let mut from = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "from" => from = Some(parse_time(&v).ok_or_else(|| bad_time("from", &v))?),
            "to" => q.to_ms = parse_time(&v).ok_or_else(|| bad_time("to", &v))?,
            "group_by" => {
                q.group_by = GroupBy::parse(&v).ok_or_else(|| {
                    ApiError::invalid_param(
                        "group_by",
                        format!(
                            "group_by `{v}` is not one of provider, model, key, day, hour, minute"
                        ),
                    )
                })?
            }
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_param("limit", "limit must be a number from 1 to 1000")
                    })?
            }
            _ => {}
        }
    }
    // Without `from`, the range is the 24 hours before `to`.
    q.from_ms = from.unwrap_or(q.to_ms - 86_400_000);
    if q.from_ms >= q.to_ms {
        return Err(ApiError::invalid_param(
            "from",
            "`from` must be before `to`",
        ));
    }
    Ok(q)
}

fn bad_time(param: &'static str, v: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        format!(
            "`{param}` = `{v}` is not a time: use RFC 3339 (2025-11-22T10:00:00Z) or unix seconds"
        ),
    )
}

/// `%XX` and `+` decoding of one query value.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(c) => {
                        out.push(c);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            // `+` is kept: in a time it can only be an offset sign.
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix milliseconds of an RFC 3339 time, a `YYYY-MM-DD` date, or unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse::<i64>().ok()?.checked_mul(1000);
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        ms = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        // `+` arrives as a space when the client did not percent-encode it.
        Some(&sign @ (b'+' | b'-' | b' ')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let off = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn iso(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// `GET /v1/analytics`: `(status, body)`.
pub async fn analytics(observer: &Arc<Observer>, query: &str) -> Result<Bytes, ApiError> {
    let q = parse_query(query, now_ms())?;
    let (from, to, group) = (q.from_ms, q.to_ms, q.group_by);
    let a = observer
        .with_reader(move |c| db::analytics(c, from, to, now_ms(), group))
        .await
        .map_err(unavailable)?;
    let groups: Vec<serde_json::Value> = a
        .groups
        .iter()
        .map(|(k, v)| {
            let mut g = serde_json::to_value(v).unwrap_or_default();
            g["key"] = json!(match group {
                GroupBy::Day | GroupBy::Hour | GroupBy::Minute => k
                    .parse::<i64>()
                    .map(|s| iso(s * 1000))
                    .unwrap_or_else(|_| k.clone()),
                _ => k.clone(),
            });
            g
        })
        .collect();
    let body = json!({
        "object": "analytics",
        "from": iso(q.from_ms),
        "to": iso(q.to_ms),
        "group_by": group.name(),
        "totals": a.totals,
        "groups": groups,
    });
    Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

/// `GET /v1/analytics/failures`: the newest failed or failed-over requests.
pub async fn failures(observer: &Arc<Observer>, query: &str) -> Result<Bytes, ApiError> {
    let q = parse_query(query, now_ms())?;
    let (from, to, limit) = (q.from_ms, q.to_ms, q.limit);
    let rows = observer
        .with_reader(move |c| db::recent_failures(c, from, to, limit))
        .await
        .map_err(unavailable)?;
    let data: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["time"] = json!(iso(r.ts_ms));
            v
        })
        .collect();
    let body = json!({"object": "list", "from": iso(q.from_ms), "to": iso(q.to_ms), "data": data});
    Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

fn unavailable(msg: String) -> ApiError {
    let mut e = ApiError::no_capacity(msg);
    e.code = Some("request_log_unavailable");
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1763805661"), Some(1_763_805_661_000));
        let t = parse_time("2025-11-22T10:01:01Z").unwrap();
        assert_eq!(iso(t), "2025-11-22T10:01:01Z");
        assert_eq!(parse_time("2025-11-22T12:01:01+02:00"), Some(t));
        assert_eq!(parse_time("2025-11-22T12:01:01 02:00"), Some(t));
        assert_eq!(parse_time("2025-11-22T09:01:01.250-01:00"), Some(t + 250));
        assert_eq!(parse_time("2025-11-22"), Some(t - 36_061_000));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-11-22T25:00:00Z",
            "2025-11-22T10:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_defaults_and_errors() {
        let now = parse_time("2026-01-01T00:00:00Z").unwrap();
        let q = parse_query("", now).unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.group_by),
            (now - 86_400_000, now, GroupBy::None)
        );
        let q = parse_query("group_by=model&from=2025-11-22T10%3A00%3A00Z", now).unwrap();
        assert_eq!(q.group_by, GroupBy::Model);
        assert_eq!(q.from_ms, parse_time("2025-11-22T10:00:00Z").unwrap());
        let e = parse_query("group_by=planet", now).unwrap_err();
        assert_eq!((e.status, e.param), (400, Some("group_by")));
        let e = parse_query("from=soon", now).unwrap_err();
        assert_eq!(e.param, Some("from"));
        let e = parse_query("from=200&to=100", now).unwrap_err();
        assert_eq!(e.status, 400);
    }
}
