//! Simulated video jobs, in each provider's wire format:
//! - OpenAI `POST …/videos` (multipart, as OpenAI documents it, or JSON: `model`, `prompt`,
//!   `seconds` 4 | 8 | 12, `size` one of OpenAI's four) → the `video` object; `GET
//!   …/videos/{id}` → the object, `queued`, then `in_progress` with `progress`, then
//!   `completed`; `GET …/videos/{id}/content` → the MP4 (404 until completed).
//! - Gemini Veo `POST …/models/{m}:predictLongRunning` (`instances[0].prompt`,
//!   `parameters.aspectRatio` 16:9 | 9:16, `durationSeconds` 4–8) → `{"name":
//!   "models/{m}/operations/{id}"}`; `GET …/models/{m}/operations/{id}` → the operation,
//!   `done` with `response.generateVideoResponse.generatedSamples[0].video.uri` once ready;
//!   `GET …/files/{id}:download?alt=media`, only with an `x-goog-api-key`, redirects (302)
//!   to the MP4 in "storage" on another host name (`localhost` for `127.0.0.1`), as
//!   Gemini's downloads do: `GET /_sim/video-files/{id}.mp4`, no key needed.
//!
//! A job takes [`JOB_MS`] to finish; one whose prompt holds `sim-fail-job` fails then (OpenAI:
//! `status` `failed` with an `error`; Veo: `done` with an `error`). Videos are tiny valid MP4 files ([`mp4`]): an `ftyp`
//! box first, a `moov` with the clip's duration, an `mdat` seeded by the prompt. Behaviours
//! (`fail-500`, …) apply to the call that starts a job, as for the other media.

use super::media::{misbehave, openai_failure};
use super::native::{error_body, Format};
use super::{write, write_json, SimProvider};
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// How long a simulated job takes, queued for the first fifth.
pub const JOB_MS: u64 = 800;
/// A prompt holding this makes a job that fails.
pub const FAIL: &str = "sim-fail-job";

/// A video request the simulator answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    OpenAiCreate,
    OpenAiGet(String),
    OpenAiContent(String),
    VeoCreate,
    /// The operation's id.
    VeoPoll(String),
    /// The file's id.
    VeoDownload(String),
    /// Where a Veo download redirects: the file's id.
    Stored(String),
}

/// Where the simulated storage keeps Veo's videos.
pub const STORAGE: &str = "/_sim/video-files/";

impl Kind {
    pub fn of(path: &str, method: &http::Method) -> Option<Kind> {
        let post = method == http::Method::POST;
        let get = method == http::Method::GET;
        if let Some(file) = path.strip_prefix(STORAGE).filter(|_| get) {
            return Some(Kind::Stored(file.strip_suffix(".mp4")?.to_string()));
        }
        if post && path.ends_with("/videos") {
            return Some(Kind::OpenAiCreate);
        }
        if post {
            let (_, model) = path.rsplit_once("/models/")?;
            return model
                .ends_with(":predictLongRunning")
                .then_some(Kind::VeoCreate);
        }
        if !get {
            return None;
        }
        if let Some((_, rest)) = path.rsplit_once("/videos/") {
            return Some(match rest.strip_suffix("/content") {
                Some(id) => Kind::OpenAiContent(id.to_string()),
                None if rest == "content" => return None,
                None => Kind::OpenAiGet(rest.to_string()),
            });
        }
        if path.contains("/models/") {
            let (_, op) = path.rsplit_once("/operations/")?;
            return Some(Kind::VeoPoll(op.to_string()));
        }
        let (_, file) = path.rsplit_once("/files/")?;
        Some(Kind::VeoDownload(
            file.strip_suffix(":download")?.to_string(),
        ))
    }
}

/// A job the simulator is "rendering".
#[derive(Debug, Clone)]
pub struct SimJob {
    model: String,
    prompt: String,
    seconds: u32,
    size: String,
    started: Instant,
    created_at: u64,
}

impl SimJob {
    /// (status, progress) now.
    fn stage(&self) -> (&'static str, u64) {
        let ms = self.started.elapsed().as_millis() as u64;
        if ms < JOB_MS / 5 {
            ("queued", 0)
        } else if ms < JOB_MS {
            ("in_progress", ms * 100 / JOB_MS)
        } else {
            ("completed", 100)
        }
    }

    fn done(&self) -> bool {
        self.started.elapsed() >= Duration::from_millis(JOB_MS)
    }

    /// A job asked to fail, once done.
    fn failed(&self) -> bool {
        self.done() && self.prompt.contains(FAIL)
    }

    fn openai_object(&self, id: &str) -> Value {
        let (status, progress) = self.stage();
        if self.failed() {
            return json!({
                "id": id, "object": "video", "model": self.model, "status": "failed",
                "progress": 100, "created_at": self.created_at, "completed_at": null,
                "expires_at": null, "prompt": self.prompt, "seconds": self.seconds.to_string(),
                "size": self.size, "remixed_from_video_id": null,
                "error": {"code": "moderation_blocked",
                          "message": "sim: the video was blocked by moderation"},
            });
        }
        let completed = (status == "completed").then(|| self.created_at + JOB_MS / 1000);
        json!({
            "id": id, "object": "video", "model": self.model, "status": status,
            "progress": progress, "created_at": self.created_at, "completed_at": completed,
            "expires_at": completed.map(|t| t + 3600), "prompt": self.prompt,
            "seconds": self.seconds.to_string(), "size": self.size,
            "remixed_from_video_id": null, "error": null,
        })
    }
}

/// A tiny valid MP4 (ISO base media file): `ftyp` (isom), `moov` holding an `mvhd` with
/// the clip's duration, and an `mdat` of bytes derived from `seed`.
pub fn mp4(seconds: u32, seed: &str) -> Vec<u8> {
    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }
    let ftyp = boxed(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41");
    let timescale: u32 = 1000;
    let mut mvhd = vec![0u8; 4]; // version 0, no flags
    for v in [
        0u32,
        0,
        timescale,
        seconds.saturating_mul(timescale),
        0x0001_0000,
    ] {
        mvhd.extend_from_slice(&v.to_be_bytes()); // times, timescale, duration, rate 1.0
    }
    mvhd.extend_from_slice(&[0x01, 0x00, 0, 0]); // volume 1.0, reserved
    mvhd.extend_from_slice(&[0u8; 8]);
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        mvhd.extend_from_slice(&v.to_be_bytes()); // the identity matrix
    }
    mvhd.extend_from_slice(&[0u8; 24]); // pre-defined
    mvhd.extend_from_slice(&1u32.to_be_bytes()); // next track id
    let moov = boxed(b"moov", &boxed(b"mvhd", &mvhd));
    let mdat = boxed(b"mdat", &Sha256::digest(seed.as_bytes()));
    [ftyp, moov, mdat].concat()
}

/// A random job id (OpenAI's `video_…`, Gemini's operation ids are lowercase too).
fn new_id() -> String {
    (0..24)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

impl SimProvider {
    /// Answers a video request of `kind`.
    pub(super) async fn videos(&self, session: &mut Session, kind: Kind) -> Result<()> {
        let mut body = Vec::new();
        while let Some(c) = session.read_request_body().await? {
            body.extend_from_slice(&c);
        }
        let body = Bytes::from(body);
        let path = session.req_header().uri.path().to_string();
        let veo = matches!(
            kind,
            Kind::VeoCreate | Kind::VeoPoll(_) | Kind::VeoDownload(_)
        );
        let fail = |status: u16, msg: &str| match veo {
            true => error_body(Format::Gemini, status, msg),
            false => crate::errors::envelope("invalid_request_error", None, None, msg),
        };
        match &kind {
            Kind::OpenAiCreate | Kind::VeoCreate => {
                let fields = match create_fields(session, &kind, &path, &body) {
                    Ok(f) => f,
                    Err(msg) => {
                        self.record(session, &body, "");
                        return write(session, 400, "application/json", fail(400, &msg), &[]).await;
                    }
                };
                let mut extra = serde_json::Map::new();
                extra.insert("fields".into(), json!(fields));
                let model = fields["model"].as_str().unwrap_or("").to_string();
                self.record_with(session, &body, &model, extra);
                let behavior = self.media_behavior(session, &model);
                if let Some(done) = misbehave(session, behavior, |status, msg| match veo {
                    true => error_body(Format::Gemini, status, msg),
                    false => openai_failure(status, msg),
                })
                .await
                {
                    return done;
                }
                if let Err(msg) = check(&fields, veo) {
                    return write(session, 400, "application/json", fail(400, &msg), &[]).await;
                }
                let id = new_id();
                let job = SimJob {
                    model: model.clone(),
                    prompt: fields["prompt"].as_str().unwrap_or("").to_string(),
                    seconds: fields["seconds"].as_u64().unwrap_or(4) as u32,
                    size: fields["size"].as_str().unwrap_or("720x1280").to_string(),
                    started: Instant::now(),
                    created_at: super::now(),
                };
                let answer = if veo {
                    json!({ "name": format!("models/{model}/operations/{id}") })
                } else {
                    job.openai_object(&format!("video_{id}"))
                };
                let key = if veo { id } else { format!("video_{id}") };
                self.videos.lock().insert(key, job);
                write_json(session, 200, &answer).await
            }
            Kind::OpenAiGet(id)
            | Kind::OpenAiContent(id)
            | Kind::VeoPoll(id)
            | Kind::VeoDownload(id)
            | Kind::Stored(id) => {
                self.record(session, &body, "");
                let job = self.videos.lock().get(id).cloned();
                let Some(job) = job else {
                    let msg = format!("sim: no video job {id}");
                    return write(session, 404, "application/json", fail(404, &msg), &[]).await;
                };
                let has_key = |n: &str| session.req_header().headers.get(n).is_some();
                match kind {
                    Kind::OpenAiGet(_) => write_json(session, 200, &job.openai_object(id)).await,
                    Kind::VeoPoll(_) => {
                        let name = format!("models/{}/operations/{id}", job.model);
                        let op = if job.failed() {
                            json!({"name": name, "done": true, "error": {"code": 3,
                                   "message": "sim: the video was blocked by the safety filters"}})
                        } else if job.done() {
                            let host = session
                                .req_header()
                                .headers
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("localhost")
                                .to_string();
                            let base = path.split("/models/").next().unwrap_or("");
                            let uri = format!("http://{host}{base}/files/{id}:download?alt=media");
                            json!({"name": name, "done": true, "response": {
                                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                                "generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]}}})
                        } else {
                            json!({ "name": name })
                        };
                        write_json(session, 200, &op).await
                    }
                    _ if veo && !has_key("x-goog-api-key") => {
                        let msg = "Method doesn't allow unregistered callers. Please use API Key.";
                        write(session, 403, "application/json", fail(403, msg), &[]).await
                    }
                    Kind::VeoDownload(_) => {
                        // Gemini's storage lives on another host.
                        let host = session
                            .req_header()
                            .headers
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("localhost")
                            .replace("127.0.0.1", "localhost");
                        let to = format!("http://{host}{STORAGE}{id}.mp4");
                        let empty = Bytes::new();
                        write(session, 302, "text/plain", empty, &[("location", &to)]).await
                    }
                    _ if !job.done() || job.failed() => {
                        let msg = "Video is not ready yet, check the job's status.";
                        write(session, 404, "application/json", fail(404, msg), &[]).await
                    }
                    _ => {
                        let video = Bytes::from(mp4(job.seconds, &job.prompt));
                        write(session, 200, "video/mp4", video, &[]).await
                    }
                }
            }
        }
    }
}

/// The fields of a request that starts a job, as JSON: `model`, `prompt`, `seconds`, `size`
/// (Veo's aspect ratio and duration mapped onto them).
fn create_fields(
    session: &Session,
    kind: &Kind,
    path: &str,
    body: &Bytes,
) -> Result<Value, String> {
    let ctype = session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if *kind == Kind::VeoCreate {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload: {e}"))?;
        let model = path
            .rsplit_once("/models/")
            .and_then(|(_, m)| m.split(':').next())
            .unwrap_or("");
        let p = &v["parameters"];
        let size = match p["aspectRatio"].as_str() {
            None | Some("16:9") => "1280x720",
            Some("9:16") => "720x1280",
            Some(other) => return Err(format!("Aspect ratio {other} is not supported.")),
        };
        return Ok(json!({
            "model": model,
            "prompt": v["instances"][0]["prompt"],
            "seconds": p["durationSeconds"].as_u64().unwrap_or(8),
            "size": size,
        }));
    }
    let text = |v: Option<&str>| v.map(str::to_string);
    let (model, prompt, seconds, size) = if ctype.starts_with("multipart/form-data") {
        let form =
            crate::multipart::parse(&ctype, body.clone()).map_err(|e| format!("sim: {e}"))?;
        (
            text(form.field("model")),
            text(form.field("prompt")),
            text(form.field("seconds")),
            text(form.field("size")),
        )
    } else {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("sim: bad JSON: {e}"))?;
        let s = |k: &str| match &v[k] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        (s("model"), s("prompt"), s("seconds"), s("size"))
    };
    let seconds = match seconds {
        None => 4,
        Some(s) => s.parse::<u64>().map_err(|_| {
            format!("Invalid value: '{s}'. Supported values are: '4', '8', and '12'.")
        })?,
    };
    Ok(json!({
        "model": model.unwrap_or_else(|| "sora-2".into()),
        "prompt": prompt,
        "seconds": seconds,
        "size": size.unwrap_or_else(|| "720x1280".into()),
    }))
}

/// The provider's own validation of a job's fields.
fn check(fields: &Value, veo: bool) -> Result<(), String> {
    if fields["prompt"]
        .as_str()
        .is_none_or(|p| p.trim().is_empty())
    {
        return Err(match veo {
            true => "instances[0].prompt is required.".into(),
            false => "Missing required parameter: 'prompt'.".into(),
        });
    }
    let seconds = fields["seconds"].as_u64().unwrap_or(0);
    if veo && !(4..=8).contains(&seconds) {
        return Err(format!(
            "The duration {seconds}s is out of range: durationSeconds must be from 4 to 8."
        ));
    }
    if !veo && ![4, 8, 12].contains(&seconds) {
        return Err(format!(
            "Invalid value: '{seconds}'. Supported values are: '4', '8', and '12'."
        ));
    }
    let size = fields["size"].as_str().unwrap_or("");
    if !veo && !["720x1280", "1280x720", "1024x1792", "1792x1024"].contains(&size) {
        return Err(format!(
            "Invalid value: '{size}'. Supported values are: '720x1280', '1280x720', '1024x1792', and '1792x1024'."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_paths_by_format() {
        let (get, post) = (http::Method::GET, http::Method::POST);
        assert_eq!(Kind::of("/oa/v1/videos", &post), Some(Kind::OpenAiCreate));
        assert_eq!(
            Kind::of("/oa/v1/videos/video_1", &get),
            Some(Kind::OpenAiGet("video_1".into()))
        );
        assert_eq!(
            Kind::of("/oa/v1/videos/video_1/content", &get),
            Some(Kind::OpenAiContent("video_1".into()))
        );
        assert_eq!(
            Kind::of(
                "/g/v1beta/models/veo-3.0-generate-001:predictLongRunning",
                &post
            ),
            Some(Kind::VeoCreate)
        );
        assert_eq!(
            Kind::of("/g/v1beta/models/veo-3.0-generate-001/operations/ab", &get),
            Some(Kind::VeoPoll("ab".into()))
        );
        assert_eq!(
            Kind::of("/g/v1beta/files/ab:download", &get),
            Some(Kind::VeoDownload("ab".into()))
        );
        assert_eq!(
            Kind::of("/g/v1beta/models/gemini:generateContent", &post),
            None
        );
        assert_eq!(Kind::of("/oa/v1/models", &get), None);
    }

    #[test]
    fn the_mp4_starts_with_its_ftyp_box_and_holds_the_duration() {
        let v = mp4(8, "waves");
        assert_eq!(&v[4..8], b"ftyp");
        let ftyp = u32::from_be_bytes(v[0..4].try_into().unwrap()) as usize;
        assert_eq!(&v[ftyp + 4..ftyp + 8], b"moov");
        assert_eq!(&v[ftyp + 12..ftyp + 16], b"mvhd");
        let mvhd = ftyp + 8;
        let duration = u32::from_be_bytes(v[mvhd + 24..mvhd + 28].try_into().unwrap());
        assert_eq!(duration, 8000);
        let mvhd_len = u32::from_be_bytes(v[mvhd..mvhd + 4].try_into().unwrap());
        assert_eq!(mvhd_len, 108);
    }
}
