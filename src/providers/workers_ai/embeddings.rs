//! Embeddings on Workers AI: `/run/{model}` with `{"text": […]}` →
//! `{"result":{"data":[[…]],"shape":[n,d]}}`. The models have a fixed size.

use crate::providers::embeddings::{missing, to_vec, EmbeddingRequest};
use crate::providers::media::MediaRequest;
use crate::providers::Embeddings;
use serde_json::{json, Value};

pub struct WorkersAiEmbeddings;

impl Embeddings for WorkersAiEmbeddings {
    fn request(&self, req: &EmbeddingRequest, model_id: &str) -> Result<MediaRequest, String> {
        if req.dimensions.is_some() {
            return Err(format!(
                "`{model_id}` on Workers AI has a fixed size: `dimensions` is not supported"
            ));
        }
        Ok(MediaRequest::json(
            format!("/run/{model_id}"),
            to_vec(&json!({ "text": req.text_list() })),
        ))
    }

    fn vectors(&self, answer: &Value) -> Result<(Vec<Value>, Option<u64>), String> {
        let data = answer["result"]["data"]
            .as_array()
            .ok_or_else(|| missing("`result.data` matrix"))?;
        Ok((data.clone(), None))
    }
}
