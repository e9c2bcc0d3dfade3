//! Video jobs in OpenAI's format (OpenAI's Sora and OpenAI-compatible video APIs):
//! `POST /videos` (multipart, as OpenAI documents it: `model`, `prompt`, `seconds`, `size`)
//! answers the `video` object, whose `id` is the job; `GET /videos/{id}` polls it
//! (`status` `queued` | `in_progress` | `completed` | `failed`, `progress`, `error`);
//! `GET /videos/{id}/content` is the MP4.

use crate::providers::media::{MediaRequest, Piece};
use crate::providers::videos::{json_answer, JobState, Status, VideoRequest};
use crate::providers::Videos;
use bytes::Bytes;

pub struct OpenAiVideos;

/// The multipart boundary of the forms sent upstream (never in a field: the values are a
/// model id, digits, a size and a prompt, which is checked).
const BOUNDARY: &str = "freeway-video-4b1d2c9e7f";

impl Videos for OpenAiVideos {
    fn create(
        &self,
        req: &VideoRequest,
        model_id: &str,
        seconds: u32,
        (w, h): (u32, u32),
    ) -> Result<MediaRequest, String> {
        if req.prompt.contains(BOUNDARY) {
            return Err("the prompt holds the gateway's multipart boundary".into());
        }
        let (seconds, size) = (seconds.to_string(), format!("{w}x{h}"));
        let body = crate::multipart::build(
            BOUNDARY,
            &[
                ("model", model_id),
                ("prompt", &req.prompt),
                ("seconds", &seconds),
                ("size", &size),
            ],
            None,
        );
        Ok(MediaRequest {
            path: "/videos".into(),
            content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
            body: vec![Piece::Raw(Bytes::from(body))],
            headers: Vec::new(),
        })
    }

    fn accepted(&self, body: &[u8]) -> Result<String, String> {
        let v = json_answer(body, "the provider")?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "the provider's video answer has no `id`".into())
    }

    fn status_path(&self, handle: &str) -> String {
        format!("/videos/{handle}")
    }

    fn status(&self, body: &[u8]) -> Result<JobState, String> {
        let v = json_answer(body, "the provider")?;
        let status = match v["status"].as_str() {
            Some("queued") => Status::Queued,
            Some("in_progress") => Status::InProgress,
            Some("completed") => Status::Completed,
            Some("failed") => Status::Failed,
            other => return Err(format!("the provider's video status is {other:?}")),
        };
        let error = v["error"].as_object().map(|e| {
            let text = |k: &str| e.get(k).and_then(|s| s.as_str()).unwrap_or("").to_string();
            (text("code"), text("message"))
        });
        Ok(JobState {
            status,
            progress: v["progress"].as_u64().unwrap_or(0).min(100) as u32,
            error,
            video_uri: None,
        })
    }

    fn content_location(&self, handle: &str, _state: &JobState) -> Result<String, String> {
        Ok(format!("/videos/{handle}/content"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_with_a_form_and_reads_the_video_object() {
        let req = crate::providers::videos::parse_json(br#"{"prompt":"a fox"}"#).unwrap();
        let m = OpenAiVideos.create(&req, "sora-2", 8, (1280, 720)).unwrap();
        assert_eq!(m.path, "/videos");
        let form = crate::multipart::parse(&m.content_type, m.concat().into()).unwrap();
        assert_eq!(
            ["model", "prompt", "seconds", "size"].map(|k| form.field(k).unwrap().to_string()),
            ["sora-2", "a fox", "8", "1280x720"]
        );
        assert_eq!(
            OpenAiVideos.accepted(br#"{"id":"video_1","status":"queued"}"#),
            Ok("video_1".into())
        );
        let s = OpenAiVideos
            .status(br#"{"id":"video_1","status":"failed","progress":40,"error":{"code":"moderation","message":"no"}}"#)
            .unwrap();
        assert_eq!((s.status, s.progress), (Status::Failed, 40));
        assert_eq!(s.error, Some(("moderation".into(), "no".into())));
        assert_eq!(OpenAiVideos.status_path("video_1"), "/videos/video_1");
        assert!(OpenAiVideos.status(br#"{"status":"odd"}"#).is_err());
    }
}
