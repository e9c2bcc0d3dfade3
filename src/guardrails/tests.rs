use super::*;
use crate::config::Config;
use proptest::prelude::*;

fn guardrails(toml: &str) -> Arc<Guardrails> {
    let config = Config::parse(&format!("[server]\nlisten = [\"127.0.0.1:1\"]\n{toml}")).unwrap();
    Arc::new(Guardrails::new(&config.guardrails).unwrap())
}

const PII: &str = r#"
[[guardrails]]
name = "no-pii"
pii = ["email", "phone", "credit_card", "iban", "api_key", "ipv4", "ipv6"]
action = "redact"

[[guardrails]]
name = "codenames"
words = ["bluebird", "Straße"]
regex = ['tok-[0-9]{4}']
action = "redact"

[[guardrails]]
name = "watch"
words = ["invoice"]
action = "flag"
"#;

/// Compiled once for the property tests.
fn pii() -> &'static Arc<Guardrails> {
    static G: std::sync::LazyLock<Arc<Guardrails>> = std::sync::LazyLock::new(|| guardrails(PII));
    &G
}

fn whole(g: &Guardrails, text: &str) -> (Result<String, Blocked>, u64) {
    let mut hits = 0;
    let r = g
        .apply_text(Side::Response, g.all(), text, &mut hits)
        .map(|o| o.unwrap_or_else(|| text.to_string()));
    (r, hits)
}

fn streamed(g: &Arc<Guardrails>, pieces: &[&str]) -> (Result<(), Blocked>, String, u64) {
    let mut s = g.text_stream(Side::Response, g.all());
    let mut out = String::new();
    for p in pieces {
        if let Err(b) = s.push(p, &mut out) {
            return (Err(b), out, s.hits());
        }
    }
    let r = s.finish(&mut out);
    (r, out, s.hits())
}

#[test]
fn redacts_every_kind_and_flags_without_changing() {
    let g = guardrails(PII);
    let text = "Mail jane@example.com or call +1 415 555 2671; card 4111 1111 1111 1111, \
                IBAN DE89 3704 0044 0532 0130 00, key sk-proj-abcdefghijklmnopqrstuvwx, host \
                10.0.0.1 / 2001:db8::1. Project Bluebird, tok-1234, invoice 7.";
    let (out, hits) = whole(&g, text);
    assert_eq!(
        out.unwrap(),
        "Mail [REDACTED:email] or call [REDACTED:phone]; card [REDACTED:credit_card], \
         IBAN [REDACTED:iban], key [REDACTED:api_key], host \
         [REDACTED:ipv4] / [REDACTED:ipv6]. Project [REDACTED:codenames], \
         [REDACTED:codenames], invoice 7."
    );
    assert_eq!(hits, 0b111);
    let (out, hits) = whole(&g, "nothing to see: bluebirds, 4111 1111 1111 1112");
    assert_eq!(
        out.unwrap(),
        "nothing to see: bluebirds, 4111 1111 1111 1112"
    );
    assert_eq!(hits, 0);
}

#[test]
fn words_are_whole_and_case_insensitive_in_any_script() {
    let g = guardrails(PII);
    assert_eq!(
        whole(&g, "BLUEBIRD, straße; Straßenbahn").0.unwrap(),
        "[REDACTED:codenames], [REDACTED:codenames]; Straßenbahn"
    );
}

#[test]
fn a_match_split_across_pieces_is_redacted() {
    let g = guardrails(PII);
    let pieces = [
        "write to ja",
        "ne@exa",
        "mple.c",
        "om, or 4111 11",
        "11 1111 1111",
        "!",
    ];
    let (r, out, _) = streamed(&g, &pieces);
    r.unwrap();
    assert_eq!(out, "write to [REDACTED:email], or [REDACTED:credit_card]!");
}

#[test]
fn prose_is_released_at_once_but_for_its_last_word() {
    let g = guardrails(PII);
    let mut s = g.text_stream(Side::Response, g.all());
    let mut out = String::new();
    s.push("The quick brown fox jumps over the lazy dog", &mut out)
        .unwrap();
    assert_eq!(out, "The quick brown fox jumps over the lazy ");
    s.push(". Then", &mut out).unwrap();
    assert_eq!(out, "The quick brown fox jumps over the lazy dog. ");
    // Held back: at most the longest match.
    let long = "x".repeat(10_000);
    s.push(&long, &mut out).unwrap();
    assert!(out.len() >= 10_000 - g.matcher(Side::Response).max_len(g.all()) - 16);
}

#[test]
fn the_sentinel_reads_detectors_word_lists_and_regexes() {
    let g = pii();
    let s = g.text_stream(Side::Response, g.all());
    assert!(!s.searches_everywhere());
    // Pieces in which no match can start are released without a search, and the matches
    // around them are still found.
    let (r, out, _) = streamed(
        g,
        &[
            "no digit here, ",
            "Bluebird",
            " said: ",
            "call +44 20 ",
            "7946 0958 soon",
        ],
    );
    r.unwrap();
    assert_eq!(
        out,
        "no digit here, [REDACTED:codenames] said: call [REDACTED:phone] soon"
    );
}

#[test]
fn a_unicode_word_boundary_next_to_non_ascii_text_falls_back_to_searching_everywhere() {
    let g = guardrails(
        r#"
[[guardrails]]
name = "b"
regex = ['\bzap\b']
action = "redact"
"#,
    );
    let mut s = g.text_stream(Side::Response, g.all());
    let mut out = String::new();
    s.push("zap the ", &mut out).unwrap();
    assert!(!s.searches_everywhere());
    // The sentinel sleeps through non-ASCII text that no match can touch…
    s.push("Straße, zap ", &mut out).unwrap();
    assert!(!s.searches_everywhere());
    // …but the byte after `zap` in `zapß` is one its DFA cannot read.
    s.push("zapß zap ", &mut out).unwrap();
    assert!(s.searches_everywhere());
    s.push("zapped zap", &mut out).unwrap();
    s.finish(&mut out).unwrap();
    assert_eq!(
        out,
        "[REDACTED:b] the Straße, [REDACTED:b] zapß [REDACTED:b] zapped [REDACTED:b]"
    );
}

#[test]
fn a_block_stops_the_stream_before_the_match() {
    let g = guardrails(
        r#"
[[guardrails]]
name = "no-cards"
pii = ["credit_card"]
action = "block"
"#,
    );
    let (r, out, _) = streamed(&g, &["pay with 4111 1111 ", "1111 1111 now", " please"]);
    assert_eq!(r, Err(Blocked(0)));
    assert_eq!(out, "pay with ");
    assert_eq!(whole(&g, "pay with 4111 1111 1111 1111").0, Err(Blocked(0)));
}

#[test]
fn the_config_rejects_bad_guardrails() {
    let bad = |toml: &str, want: &str| {
        let e = Config::parse(&format!("[server]\nlisten = [\"127.0.0.1:1\"]\n{toml}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    };
    bad(
        "[[guardrails]]\nname = \"a\"\naction = \"block\"\n",
        "needs `pii`",
    );
    bad(
        "[[guardrails]]\nname = \"a\"\npii = [\"ssn\"]\naction = \"block\"\n",
        "pii[0]",
    );
    bad(
        "[[guardrails]]\nname = \"a\"\nregex = ['(']\naction = \"block\"\n",
        "regex[0]",
    );
    bad(
        "[[guardrails]]\nname = \"a\"\nregex = ['a*']\naction = \"block\"\n",
        "empty text",
    );
    bad(
        "[[guardrails]]\nname = \"a\"\nwords = [\"x\"]\naction = \"drop\"\n",
        "action",
    );
    bad(
        "[[guardrails]]\nname = \"a\"\nwords = [\"x\"]\nroles = [\"bot\"]\naction = \"flag\"\n",
        "roles[0]",
    );
}

#[test]
fn the_config_and_the_detectors_agree() {
    let kinds: Vec<&str> = detect::kinds().collect();
    assert_eq!(kinds, crate::config::PII_KINDS);
}

#[test]
fn chat_prompts_read_the_named_roles_and_tool_results() {
    let g = guardrails(
        r#"
[[guardrails]]
name = "no-email"
pii = ["email"]
action = "redact"
"#,
    );
    let mut a = g.start(None).unwrap();
    let body = serde_json::json!({"model": "auto", "messages": [
        {"role": "system", "content": "ops@example.com"},
        {"role": "user", "content": [{"type": "text", "text": "me: jo@example.com"}]},
        {"role": "tool", "tool_call_id": "c", "content": "found bo@example.com"},
    ]});
    let out = a.chat_prompt(body.to_string().as_bytes()).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["messages"][0]["content"], "ops@example.com");
    assert_eq!(
        v["messages"][1]["content"][0]["text"],
        "me: [REDACTED:email]"
    );
    assert_eq!(v["messages"][2]["content"], "found [REDACTED:email]");
    assert_eq!(a.names(), vec!["no-email"]);
}

#[test]
fn scopes_by_key_label_and_model() {
    let g = guardrails(
        r#"
[[guardrails]]
name = "team-a"
words = ["x"]
keys = ["team-a"]
action = "flag"

[[guardrails]]
name = "gpt"
words = ["y"]
models = ["gpt-4o"]
action = "flag"
"#,
    );
    assert!(g.start(Some("team-b")).is_some()); // `gpt` applies to every key
    let mut a = g.start(Some("team-b")).unwrap();
    a.chat_prompt(br#"{"model":"other","messages":[]}"#)
        .unwrap();
    assert!(!a.active());
    let mut a = g.start(Some("team-a")).unwrap();
    a.chat_prompt(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"x y"}]}"#)
        .unwrap();
    assert_eq!(a.names(), vec!["team-a", "gpt"]);
}

#[test]
fn no_guardrail_configured_means_nothing_applies() {
    let g = Arc::new(Guardrails::default());
    assert!(g.start(Some("k")).is_none());
}

/// Text for the properties: words, digits, the characters detectors care about, and
/// non-ASCII letters.
fn filler() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 .,@+:()ßé-]{0,40}").unwrap()
}

fn long_filler() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 .,@+:()_ßé-]{0,300}").unwrap()
}

fn planted() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "DE89 3704 0044 0532 0130 00",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "192.168.10.1",
        "2001:db8::8a2e:370:7334",
        "bluebird",
        "tok-9876",
    ])
}

/// Filler and planted matches in turn, then `tail`.
fn planted_text(parts: &[(String, &str)], tail: &str) -> String {
    let mut text = String::new();
    for (f, p) in parts {
        text.push_str(f);
        text.push_str(p);
    }
    text.push_str(tail);
    text
}

/// Splits `text` in pieces of `sizes` bytes, in turn (rounded up to character boundaries).
fn in_sizes<'a>(text: &'a str, sizes: &[usize]) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= text.len() {
            break;
        }
        let end = text.ceil_char_boundary(at + size);
        pieces.push(&text[at..end]);
        at = end;
    }
    pieces
}

/// Splits `text` at `cuts` (fractions), on character boundaries.
fn chunks<'a>(text: &'a str, cuts: &[f64]) -> Vec<&'a str> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|f| {
            let mut i = (f * text.len() as f64) as usize;
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        })
        .collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for i in at.into_iter().chain([text.len()]) {
        out.push(&text[last..i]);
        last = i;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text, any chunking: the stream's output is the whole text's redaction.
    #[test]
    fn streaming_equals_whole_text(
        parts in prop::collection::vec((filler(), planted()), 0..6),
        tail in filler(),
        cuts in prop::collection::vec(0.0f64..1.0, 0..12),
    ) {
        let g = pii();
        let text = planted_text(&parts, &tail);
        let (want, _) = whole(g, &text);
        let (r, got, _) = streamed(g, &chunks(&text, &cuts));
        prop_assert!(r.is_ok());
        prop_assert_eq!(got, want.unwrap());
    }

    /// Token-sized pieces (1 to 8 bytes, as model deltas come): the same.
    #[test]
    fn streaming_in_tiny_pieces_equals_whole_text(
        parts in prop::collection::vec((filler(), planted()), 0..6),
        tail in filler(),
        size in 1usize..9,
    ) {
        let g = pii();
        let text = planted_text(&parts, &tail);
        let (want, _) = whole(g, &text);
        let (r, got, _) = streamed(g, &in_sizes(&text, &[size]));
        prop_assert!(r.is_ok());
        prop_assert_eq!(got, want.unwrap());
    }

    /// Long texts (past the matcher's reach and the 4 KiB at which released text is
    /// dropped) in pieces of 1 to 64 bytes: the same.
    #[test]
    fn long_streams_equal_whole_text(
        parts in prop::collection::vec((long_filler(), planted()), 0..40),
        sizes in prop::collection::vec(1usize..65, 1..16),
    ) {
        let g = pii();
        let text = planted_text(&parts, "");
        let (want, _) = whole(g, &text);
        let (r, got, _) = streamed(g, &in_sizes(&text, &sizes));
        prop_assert!(r.is_ok());
        prop_assert_eq!(got, want.unwrap());
    }

    /// Planted matches set apart by spaces never reach the output, however split.
    #[test]
    fn planted_matches_never_appear(
        parts in prop::collection::vec((filler(), planted()), 1..6),
        cuts in prop::collection::vec(0.0f64..1.0, 0..12),
    ) {
        let g = pii();
        let mut text = String::new();
        for (f, p) in &parts {
            text.push_str(f);
            text.push(' ');
            text.push_str(p);
            text.push_str(" ; ");
        }
        let (r, got, _) = streamed(g, &chunks(&text, &cuts));
        prop_assert!(r.is_ok());
        for (_, p) in &parts {
            prop_assert!(!got.contains(p), "{p} in {got}");
        }
    }

    /// A block: the stream never carries the match, and stops where the whole text would.
    #[test]
    fn a_blocked_stream_never_carries_the_match(
        before in filler(),
        after in filler(),
        cuts in prop::collection::vec(0.0f64..1.0, 0..12),
    ) {
        static G: std::sync::LazyLock<Arc<Guardrails>> = std::sync::LazyLock::new(|| {
            guardrails("[[guardrails]]\nname = \"b\"\npii = [\"credit_card\"]\naction = \"block\"\n")
        });
        let g = &*G;
        let text = format!("{before} 4111 1111 1111 1111 {after}");
        let (r, got, _) = streamed(g, &chunks(&text, &cuts));
        prop_assert_eq!(r, Err(Blocked(0)));
        prop_assert!(!got.contains("4111 1111 1111 1111"));
        prop_assert!(text.starts_with(&got));
    }
}
