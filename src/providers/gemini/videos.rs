//! Video jobs on Gemini's Veo models, as long-running operations:
//! `POST /models/{model}:predictLongRunning` with
//! `{"instances":[{"prompt"}],"parameters":{"aspectRatio","durationSeconds","resolution"}}`
//! answers `{"name":"models/{model}/operations/{id}"}`; `GET /{name}` polls it until
//! `"done": true`, with `response.generateVideoResponse.generatedSamples[0].video.uri` (or
//! an `error` `{code, message}`); the URI is downloaded with the key.

use crate::providers::embeddings::to_vec;
use crate::providers::media::MediaRequest;
use crate::providers::videos::{json_answer, JobState, Status, VideoRequest};
use crate::providers::Videos;
use serde_json::json;

pub struct GeminiVideos;

impl Videos for GeminiVideos {
    fn create(
        &self,
        req: &VideoRequest,
        model_id: &str,
        seconds: u32,
        (w, h): (u32, u32),
    ) -> Result<MediaRequest, String> {
        // Veo makes landscape 16:9 and portrait 9:16, at 720p or 1080p.
        let ratio = if w >= h { "16:9" } else { "9:16" };
        let resolution = if w.min(h) >= 1080 { "1080p" } else { "720p" };
        let body = json!({
            "instances": [{"prompt": req.prompt}],
            "parameters": {
                "aspectRatio": ratio,
                "durationSeconds": seconds,
                "resolution": resolution,
            },
        });
        Ok(MediaRequest::json(
            format!("/models/{model_id}:predictLongRunning"),
            to_vec(&body),
        ))
    }

    fn accepted(&self, body: &[u8]) -> Result<String, String> {
        let v = json_answer(body, "Gemini")?;
        v["name"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "Gemini's operation has no `name`".into())
    }

    fn status_path(&self, handle: &str) -> String {
        format!("/{}", handle.trim_start_matches('/'))
    }

    fn status(&self, body: &[u8]) -> Result<JobState, String> {
        let v = json_answer(body, "Gemini")?;
        if !v["done"].as_bool().unwrap_or(false) {
            return Ok(JobState {
                status: Status::InProgress,
                progress: 50,
                error: None,
                video_uri: None,
            });
        }
        if let Some(e) = v["error"].as_object() {
            let code = e.get("code").map(|c| c.to_string()).unwrap_or_default();
            let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            return Ok(failed(code, message.to_string()));
        }
        let answer = &v["response"]["generateVideoResponse"];
        let uri = answer["generatedSamples"][0]["video"]["uri"].as_str();
        Ok(match uri {
            Some(uri) => JobState {
                status: Status::Completed,
                progress: 100,
                error: None,
                video_uri: Some(uri.to_string()),
            },
            // Veo's safety filters answer done without a sample.
            None => {
                let why = answer["raiMediaFilteredReasons"][0]
                    .as_str()
                    .unwrap_or("Gemini made no video");
                failed("content_filtered".into(), why.to_string())
            }
        })
    }

    fn content_location(&self, _handle: &str, state: &JobState) -> Result<String, String> {
        state
            .video_uri
            .clone()
            .ok_or_else(|| "Gemini named no video for the operation".into())
    }
}

fn failed(code: String, message: String) -> JobState {
    JobState {
        status: Status::Failed,
        progress: 100,
        error: Some((code, message)),
        video_uri: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn starts_an_operation_and_reads_its_sample() {
        let req = crate::providers::videos::parse_json(br#"{"prompt":"waves"}"#).unwrap();
        let m = GeminiVideos
            .create(&req, "veo-3.0-generate-001", 8, (1280, 720))
            .unwrap();
        assert_eq!(m.path, "/models/veo-3.0-generate-001:predictLongRunning");
        let v: Value = serde_json::from_slice(&m.concat()).unwrap();
        assert_eq!(
            v,
            json!({"instances": [{"prompt": "waves"}],
                   "parameters": {"aspectRatio": "16:9", "durationSeconds": 8,
                                  "resolution": "720p"}})
        );
        let name = "models/veo-3.0-generate-001/operations/op1";
        let accepted = GeminiVideos.accepted(json!({ "name": name }).to_string().as_bytes());
        assert_eq!(accepted.as_deref(), Ok(name));
        assert_eq!(GeminiVideos.status_path(name), format!("/{name}"));
        let pending = GeminiVideos.status(br#"{"name":"x"}"#).unwrap();
        assert_eq!(pending.status, Status::InProgress);
        let done = json!({"name": name, "done": true, "response": {"generateVideoResponse":
            {"generatedSamples": [{"video": {"uri": "https://g/v1beta/files/f:download?alt=media"}}]}}});
        let s = GeminiVideos.status(done.to_string().as_bytes()).unwrap();
        assert_eq!(s.status, Status::Completed);
        assert_eq!(
            GeminiVideos.content_location(name, &s).unwrap(),
            "https://g/v1beta/files/f:download?alt=media"
        );
        let err = json!({"name": name, "done": true, "error": {"code": 3, "message": "bad"}});
        let f = GeminiVideos.status(err.to_string().as_bytes()).unwrap();
        assert_eq!(f.error, Some(("3".into(), "bad".into())));
    }
}
