//! Audio on Workers AI.
//!
//! - Speech-to-text: `whisper-large-v3-turbo` takes `{"audio": base64, "task", "language",
//!   "initial_prompt"}`; the other Whisper models take the raw audio bytes. Answers carry
//!   segments (turbo) or word timings, from which json, text, verbose_json, srt and vtt are
//!   built.
//! - Text-to-speech: MeloTTS (`{"prompt", "lang"}` → base64 MP3 in JSON) and Deepgram Aura
//!   (`{"text", "speaker"}` → audio bytes).

use crate::providers::audio::{json_answer, SpeechRequest, SttAnswer, SttRequest, Transcript};
use crate::providers::media::{around, MediaRequest, Piece};
use crate::providers::{Speech, Transcription};
use bytes::Bytes;
use serde_json::{json, Value};

pub struct WorkersAiAudio;

fn is_turbo(model_id: &str) -> bool {
    model_id.contains("whisper-large-v3-turbo")
}

impl Transcription for WorkersAiAudio {
    fn request(&self, req: &SttRequest, model_id: &str) -> Result<MediaRequest, String> {
        let audio = req.audio();
        if is_turbo(model_id) {
            let mut v = json!({"audio": "@@AUDIO@@", "task": if req.translate { "translate" } else { "transcribe" }});
            if let Some(l) = &req.language {
                v["language"] = json!(l);
            }
            if let Some(p) = &req.prompt {
                v["initial_prompt"] = json!(p);
            }
            let (head, tail) = around(&v.to_string(), "@@AUDIO@@");
            return Ok(MediaRequest {
                path: format!("/run/{model_id}"),
                content_type: "application/json".into(),
                body: vec![Piece::Raw(head), Piece::Base64(audio), Piece::Raw(tail)],
                headers: Vec::new(),
            });
        }
        if req.translate {
            return Err(format!(
                "`{model_id}` only transcribes; translation needs whisper-large-v3-turbo"
            ));
        }
        Ok(MediaRequest {
            path: format!("/run/{model_id}"),
            content_type: "application/octet-stream".into(),
            body: vec![Piece::Raw(audio)],
            headers: Vec::new(),
        })
    }

    fn answer(&self, _upstream_type: &str, body: Bytes) -> Result<SttAnswer, String> {
        transcript(&body).map(SttAnswer::Transcript)
    }
}

fn transcript(body: &[u8]) -> Result<Transcript, String> {
    let v = json_answer(body, "Workers AI")?;
    let r = &v["result"];
    let text = r["text"]
        .as_str()
        .ok_or("the Workers AI answer has no `result.text`")?
        .trim()
        .to_string();
    let info = &r["transcription_info"];
    let mut segments: Vec<(f64, f64, String)> = r["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["start"].as_f64()?,
                s["end"].as_f64()?,
                s["text"].as_str()?.trim().to_string(),
            ))
        })
        .collect();
    if segments.is_empty() {
        // Word timings (the original Whisper): a segment per 12 words.
        let words: Vec<(f64, f64, &str)> = r["words"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| {
                Some((
                    w["start"].as_f64()?,
                    w["end"].as_f64()?,
                    w["word"].as_str()?,
                ))
            })
            .collect();
        for group in words.chunks(12) {
            if let (Some(first), Some(last)) = (group.first(), group.last()) {
                let text: Vec<&str> = group.iter().map(|w| w.2.trim()).collect();
                segments.push((first.0, last.1, text.join(" ")));
            }
        }
    }
    Ok(Transcript {
        text,
        language: info["language"].as_str().map(str::to_string),
        duration: info["duration"]
            .as_f64()
            .or_else(|| segments.last().map(|s| s.1)),
        segments,
    })
}

impl Speech for WorkersAiAudio {
    fn request(&self, req: &SpeechRequest, model_id: &str) -> Result<MediaRequest, String> {
        if model_id.contains("aura") {
            let mut v = json!({"text": req.input});
            if let Some(voice) = &req.voice {
                v["speaker"] = json!(voice);
            }
            if req.format != "mp3" {
                v["encoding"] = json!(if req.format == "pcm" {
                    "linear16"
                } else {
                    req.format.as_str()
                });
            }
            return Ok(MediaRequest::json(
                format!("/run/{model_id}"),
                v.to_string().into_bytes(),
            ));
        }
        if req.format != "mp3" {
            return Err(format!(
                "`{model_id}` speaks MP3 only: response_format `{}` is not available",
                req.format
            ));
        }
        let lang = req
            .body
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("en");
        Ok(MediaRequest::json(
            format!("/run/{model_id}"),
            json!({"prompt": req.input, "lang": lang})
                .to_string()
                .into_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_timings_become_segments() {
        let words = json!({"result": {"text": "a b", "words": [{"word": "a", "start": 0.0, "end": 0.5}, {"word": "b", "start": 0.5, "end": 1.0}]}});
        let t = transcript(words.to_string().as_bytes()).unwrap();
        assert_eq!(t.segments, vec![(0.0, 1.0, "a b".to_string())]);
    }
}
