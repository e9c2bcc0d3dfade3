//! Every stream translator (OpenAI, Gemini, Anthropic, Workers AI, and the Responses layer)
//! on any bytes a provider sends, split anywhere: never panics, and the output does not
//! depend on the chunking.
#![no_main]
use freeway::config::ProviderKind;
use freeway::providers::common::Meta;
use freeway::providers::{anthropic, gemini, translator, workers_ai, StreamTranslator};
use libfuzzer_sys::fuzz_target;

const KINDS: [ProviderKind; 4] = [
    ProviderKind::Openai,
    ProviderKind::Gemini,
    ProviderKind::Anthropic,
    ProviderKind::WorkersAi,
];

fn make(kind: ProviderKind, responses: bool) -> Box<dyn StreamTranslator> {
    // Fixed ids and timestamps, so two runs can be compared byte for byte.
    let meta = Meta::fixed();
    let inner: Box<dyn StreamTranslator> = match kind {
        ProviderKind::Gemini => Box::new(gemini::GeminiStream::new("fuzz-model", true, &meta)),
        ProviderKind::Anthropic => Box::new(anthropic::AnthropicStream::new("fuzz-model", true, &meta)),
        ProviderKind::WorkersAi => Box::new(workers_ai::WorkersAiStream::new("fuzz-model", true, &meta)),
        _ => translator(kind).chat_stream("fuzz-model", true),
    };
    if responses {
        let (_, meta) = freeway::responses::to_chat(br#"{"input":"x"}"#).expect("fixed request");
        Box::new(freeway::responses::ResponsesStream::new(inner, meta, "fuzz-model"))
    } else {
        inner
    }
}

fn run(t: &mut dyn StreamTranslator, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    for c in chunks {
        if t.feed(c, &mut out).is_err() {
            return (out, false);
        }
    }
    let ok = t.finish(&mut out).is_ok();
    (out, ok)
}

fuzz_target!(|data: &[u8]| {
    let [selector, cut, rest @ ..] = data else { return };
    let kind = KINDS[*selector as usize % KINDS.len()];
    // The Responses layer draws random ids: compare chunkings only without it.
    let responses = selector & 0x80 != 0;
    let cut = *cut as usize % (rest.len() + 1);
    let whole = run(make(kind, responses).as_mut(), &[rest]);
    let split = run(make(kind, responses).as_mut(), &[&rest[..cut], &rest[cut..]]);
    if !responses {
        assert_eq!(whole, split, "{kind:?}: output depends on chunking");
    }
});
