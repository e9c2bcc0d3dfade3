//! The golden corpus (`tests/fixtures/<kind>/`), replayed: recorded-shape OpenAI requests
//! must build the expected native requests, and recorded-shape native answers, streams and
//! errors must translate to the expected OpenAI results — streams under every chunking.
//!
//! Files per kind: `X.request.json` → `X.native-request.json`;
//! `X.response.native.json` → `X.response.openai.json`; `X.stream.native.sse` →
//! `X.stream.openai.sse` (with `include_usage`); `error-N.native.json` → `error-N.openai.json`.
//! `FREEWAY_BLESS=1 cargo test golden` rewrites the expected files (review the diff!).

use super::common::Meta;
use super::{anthropic, gemini, workers_ai, StreamTranslator};
use crate::config::ProviderKind;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

const KINDS: [(&str, ProviderKind, &str); 3] = [
    ("gemini", ProviderKind::Gemini, "gemini-2.5-flash"),
    ("anthropic", ProviderKind::Anthropic, "claude-sonnet-4-5"),
    (
        "workers-ai",
        ProviderKind::WorkersAi,
        "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
    ),
];

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
}

fn files(kind: &str, suffix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir(kind))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(suffix)?.to_string();
            Some((stem, std::fs::read(dir(kind).join(&name)).ok()?))
        })
        .collect();
    out.sort();
    out
}

fn check(kind: &str, name: &str, got: &[u8]) {
    let path = dir(kind).join(name);
    if std::env::var_os("FREEWAY_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with FREEWAY_BLESS=1)", path.display()));
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(&want),
        "{}",
        path.display()
    );
}

fn pretty(bytes: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let mut s = serde_json::to_vec_pretty(&v).unwrap();
    s.push(b'\n');
    s
}

fn stream_translator(kind: ProviderKind, model: &str) -> Box<dyn StreamTranslator> {
    let meta = Meta::fixed();
    match kind {
        ProviderKind::Gemini => Box::new(gemini::GeminiStream::new(model, true, &meta)),
        ProviderKind::Anthropic => Box::new(anthropic::AnthropicStream::new(model, true, &meta)),
        _ => Box::new(workers_ai::WorkersAiStream::new(model, true, &meta)),
    }
}

/// Translates `stream` fed in the given pieces.
fn translate_chunked(kind: ProviderKind, model: &str, pieces: &[&[u8]]) -> Vec<u8> {
    let mut t = stream_translator(kind, model);
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out).unwrap();
    }
    t.finish(&mut out).unwrap();
    assert!(t.started());
    out
}

#[test]
fn golden_requests() {
    for (kind, pk, model) in KINDS {
        let inputs = files(kind, ".request.json");
        assert!(!inputs.is_empty(), "{kind}: no request fixtures");
        for (stem, body) in inputs {
            let req = crate::request::parse_chat(&body).unwrap();
            let up = super::translator(pk)
                .chat_request(&req, &body, model)
                .unwrap();
            let headers: serde_json::Map<String, serde_json::Value> = up
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
            let v = serde_json::json!({"path": up.path, "headers": headers, "body": body});
            check(
                kind,
                &format!("{stem}.native-request.json"),
                &pretty(v.to_string().as_bytes()),
            );
        }
    }
}

#[test]
fn golden_responses() {
    for (kind, _, model) in KINDS {
        let inputs = files(kind, ".response.native.json");
        assert!(!inputs.is_empty(), "{kind}: no response fixtures");
        for (stem, body) in inputs {
            let meta = Meta::fixed();
            let t = match kind {
                "gemini" => gemini::translate_response(&body, model, &meta),
                "anthropic" => anthropic::translate_response(&body, model, &meta),
                _ => workers_ai::translate_response(&body, model, &meta),
            }
            .unwrap();
            assert!(t.usage.is_some(), "{kind}/{stem}: usage");
            check(
                kind,
                &format!("{stem}.response.openai.json"),
                &pretty(&t.body),
            );
        }
    }
}

#[test]
fn golden_errors() {
    for (kind, pk, _) in KINDS {
        let inputs = files(kind, ".native.json");
        let errors: Vec<_> = inputs
            .iter()
            .filter(|(stem, _)| stem.starts_with("error-"))
            .collect();
        assert!(!errors.is_empty(), "{kind}: no error fixtures");
        for (stem, body) in errors {
            let status: u16 = stem["error-".len()..].parse().unwrap();
            let env = super::translator(pk).error(status, body, kind);
            check(kind, &format!("{stem}.openai.json"), &pretty(&env));
        }
    }
}

#[test]
fn golden_streams_under_every_two_piece_split() {
    for (kind, pk, model) in KINDS {
        let inputs = files(kind, ".stream.native.sse");
        assert!(!inputs.is_empty(), "{kind}: no stream fixtures");
        for (stem, stream) in inputs {
            let whole = translate_chunked(pk, model, &[&stream]);
            check(kind, &format!("{stem}.stream.openai.sse"), &whole);
            for cut in 0..=stream.len() {
                let out = translate_chunked(pk, model, &[&stream[..cut], &stream[cut..]]);
                assert_eq!(out, whole, "{kind}/{stem}: cut at {cut}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(
                translate_chunked(pk, model, &bytes),
                whole,
                "{kind}/{stem}: bytewise"
            );
        }
    }
}

/// Every golden stream, with the kind and model to translate it as.
fn all_streams() -> Vec<(ProviderKind, &'static str, Vec<u8>)> {
    KINDS
        .iter()
        .flat_map(|&(kind, pk, model)| {
            files(kind, ".stream.native.sse")
                .into_iter()
                .map(move |(_, s)| (pk, model, s))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn golden_streams_under_random_chunkings(
        which in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let streams = all_streams();
        let (pk, model, stream) = &streams[which.index(streams.len())];
        let whole = translate_chunked(*pk, model, &[stream]);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::with_capacity(at.len() + 1);
        let mut from = 0;
        for &c in &at {
            pieces.push(&stream[from..c]);
            from = c;
        }
        pieces.push(&stream[from..]);
        prop_assert_eq!(translate_chunked(*pk, model, &pieces), whole);
    }
}
