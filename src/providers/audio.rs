//! Speech-to-text (`/v1/audio/transcriptions`, `/v1/audio/translations`) and text-to-speech
//! (`/v1/audio/speech`): the client's requests parsed once and handed to the provider's
//! format (`<kind>/audio.rs`, see [`Transcription`](super::Transcription) and
//! [`Speech`](super::Speech)); transcripts the format reads are rendered here in the
//! response format the client asked for.

use super::format;
use super::media::{json_body, unb64, MediaRequest};
use crate::config::ProviderKind;
use crate::errors::ApiError;
use crate::multipart::Form;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

/// The transcript formats OpenAI defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

impl TextFormat {
    pub fn parse(s: &str) -> Option<TextFormat> {
        Some(match s {
            "json" => TextFormat::Json,
            "text" => TextFormat::Text,
            "verbose_json" => TextFormat::VerboseJson,
            "srt" => TextFormat::Srt,
            "vtt" => TextFormat::Vtt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TextFormat::Json => "json",
            TextFormat::Text => "text",
            TextFormat::VerboseJson => "verbose_json",
            TextFormat::Srt => "srt",
            TextFormat::Vtt => "vtt",
        }
    }

    pub(crate) fn needs_timings(self) -> bool {
        matches!(
            self,
            TextFormat::VerboseJson | TextFormat::Srt | TextFormat::Vtt
        )
    }
}

/// A transcription or translation request: the uploaded form and what was read from it.
#[derive(Debug, Clone)]
pub struct SttRequest {
    pub form: Form,
    pub model: Option<String>,
    pub format: TextFormat,
    pub language: Option<String>,
    pub prompt: Option<String>,
    /// `/v1/audio/translations`: into English.
    pub translate: bool,
    /// Forward only these text fields (plus `model` and the file) to OpenAI-compatible
    /// providers instead of the client's form (speech-to-speech, whose form has fields of
    /// its own).
    pub only_fields: Option<Vec<(String, String)>>,
}

pub fn parse_stt(form: Form, translate: bool) -> Result<SttRequest, ApiError> {
    if form.file().is_none() {
        return Err(ApiError::invalid_param(
            "file",
            "The form has no `file` part: upload the audio as `file`.",
        ));
    }
    let format = match form.field("response_format") {
        None | Some("") => TextFormat::Json,
        Some(f) => TextFormat::parse(f).ok_or_else(|| {
            ApiError::invalid_param(
                "response_format",
                format!(
                    "`response_format` must be json, text, verbose_json, srt or vtt, not `{f}`."
                ),
            )
        })?,
    };
    let text = |name: &str| {
        form.field(name)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(SttRequest {
        model: text("model"),
        language: text("language"),
        prompt: text("prompt"),
        format,
        translate,
        form,
        only_fields: None,
    })
}

impl SttRequest {
    /// The uploaded audio (empty without a file part, which `parse_stt` refuses).
    pub fn audio(&self) -> Bytes {
        self.form
            .file()
            .map(|f| self.form.data(f))
            .unwrap_or_default()
    }
}

/// The audio's MIME type: the part's own, else guessed from the file name.
pub(crate) fn audio_mime(req: &SttRequest) -> String {
    let Some(file) = req.form.file() else {
        return "application/octet-stream".into();
    };
    if let Some(ct) = file
        .content_type
        .as_deref()
        .filter(|c| c.starts_with("audio/") || c.starts_with("video/"))
    {
        return ct.to_string();
    }
    let name = file.filename.as_deref().unwrap_or("").to_ascii_lowercase();
    let ext = name.rsplit('.').next().unwrap_or("");
    match ext {
        "mp3" | "mpga" | "mpeg" => "audio/mpeg",
        "m4a" | "mp4" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "flac" => "audio/flac",
        "webm" => "audio/webm",
        "aac" => "audio/aac",
        _ => "audio/wav",
    }
    .into()
}

/// The native request for `model_id`, or why this provider cannot serve it.
pub fn stt_request(
    kind: ProviderKind,
    req: &SttRequest,
    model_id: &str,
) -> Result<MediaRequest, String> {
    format(kind)
        .transcription
        .ok_or_else(|| format!("`{}` has no speech-to-text API", kind.as_str()))?
        .request(req, model_id)
}

/// A transcript with optional timings, as the non-OpenAI providers give it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub language: Option<String>,
    pub duration: Option<f64>,
    /// (start s, end s, text)
    pub segments: Vec<(f64, f64, String)>,
}

/// What a format makes of its native transcription answer.
pub enum SttAnswer {
    /// A transcript, rendered in the response format the client asked for.
    Transcript(Transcript),
    /// The answer as the client gets it: (content type, body).
    AsIs(String, Bytes),
}

/// A native answer → the answer in the client's format: `(content type, body)`.
pub fn stt_response(
    kind: ProviderKind,
    upstream_type: &str,
    body: Bytes,
    req: &SttRequest,
) -> Result<(String, Bytes), String> {
    let transcription = format(kind).transcription.ok_or("no speech-to-text API")?;
    match transcription.answer(upstream_type, body)? {
        SttAnswer::Transcript(t) => render(&t, req.format, req.translate),
        SttAnswer::AsIs(ctype, body) => Ok((ctype, body)),
    }
}

/// A native answer as JSON; `who` names the provider when it is not.
pub(crate) fn json_answer(body: &[u8], who: &str) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the {who} answer is not JSON: {e}"))
}

/// Renders a transcript in an OpenAI response format.
pub fn render(
    t: &Transcript,
    format: TextFormat,
    translate: bool,
) -> Result<(String, Bytes), String> {
    if format.needs_timings() && t.segments.is_empty() && !t.text.is_empty() {
        return Err(format!(
            "the provider gave no timings, which response_format `{}` needs",
            format.as_str()
        ));
    }
    let out = match format {
        TextFormat::Json => ("application/json", json!({"text": t.text}).to_string()),
        TextFormat::Text => ("text/plain; charset=utf-8", format!("{}\n", t.text)),
        TextFormat::VerboseJson => {
            let segments: Vec<Value> = t
                .segments
                .iter()
                .enumerate()
                .map(|(i, (start, end, text))| {
                    json!({"id": i, "seek": 0, "start": start, "end": end, "text": text, "tokens": [],
                           "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0})
                })
                .collect();
            let mut v = json!({
                "task": if translate { "translate" } else { "transcribe" },
                "language": t.language.as_deref().unwrap_or(if translate { "english" } else { "unknown" }),
                "duration": t.duration.unwrap_or(0.0),
                "text": t.text,
                "segments": segments,
            });
            if let Some(obj) = v.as_object_mut() {
                obj.insert("words".into(), Value::Array(Vec::new()));
            }
            ("application/json", v.to_string())
        }
        TextFormat::Srt => {
            let mut s = String::new();
            for (i, (start, end, text)) in t.segments.iter().enumerate() {
                let _ = write!(
                    s,
                    "{}\n{} --> {}\n{}\n\n",
                    i + 1,
                    timestamp(*start, ','),
                    timestamp(*end, ','),
                    text
                );
            }
            ("text/plain; charset=utf-8", s)
        }
        TextFormat::Vtt => {
            let mut s = String::from("WEBVTT\n\n");
            for (start, end, text) in &t.segments {
                let _ = write!(
                    s,
                    "{} --> {}\n{}\n\n",
                    timestamp(*start, '.'),
                    timestamp(*end, '.'),
                    text
                );
            }
            ("text/vtt; charset=utf-8", s)
        }
    };
    Ok((out.0.to_string(), Bytes::from(out.1)))
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (VTT).
fn timestamp(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A text-to-speech request.
#[derive(Debug, Clone)]
pub struct SpeechRequest {
    pub body: Map<String, Value>,
    pub model: Option<String>,
    pub input: String,
    pub voice: Option<String>,
    /// `response_format`, default mp3.
    pub format: String,
}

pub fn parse_speech(raw: &[u8]) -> Result<SpeechRequest, ApiError> {
    let body = json_body(raw, "{\"model\", \"input\", \"voice\"}")?;
    let input = body
        .get("input")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid_param(
                "input",
                "`input` must be a non-empty string of text to speak.",
            )
        })?
        .to_string();
    let format = body
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("mp3")
        .to_string();
    if !["mp3", "opus", "aac", "flac", "wav", "pcm"].contains(&format.as_str()) {
        return Err(ApiError::invalid_param(
            "response_format",
            format!("`response_format` must be mp3, opus, aac, flac, wav or pcm, not `{format}`."),
        ));
    }
    Ok(SpeechRequest {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
        voice: body
            .get("voice")
            .and_then(Value::as_str)
            .map(str::to_string),
        input,
        format,
        body,
    })
}

/// A speech request built from text (speech-to-speech).
pub fn speech_from_text(
    model: Option<&str>,
    input: &str,
    voice: Option<&str>,
    format: &str,
) -> SpeechRequest {
    let mut body = Map::new();
    body.insert("input".into(), json!(input));
    body.insert("voice".into(), json!(voice.unwrap_or("alloy")));
    body.insert("response_format".into(), json!(format));
    SpeechRequest {
        body,
        model: model.map(str::to_string),
        input: input.to_string(),
        voice: voice.map(str::to_string),
        format: format.to_string(),
    }
}

/// The native request for `model_id`, or why this provider cannot serve it.
pub fn speech_request(
    kind: ProviderKind,
    req: &SpeechRequest,
    model_id: &str,
) -> Result<MediaRequest, String> {
    format(kind)
        .speech
        .ok_or_else(|| format!("`{}` has no text-to-speech API here", kind.as_str()))?
        .request(req, model_id)
}

/// A JSON speech answer (MeloTTS: `{"result":{"audio": base64}}`) → audio bytes and type.
pub fn speech_from_json(body: &[u8]) -> Result<(String, Bytes), String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the speech answer is not JSON: {e}"))?;
    let b64 = v["result"]["audio"]
        .as_str()
        .or_else(|| v["audio"].as_str())
        .ok_or("the speech answer has no `result.audio`")?;
    let audio = unb64(b64)?;
    if audio.is_empty() {
        return Err("the speech answer holds no audio".into());
    }
    Ok((sniff_audio(&audio).to_string(), Bytes::from(audio)))
}

/// The MIME type of audio bytes, from their magic number.
pub fn sniff_audio(b: &[u8]) -> &'static str {
    if b.starts_with(b"RIFF") && b.get(8..12) == Some(b"WAVE") {
        "audio/wav"
    } else if b.starts_with(b"OggS") {
        "audio/ogg"
    } else if b.starts_with(b"fLaC") {
        "audio/flac"
    } else {
        "audio/mpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multipart;

    fn stt(fields: &[(&str, &str)], translate: bool) -> SttRequest {
        let body = multipart::build(
            "b0",
            fields,
            Some(("speech.mp3", "application/octet-stream", b"ID3audio")),
        );
        let form = multipart::parse("multipart/form-data; boundary=b0", Bytes::from(body)).unwrap();
        parse_stt(form, translate).unwrap()
    }

    #[test]
    fn openai_forwards_the_form_with_the_model_rewritten() {
        let r = stt(&[("model", "whisper"), ("response_format", "srt")], false);
        let m = stt_request(ProviderKind::Openai, &r, "whisper-large-v3").unwrap();
        assert_eq!(m.path, "/audio/transcriptions");
        assert_eq!(m.content_type, "multipart/form-data; boundary=b0");
        let again = multipart::parse(&m.content_type, Bytes::from(m.concat())).unwrap();
        assert_eq!(again.field("model"), Some("whisper-large-v3"));
        assert_eq!(again.field("response_format"), Some("srt"));
        let (ct, body) = stt_response(
            ProviderKind::Openai,
            "text/plain",
            Bytes::from_static(b"1\n"),
            &r,
        )
        .unwrap();
        assert_eq!((ct.as_str(), &body[..]), ("text/plain", &b"1\n"[..]));
    }

    #[test]
    fn workers_turbo_gets_base64_json_and_others_raw_bytes() {
        let r = stt(&[("language", "en")], true);
        let m = stt_request(
            ProviderKind::WorkersAi,
            &r,
            "@cf/openai/whisper-large-v3-turbo",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&m.concat()).unwrap();
        assert_eq!(v["audio"], crate::providers::media::b64(b"ID3audio"));
        assert_eq!(
            (v["task"].as_str(), v["language"].as_str()),
            (Some("translate"), Some("en"))
        );
        assert!(stt_request(ProviderKind::WorkersAi, &r, "@cf/openai/whisper").is_err());
        let r = stt(&[], false);
        let m = stt_request(ProviderKind::WorkersAi, &r, "@cf/openai/whisper").unwrap();
        assert_eq!(m.concat(), b"ID3audio");
    }

    #[test]
    fn gemini_inlines_audio_and_refuses_timed_formats() {
        let r = stt(&[], false);
        let m = stt_request(ProviderKind::Gemini, &r, "gemini-2.5-flash").unwrap();
        assert_eq!(m.path, "/models/gemini-2.5-flash:generateContent");
        let v: Value = serde_json::from_slice(&m.concat()).unwrap();
        assert_eq!(
            v["contents"][0]["parts"][1]["inlineData"]["mimeType"],
            "audio/mpeg"
        );
        let r = stt(&[("response_format", "vtt")], false);
        assert!(stt_request(ProviderKind::Gemini, &r, "g")
            .unwrap_err()
            .contains("vtt"));
        let answer = json!({"candidates": [{"content": {"parts": [{"text": " hello there "}]}}]});
        let r = stt(&[("response_format", "text")], false);
        let (_, b) = stt_response(
            ProviderKind::Gemini,
            "",
            Bytes::from(answer.to_string()),
            &r,
        )
        .unwrap();
        assert_eq!(&b[..], b"hello there\n");
    }

    #[test]
    fn formats_are_built_from_segments() {
        let t = Transcript {
            text: "one two".into(),
            language: Some("en".into()),
            duration: Some(3.5),
            segments: vec![(0.0, 1.25, "one".into()), (1.25, 3.5, "two".into())],
        };
        let (_, srt) = render(&t, TextFormat::Srt, false).unwrap();
        assert_eq!(
            std::str::from_utf8(&srt).unwrap(),
            "1\n00:00:00,000 --> 00:00:01,250\none\n\n2\n00:00:01,250 --> 00:00:03,500\ntwo\n\n"
        );
        let (ct, vtt) = render(&t, TextFormat::Vtt, false).unwrap();
        assert!(ct.starts_with("text/vtt"));
        assert!(std::str::from_utf8(&vtt)
            .unwrap()
            .starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\none"));
        let (_, v) = render(&t, TextFormat::VerboseJson, false).unwrap();
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(
            (v["duration"].as_f64(), v["segments"][1]["end"].as_f64()),
            (Some(3.5), Some(3.5))
        );
        let bare = Transcript {
            text: "x".into(),
            ..Transcript::default()
        };
        assert!(render(&bare, TextFormat::Srt, false)
            .unwrap_err()
            .contains("srt"));
    }

    #[test]
    fn speech_requests_and_answers() {
        let r = parse_speech(br#"{"model":"tts","input":"hi","voice":"alloy"}"#).unwrap();
        assert_eq!(r.format, "mp3");
        let m = speech_request(ProviderKind::WorkersAi, &r, "@cf/myshell-ai/melotts").unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&m.concat()).unwrap(),
            json!({"prompt": "hi", "lang": "en"})
        );
        let wav = parse_speech(br#"{"input":"hi","response_format":"wav"}"#).unwrap();
        assert!(
            speech_request(ProviderKind::WorkersAi, &wav, "@cf/myshell-ai/melotts")
                .unwrap_err()
                .contains("wav")
        );
        let o = speech_request(ProviderKind::Openai, &wav, "gpt-4o-mini-tts").unwrap();
        assert_eq!(o.path, "/audio/speech");
        let answer =
            json!({"result": {"audio": crate::providers::media::b64(b"RIFF\0\0\0\0WAVEfmt ")}});
        let (ct, audio) = speech_from_json(answer.to_string().as_bytes()).unwrap();
        assert_eq!((ct.as_str(), audio.len()), ("audio/wav", 16));
        assert!(parse_speech(br#"{"input":""}"#).is_err());
        assert!(parse_speech(br#"{"input":"x","response_format":"midi"}"#).is_err());
    }
}
