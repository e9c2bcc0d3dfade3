//! A small PNG encoder for the simulated image providers: 8-bit RGB, no filtering, one
//! zlib stream in one `IDAT` chunk (flate2, as pingora already builds it; CRC-32 from
//! crc32fast). The picture is an 8 × 8 grid of bands tinted by a seed, so different prompts
//! give different images and a 1024x1024 one compresses to a few kilobytes.

use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::Write as _;

/// A `width` × `height` PNG whose colours come from `seed`.
pub fn gradient(width: u32, height: u32, seed: &[u8]) -> Vec<u8> {
    let tint = |i: usize| seed.get(i).copied().unwrap_or(128);
    let (r0, g0, b0) = (tint(0), tint(1), tint(2));
    let mut raw = Vec::with_capacity((width as usize * 3 + 1) * height as usize);
    for y in 0..height {
        raw.push(0); // filter: none
        let gy = (y * 8 / height.max(1) * 32) as u8;
        for x in 0..width {
            let gx = (x * 8 / width.max(1) * 32) as u8;
            raw.extend_from_slice(&[r0 ^ gx, g0 ^ gy, b0.wrapping_add(gx / 2 + gy / 2)]);
        }
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    let _ = z.write_all(&raw);
    let idat = z.finish().unwrap_or_default();

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter set, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::ZlibDecoder;
    use std::io::Read as _;

    #[test]
    fn the_png_has_a_valid_header_crcs_and_pixels() {
        let png = gradient(7, 5, b"abc");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 7);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 5);
        // Every chunk's CRC covers its type and data.
        let mut at = 8;
        let mut idat = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let body = &png[at + 4..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc32fast::hash(body), crc);
            if &body[..4] == b"IDAT" {
                idat.extend_from_slice(&body[4..]);
            }
            at += 12 + len;
        }
        let mut raw = Vec::new();
        ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
        assert_eq!(raw.len(), (7 * 3 + 1) * 5);
        assert_ne!(gradient(7, 5, b"abc"), gradient(7, 5, b"xyz"));
        assert!(
            gradient(1024, 1024, b"abc").len() < 64 * 1024,
            "compressible"
        );
    }
}
