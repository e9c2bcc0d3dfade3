//! Images in OpenAI's format (OpenAI's gpt-image and DALL·E, Together, NVIDIA-style
//! OpenAI-compatible image APIs): `POST /images/generations` with the client's body, `model`
//! and `n` rewritten and the size the model was matched on; answers are
//! `{"created","data":[{"b64_json"}|{"url"}]}`. One call makes all `n` images.

use crate::providers::embeddings::to_vec;
use crate::providers::images::{openai_data, Image, ImageRequest};
use crate::providers::media::MediaRequest;
use crate::providers::Images;
use bytes::Bytes;
use serde_json::{json, Value};

pub struct OpenAiImages;

impl Images for OpenAiImages {
    fn several_per_call(&self) -> bool {
        true
    }

    fn request(
        &self,
        req: &ImageRequest,
        model_id: &str,
        size: Option<(u32, u32)>,
        count: u32,
    ) -> Result<MediaRequest, String> {
        let mut body = req.body.clone();
        body.insert("model".into(), Value::String(model_id.into()));
        body.insert("n".into(), json!(count));
        if let Some((w, h)) = size {
            body.insert("size".into(), json!(format!("{w}x{h}")));
        }
        // GPT image models always answer base64 and refuse the field.
        if model_id.starts_with("gpt-image") {
            body.remove("response_format");
        }
        Ok(MediaRequest::json("/images/generations", to_vec(&body)))
    }

    fn images(&self, _upstream_type: &str, body: Bytes) -> Result<Vec<Image>, String> {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the provider's image answer is not JSON: {e}"))?;
        openai_data(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::images::parse;

    #[test]
    fn the_body_passes_with_model_count_and_size() {
        let r = parse(
            br#"{"model":"x","prompt":"a fox","n":3,"response_format":"b64_json","style":"vivid"}"#,
        )
        .unwrap();
        let m = OpenAiImages
            .request(&r, "dall-e-3", Some((1024, 1792)), 3)
            .unwrap();
        assert_eq!(m.path, "/images/generations");
        let v: Value = serde_json::from_slice(&m.concat()).unwrap();
        assert_eq!(
            v,
            json!({"model": "dall-e-3", "prompt": "a fox", "n": 3, "size": "1024x1792",
                   "response_format": "b64_json", "style": "vivid"})
        );
        let g = OpenAiImages.request(&r, "gpt-image-1", None, 1).unwrap();
        let v: Value = serde_json::from_slice(&g.concat()).unwrap();
        assert!(
            v.get("response_format").is_none() && v.get("size").is_none(),
            "{v}"
        );
    }
}
