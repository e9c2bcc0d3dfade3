//! The built-in detectors: a candidate pattern (found by the shared multi-pattern regex)
//! and a check that reads only the candidate and up to two characters on each side, so
//! a detector's verdict at a position never depends on where a scan started (the streaming
//! matcher relies on that). A check may accept a shorter candidate (`4111 1111 1111 1111
//! 22` → its first 16 digits), trying ends from the longest down.

/// A check: the text, the candidate's span; the accepted end, or `None`.
pub type Check = fn(&str, usize, usize) -> Option<usize>;

/// One built-in detector.
pub struct Detector {
    /// Its name in the config (`pii = [...]`) and in `[REDACTED:<kind>]`.
    pub kind: &'static str,
    pub pattern: &'static str,
    /// The most bytes a match can span.
    pub max_len: usize,
    pub check: Check,
}

/// Every built-in detector, in priority order (at one position, the first that accepts
/// wins): the most specific shapes first.
pub const DETECTORS: &[Detector] = &[
    Detector {
        kind: "api_key",
        // OpenAI, Anthropic, OpenRouter, DeepSeek (`sk-…`), Gemini (`AIza…`), Groq (`gsk_`),
        // xAI (`xai-`), Voyage (`pa-`), Hugging Face (`hf_`), GitHub (`ghp_`…), AWS (`AKIA`).
        pattern: r"(?:sk-[A-Za-z0-9_-]{20,}|AIza[A-Za-z0-9_-]{35}|gsk_[A-Za-z0-9]{20,}|xai-[A-Za-z0-9]{20,}|pa-[A-Za-z0-9_-]{30,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{36,}|AKIA[0-9A-Z]{16})",
        max_len: 256,
        check: api_key,
    },
    Detector {
        kind: "email",
        pattern: r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,24}",
        max_len: 254,
        check: email,
    },
    Detector {
        kind: "iban",
        pattern: r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}",
        max_len: 64,
        check: iban,
    },
    Detector {
        kind: "credit_card",
        pattern: r"[0-9](?:[ -]?[0-9]){12,18}",
        max_len: 37,
        check: credit_card,
    },
    Detector {
        kind: "ipv6",
        // Two colons at least (the check wants them): `14:32` is no candidate.
        pattern: r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{0,39}",
        max_len: 45,
        check: ipv6,
    },
    Detector {
        kind: "ipv4",
        pattern: r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",
        max_len: 15,
        check: ipv4,
    },
    Detector {
        kind: "phone",
        pattern: r"\+?\(?[0-9][0-9 ().-]{5,22}[0-9]",
        max_len: 26,
        check: phone,
    },
];

/// The detectors a config names (`pii = ["email", …]`), in priority order.
pub fn find(kind: &str) -> Option<&'static Detector> {
    DETECTORS.iter().find(|d| d.kind == kind)
}

/// Every built-in kind, for error messages and the default set.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    DETECTORS.iter().map(|d| d.kind)
}

fn before(h: &str, at: usize) -> Option<char> {
    h[..at].chars().next_back()
}

fn after(h: &str, at: usize) -> Option<char> {
    h[at..].chars().next()
}

fn is_alnum(c: Option<char>) -> bool {
    c.is_some_and(char::is_alphanumeric)
}

fn is_digit(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

/// Ends to try for a candidate `[s, e)`, longest first: `e`, then every earlier position
/// where `cut` says a shorter match may end.
fn ends(h: &str, s: usize, e: usize, cut: fn(u8, u8) -> bool) -> impl Iterator<Item = usize> + '_ {
    let b = h.as_bytes();
    std::iter::once(e).chain((s + 1..e).rev().filter(move |&i| cut(b[i - 1], b[i])))
}

/// A digit followed by a separator: where a number may end.
fn digit_then_sep(prev: u8, next: u8) -> bool {
    prev.is_ascii_digit() && !next.is_ascii_digit()
}

fn api_key(h: &str, s: usize, e: usize) -> Option<usize> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-');
    (!word(before(h, s)) && !word(after(h, e))).then_some(e)
}

fn email(h: &str, s: usize, e: usize) -> Option<usize> {
    let local_char = |c: Option<char>| {
        c.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'))
    };
    if local_char(before(h, s)) {
        return None; // the local part starts earlier
    }
    let domain_char = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-');
    if domain_char(after(h, e)) {
        return None;
    }
    let text = &h[s..e];
    let at = text.find('@')?;
    let (local, domain) = (&text[..at], &text[at + 1..]);
    let dots_ok = |p: &str| !p.starts_with('.') && !p.ends_with('.') && !p.contains("..");
    (local.len() <= 64 && domain.len() <= 253 && dots_ok(local) && dots_ok(domain)).then_some(e)
}

/// The Luhn checksum.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn credit_card(h: &str, s: usize, e: usize) -> Option<usize> {
    if is_alnum(before(h, s)) || before(h, s).is_some_and(|c| matches!(c, '.' | ',' | '-')) {
        return None;
    }
    ends(h, s, e, digit_then_sep).find(|&end| {
        let digits: Vec<u8> = h.as_bytes()[s..end]
            .iter()
            .copied()
            .filter(u8::is_ascii_digit)
            .collect();
        let next = after(h, end);
        (13..=19).contains(&digits.len())
            && matches!(digits[0], b'2'..=b'6')
            && !is_alnum(next)
            && !(matches!(next, Some('.' | ',')) && is_digit(after(h, end + 1)))
            && luhn(&digits)
    })
}

/// The IBAN checksum (ISO 13616: mod 97 of the rearranged number is 1).
pub fn iban_valid(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut rem = 0u32;
    for &c in rearranged {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn iban(h: &str, s: usize, e: usize) -> Option<usize> {
    if is_alnum(before(h, s)) {
        return None;
    }
    let cut = |prev: u8, next: u8| prev != b' ' && next == b' ';
    ends(h, s, e, cut).find(|&end| {
        let compact: Vec<u8> = h.as_bytes()[s..end]
            .iter()
            .copied()
            .filter(|&b| b != b' ')
            .collect();
        !is_alnum(after(h, end)) && iban_valid(&compact)
    })
}

fn ipv4(h: &str, s: usize, e: usize) -> Option<usize> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '.');
    if edge(before(h, s)) {
        return None;
    }
    let next = after(h, e);
    if is_alnum(next) || (next == Some('.') && is_digit(after(h, e + 1))) {
        return None;
    }
    h[s..e]
        .split('.')
        .all(|o| o.parse::<u16>().is_ok_and(|v| v <= 255) && (o.len() == 1 || !o.starts_with('0')))
        .then_some(e)
}

fn ipv6(h: &str, s: usize, e: usize) -> Option<usize> {
    let hexish = |c: Option<char>| c.is_some_and(|c| c.is_ascii_hexdigit() || c == ':');
    if hexish(before(h, s)) || is_alnum(before(h, s)) {
        return None;
    }
    let cut = |_prev: u8, next: u8| next == b':' || next == b'.';
    ends(h, s, e, cut).find(|&end| {
        let text = &h[s..end];
        let next = after(h, end);
        !is_alnum(next)
            && text.bytes().filter(|&b| b == b':').count() >= 2
            && text.bytes().filter(u8::is_ascii_hexdigit).count() >= 3
            && text.parse::<std::net::Ipv6Addr>().is_ok()
    })
}

fn phone(h: &str, s: usize, e: usize) -> Option<usize> {
    let edge = |c: Option<char>| {
        c.is_some_and(|c| c.is_alphanumeric() || matches!(c, '+' | '.' | '-' | '/' | ',' | ':'))
    };
    if edge(before(h, s)) {
        return None;
    }
    // Not the end of a longer number either.
    let mut back = h[..s].chars().rev();
    let national = !h[s..].starts_with('+');
    if national && back.next() == Some(' ') && back.next().is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    ends(h, s, e, digit_then_sep).find(|&end| phone_shape(h, s, end))
}

/// An international (`+` and 8–15 digits) or national number (7–12 digits in groups, or
/// with an area code in parentheses), not a date, a decimal or a bare run of digits.
fn phone_shape(h: &str, s: usize, e: usize) -> bool {
    let next = after(h, e);
    // Not the start of a longer number (`4111 1111 1111 1112` is no phone number).
    if is_alnum(next) || (matches!(next, Some('.' | ',' | '-' | ' ')) && is_digit(after(h, e + 1)))
    {
        return false;
    }
    let text = &h[s..e];
    // One pass: digits, the lengths of the first three digit groups, the longest group,
    // dots and parentheses; no doubled separator but `) `.
    let (mut digits, mut groups, mut longest, mut run) = (0, 0, 0, 0);
    let mut lens = [0usize; 3];
    let (mut dots, mut parens, mut opened, mut prev) = (0, 0i32, false, 0u8);
    for c in text.bytes().chain([b' ']) {
        if c.is_ascii_digit() {
            digits += 1;
            run += 1;
        } else {
            if run > 0 {
                if groups < 3 {
                    lens[groups] = run;
                }
                groups += 1;
                longest = longest.max(run);
                run = 0;
            }
            match c {
                b'.' => dots += 1,
                b'(' => {
                    parens += 1;
                    opened = true;
                }
                b')' => parens -= 1,
                _ => {}
            }
            if c == prev && matches!(c, b' ' | b'.' | b'-') {
                return false;
            }
        }
        prev = c;
    }
    if parens != 0 || longest > 6 {
        return false;
    }
    if text.starts_with('+') {
        return (8..=15).contains(&digits);
    }
    let dated =
        |a: usize, b: usize, c: usize| groups == 3 && lens[0] == a && lens[1] <= b && lens[2] == c;
    if dated(4, 2, 2) || dated(2, 2, 4) || dated(1, 2, 4) {
        return false;
    }
    (7..=12).contains(&digits)
        && (groups >= 3 || opened || (groups == 2 && dots == 0))
        && (dots == 0 || dots >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first match of `kind` in `text`, by the detector's own pattern and check.
    fn first(kind: &str, text: &str) -> Option<String> {
        let d = find(kind).unwrap();
        let re = regex_automata::meta::Regex::new(d.pattern).unwrap();
        let mut at = 0;
        while at <= text.len() {
            let m = re.search(&regex_automata::Input::new(text).range(at..))?;
            let anchored = regex_automata::Input::new(text)
                .range(m.start()..text.len().min(m.start() + d.max_len))
                .anchored(regex_automata::Anchored::Yes);
            if let Some(a) = re.search(&anchored) {
                if let Some(end) = (d.check)(text, a.start(), a.end()) {
                    return Some(text[a.start()..end].to_string());
                }
            }
            at = m.start() + 1;
        }
        None
    }

    fn hit(kind: &str, text: &str, want: &str) {
        assert_eq!(
            first(kind, text).as_deref(),
            Some(want),
            "{kind} in {text:?}"
        );
    }

    fn miss(kind: &str, text: &str) {
        assert_eq!(first(kind, text), None, "{kind} in {text:?}");
    }

    #[test]
    fn emails_in_prose() {
        hit(
            "email",
            "Write to jane.doe+news@example.co.uk today.",
            "jane.doe+news@example.co.uk",
        );
        hit(
            "email",
            "(contact: ops@mail-1.example.org)",
            "ops@mail-1.example.org",
        );
        hit("email", "Ende: müller@example.de.", "müller@example.de");
        miss("email", "user@localhost is not routable");
        miss("email", "follow @freeway on social, or a@b.c");
        miss("email", "the ratio 3@4 and foo@.com and .a..b@x.com");
    }

    #[test]
    fn luhn_checks_credit_cards() {
        assert!(luhn(b"4111111111111111"));
        assert!(!luhn(b"4111111111111112"));
        hit(
            "credit_card",
            "card 4111 1111 1111 1111 exp 12/29",
            "4111 1111 1111 1111",
        );
        hit(
            "credit_card",
            "amex 3782-822463-10005.",
            "3782-822463-10005",
        );
        hit("credit_card", "4111111111111111 22", "4111111111111111");
        miss("credit_card", "card 4111 1111 1111 1112 exp 12/29");
        miss("credit_card", "order 1234567890123452 (starts with 1)");
        miss("credit_card", "id A4111111111111111");
    }

    #[test]
    fn ibans_with_their_checksum() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(!iban_valid(b"DE89370400440532013001"));
        hit(
            "iban",
            "IBAN DE89 3704 0044 0532 0130 00 please",
            "DE89 3704 0044 0532 0130 00",
        );
        hit("iban", "GB82WEST12345698765432.", "GB82WEST12345698765432");
        hit(
            "iban",
            "to DE89 3704 0044 0532 0130 00 OK",
            "DE89 3704 0044 0532 0130 00",
        );
        miss("iban", "IBAN DE89 3704 0044 0532 0130 01 please");
        miss("iban", "ABCD12345678901234");
    }

    #[test]
    fn phone_numbers_international_and_national() {
        hit("phone", "call +1 415 555 2671 now", "+1 415 555 2671");
        hit("phone", "or +44 20 7946 0958.", "+44 20 7946 0958");
        hit("phone", "US (415) 555-2671 office", "(415) 555-2671");
        hit("phone", "cell 415-555-2671", "415-555-2671");
        hit("phone", "Paris 01 42 68 53 00", "01 42 68 53 00");
        hit("phone", "dots 415.555.2671", "415.555.2671");
        hit("phone", "UK 07911 123456", "07911 123456");
        hit("phone", "local 555-2671 ok", "555-2671");
        miss("phone", "on 2024-01-15 we shipped");
        miss("phone", "pi is 3.14159265 and 12345678 units");
        miss("phone", "version v1.2.3 build 1234");
        miss("phone", "price 1,234,567.00");
    }

    #[test]
    fn api_keys_of_known_providers() {
        hit(
            "api_key",
            "key sk-proj-abcdefghijklmnopqrstuvwx1234 set",
            "sk-proj-abcdefghijklmnopqrstuvwx1234",
        );
        hit(
            "api_key",
            "sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA.",
            "sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA",
        );
        hit(
            "api_key",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        );
        hit(
            "api_key",
            "gsk_abcdefghijklmnopqrstuvwxyz",
            "gsk_abcdefghijklmnopqrstuvwxyz",
        );
        hit("api_key", "AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE");
        miss("api_key", "task-abcdefghijklmnopqrstuvwxyz is a ticket");
        miss("api_key", "sk-short");
    }

    #[test]
    fn ip_addresses() {
        hit("ipv4", "host 192.168.1.20, port", "192.168.1.20");
        miss("ipv4", "not 256.1.1.1 nor 1.2.3.4.5 nor 01.2.3.4");
        hit(
            "ipv6",
            "at 2001:db8::8a2e:370:7334 today",
            "2001:db8::8a2e:370:7334",
        );
        hit("ipv6", "loopback ::1 and fe80::1:", "fe80::1");
        miss("ipv6", "time 12:30:45 and a::b");
        miss("ipv6", "std::vec::Vec");
    }
}
