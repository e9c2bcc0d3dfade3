//! The writer's encoding of a record: `failures`, and `record` as a hand-made JSON array in
//! [`FIELDS`](super::schema::FIELDS) order. Separate from the insert: pure byte formatting
//! with no SQLite and no `unsafe`, tested on its own.

use crate::observe::record::{IpCache, RequestRecord};

/// `r`'s `failures` (a JSON array; none = empty = NULL) and `record` (the JSON array of
/// [`FIELDS`](super::schema::FIELDS), in order).
pub(super) fn encode(
    r: &RequestRecord,
    ips: &mut IpCache,
    failures: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    failures.clear();
    if !r.failures.is_empty() {
        let _ = serde_json::to_writer(&mut *failures, &r.failures);
    }
    out.clear();
    out.push(b'[');
    json_str(out, &r.request_id);
    out.push(b',');
    json_str(out, &r.key_label);
    out.push(b',');
    match r.client_ip {
        Some(ip) => json_str(out, ips.get(ip)),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    json_plain(out, r.method);
    out.push(b',');
    json_plain(out, r.endpoint);
    out.push(b',');
    json_opt(out, r.path.as_deref());
    out.push(b',');
    json_opt(out, r.requested_model.as_deref());
    out.push(b',');
    json_str(out, &r.provider);
    out.push(b',');
    json_str(out, &r.model);
    out.push(b',');
    json_int(out, u64::from(r.attempts));
    out.push(b',');
    json_plain(out, r.cache_status);
    out.push(b',');
    json_int(out, u64::from(r.streamed));
    out.push(b',');
    json_int(out, r.prompt_tokens);
    out.push(b',');
    json_int(out, r.completion_tokens);
    out.push(b',');
    json_int(out, u64::from(r.tokens_estimated));
    out.push(b',');
    match r.ttft_ms {
        Some(t) => json_ms(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    json_ms(out, r.duration_ms);
    out.push(b',');
    json_ms(out, r.overhead_ms);
    out.push(b',');
    json_f64(out, r.cost_usd);
    out.push(b',');
    json_opt(out, r.metadata.as_deref());
    out.push(b',');
    if r.guardrails.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        let _ = serde_json::to_writer(&mut *out, &r.guardrails);
    }
    out.push(b',');
    json_int(out, u64::from(r.images));
    out.push(b']');
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_int(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A finite number as JSON (`null` otherwise: JSON has no NaN).
fn json_f64(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// Milliseconds to the microsecond (`12.345`), the precision the gateway measures: a third
/// of the cost of the shortest round-trip form of an arbitrary `f64`.
fn json_ms(out: &mut Vec<u8>, ms: f64) {
    if !(0.0..9.0e12).contains(&ms) {
        return json_f64(out, ms);
    }
    let us = (ms * 1000.0 + 0.5) as u64;
    out.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
    let frac = us % 1000;
    if frac != 0 {
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let mut keep = digits.len();
        while digits[keep - 1] == b'0' {
            keep -= 1;
        }
        out.extend_from_slice(&digits[..keep]);
    }
}

/// One of the gateway's own names (method, endpoint, cache status) as a JSON string: they
/// never need escaping.
fn json_plain(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `s` as a JSON string: copied as is when nothing needs escaping (the usual case).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // No early exit: the loop vectorises, and the strings are short.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_written_to_the_microsecond() {
        for (ms, text) in [
            (0.0, "0"),
            (1.5, "1.5"),
            (12.345, "12.345"),
            (0.001, "0.001"),
            (100.02, "100.02"),
            (1234.5678, "1234.568"),
            (f64::NAN, "null"),
            (-1.0, "-1.0"),
        ] {
            let mut out = Vec::new();
            json_ms(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{ms}");
        }
        for us in [1u64, 999, 1000, 1001, 123_456_789, 86_400_000_000] {
            let ms = us as f64 / 1000.0;
            let mut out = Vec::new();
            json_ms(&mut out, ms);
            let back: f64 = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, ms, "{us} µs");
        }
    }
}
