//! `POST /v1/videos` and its jobs: the client's request parsed once (OpenAI's shape, JSON or
//! multipart as the OpenAI SDK sends it), handed to the provider's format
//! (`<kind>/videos.rs`, see [`Videos`](super::Videos)), whose answers are read into a
//! [`JobState`] the endpoint renders as OpenAI's `video` object.

use super::format;
use super::media::{json_body, model_field, MediaRequest};
use crate::config::{parse_size, ProviderKind};
use crate::errors::ApiError;
use crate::multipart::Form;
use serde_json::Value;

/// Seconds of video asked for when a request names none (OpenAI's default).
pub const DEFAULT_SECONDS: u32 = 4;
/// The size asked for when neither the request nor the model names one (OpenAI's default).
pub const DEFAULT_SIZE: (u32, u32) = (720, 1280);
/// The longest clip a request may ask for.
pub const MAX_SECONDS: u32 = 60;

/// The client's video request, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoRequest {
    pub model: Option<String>,
    pub prompt: String,
    pub seconds: u32,
    /// `size`, if the request names one.
    pub size: Option<(u32, u32)>,
}

impl VideoRequest {
    /// The size to send to a model taking `sizes`: the one asked for, else the model's
    /// first, else OpenAI's default.
    pub fn size_for(&self, sizes: &[(u32, u32)]) -> (u32, u32) {
        self.size
            .or_else(|| sizes.first().copied())
            .unwrap_or(DEFAULT_SIZE)
    }
}

/// A JSON body (`{"model","prompt","seconds","size"}`; `seconds` a string or a number).
pub fn parse_json(raw: &[u8]) -> Result<VideoRequest, ApiError> {
    let body = json_body(raw, "{\"model\": …, \"prompt\": …}")?;
    let model = model_field(&body)?;
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if name == "seconds" => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::invalid(format!("`{name}` must be a string."))),
        }
    };
    build(model, text("prompt")?, text("seconds")?, text("size")?)
}

/// A multipart body, as the OpenAI SDK sends `client.videos.create(...)`.
pub fn parse_form(form: &Form) -> Result<VideoRequest, ApiError> {
    let field = |name: &str| form.field(name).map(str::to_string);
    build(
        field("model").filter(|m| !m.is_empty()),
        field("prompt"),
        field("seconds"),
        field("size"),
    )
}

fn build(
    model: Option<String>,
    prompt: Option<String>,
    seconds: Option<String>,
    size: Option<String>,
) -> Result<VideoRequest, ApiError> {
    let prompt = prompt.filter(|p| !p.trim().is_empty()).ok_or_else(|| {
        ApiError::invalid_param(
            "prompt",
            "`prompt` is required: a non-empty string describing the video.",
        )
    })?;
    let seconds = match seconds {
        None => DEFAULT_SECONDS,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_SECONDS).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "seconds",
                    format!("`seconds` must be a whole number from 1 to {MAX_SECONDS}, not `{s}`."),
                )
            })?,
    };
    let size = match size {
        None => None,
        Some(s) => Some(parse_size(&s).ok_or_else(|| {
            ApiError::invalid_param(
                "size",
                format!("`size` must be WIDTHxHEIGHT (like \"1280x720\"), not `{s}`."),
            )
        })?),
    };
    Ok(VideoRequest {
        model,
        prompt,
        seconds,
        size,
    })
}

/// Where a job stands, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

/// A job as its provider reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub status: Status,
    /// Percent done.
    pub progress: u32,
    /// Why it failed: (code, message).
    pub error: Option<(String, String)>,
    /// Where the finished video is, when the provider names it (Gemini's file URI).
    pub video_uri: Option<String>,
}

fn videos_of(kind: ProviderKind) -> Result<&'static dyn super::Videos, String> {
    format(kind)
        .videos
        .ok_or_else(|| format!("`{}` has no video generation API", kind.as_str()))
}

/// The native request that starts a job, or why this provider cannot serve it (the
/// candidate is skipped).
pub fn create(
    kind: ProviderKind,
    req: &VideoRequest,
    model_id: &str,
    size: (u32, u32),
) -> Result<MediaRequest, String> {
    videos_of(kind)?.create(req, model_id, req.seconds, size)
}

/// The provider's handle of the job it accepted.
pub fn accepted(kind: ProviderKind, body: &[u8]) -> Result<String, String> {
    let handle = videos_of(kind)?.accepted(body)?;
    if handle.is_empty() {
        return Err("the provider accepted the job without naming it".into());
    }
    Ok(handle)
}

/// The path that polls job `handle`.
pub fn status_path(kind: ProviderKind, handle: &str) -> Result<String, String> {
    Ok(videos_of(kind)?.status_path(handle))
}

/// A poll's answer → the job's state.
pub fn status(kind: ProviderKind, body: &[u8]) -> Result<JobState, String> {
    videos_of(kind)?.status(body)
}

/// Where a completed job's video is.
pub fn content_location(
    kind: ProviderKind,
    handle: &str,
    state: &JobState,
) -> Result<String, String> {
    videos_of(kind)?.content_location(handle, state)
}

/// A JSON answer of a video API.
pub(crate) fn json_answer(body: &[u8], who: &str) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("{who}'s video answer is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_forms_and_refuses_bad_fields_by_name() {
        let r = parse_json(br#"{"model":"m","prompt":"a cat","seconds":"8","size":"1280x720"}"#)
            .unwrap();
        assert_eq!(
            r,
            VideoRequest {
                model: Some("m".into()),
                prompt: "a cat".into(),
                seconds: 8,
                size: Some((1280, 720)),
            }
        );
        let n = parse_json(br#"{"prompt":"x","seconds":6}"#).unwrap();
        assert_eq!((n.seconds, n.size, n.model.as_deref()), (6, None, None));
        assert_eq!(n.size_for(&[]), DEFAULT_SIZE);
        assert_eq!(n.size_for(&[(1280, 720)]), (1280, 720));
        assert_eq!(parse_json(br#"{"prompt":"x"}"#).unwrap().seconds, 4);
        for (bad, param) in [
            (r#"{"prompt":""}"#, "prompt"),
            (r#"{"model":"m"}"#, "prompt"),
            (r#"{"prompt":"x","seconds":"0"}"#, "seconds"),
            (r#"{"prompt":"x","seconds":"long"}"#, "seconds"),
            (r#"{"prompt":"x","size":"big"}"#, "size"),
        ] {
            let e = parse_json(bad.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.param), (400, Some(param)), "{bad}");
        }
        let body = crate::multipart::build(
            "B",
            &[("prompt", "a fox"), ("model", "sora-2"), ("seconds", "4")],
            None,
        );
        let form = crate::multipart::parse("multipart/form-data; boundary=B", body.into()).unwrap();
        let f = parse_form(&form).unwrap();
        assert_eq!(
            (f.prompt.as_str(), f.model.as_deref(), f.seconds),
            ("a fox", Some("sora-2"), 4)
        );
    }
}
