//! Embeddings in OpenAI's format: the body passes through with `model` rewritten (token-id
//! input included); answers are `{"data":[{"index","embedding"}],"usage"}`.

use crate::providers::embeddings::{missing, to_vec, EmbeddingRequest};
use crate::providers::media::MediaRequest;
use crate::providers::Embeddings;
use serde_json::Value;

pub struct OpenAiEmbeddings;

impl Embeddings for OpenAiEmbeddings {
    fn takes_token_ids(&self) -> bool {
        true
    }

    fn request(&self, req: &EmbeddingRequest, model_id: &str) -> Result<MediaRequest, String> {
        let mut body = req.body.clone();
        body.insert("model".into(), Value::String(model_id.into()));
        Ok(MediaRequest::json("/embeddings", to_vec(&body)))
    }

    fn vectors(&self, answer: &Value) -> Result<(Vec<Value>, Option<u64>), String> {
        let data = answer["data"]
            .as_array()
            .ok_or_else(|| missing("`data` list"))?;
        let mut data = data.clone();
        data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
        let tokens = answer["usage"]["prompt_tokens"]
            .as_u64()
            .or_else(|| answer["usage"]["total_tokens"].as_u64());
        Ok((
            data.into_iter().map(|d| d["embedding"].clone()).collect(),
            tokens,
        ))
    }
}
