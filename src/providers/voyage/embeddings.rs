//! Voyage AI (`kind = "voyage"`): embeddings only, `POST /embeddings` with `input`, `model`,
//! `input_type` (`query`/`document`, passed through when the client sends it) and
//! `output_dimension` (OpenAI's `dimensions`). Answers have OpenAI's list shape with
//! `usage.total_tokens`, read as OpenAI's are.

use crate::providers::embeddings::EmbeddingRequest;
use crate::providers::media::MediaRequest;
use crate::providers::openai::OpenAiEmbeddings;
use crate::providers::Embeddings;
use serde_json::{json, Value};

pub struct VoyageEmbeddings;

impl Embeddings for VoyageEmbeddings {
    fn request(&self, req: &EmbeddingRequest, model_id: &str) -> Result<MediaRequest, String> {
        Ok(embeddings_request(req, req.text_list(), model_id))
    }

    /// Answers have OpenAI's list shape.
    fn vectors(&self, answer: &Value) -> Result<(Vec<Value>, Option<u64>), String> {
        OpenAiEmbeddings.vectors(answer)
    }
}

pub fn embeddings_request(
    req: &EmbeddingRequest,
    texts: &[String],
    model_id: &str,
) -> MediaRequest {
    let mut body = json!({"input": texts, "model": model_id});
    if let Some(d) = req.dimensions {
        body["output_dimension"] = json!(d);
    }
    if let Some(t) = req.body.get("input_type").filter(|v| !v.is_null()) {
        body["input_type"] = t.clone();
    }
    if let Some(Value::Bool(b)) = req.body.get("truncation") {
        body["truncation"] = json!(b);
    }
    MediaRequest::json("/embeddings", serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::embeddings::parse;

    #[test]
    fn maps_openai_fields_to_voyage() {
        let r = parse(br#"{"model":"voyage-3.5","input":"hi","dimensions":256,"input_type":"query","encoding_format":"base64"}"#).unwrap();
        let m = embeddings_request(&r, r.texts.as_deref().unwrap(), "voyage-3.5");
        assert_eq!(m.path, "/embeddings");
        let v: Value = serde_json::from_slice(&m.concat()).unwrap();
        assert_eq!(
            v,
            json!({"input": ["hi"], "model": "voyage-3.5", "output_dimension": 256, "input_type": "query"})
        );
    }
}
