//! `POST /v1/videos`, `GET /v1/videos/{id}` and `GET /v1/videos/{id}/content`: asynchronous
//! video jobs in OpenAI's shape.
//!
//! Creating a job is a model request like any other: the body is read once (JSON, or
//! multipart as the OpenAI SDK sends it), video models are planned (the requested `size` is
//! a capability, as for images) and the attempt engine runs a [`VideoCall`]: failover
//! happens only until a provider accepts the job. The accepted job gets the gateway's own id
//! (`video_` and 128 random bits) mapped, in the embedded store ([`crate::video_jobs`]), to
//! the model and the provider's handle, so polls and downloads survive a restart. They go
//! to the provider that holds the job, with the key that created it (`attempt::fetch`), and
//! only the gateway key that created a job may see it.

use super::attempt::{self, Answer, Call, Failure, Fetched, Refusal, Reply};
use super::body::read_body;
use super::ctx::RequestCtx;
use super::respond::{send_error, send_json, send_upstream_error, write_head};
use super::Gateway;
use crate::config::ModelType;
use crate::errors::{upstream_envelope, ApiError};
use crate::providers::videos::{self as formats, JobState, Status, VideoRequest};
use crate::providers::{self, Outbound};
use crate::routing::{ModelEntry, Needs};
use crate::state::State;
use crate::video_jobs::{self, VideoJob};
use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::{json, Value};

/// `POST /v1/videos`: starts a job on the first candidate that accepts it.
pub async fn create(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let Some(raw) = read_body(gw, session, ctx, state).await else {
        return;
    };
    let ctype = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed = if ctype.starts_with("multipart/form-data") {
        crate::multipart::parse(&ctype, raw)
            .map_err(|e| ApiError::invalid(format!("The multipart body is malformed: {e}.")))
            .and_then(|form| formats::parse_form(&form))
    } else {
        formats::parse_json(&raw)
    };
    let mut req = match parsed {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    // Guardrails read the prompt as a user's text, whichever shape the body had; the
    // upstream request is built from the parsed request, so a redaction holds everywhere.
    let prompt = Bytes::from(json!({ "prompt": req.prompt }).to_string());
    let shape = super::guardrails::Prompt::Image;
    let Some(prompt) = super::guardrails::prompt(state, session, ctx, prompt, shape).await else {
        return; // blocked
    };
    if let Some(p) = serde_json::from_slice::<Value>(&prompt)
        .ok()
        .and_then(|v| v["prompt"].as_str().map(str::to_string))
    {
        req.prompt = p;
    }
    ctx.requested_model = req.model.clone();
    ctx.prompt_estimate = req.prompt.len().div_ceil(4) as u32;
    let needs = Needs {
        model_type: ModelType::Video,
        prompt_tokens: ctx.prompt_estimate,
        max_output_tokens: Some(0),
        image_size: req.size,
        ..Needs::default()
    };
    let plan = match attempt::plan(state, ctx, req.model.as_deref(), &needs) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    // What each attempt reserves and its settlement charges (`cost.per_second`).
    ctx.spend.video_seconds = req.seconds;
    let call = VideoCall { req: &req };
    let Some(accepted) = attempt::run(gw, state, session, ctx, plan, &needs, &call).await else {
        return; // every candidate failed: answered
    };
    ctx.spend.header = ctx.spend.cost;
    let id = match video_jobs::new_id() {
        Ok(id) => id,
        Err(e) => return send_error(session, ctx, &ApiError::internal(e)).await,
    };
    let (w, h) = accepted.size;
    let job = VideoJob {
        id,
        model: accepted.model,
        upstream: accepted.handle,
        provider_key: accepted.key,
        key_label: ctx.key_label.clone(),
        seconds: req.seconds,
        size: format!("{w}x{h}"),
        created_at: crate::time::unix_secs(std::time::SystemTime::now()),
        completed_at: None,
    };
    let jobs = gw.videos.clone();
    let kept = {
        let job = job.clone();
        blocking(move || jobs.put(&job)).await
    };
    if let Err(e) = kept {
        log::error!("cannot keep video job {}: {e}", job.id);
        let e = ApiError::internal(format!(
            "The provider accepted the video job but the gateway could not record it ({e})."
        ));
        return send_error(session, ctx, &e).await;
    }
    let queued = JobState {
        status: Status::Queued,
        progress: 0,
        error: None,
        video_uri: None,
    };
    send_json(session, ctx, 200, object(&job, &queued)).await
}

/// `GET /v1/videos/{id}` (`content` false: the job object, polled from its provider) and
/// `GET /v1/videos/{id}/content` (the MP4 of a completed job).
pub async fn job(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    content: bool,
) {
    let path = session.req_header().uri.path().to_string();
    let id = super::endpoint::param(ctx.endpoint, &path, "id")
        .unwrap_or("")
        .to_string();
    let jobs = gw.videos.clone();
    let found = {
        let id = id.clone();
        blocking(move || jobs.get(&id)).await
    };
    let job = match found {
        // Another gateway key's job is as unknown as a job that never was.
        Ok(Some(j)) if j.key_label.is_none() || j.key_label == ctx.key_label => j,
        Ok(_) => return send_error(session, ctx, &no_such_job(&id)).await,
        Err(e) => {
            log::error!("video job store: {e}");
            let e = ApiError::internal("The video job store cannot be read.");
            return send_error(session, ctx, &e).await;
        }
    };
    ctx.requested_model = Some(job.model.clone());
    let Some(model) = state
        .catalog
        .models
        .iter()
        .find(|m| m.qualified == job.model)
    else {
        let mut e = no_such_job(&id);
        e.message = format!(
            "The video job `{id}` was made by `{}`, which is no longer configured.",
            job.model
        );
        return send_error(session, ctx, &e).await;
    };
    ctx.provider = Some(model.provider_name.clone());
    ctx.model = Some(model.id.clone());
    ctx.attempts = 1;
    let upstream = &state.upstreams[model.provider];
    // The key that created the job (another account's key would not find it).
    let key = job
        .provider_key
        .filter(|&k| k < upstream.keys.len())
        .or_else(|| upstream.pick_key().ok().flatten());
    let kind = model.provider_kind;

    let poll = match formats::status_path(kind, &job.upstream) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &ApiError::internal(e)).await,
    };
    let Some(answer) = fetch_ok(gw, state, session, ctx, model, key, &poll).await else {
        return; // answered
    };
    let st = match formats::status(kind, &answer.body) {
        Ok(s) => s,
        Err(e) => return send_error(session, ctx, &ApiError::upstream(502, e)).await,
    };
    let mut job = job;
    if st.status == Status::Completed && job.completed_at.is_none() {
        let now = crate::time::unix_secs(std::time::SystemTime::now());
        job.completed_at = Some(now);
        let (jobs, id) = (gw.videos.clone(), job.id.clone());
        if let Err(e) = blocking(move || jobs.completed(&id, now)).await {
            log::warn!("video job store: {e}");
        }
    }
    if !content {
        return send_json(session, ctx, 200, object(&job, &st)).await;
    }
    if st.status != Status::Completed {
        let mut e = ApiError::invalid(match (&st.status, &st.error) {
            (Status::Failed, Some((_, why))) => {
                format!("The video job `{id}` failed ({why}): it has no video.")
            }
            (Status::Failed, None) => format!("The video job `{id}` failed: it has no video."),
            (s, _) => format!(
                "The video job `{id}` is {} ({} %): its video can be downloaded once it is \
                 completed.",
                s.as_str(),
                st.progress
            ),
        });
        e.code = Some("video_not_ready");
        return send_error(session, ctx, &e).await;
    }
    let location = match formats::content_location(kind, &job.upstream, &st) {
        Ok(l) => l,
        Err(e) => return send_error(session, ctx, &ApiError::upstream(502, e)).await,
    };
    // Relayed as it comes: a long clip is never held whole.
    let mut video = match attempt::open(gw, state, model, key, &location, ctx).await {
        Ok(o) if (200..300).contains(&o.status) => o,
        Ok(o) => {
            let answer = o.whole(gw, state, ctx).await;
            return answer_failure(state, session, ctx, model, answer).await;
        }
        Err(f) => return answer_failure(state, session, ctx, model, Err(f)).await,
    };
    let ctype = if video.content_type.starts_with("video/") {
        video.content_type.clone()
    } else {
        "video/mp4".to_string()
    };
    let headers = [("x-content-type-options", "nosniff".to_string())];
    if !write_head(session, ctx, 200, &ctype, video.length, &headers).await {
        return video.release(gw).await; // the client left
    }
    loop {
        match video.chunk(ctx).await {
            Ok(Some(chunk)) => {
                ctx.response_bytes += chunk.len() as u64;
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    break; // the client left
                }
            }
            Ok(None) => {
                let _ = session.write_response_body(None, true).await;
                break;
            }
            Err(e) => {
                let why = format!("the video download broke: {}", attempt::describe(&e));
                log::warn!("{}: {why}", ctx.id);
                ctx.failures.push(why);
                // The client cannot be told in-band: end the connection short.
                session.set_keepalive(None);
                let _ = session.write_response_body(None, true).await;
                break;
            }
        }
    }
    video.release(gw).await
}

/// A 2xx answer of the job's provider, or `None` when its error (or the failure to reach
/// it) has been answered.
async fn fetch_ok(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    model: &ModelEntry,
    key: Option<usize>,
    path: &str,
) -> Option<Fetched> {
    match attempt::fetch(gw, state, model, key, path, ctx).await {
        Ok(f) if (200..300).contains(&f.status) => Some(f),
        other => {
            answer_failure(state, session, ctx, model, other).await;
            None
        }
    }
}

/// Answers a provider's error (in the gateway's envelope) or the failure to reach it.
async fn answer_failure(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    model: &ModelEntry,
    answer: Result<Fetched, Failure>,
) {
    match answer {
        Ok(f) => {
            let name = &state.upstreams[model.provider].name;
            let openai = providers::translator(model.provider_kind).error(f.status, &f.body, name);
            // A refused provider key is the gateway's problem, not the client's; a 2xx
            // that is not what was asked for is the provider's fault.
            let status = match f.status {
                401 | 403 | 200..=399 => 502,
                s => s,
            };
            let body = upstream_envelope(status, &model.provider_name, &openai);
            send_upstream_error(session, ctx, status, body, &[]).await
        }
        Err(failure) => {
            let why = state.secrets.scrub(&failure.to_string()).into_owned();
            let message = format!("The provider holding the video job failed: {why}");
            let e = match failure {
                Failure::Timeout(_) => ApiError::timeout(message),
                _ => ApiError::upstream(502, message),
            };
            send_error(session, ctx, &e).await
        }
    }
}

fn no_such_job(id: &str) -> ApiError {
    let mut e = ApiError::not_found("");
    e.message = format!("No video job `{id}`: it never existed, or another key made it.");
    e
}

/// OpenAI's `video` object for a job in state `st`.
fn object(job: &VideoJob, st: &JobState) -> Bytes {
    let error = st
        .error
        .as_ref()
        .map(|(code, message)| json!({"code": code, "message": message}));
    let v = json!({
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": st.status.as_str(),
        "progress": st.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at.filter(|_| st.status == Status::Completed),
        "expires_at": Value::Null,
        "seconds": job.seconds.to_string(),
        "size": job.size,
        "prompt": Value::Null,
        "remixed_from_video_id": Value::Null,
        "error": error,
    });
    Bytes::from(v.to_string())
}

/// Runs a store call off the request path.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
}

/// What a provider's acceptance of a job hands back.
struct Accepted {
    /// `provider/model`.
    model: String,
    handle: String,
    key: Option<usize>,
    size: (u32, u32),
}

/// Starting a job on one model.
struct VideoCall<'a> {
    req: &'a VideoRequest,
}

impl Call for VideoCall<'_> {
    type Out = Accepted;

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        let size = self.req.size_for(&model.sizes);
        let req = formats::create(model.provider_kind, self.req, &model.id, size)
            .map_err(Refusal::Skip)?;
        Outbound::media(req).map_err(Refusal::Final)
    }

    async fn answer(
        &self,
        reply: Reply<'_>,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(Accepted, Answer), Failure> {
        let (kind, model) = (reply.model.provider_kind, reply.model.qualified.clone());
        let size = self.req.size_for(&reply.model.sizes);
        let (_, body, answered) = reply.read_all(ctx).await?;
        let handle = formats::accepted(kind, &body).map_err(Failure::Malformed)?;
        let accepted = Accepted {
            model,
            handle,
            key: ctx.upstream_key,
            size,
        };
        Ok((accepted, answered))
    }
}
