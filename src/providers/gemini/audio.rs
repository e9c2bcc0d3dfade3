//! Speech-to-text on Gemini: `generateContent` with the audio inline and an instruction to
//! transcribe. Plain text only, so json and text (verbose_json, srt and vtt are refused by
//! name).

use crate::providers::audio::{audio_mime, json_answer, SttAnswer, SttRequest, Transcript};
use crate::providers::media::{around, MediaRequest, Piece};
use crate::providers::Transcription;
use bytes::Bytes;
use serde_json::json;
use std::fmt::Write as _;

pub struct GeminiAudio;

impl Transcription for GeminiAudio {
    fn request(&self, req: &SttRequest, model_id: &str) -> Result<MediaRequest, String> {
        if req.format.needs_timings() {
            return Err(format!(
                "Gemini returns plain text: response_format `{}` needs timings it does not give",
                req.format.as_str()
            ));
        }
        let mut instruction = if req.translate {
            String::from("Translate the speech in this audio into English. Answer with the English translation only, nothing else.")
        } else {
            String::from("Transcribe the speech in this audio verbatim. Answer with the transcript only, nothing else.")
        };
        if let Some(l) = &req.language {
            let _ = write!(instruction, " The spoken language is `{l}`.");
        }
        if let Some(p) = &req.prompt {
            let _ = write!(instruction, " Context: {p}");
        }
        let v = json!({"contents": [{"role": "user", "parts": [
            {"text": instruction},
            {"inlineData": {"mimeType": audio_mime(req), "data": "@@AUDIO@@"}},
        ]}], "generationConfig": {"temperature": 0}});
        let (head, tail) = around(&v.to_string(), "@@AUDIO@@");
        Ok(MediaRequest {
            path: format!("/models/{model_id}:generateContent"),
            content_type: "application/json".into(),
            body: vec![
                Piece::Raw(head),
                Piece::Base64(req.audio()),
                Piece::Raw(tail),
            ],
            headers: Vec::new(),
        })
    }

    fn answer(&self, _upstream_type: &str, body: Bytes) -> Result<SttAnswer, String> {
        let v = json_answer(&body, "Gemini")?;
        let parts = v["candidates"][0]["content"]["parts"]
            .as_array()
            .ok_or("the Gemini answer has no candidate text")?;
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        Ok(SttAnswer::Transcript(Transcript {
            text: text.trim().to_string(),
            ..Transcript::default()
        }))
    }
}
