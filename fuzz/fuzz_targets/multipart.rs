//! The multipart scanner that reads every upload as it arrives: any body, fed in any
//! chunking. It must not panic, must reach the same verdict and the same parts however the
//! bytes arrive, and every part it finds must lie inside the body.
#![no_main]
use bytes::Bytes;
use freeway::multipart::Scanner;
use libfuzzer_sys::fuzz_target;

fn scan(body: &[u8], cut: usize) -> Result<Vec<(String, usize)>, String> {
    let mut s = Scanner::new("fzb");
    let mut buf = Vec::new();
    for piece in [&body[..cut], &body[cut..]] {
        buf.extend_from_slice(piece);
        s.feed(&buf)?;
    }
    let form = s.finish(Bytes::copy_from_slice(body))?;
    Ok(form
        .parts
        .iter()
        .map(|p| {
            let data = form.data(p);
            assert!(data.len() <= body.len());
            (p.name.clone(), data.len())
        })
        .collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    // Bodies built around the boundary the scanner looks for.
    let body = [b"--fzb\r\n".as_slice(), rest].concat();
    let cut = cut as usize % (body.len() + 1);
    let whole = scan(&body, body.len());
    let split = scan(&body, cut);
    assert_eq!(whole.is_ok(), split.is_ok(), "verdict depends on chunking");
    if let (Ok(a), Ok(b)) = (whole, split) {
        assert_eq!(a, b);
    }
});
