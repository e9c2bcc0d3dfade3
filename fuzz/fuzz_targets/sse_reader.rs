//! The incremental SSE reader: any bytes a provider sends, split anywhere. The events must
//! not depend on where the stream was split.
#![no_main]
use freeway::sse::{SseEvent, SseReader};
use libfuzzer_sys::fuzz_target;

fn read(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut r = SseReader::new();
    let mut out = Vec::new();
    for c in chunks {
        r.push(c);
        while let Some(e) = r.next_event() {
            out.push(e);
        }
    }
    out.extend(r.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = cut as usize % (rest.len() + 1);
    assert_eq!(read(&[rest]), read(&[&rest[..cut], &rest[cut..]]));
});
