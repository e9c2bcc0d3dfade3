//! The passthrough path check and join: any path a client sends after `/providers/{name}`.
//! They must not panic; a path the check accepts never decodes to a `.` or `..` segment (with
//! or without `;` parameters, with `/` or `\` as separator), and the join keeps the client's
//! path whole at its end.
#![no_main]
use freeway::proxy::passthrough::{check_path, join_path};
use libfuzzer_sys::fuzz_target;

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && s.is_char_boundary(i + 3) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (base, rest) = text.split_once('\n').unwrap_or(("/v1", text));
    let rest = format!("/{rest}");
    if check_path(&rest).is_ok() {
        let decoded = decode(&rest);
        for seg in decoded.split(|&b| b == b'/' || b == b'\\') {
            let seg = seg.split(|&b| b == b';').next().unwrap_or(seg);
            assert!(seg != b"." && seg != b"..", "accepted a dot segment: {rest:?}");
        }
    }
    let joined = join_path(base, &rest);
    assert!(joined.ends_with(&rest), "{base:?} + {rest:?} = {joined:?}");
});
