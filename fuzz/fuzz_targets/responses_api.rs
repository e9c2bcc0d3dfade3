//! Responses API requests → chat requests: any bytes, never a panic; a converted request
//! is a chat request the gateway can parse.
#![no_main]
use freeway::request::parse_chat;
use freeway::responses::to_chat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((chat, _)) = to_chat(data) {
        let _ = parse_chat(&chat);
    }
});
