//! `POST /v1/embeddings`: the client's request parsed once, handed to the provider's format
//! (`<kind>/embeddings.rs`, see [`Embeddings`](super::Embeddings)), and the native answer's
//! vectors made into OpenAI's `{"object":"list","data":[…]}`.
//!
//! Answers are normalised to what the client asked: `encoding_format: "base64"` is the
//! little-endian f32 bytes of each vector, base64-encoded (OpenAI's format), made here when
//! the provider only returns floats.

use super::media::{b64, json_body, model_field, unb64, MediaRequest};
use super::{format, Usage};
use crate::config::ProviderKind;
use crate::errors::ApiError;
use serde_json::{json, Map, Value};

/// The client's embeddings request, parsed once.
#[derive(Debug, Clone)]
pub struct EmbeddingRequest {
    pub body: Map<String, Value>,
    pub model: Option<String>,
    /// The input texts; `None` when the input is token ids (OpenAI-compatible only).
    pub texts: Option<Vec<String>>,
    pub dimensions: Option<u64>,
    pub base64: bool,
}

pub fn parse(raw: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let body = json_body(raw, "{\"model\": …, \"input\": …}")?;
    let model = model_field(&body)?;
    let bad_input = || {
        ApiError::invalid_param(
            "input",
            "`input` must be a string, an array of strings, or token ids (an array of integers or of integer arrays).",
        )
    };
    let texts = match body.get("input") {
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid_param(
                "input",
                "`input` must not be empty.",
            ))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        Some(Value::Array(items))
            if items.iter().all(|v| {
                v.is_u64()
                    || v.as_array()
                        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_u64))
            }) =>
        {
            None
        }
        None => return Err(ApiError::invalid_param("input", "`input` is required.")),
        Some(_) => return Err(bad_input()),
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|d| *d > 0).ok_or_else(|| {
            ApiError::invalid_param("dimensions", "`dimensions` must be a positive integer.")
        })?),
    };
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", not `{other}`."),
            ))
        }
    };
    Ok(EmbeddingRequest {
        body,
        model,
        texts,
        dimensions,
        base64,
    })
}

impl EmbeddingRequest {
    /// The input texts (empty for token ids, which only formats that
    /// [take them](super::Embeddings::takes_token_ids) are given).
    pub fn text_list(&self) -> &[String] {
        self.texts.as_deref().unwrap_or_default()
    }
}

/// The native request for `model_id`, or why this provider cannot serve it (the candidate is
/// skipped).
pub fn request(
    kind: ProviderKind,
    req: &EmbeddingRequest,
    model_id: &str,
) -> Result<MediaRequest, String> {
    let embeddings = format(kind).embeddings;
    if req.texts.is_none() && !embeddings.is_some_and(|e| e.takes_token_ids()) {
        return Err(format!(
            "token-id input needs an OpenAI-compatible provider; `{}` takes text",
            kind.as_str()
        ));
    }
    embeddings
        .ok_or_else(|| unsupported(kind))?
        .request(req, model_id)
}

fn unsupported(kind: ProviderKind) -> String {
    format!("`{}` has no embeddings API", kind.as_str())
}

pub(crate) fn to_vec(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Why an answer cannot be read: it has no `what`.
pub(crate) fn missing(what: &str) -> String {
    format!("the provider's answer has no {what}")
}

/// A native answer → the OpenAI embeddings list, in the encoding the client asked for.
pub fn response(
    kind: ProviderKind,
    body: &[u8],
    req: &EmbeddingRequest,
    model_id: &str,
) -> Result<(Vec<u8>, Option<Usage>), String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the provider's embeddings answer is not JSON: {e}"))?;
    let estimate = || {
        req.texts
            .as_ref()
            .map_or(0, |t| t.iter().map(|s| s.len().div_ceil(4) as u64).sum())
    };
    // `reported`: the provider's own count, when it gives one (else the estimate is shown).
    let (vectors, reported) = format(kind)
        .embeddings
        .ok_or_else(|| unsupported(kind))?
        .vectors(&v)?;
    if let Some(texts) = &req.texts {
        if vectors.len() != texts.len() {
            return Err(format!(
                "the provider returned {} vectors for {} inputs",
                vectors.len(),
                texts.len()
            ));
        }
    }
    let mut data = Vec::with_capacity(vectors.len());
    for (i, vector) in vectors.into_iter().enumerate() {
        let floats = floats_of(&vector).ok_or_else(|| missing(&format!("vector at index {i}")))?;
        let embedding = if req.base64 {
            Value::String(encode_base64(&floats))
        } else {
            json!(floats)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    let tokens = reported.unwrap_or_else(estimate);
    let body = to_vec(&json!({
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }));
    let usage = reported.map(|prompt_tokens| Usage {
        prompt_tokens,
        completion_tokens: 0,
    });
    Ok((body, usage))
}

/// A vector as floats, from a JSON array or OpenAI's base64 string.
fn floats_of(v: &Value) -> Option<Vec<f32>> {
    match v {
        Value::Array(a) => a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect(),
        Value::String(s) => {
            let bytes = unb64(s).ok()?;
            (bytes.len() % 4 == 0).then(|| {
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
        }
        _ => None,
    }
}

/// OpenAI's base64 encoding: little-endian f32s.
pub fn encode_base64(floats: &[f32]) -> String {
    let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    b64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> EmbeddingRequest {
        parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn parses_inputs_and_options() {
        let r =
            req(json!({"model": "m", "input": "hi", "dimensions": 8, "encoding_format": "base64"}));
        assert_eq!(r.texts, Some(vec!["hi".to_string()]));
        assert_eq!((r.dimensions, r.base64), (Some(8), true));
        assert!(req(json!({"input": [[1, 2], [3]]})).texts.is_none());
        for bad in [
            json!({"input": 5}),
            json!({"input": []}),
            json!({"model": "m"}),
            json!({"input": "x", "encoding_format": "int8"}),
        ] {
            assert_eq!(
                parse(bad.to_string().as_bytes()).unwrap_err().status,
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn native_requests_per_kind() {
        let r = req(json!({"model": "x", "input": ["a", "b"], "dimensions": 4}));
        let g = request(ProviderKind::Gemini, &r, "gemini-embedding-001").unwrap();
        assert_eq!(g.path, "/models/gemini-embedding-001:batchEmbedContents");
        let v: Value = serde_json::from_slice(&g.concat()).unwrap();
        assert_eq!(v["requests"][1]["content"]["parts"][0]["text"], "b");
        assert_eq!(v["requests"][0]["outputDimensionality"], 4);
        let one = req(json!({"input": "a"}));
        assert!(request(ProviderKind::Gemini, &one, "g")
            .unwrap()
            .path
            .ends_with(":embedContent"));
        let w = request(ProviderKind::WorkersAi, &one, "@cf/baai/bge-m3").unwrap();
        assert_eq!(w.path, "/run/@cf/baai/bge-m3");
        assert_eq!(
            serde_json::from_slice::<Value>(&w.concat()).unwrap(),
            json!({"text": ["a"]})
        );
        assert!(request(ProviderKind::WorkersAi, &r, "@cf/baai/bge-m3")
            .unwrap_err()
            .contains("dimensions"));
        let o = request(ProviderKind::Openai, &r, "up-id").unwrap();
        let v: Value = serde_json::from_slice(&o.concat()).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["dimensions"].as_u64()),
            (Some("up-id"), Some(4))
        );
        let tokens = req(json!({"input": [1, 2, 3]}));
        assert!(request(ProviderKind::Gemini, &tokens, "g")
            .unwrap_err()
            .contains("token-id"));
    }

    #[test]
    fn answers_become_openai_lists_in_the_asked_encoding() {
        let r = req(json!({"input": ["a", "b"], "encoding_format": "base64"}));
        let native = json!({"result": {"shape": [2, 2], "data": [[0.5, -1.0], [0.25, 2.0]]}, "success": true});
        let out: Value = serde_json::from_slice(
            &response(
                ProviderKind::WorkersAi,
                native.to_string().as_bytes(),
                &r,
                "bge",
            )
            .unwrap()
            .0,
        )
        .unwrap();
        let b = out["data"][1]["embedding"].as_str().unwrap();
        let bytes = unb64(b).unwrap();
        assert_eq!(
            bytes,
            [0.25f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()
        );
        assert_eq!(out["model"], "bge");
        assert_eq!(out["object"], "list");
        let floats = req(json!({"input": "a"}));
        let g = json!({"embedding": {"values": [0.1, 0.2]}});
        let out: Value = serde_json::from_slice(
            &response(ProviderKind::Gemini, g.to_string().as_bytes(), &floats, "g")
                .unwrap()
                .0,
        )
        .unwrap();
        assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 2);
        // An OpenAI-compatible provider that answers floats to a base64 request.
        let o = json!({"data": [{"index": 1, "embedding": [1.0]}, {"index": 0, "embedding": [3.0]}], "usage": {"prompt_tokens": 7}});
        let (body, usage) =
            response(ProviderKind::Openai, o.to_string().as_bytes(), &r, "m").unwrap();
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["data"][0]["embedding"], encode_base64(&[3.0]));
        assert_eq!(out["usage"]["prompt_tokens"], 7);
        assert_eq!(usage.map(|u| u.prompt_tokens), Some(7));
        assert!(response(ProviderKind::WorkersAi, b"{}", &r, "m").is_err());
    }
}
