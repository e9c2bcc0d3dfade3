//! An incremental `multipart/form-data` scanner over a growing buffer.
//!
//! The gateway keeps an uploaded body in one buffer (it is needed again on failover). The
//! scanner is fed that buffer as it grows and records where each part's headers and data
//! are, as offsets: no part is copied. Rewriting a field (the `model`) is then a matter of
//! sending the bytes around it plus the new value, see [`Form::replace_field`].

use bytes::Bytes;
use memchr::memmem;
use std::ops::Range;

/// The most a part's header block may take.
const MAX_PART_HEADERS: usize = 8 * 1024;
/// Text fields larger than this are not read as strings (they are files in disguise).
const MAX_FIELD: usize = 64 * 1024;

/// One part of the form: where it is in the body and what its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    /// The part from its first header byte to the end of its data (what a rewrite replaces).
    pub whole: Range<usize>,
    pub data: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first boundary.
    Preamble,
    /// Just after a boundary line: `\r\n` (a part follows) or `--` (the end).
    AfterBoundary,
    /// In a part's header block, which started at `start`.
    Headers {
        start: usize,
    },
    /// In a part's data.
    Data,
    End,
}

/// Scans a form as its bytes arrive.
pub struct Scanner {
    boundary: Vec<u8>,
    /// `\r\n--boundary`: what ends a part's data.
    delimiter: Vec<u8>,
    pos: usize,
    state: State,
    /// The part being read; its ranges end where its data ends.
    current: Option<Part>,
    parts: Vec<Part>,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "the body must be multipart/form-data (got `{mime}`): send the audio as a file upload"
        ));
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim().trim_matches('"');
            if v.is_empty() || v.len() > 200 {
                return Err("the multipart boundary must be 1 to 200 characters".into());
            }
            return Ok(v.to_string());
        }
    }
    Err("the multipart/form-data content type has no boundary".into())
}

impl Scanner {
    pub fn new(boundary: &str) -> Scanner {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Scanner {
            boundary: format!("--{boundary}").into_bytes(),
            delimiter,
            pos: 0,
            state: State::Preamble,
            current: None,
            parts: Vec::new(),
        }
    }

    /// Scans what was appended to `buf` since the last call (`buf` only ever grows).
    pub fn feed(&mut self, buf: &[u8]) -> Result<(), String> {
        loop {
            match self.state {
                State::Preamble => {
                    // The first boundary opens the body or follows a CRLF.
                    if buf.len() < self.boundary.len() {
                        return Ok(());
                    }
                    if buf.starts_with(&self.boundary) {
                        self.pos = self.boundary.len();
                    } else {
                        let from = self.pos;
                        match memmem::find(&buf[from..], &self.delimiter) {
                            Some(i) => self.pos = from + i + self.delimiter.len(),
                            None => {
                                self.pos = buf.len().saturating_sub(self.delimiter.len());
                                return Ok(());
                            }
                        }
                    }
                    self.state = State::AfterBoundary;
                }
                State::AfterBoundary => {
                    // Transport padding (spaces, tabs) may follow a boundary.
                    while buf.get(self.pos).is_some_and(|b| *b == b' ' || *b == b'\t') {
                        self.pos += 1;
                    }
                    let Some(two) = buf.get(self.pos..self.pos + 2) else {
                        return Ok(());
                    };
                    match two {
                        b"\r\n" => {
                            self.pos += 2;
                            self.state = State::Headers { start: self.pos };
                        }
                        b"--" => {
                            self.state = State::End;
                        }
                        _ => return Err("a multipart boundary is followed by garbage".into()),
                    }
                }
                State::Headers { start } => {
                    let from = self.pos.max(start);
                    match memmem::find(&buf[from..], b"\r\n\r\n") {
                        Some(i) => {
                            let end = from + i;
                            let (name, filename, content_type) = part_headers(&buf[start..end])?;
                            let data = end + 4;
                            self.current = Some(Part {
                                name,
                                filename,
                                content_type,
                                whole: start..data,
                                data: data..data,
                            });
                            self.pos = data;
                            self.state = State::Data;
                        }
                        None => {
                            if buf.len() - start > MAX_PART_HEADERS {
                                return Err("a multipart part has over 8 KiB of headers".into());
                            }
                            self.pos = buf.len().saturating_sub(3).max(start);
                            return Ok(());
                        }
                    }
                }
                State::Data => {
                    let from = self.pos;
                    match memmem::find(&buf[from..], &self.delimiter) {
                        Some(i) => {
                            let end = from + i;
                            if let Some(mut part) = self.current.take() {
                                part.whole.end = end;
                                part.data.end = end;
                                self.parts.push(part);
                            }
                            self.pos = end + self.delimiter.len();
                            self.state = State::AfterBoundary;
                        }
                        None => {
                            // Keep a tail that may hold the start of the delimiter.
                            self.pos = buf.len().saturating_sub(self.delimiter.len()).max(from);
                            return Ok(());
                        }
                    }
                }
                State::End => return Ok(()),
            }
        }
    }

    /// The body is complete: the parts, or why the form is malformed.
    pub fn finish(self, body: Bytes) -> Result<Form, String> {
        if self.state != State::End {
            return Err(
                "the multipart body ended before its closing boundary (truncated upload?)".into(),
            );
        }
        Ok(Form {
            body,
            boundary: String::from_utf8_lossy(&self.boundary[2..]).into_owned(),
            parts: self.parts,
        })
    }
}

/// `Content-Disposition` name and filename, and `Content-Type`, of a part.
fn part_headers(block: &[u8]) -> Result<(String, Option<String>, Option<String>), String> {
    let text = std::str::from_utf8(block).map_err(|_| "multipart part headers are not UTF-8")?;
    let mut name = None;
    let mut filename = None;
    let mut ctype = None;
    for line in text.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k.eq_ignore_ascii_case("content-disposition") {
            for param in v.split(';').skip(1) {
                let Some((pk, pv)) = param.split_once('=') else {
                    continue;
                };
                let pv = pv.trim().trim_matches('"').to_string();
                match pk.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(pv),
                    "filename" => filename = Some(pv),
                    _ => {}
                }
            }
        } else if k.eq_ignore_ascii_case("content-type") {
            ctype = Some(v.trim().to_string());
        }
    }
    let name = name.ok_or("a multipart part has no Content-Disposition name")?;
    Ok((name, filename, ctype))
}

/// A complete form: the body it lives in and its parts.
#[derive(Debug, Clone)]
pub struct Form {
    pub body: Bytes,
    pub boundary: String,
    pub parts: Vec<Part>,
}

impl Form {
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// A small text field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        let p = self.part(name).filter(|p| p.filename.is_none())?;
        if p.data.len() > MAX_FIELD {
            return None;
        }
        std::str::from_utf8(&self.body[p.data.clone()]).ok()
    }

    /// Every value of a repeated field (`timestamp_granularities[]`).
    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.parts
            .iter()
            .filter(|p| p.name == name && p.filename.is_none() && p.data.len() <= MAX_FIELD)
            .filter_map(|p| std::str::from_utf8(&self.body[p.data.clone()]).ok())
            .collect()
    }

    /// The uploaded file (the first part with a filename, or the part named `file`).
    pub fn file(&self) -> Option<&Part> {
        self.part("file")
            .or_else(|| self.parts.iter().find(|p| p.filename.is_some()))
    }

    /// The bytes of a part's data (a view into the body, not a copy).
    pub fn data(&self, part: &Part) -> Bytes {
        self.body.slice(part.data.clone())
    }

    /// The body with field `name` set to `value`, as pieces that reference the original
    /// buffer (only the new value is allocated). A missing field is added at the front.
    pub fn replace_field(&self, name: &str, value: &str) -> Vec<Bytes> {
        match self.part(name) {
            Some(p) => vec![
                self.body.slice(..p.data.start),
                Bytes::from(value.to_string()),
                self.body.slice(p.data.end..),
            ],
            None => vec![
                Bytes::from(format!(
                    "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                    self.boundary
                )),
                self.body.clone(),
            ],
        }
    }
}

impl Form {
    /// A new form with only these text fields plus this form's file part (referenced from
    /// the body, not copied).
    pub fn with_fields(&self, fields: &[(&str, &str)]) -> Vec<Bytes> {
        let b = &self.boundary;
        let mut head = String::new();
        for (k, v) in fields {
            head.push_str(&format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
            ));
        }
        let mut out = vec![Bytes::from(head)];
        if let Some(f) = self.file() {
            out.push(Bytes::from(format!("--{b}\r\n")));
            out.push(self.body.slice(f.whole.clone()));
            out.push(Bytes::from_static(b"\r\n"));
        }
        out.push(Bytes::from(format!("--{b}--\r\n")));
        out
    }
}

/// Builds a form body (tests, the simulator and speech-to-speech use it).
pub fn build(
    boundary: &str,
    fields: &[(&str, &str)],
    file: Option<(&str, &str, &[u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((filename, ctype, data)) = file {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Parses a complete body in one go.
pub fn parse(content_type: &str, body: Bytes) -> Result<Form, String> {
    let mut s = Scanner::new(&boundary(content_type)?);
    s.feed(&body)?;
    s.finish(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let audio: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        build(
            "XyZ",
            &[("model", "whisper"), ("response_format", "json")],
            Some(("a.wav", "audio/wav", &audio)),
        )
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc def\"").unwrap(),
            "abc def"
        );
        assert_eq!(boundary("Multipart/Form-Data;boundary=x").unwrap(), "x");
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
    }

    #[test]
    fn parts_are_found_at_every_split_of_the_body() {
        let body = sample();
        let whole = parse(
            "multipart/form-data; boundary=XyZ",
            Bytes::from(body.clone()),
        )
        .unwrap();
        assert_eq!(whole.field("model"), Some("whisper"));
        assert_eq!(whole.field("response_format"), Some("json"));
        let f = whole.file().unwrap();
        assert_eq!(f.filename.as_deref(), Some("a.wav"));
        assert_eq!(f.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(whole.data(f).len(), 5000);
        // Fed in two pieces, cut anywhere, the scanner finds the same parts.
        for cut in (0..body.len())
            .step_by(7)
            .chain(body.len() - 40..body.len())
        {
            let mut s = Scanner::new("XyZ");
            s.feed(&body[..cut]).unwrap();
            s.feed(&body).unwrap();
            let form = s.finish(Bytes::from(body.clone())).unwrap();
            assert_eq!(form.parts, whole.parts, "cut {cut}");
        }
    }

    #[test]
    fn fed_byte_by_byte() {
        let body = sample();
        let mut s = Scanner::new("XyZ");
        for n in 1..=body.len() {
            s.feed(&body[..n]).unwrap();
        }
        let form = s.finish(Bytes::from(body)).unwrap();
        assert_eq!(form.parts.len(), 3);
    }

    #[test]
    fn replacing_the_model_keeps_every_other_byte() {
        let body = Bytes::from(sample());
        let form = parse("multipart/form-data; boundary=XyZ", body.clone()).unwrap();
        let out: Vec<u8> = form
            .replace_field("model", "whisper-large-v3-turbo")
            .concat();
        let again = parse(
            "multipart/form-data; boundary=XyZ",
            Bytes::from(out.clone()),
        )
        .unwrap();
        assert_eq!(again.field("model"), Some("whisper-large-v3-turbo"));
        assert_eq!(
            again.data(again.file().unwrap()),
            form.data(form.file().unwrap())
        );
        assert_eq!(
            out.len(),
            body.len() - "whisper".len() + "whisper-large-v3-turbo".len()
        );
        assert_eq!(out[..40], body[..40]);
        assert_eq!(out[out.len() - 5100..], body[body.len() - 5100..]);
        let added = form.replace_field("language", "en").concat();
        let again = parse("multipart/form-data; boundary=XyZ", Bytes::from(added)).unwrap();
        assert_eq!(again.field("language"), Some("en"));
        assert_eq!(again.field("model"), Some("whisper"));
    }

    #[test]
    fn a_rebuilt_form_keeps_the_file_and_only_the_given_fields() {
        let form = parse("multipart/form-data; boundary=XyZ", Bytes::from(sample())).unwrap();
        let out = form.with_fields(&[("model", "m2")]).concat();
        let again = parse("multipart/form-data; boundary=XyZ", Bytes::from(out)).unwrap();
        assert_eq!(again.parts.len(), 2);
        assert_eq!(again.field("model"), Some("m2"));
        let f = again.file().unwrap();
        assert_eq!(f.filename.as_deref(), Some("a.wav"));
        assert_eq!(again.data(f), form.data(form.file().unwrap()));
    }

    #[test]
    fn malformed_forms_are_errors() {
        let body = sample();
        let cut = Bytes::from(body[..body.len() - 10].to_vec());
        assert!(parse("multipart/form-data; boundary=XyZ", cut)
            .unwrap_err()
            .contains("closing boundary"));
        let bad = Bytes::from_static(b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n");
        assert!(parse("multipart/form-data; boundary=XyZ", bad)
            .unwrap_err()
            .contains("name"));
    }
}
