//! Upstream requests for the media endpoints (embeddings, audio): a body made of pieces that
//! reference the client's buffer, so a 25 MiB upload is never copied whole, not even to
//! base64 it (that is done piece by piece while sending).

use base64::Engine as _;
use bytes::Bytes;

/// Bytes encoded per write when a piece is sent as base64 (a multiple of 3, so the pieces'
/// encodings concatenate to the encoding of the whole).
const BASE64_CHUNK: usize = 3 * 16 * 1024;

/// One piece of an upstream body.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Sent as is.
    Raw(Bytes),
    /// Sent base64-encoded (standard alphabet, padded), encoded while sending.
    Base64(Bytes),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Raw(b) => b.len(),
            Piece::Base64(b) => b.len().div_ceil(3) * 4,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The piece as the chunks to write, encoded lazily (one chunk in memory at a time).
    pub fn chunks(&self) -> Box<dyn Iterator<Item = Bytes> + Send + '_> {
        match self {
            Piece::Raw(b) => Box::new(std::iter::once(b.clone())),
            Piece::Base64(b) => Box::new(
                b.chunks(BASE64_CHUNK)
                    .map(|c| Bytes::from(base64::engine::general_purpose::STANDARD.encode(c))),
            ),
        }
    }
}

/// A media request for one provider: `POST {base}{path}`.
#[derive(Debug, Clone)]
pub struct MediaRequest {
    pub path: String,
    pub content_type: String,
    pub body: Vec<Piece>,
    /// Headers the format needs (`anthropic-version`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl MediaRequest {
    pub fn json(path: impl Into<String>, body: Vec<u8>) -> MediaRequest {
        MediaRequest {
            path: path.into(),
            content_type: "application/json".into(),
            body: vec![Piece::Raw(Bytes::from(body))],
            headers: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.body.iter().map(Piece::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body in one buffer (tests and small bodies).
    pub fn concat(&self) -> Vec<u8> {
        self.body
            .iter()
            .flat_map(|p| p.chunks())
            .flatten()
            .collect()
    }
}

/// Splits a JSON document around a placeholder string value, so a large base64 payload can
/// be streamed in its place: `{"audio":"@@"}` → (`{"audio":"`, `"}`).
pub fn around(json: &str, placeholder: &str) -> (Bytes, Bytes) {
    let quoted = format!("\"{placeholder}\"");
    match json.find(&quoted) {
        Some(i) => (
            Bytes::from(json[..i + 1].to_string()),
            Bytes::from(json[i + quoted.len() - 1..].to_string()),
        ),
        None => (Bytes::from(json.to_string()), Bytes::new()),
    }
}

/// Standard base64.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("bad base64: {e}"))
}

/// A media request's JSON body as an object; `shape` names the fields to send, for the
/// error (`{"model": …, "input": …}`).
pub fn json_body(
    raw: &[u8],
    shape: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, crate::errors::ApiError> {
    serde_json::from_slice(raw).map_err(|e| {
        crate::errors::ApiError::invalid(format!(
            "The body is not a JSON object: {e}. Send {shape}."
        ))
    })
}

/// The optional `model` field of a media request.
pub fn model_field(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<String>, crate::errors::ApiError> {
    match body.get("model") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(crate::errors::ApiError::invalid_param(
            "model",
            "`model` must be a string.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pieces_concatenate_to_the_whole_encoding() {
        for n in [
            0,
            1,
            2,
            3,
            BASE64_CHUNK - 1,
            BASE64_CHUNK,
            BASE64_CHUNK * 2 + 5,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            let p = Piece::Base64(Bytes::from(data.clone()));
            let enc: Vec<u8> = p.chunks().flatten().collect();
            assert_eq!(enc, b64(&data).into_bytes(), "{n}");
            assert_eq!(p.len(), enc.len(), "{n}");
        }
    }

    #[test]
    fn json_splits_around_the_placeholder() {
        let (a, b) = around(r#"{"audio":"@@AUDIO@@","task":"x"}"#, "@@AUDIO@@");
        assert_eq!(&a[..], br#"{"audio":""#);
        assert_eq!(&b[..], br#"","task":"x"}"#);
    }
}
