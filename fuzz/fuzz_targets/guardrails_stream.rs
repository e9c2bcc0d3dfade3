//! The streaming guardrail matcher: any text, split anywhere (the first bytes choose the
//! cuts). The stream's output must equal the whole text's redaction, a block must stop at
//! the same place, and nothing may panic.
#![no_main]
use freeway::config::Config;
use freeway::guardrails::{Guardrails, Side};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};

static G: LazyLock<Arc<Guardrails>> = LazyLock::new(|| {
    let config = Config::parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\
         [[guardrails]]\nname = \"cards\"\npii = [\"credit_card\"]\naction = \"block\"\n\
         [[guardrails]]\nname = \"pii\"\npii = [\"email\", \"phone\", \"iban\", \"api_key\", \"ipv4\", \"ipv6\"]\naction = \"redact\"\n\
         [[guardrails]]\nname = \"words\"\nwords = [\"secret\", \"Straße\"]\nregex = ['tok-[0-9]{2,8}']\naction = \"redact\"\n\
         [[guardrails]]\nname = \"watch\"\nwords = [\"invoice\"]\naction = \"flag\"\n",
    )
    .unwrap();
    Arc::new(Guardrails::new(&config.guardrails).unwrap())
});

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8);
    if rest.len() < n {
        return;
    }
    let (cuts, text) = rest.split_at(n);
    let Ok(text) = std::str::from_utf8(text) else { return };
    let g = &*G;
    let mut hits = 0;
    let whole = g.apply_text(Side::Response, g.all(), text, &mut hits);

    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            let mut i = usize::from(c) * text.len() / 256;
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        })
        .collect();
    at.sort_unstable();
    at.push(text.len());
    let mut s = g.text_stream(Side::Response, g.all());
    let mut out = String::new();
    let mut last = 0;
    let mut streamed = Ok(());
    for i in at {
        streamed = s.push(&text[last..i], &mut out);
        last = i;
        if streamed.is_err() {
            break;
        }
    }
    if streamed.is_ok() {
        streamed = s.finish(&mut out);
    }
    match (whole, streamed) {
        (Ok(w), Ok(())) => assert_eq!(out, w.unwrap_or_else(|| text.to_string())),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (w, st) => panic!("whole {w:?} vs stream {st:?} on {text:?}"),
    }
});
