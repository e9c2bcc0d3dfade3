//! W3C Trace Context (`traceparent`, `tracestate`): parsing a client's header, and writing
//! the one each upstream attempt carries. <https://www.w3.org/TR/trace-context/>

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// The longest `tracestate` passed on (the spec asks vendors to propagate at least 512).
pub const MAX_TRACESTATE: usize = 512;

/// Parses a `traceparent` value; `None` when it is not valid (then a new trace starts, as
/// the spec asks).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    // version "-" trace-id "-" parent-id "-" flags; a later version may append fields.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    decode(&v[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    decode(&v[36..52], &mut span_id)?;
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// A `tracestate` value worth passing on: printable ASCII, not too long.
pub fn valid_tracestate(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_TRACESTATE && v.iter().all(|&b| (0x20..0x7f).contains(&b))
}

/// `00-{trace}-{span}-{flags}`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut out = [0u8; 55];
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    encode(trace_id, &mut out[3..35]);
    out[35] = b'-';
    encode(span_id, &mut out[36..52]);
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    encode(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

fn encode(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
}

/// Lowercase hex only: the spec forbids uppercase.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(&hex[2 * i..2 * i + 2])?;
    }
    Some(())
}

/// A random non-zero id.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back() {
        let p = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        let out = traceparent(&p.trace_id, &p.span_id, true);
        assert_eq!(std::str::from_utf8(&out).unwrap(), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
        // A later version may append fields.
        let v1 = format!("01{}-extra", &GOOD[2..]);
        assert!(parse_traceparent(v1.as_bytes()).is_some());
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn tracestate_is_passed_on_only_when_printable_and_short() {
        assert!(valid_tracestate(b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        assert!(!valid_tracestate(b""));
        assert!(!valid_tracestate(b"a=\x01"));
        assert!(!valid_tracestate(&[b'a'; MAX_TRACESTATE + 1]));
    }
}
