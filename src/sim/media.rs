//! Simulated media endpoints, in each provider's wire format:
//! - embeddings: OpenAI/Voyage `…/embeddings`, Gemini `:embedContent`/`:batchEmbedContents`,
//!   Workers AI `/run/@cf/baai/bge-*`. Vectors are derived from sha256(space, text): the
//!   same text gives the same vector, and each model (its id's last path segment, so
//!   `@cf/baai/bge-m3` and `BAAI/bge-m3` agree) has its own space.
//! - speech-to-text: OpenAI `…/audio/transcriptions|translations` (multipart, every
//!   response_format), Workers AI `/run/@cf/openai/whisper*` (raw bytes, or base64 JSON for
//!   large-v3-turbo), Gemini inline audio (see `gemini_audio`). The transcript names the
//!   byte count and sha256 of the audio received, so tests can prove a byte-exact upload.
//! - text-to-speech: OpenAI `…/audio/speech` (a WAV, streamed in pieces), Workers AI
//!   MeloTTS (base64 audio in JSON) and Aura (audio bytes).
//!
//! Behaviours (`x-sim-behavior`, the model name, or `/_sim/override`) apply as for chat:
//! `fail-429`, `fail-500`, `fail-401`, `flaky`, `hang`, `drop`.

use super::{behavior_of, write, Behavior, SimProvider};
use crate::multipart;
use crate::providers::embeddings::encode_base64;
use crate::providers::media::{b64, unb64};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A media request the simulator answers, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAiEmbeddings,
    GeminiEmbeddings,
    WorkersEmbeddings,
    OpenAiStt,
    WorkersStt,
    OpenAiSpeech,
    WorkersSpeech,
}

impl Kind {
    pub fn of_path(path: &str) -> Option<Kind> {
        if path.ends_with("/embeddings") {
            return Some(Kind::OpenAiEmbeddings);
        }
        if path.contains(":embedContent") || path.contains(":batchEmbedContents") {
            return Some(Kind::GeminiEmbeddings);
        }
        if path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations") {
            return Some(Kind::OpenAiStt);
        }
        if path.ends_with("/audio/speech") {
            return Some(Kind::OpenAiSpeech);
        }
        let model = path.split_once("/run/")?.1.to_ascii_lowercase();
        if model.contains("whisper") {
            Some(Kind::WorkersStt)
        } else if model.contains("melotts") || model.contains("aura") {
            Some(Kind::WorkersSpeech)
        } else if model.contains("bge") || model.contains("embed") {
            Some(Kind::WorkersEmbeddings)
        } else {
            None
        }
    }
}

/// A deterministic unit vector for `text` in `model`'s space.
pub fn vector(model: &str, text: &str, dims: usize) -> Vec<f32> {
    let space = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let mut out = Vec::with_capacity(dims);
    let mut counter = 0u32;
    while out.len() < dims {
        let mut h = Sha256::new();
        h.update(space.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update(counter.to_le_bytes());
        for c in h.finalize().chunks_exact(4) {
            if out.len() < dims {
                let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                out.push((u as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32);
            }
        }
        counter += 1;
    }
    let norm = out
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    out.iter().map(|v| v / norm).collect()
}

/// The transcript the simulator gives for some audio.
pub fn transcript(audio: &[u8], translate: bool) -> String {
    format!(
        "sim {}: {} bytes, sha256 {}",
        if translate {
            "translation"
        } else {
            "transcript"
        },
        audio.len(),
        hex::encode(Sha256::digest(audio))
    )
}

/// Seconds of audio, assuming 16 kHz 16-bit mono.
fn duration(audio: &[u8]) -> f64 {
    (audio.len() as f64 / 32000.0 * 1000.0).round() / 1000.0
}

/// A small valid WAV: a 440 Hz tone, longer for longer text (at most 3 s).
pub fn wav(text: &str) -> Vec<u8> {
    let rate = 16_000u32;
    let samples = ((0.2 + 0.02 * text.chars().count() as f64).min(3.0) * rate as f64) as u32;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = i as f64 / rate as f64;
        let v = ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Gemini `generateContent` with inline audio: the transcript to answer, if there is audio.
pub fn gemini_audio(req: &Value) -> Option<String> {
    let parts = req["contents"].as_array()?.last()?["parts"].as_array()?;
    let translate = parts
        .iter()
        .filter_map(|p| p["text"].as_str())
        .any(|t| t.contains("Translate"));
    parts.iter().find_map(|p| {
        let inline = p.get("inlineData").or_else(|| p.get("inline_data"))?;
        let mime = inline
            .get("mimeType")
            .or_else(|| inline.get("mime_type"))?
            .as_str()?;
        if !mime.starts_with("audio/") {
            return None;
        }
        let audio = unb64(inline["data"].as_str()?).ok()?;
        Some(transcript(&audio, translate))
    })
}

fn texts_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn json_bytes(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn openai_error(msg: &str) -> Bytes {
    crate::errors::envelope("invalid_request_error", None, None, msg)
}

/// An OpenAI-shaped error body for a simulated failure.
pub(super) fn openai_failure(status: u16, msg: &str) -> Bytes {
    let kind_name = match status {
        429 => "rate_limit_error",
        401 => "authentication_error",
        _ => "server_error",
    };
    crate::errors::envelope(kind_name, None, None, msg)
}

/// Acts out a failing `behavior` (`fail-*` with the error body `error(status, message)`,
/// `hang`, `drop`): `Some` when it answered (or hung up), `None` for a normal answer.
pub(super) async fn misbehave(
    session: &mut Session,
    behavior: Behavior,
    error: impl Fn(u16, &str) -> Bytes,
) -> Option<Result<()>> {
    match behavior {
        Behavior::Fail(status) => {
            let msg = match status {
                429 => "sim: rate limit reached, retry later",
                401 => "sim: invalid provider key",
                _ => "sim: internal error",
            };
            let extra: &[(&str, &str)] = if status == 429 {
                &[("retry-after", "30")]
            } else {
                &[]
            };
            Some(
                write(
                    session,
                    status,
                    "application/json",
                    error(status, msg),
                    extra,
                )
                .await,
            )
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Some(Ok(()))
        }
        Behavior::Drop | Behavior::DropEarly | Behavior::DropAfterRole => Some(Error::e_explain(
            ErrorType::ConnectionClosed,
            "sim: dropping",
        )),
        _ => None,
    }
}

impl SimProvider {
    pub(super) fn media_behavior(&self, session: &Session, model: &str) -> Behavior {
        let path = session.req_header().uri.path();
        let overridden = self
            .overrides
            .lock()
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, b)| behavior_of(b));
        let header = session
            .req_header()
            .headers
            .get("x-sim-behavior")
            .and_then(|v| v.to_str().ok())
            .map(behavior_of);
        match overridden.or(header).unwrap_or_else(|| behavior_of(model)) {
            Behavior::Flaky if fastrand::bool() => Behavior::Fail(500),
            Behavior::Flaky => Behavior::Echo,
            b => b,
        }
    }

    /// Answers a media request of `kind`.
    pub(super) async fn media(&self, session: &mut Session, kind: Kind) -> Result<()> {
        let mut body = Vec::new();
        while let Some(c) = session.read_request_body().await? {
            body.extend_from_slice(&c);
        }
        let body = Bytes::from(body);
        let path = session.req_header().uri.path().to_string();
        let ctype = session
            .req_header()
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let run_model = path.split_once("/run/").map(|(_, m)| m.to_string());
        let gemini_model = path
            .rsplit_once("/models/")
            .and_then(|(_, m)| m.split(':').next())
            .map(str::to_string);

        // What arrived, for the log: the model, text fields and the audio's fingerprint.
        let mut extra = serde_json::Map::new();
        let mut audio: Option<Bytes> = None;
        let mut req = Value::Null;
        let mut form = None;
        match kind {
            Kind::OpenAiStt => match multipart::parse(&ctype, body.clone()) {
                Ok(f) => {
                    let fields: serde_json::Map<String, Value> = f
                        .parts
                        .iter()
                        .filter(|p| p.filename.is_none())
                        .filter_map(|p| Some((p.name.clone(), json!(f.field(&p.name)?))))
                        .collect();
                    extra.insert("fields".into(), Value::Object(fields));
                    if let Some(file) = f.file() {
                        extra.insert("file_name".into(), json!(file.filename));
                        audio = Some(f.data(file));
                    }
                    form = Some(f);
                }
                Err(e) => {
                    self.record(session, &body, "");
                    let msg = format!("sim: bad multipart body: {e}");
                    return write(session, 400, "application/json", openai_error(&msg), &[]).await;
                }
            },
            Kind::WorkersStt if !ctype.starts_with("application/json") => {
                audio = Some(body.clone());
            }
            _ => match serde_json::from_slice::<Value>(&body) {
                Ok(v) => {
                    if kind == Kind::WorkersStt {
                        audio = v["audio"]
                            .as_str()
                            .and_then(|a| unb64(a).ok())
                            .map(Bytes::from);
                        let mut shown = v.clone();
                        shown["audio"] = json!("(base64)");
                        extra.insert("json".into(), shown);
                    } else {
                        extra.insert("json".into(), v.clone());
                    }
                    req = v;
                }
                Err(e) => {
                    self.record(session, &body, "");
                    let msg = format!("sim: bad JSON: {e}");
                    return write(session, 400, "application/json", openai_error(&msg), &[]).await;
                }
            },
        }
        if let Some(a) = &audio {
            extra.insert("file_bytes".into(), json!(a.len()));
            extra.insert("file_sha256".into(), json!(hex::encode(Sha256::digest(a))));
        }
        let model = match kind {
            Kind::OpenAiStt => form
                .as_ref()
                .and_then(|f| f.field("model"))
                .unwrap_or("")
                .to_string(),
            Kind::WorkersStt | Kind::WorkersSpeech | Kind::WorkersEmbeddings => {
                run_model.clone().unwrap_or_default()
            }
            Kind::GeminiEmbeddings => gemini_model.clone().unwrap_or_default(),
            _ => req["model"].as_str().unwrap_or("").to_string(),
        };
        self.record_with(session, &body, &model, extra);

        let behavior = self.media_behavior(session, &model);
        if let Some(done) = misbehave(session, behavior, openai_failure).await {
            return done;
        }

        match kind {
            Kind::OpenAiEmbeddings => {
                let texts = texts_of(&req["input"]);
                let dims = req["dimensions"]
                    .as_u64()
                    .or_else(|| req["output_dimension"].as_u64())
                    .unwrap_or(16) as usize;
                let base64 = req["encoding_format"] == "base64";
                let data: Vec<Value> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let v = vector(&model, t, dims);
                        let e = if base64 {
                            json!(encode_base64(&v))
                        } else {
                            json!(v)
                        };
                        json!({"object": "embedding", "index": i, "embedding": e})
                    })
                    .collect();
                let tokens: usize = texts.iter().map(|t| t.len().div_ceil(4)).sum();
                let v = json!({"object": "list", "data": data, "model": model,
                               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
                write(session, 200, "application/json", json_bytes(v), &[]).await
            }
            Kind::GeminiEmbeddings => {
                let one = |r: &Value| {
                    let text: String = r["content"]["parts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["text"].as_str())
                        .collect();
                    let dims = r["outputDimensionality"].as_u64().unwrap_or(16) as usize;
                    json!({"values": vector(&model, &text, dims)})
                };
                let v = if path.contains(":batchEmbedContents") {
                    let list: Vec<Value> = req["requests"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(one)
                        .collect();
                    json!({"embeddings": list})
                } else {
                    json!({"embedding": one(&req)})
                };
                write(session, 200, "application/json", json_bytes(v), &[]).await
            }
            Kind::WorkersEmbeddings => {
                let texts = texts_of(&req["text"]);
                let data: Vec<Vec<f32>> = texts.iter().map(|t| vector(&model, t, 16)).collect();
                let v = json!({"result": {"shape": [data.len(), 16], "data": data, "pooling": "cls"},
                               "success": true, "errors": [], "messages": []});
                write(session, 200, "application/json", json_bytes(v), &[]).await
            }
            Kind::OpenAiStt => {
                let audio = audio.unwrap_or_default();
                let translate = path.ends_with("/translations");
                let text = transcript(&audio, translate);
                let d = duration(&audio);
                let format = form
                    .as_ref()
                    .and_then(|f| f.field("response_format"))
                    .unwrap_or("json")
                    .to_string();
                let (ct, out) = match format.as_str() {
                    "text" => ("text/plain; charset=utf-8", format!("{text}\n")),
                    "srt" => (
                        "text/plain; charset=utf-8",
                        format!("1\n00:00:00,000 --> 00:00:{:02},000\n{text}\n\n", d.ceil() as u64 % 60),
                    ),
                    "vtt" => (
                        "text/vtt; charset=utf-8",
                        format!("WEBVTT\n\n00:00:00.000 --> 00:00:{:02}.000\n{text}\n\n", d.ceil() as u64 % 60),
                    ),
                    "verbose_json" => (
                        "application/json",
                        json!({"task": if translate {"translate"} else {"transcribe"}, "language": "english",
                               "duration": d, "text": text,
                               "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": d, "text": text, "tokens": [],
                                             "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0}]})
                        .to_string(),
                    ),
                    _ => ("application/json", json!({"text": text}).to_string()),
                };
                write(session, 200, ct, Bytes::from(out), &[]).await
            }
            Kind::WorkersStt => {
                let Some(audio) = audio else {
                    let err = super::native::error_body(
                        super::native::Format::WorkersAi,
                        400,
                        "sim: no audio in the request",
                    );
                    return write(session, 400, "application/json", err, &[]).await;
                };
                let translate = req["task"] == "translate";
                let text = transcript(&audio, translate);
                let d = duration(&audio);
                let vtt = format!(
                    "WEBVTT\n\n00:00.000 --> 00:{:02}.000\n{text}\n\n",
                    d.ceil() as u64 % 60
                );
                let result = if model.contains("turbo") {
                    json!({"transcription_info": {"language": "en", "language_probability": 0.99, "duration": d, "duration_after_vad": d},
                           "text": text, "word_count": text.split_whitespace().count(),
                           "segments": [{"start": 0.0, "end": d, "text": text, "temperature": 0.0, "avg_logprob": -0.1,
                                         "compression_ratio": 1.0, "no_speech_prob": 0.0, "words": []}],
                           "vtt": vtt})
                } else {
                    let words: Vec<&str> = text.split_whitespace().collect();
                    let step = d / words.len().max(1) as f64;
                    let timed: Vec<Value> = words
                        .iter()
                        .enumerate()
                        .map(|(i, w)| json!({"word": w, "start": i as f64 * step, "end": (i + 1) as f64 * step}))
                        .collect();
                    json!({"text": text, "word_count": words.len(), "words": timed, "vtt": vtt})
                };
                let v = json!({"result": result, "success": true, "errors": [], "messages": []});
                write(session, 200, "application/json", json_bytes(v), &[]).await
            }
            Kind::OpenAiSpeech => {
                let audio = Bytes::from(wav(req["input"].as_str().unwrap_or("")));
                let mut resp = ResponseHeader::build(200, Some(3))?;
                resp.insert_header("content-type", "audio/wav")?;
                resp.insert_header("transfer-encoding", "chunked")?;
                session.write_response_header(Box::new(resp), false).await?;
                // In pieces, as a real provider streams audio.
                let step = audio.len().div_ceil(4).max(1);
                let mut at = 0;
                while at < audio.len() {
                    let end = (at + step).min(audio.len());
                    session
                        .write_response_body(Some(audio.slice(at..end)), false)
                        .await?;
                    at = end;
                }
                session.write_response_body(None, true).await
            }
            Kind::WorkersSpeech => {
                if model.contains("aura") {
                    let audio = Bytes::from(wav(req["text"].as_str().unwrap_or("")));
                    return write(session, 200, "audio/wav", audio, &[]).await;
                }
                let audio = wav(req["prompt"].as_str().unwrap_or(""));
                let v = json!({"result": {"audio": b64(&audio)}, "success": true, "errors": [], "messages": []});
                write(session, 200, "application/json", json_bytes(v), &[]).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_per_space() {
        let a = vector("@cf/baai/bge-m3", "hello", 16);
        assert_eq!(a, vector("BAAI/bge-m3", "hello", 16));
        assert_ne!(a, vector("@cf/baai/bge-m3", "hello!", 16));
        assert_ne!(a, vector("text-embedding-3-small", "hello", 16));
        let norm: f32 = a.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn paths_map_to_media_kinds() {
        assert_eq!(
            Kind::of_path("/v/v1/embeddings"),
            Some(Kind::OpenAiEmbeddings)
        );
        assert_eq!(
            Kind::of_path("/g/models/e:batchEmbedContents"),
            Some(Kind::GeminiEmbeddings)
        );
        assert_eq!(
            Kind::of_path("/w/ai/run/@cf/openai/whisper"),
            Some(Kind::WorkersStt)
        );
        assert_eq!(
            Kind::of_path("/w/ai/run/@cf/myshell-ai/melotts"),
            Some(Kind::WorkersSpeech)
        );
        assert_eq!(
            Kind::of_path("/w/ai/run/@cf/baai/bge-m3"),
            Some(Kind::WorkersEmbeddings)
        );
        assert_eq!(Kind::of_path("/w/ai/run/@cf/meta/llama"), None);
        assert_eq!(Kind::of_path("/x/v1/chat/completions"), None);
    }

    #[test]
    fn wav_is_valid() {
        let w = wav("hello");
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes([w[4], w[5], w[6], w[7]]) as usize,
            w.len() - 8
        );
        assert_eq!(crate::providers::audio::sniff_audio(&w), "audio/wav");
    }
}
