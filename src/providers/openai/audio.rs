//! Audio in OpenAI's format (Groq, OpenAI, local Whisper servers).
//!
//! - Speech-to-text: the client's multipart body is forwarded with only the `model` field
//!   rewritten; the answer passes through in every format.
//! - Text-to-speech: `/audio/speech` with `model` rewritten; audio streams back.

use crate::providers::audio::{SpeechRequest, SttAnswer, SttRequest};
use crate::providers::media::{MediaRequest, Piece};
use crate::providers::{Speech, Transcription};
use bytes::Bytes;
use serde_json::{json, Value};

pub struct OpenAiAudio;

impl Transcription for OpenAiAudio {
    fn request(&self, req: &SttRequest, model_id: &str) -> Result<MediaRequest, String> {
        Ok(MediaRequest {
            path: if req.translate {
                "/audio/translations".into()
            } else {
                "/audio/transcriptions".into()
            },
            content_type: format!("multipart/form-data; boundary={}", req.form.boundary),
            body: match &req.only_fields {
                Some(fields) => {
                    let mut all = vec![("model", model_id)];
                    all.extend(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    req.form.with_fields(&all)
                }
                None => req.form.replace_field("model", model_id),
            }
            .into_iter()
            .map(Piece::Raw)
            .collect(),
            headers: Vec::new(),
        })
    }

    fn answer(&self, upstream_type: &str, body: Bytes) -> Result<SttAnswer, String> {
        let ctype = if upstream_type.is_empty() {
            "application/json"
        } else {
            upstream_type
        };
        if ctype.starts_with("application/json") {
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| format!("the provider's transcript is not JSON: {e}"))?;
        }
        Ok(SttAnswer::AsIs(ctype.to_string(), body))
    }
}

impl Speech for OpenAiAudio {
    fn request(&self, req: &SpeechRequest, model_id: &str) -> Result<MediaRequest, String> {
        let mut body = req.body.clone();
        body.insert("model".into(), json!(model_id));
        Ok(MediaRequest::json(
            "/audio/speech",
            serde_json::to_vec(&body).unwrap_or_default(),
        ))
    }
}
