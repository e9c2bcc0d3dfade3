//! OpenAI bodies → native requests, and native answers → OpenAI, for every format: any
//! bytes, never a panic.
#![no_main]
use freeway::config::ProviderKind;
use freeway::providers::translator;
use freeway::request::parse_chat;
use libfuzzer_sys::fuzz_target;

const KINDS: [ProviderKind; 4] = [
    ProviderKind::Openai,
    ProviderKind::Gemini,
    ProviderKind::Anthropic,
    ProviderKind::WorkersAi,
];

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else { return };
    let t = translator(KINDS[*selector as usize % KINDS.len()]);
    if let Ok(req) = parse_chat(rest) {
        let _ = t.chat_request(&req, rest, "fuzz-model");
    }
    let _ = t.chat_response(rest.to_vec().into(), "fuzz-model");
    let _ = t.error(500, rest, "fuzz");
});
