//! The request-head scanner that guards every client connection (slowloris deadline): any
//! bytes a client sends, split anywhere. It must not panic, must find the same end however
//! the bytes arrive, and an end it finds must close a line.
#![no_main]
use freeway::conn::head::head_end;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = cut as usize % (rest.len() + 1);
    let whole = head_end([rest]);
    assert_eq!(whole, head_end([&rest[..cut], &rest[cut..]]));
    assert_eq!(whole, head_end(rest.chunks(1)));
    if let Some(end) = whole {
        assert!(end <= rest.len());
        assert_eq!(rest[end - 1], b'\n');
    }
});
