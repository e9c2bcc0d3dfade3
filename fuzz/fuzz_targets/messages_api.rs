//! Anthropic Messages requests and streams: any bytes, never a panic. A parsed request's
//! chat translation is a chat request the gateway can parse, and its native rewrite is still
//! JSON; the event translators (chat stream → Anthropic events, Anthropic events relayed)
//! take any bytes, split anywhere.
#![no_main]
use freeway::messages::{parse, MessagesStream, NativeStream};
use freeway::providers::openai::OpenAi;
use freeway::providers::{StreamTranslator, Translator};
use freeway::request::parse_chat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse(data, false) {
        parse_chat(&r.chat).expect("the translation parses as chat");
        let native = r.rewrite_for_upstream(data, "claude-x");
        serde_json::from_slice::<serde_json::Value>(&native).expect("the rewrite is JSON");
    }
    let _ = parse(data, true);
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let meta = std::sync::Arc::new(freeway::messages::Meta::default());
    let translators: [Box<dyn StreamTranslator>; 2] = [
        Box::new(MessagesStream::new(OpenAi.chat_stream("m", true), meta, "m")),
        Box::new(NativeStream::new("m")),
    ];
    for mut t in translators {
        let mut out = Vec::new();
        if t.feed(&data[..cut], &mut out).is_ok() && t.feed(&data[cut..], &mut out).is_ok() {
            let _ = t.finish(&mut out);
        }
        let _ = t.usage();
    }
});
