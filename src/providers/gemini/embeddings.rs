//! Embeddings on Gemini: `models/{m}:embedContent` (one input) or `:batchEmbedContents`;
//! answers carry `embedding.values` or `embeddings[].values`, and no token count.

use crate::providers::embeddings::{to_vec, EmbeddingRequest};
use crate::providers::media::MediaRequest;
use crate::providers::Embeddings;
use serde_json::{json, Value};

pub struct GeminiEmbeddings;

impl Embeddings for GeminiEmbeddings {
    fn request(&self, req: &EmbeddingRequest, model_id: &str) -> Result<MediaRequest, String> {
        let texts = req.text_list();
        let one = |t: &str| {
            let mut r =
                json!({"model": format!("models/{model_id}"), "content": {"parts": [{"text": t}]}});
            if let Some(d) = req.dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        };
        if texts.len() == 1 {
            Ok(MediaRequest::json(
                format!("/models/{model_id}:embedContent"),
                to_vec(&one(&texts[0])),
            ))
        } else {
            let requests: Vec<Value> = texts.iter().map(|t| one(t)).collect();
            Ok(MediaRequest::json(
                format!("/models/{model_id}:batchEmbedContents"),
                to_vec(&json!({ "requests": requests })),
            ))
        }
    }

    fn vectors(&self, answer: &Value) -> Result<(Vec<Value>, Option<u64>), String> {
        let list = match answer.get("embeddings") {
            Some(Value::Array(l)) => l.iter().map(|e| e["values"].clone()).collect(),
            _ => vec![answer["embedding"]["values"].clone()],
        };
        Ok((list, None))
    }
}
