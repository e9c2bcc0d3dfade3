//! The media endpoints: `POST /v1/embeddings`, `/v1/audio/transcriptions`,
//! `/v1/audio/translations`, `/v1/audio/speech` and freeway's own
//! `/v1/audio/speech-to-speech`.
//!
//! Each reads the body once (an upload is scanned as it arrives, see `multipart`), plans
//! candidates of the model type it needs with the same router as chat, and runs the same
//! kind of attempt loop: send to a candidate, fail over on 429/5xx/timeouts while nothing
//! has reached the client, report health and daily counts. Upload bodies are sent as pieces
//! of the one client buffer, so failover never needs a second copy.

use super::chat::{fallback_auto, header_str, metadata, record_failure};
use super::ctx::RequestCtx;
use super::relay::{
    answer_exhausted, describe, is_retryable_status, is_timeout, read_capped, read_chunk,
    retry_hint, Failure, Timeouts,
};
use super::respond::{gateway_headers, send, send_error};
use super::Gateway;
use crate::config::ModelType;
use crate::errors::ApiError;
use crate::multipart::{self, Form};
use crate::providers::audio::{self, SpeechRequest, SttRequest, TextFormat};
use crate::providers::embeddings;
use crate::providers::media::{MediaRequest, Piece};
use crate::providers::{self, Upstream, UpstreamRequest};
use crate::request::parse_chat;
use crate::routing::health::Report;
use crate::routing::{Ask, ModelEntry, Needs};
use crate::state::State;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};

/// The most of an upstream media answer held in memory (transcripts, embeddings, MP3s in
/// JSON).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of a transcript or reply carried in a speech-to-speech header.
const MAX_HEADER_TEXT: usize = 2000;

/// Which media endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Embeddings,
    Transcriptions,
    Translations,
    Speech,
    SpeechToSpeech,
}

pub async fn handle(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    media: Media,
) {
    match media {
        Media::Embeddings => embeddings_endpoint(gw, state, session, ctx).await,
        Media::Transcriptions => transcription_endpoint(gw, state, session, ctx, false).await,
        Media::Translations => transcription_endpoint(gw, state, session, ctx, true).await,
        Media::Speech => speech_endpoint(gw, state, session, ctx).await,
        Media::SpeechToSpeech => speech_to_speech(gw, state, session, ctx).await,
    }
}

// ───────────────────────────── endpoints ─────────────────────────────

async fn embeddings_endpoint(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
) {
    let raw = match super::chat::read_body(session, state.config.server.max_body_bytes, None).await
    {
        Ok(b) => b,
        Err(e) => return refuse_unread(session, ctx, &e).await,
    };
    let req = match embeddings::parse(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    // The vector space the request is bound to, when falling back was possible at all (a
    // pinned model without `x-gateway-fallback: auto` never falls back).
    let pinned = req
        .model
        .as_deref()
        .is_some_and(|n| state.catalog.models.iter().any(|m| m.qualified == n));
    let space = state
        .catalog
        .embedding_space(req.model.as_deref())
        .filter(|_| !pinned || fallback_auto(session))
        .map(str::to_string);
    let plan = match plan(state, session, req.model.as_deref(), ModelType::Embedding) {
        Ok(p) => p,
        Err(e) if e.status == 503 => {
            let e = space.map_or(e.clone(), |s| space_refusal(state, &s, &e.message));
            return send_error(session, ctx, &e).await;
        }
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let build = |m: &ModelEntry| embeddings::request(m.provider_kind, &req, &m.id);
    let capture = |m: &ModelEntry, _ctype: &str, body: Bytes| {
        embeddings::response(m.provider_kind, &body, &req, &m.id)
            .map(|(b, _usage)| ("application/json".to_string(), Bytes::from(b)))
    };
    let stage = Stage {
        build: &build,
        finish: Finish::Capture(&capture),
    };
    match run(gw, state, session, ctx, &plan, &stage).await {
        End::Captured { ctype, body, .. } => send(session, ctx, 200, &ctype, body, &[]).await,
        End::Answered => {}
        End::Exhausted(failures) => {
            // A fallback outside the vector space would have been possible: say why not.
            let other_spaces = space
                .as_deref()
                .is_some_and(|s| !other_spaces(state, s).is_empty());
            match space.filter(|_| other_spaces) {
                Some(s) => {
                    let summary = ctx.failures.join("; ");
                    let mut e = space_refusal(state, &s, &summary);
                    e.retry_after = min_retry_after(&failures);
                    send_error(session, ctx, &e).await
                }
                None => answer_exhausted(session, ctx, failures).await,
            }
        }
        End::Refused(e) => send_error(session, ctx, &e).await,
    }
}

async fn transcription_endpoint(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    translate: bool,
) {
    let form = match read_form(session, state).await {
        Ok(f) => f,
        Err(e) => return refuse_unread(session, ctx, &e).await,
    };
    let req = match audio::parse_stt(form, translate) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    if let Some((ctype, body)) = transcribe(gw, state, session, ctx, &req).await {
        send(session, ctx, 200, &ctype, body, &[]).await
    }
}

/// Runs speech-to-text; `None` when an error was already answered.
async fn transcribe(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &SttRequest,
) -> Option<(String, Bytes)> {
    let plan = match plan(
        state,
        session,
        req.model.as_deref(),
        ModelType::Transcription,
    ) {
        Ok(p) => p,
        Err(e) => {
            send_error(session, ctx, &e).await;
            return None;
        }
    };
    let build = |m: &ModelEntry| audio::stt_request(m.provider_kind, req, &m.id);
    let capture = |m: &ModelEntry, ctype: &str, body: Bytes| {
        audio::stt_response(m.provider_kind, ctype, body, req)
    };
    let stage = Stage {
        build: &build,
        finish: Finish::Capture(&capture),
    };
    let end = run(gw, state, session, ctx, &plan, &stage).await;
    finish_capture(session, ctx, end).await
}

async fn speech_endpoint(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let raw = match super::chat::read_body(session, state.config.server.max_body_bytes, None).await
    {
        Ok(b) => b,
        Err(e) => return refuse_unread(session, ctx, &e).await,
    };
    let req = match audio::parse_speech(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    speak(gw, state, session, ctx, &req, Vec::new()).await
}

/// Runs text-to-speech, streaming the audio to the client.
async fn speak(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &SpeechRequest,
    extra: Vec<(&'static str, String)>,
) {
    let plan = match plan(state, session, req.model.as_deref(), ModelType::Speech) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let build = |m: &ModelEntry| audio::speech_request(m.provider_kind, req, &m.id);
    let stage = Stage {
        build: &build,
        finish: Finish::StreamAudio(extra),
    };
    match run(gw, state, session, ctx, &plan, &stage).await {
        End::Captured { .. } | End::Answered => {}
        End::Exhausted(failures) => answer_exhausted(session, ctx, failures).await,
        End::Refused(e) => send_error(session, ctx, &e).await,
    }
}

/// `POST /v1/audio/speech-to-speech`: audio in → transcript → chat answer → audio out.
///
/// Form fields: `file` (the audio), `model` (the chat model, default `auto`),
/// `transcription_model` and `speech_model` (default `auto`), `voice`, `response_format`
/// (of the audio answer, default mp3), `instructions` (a system prompt), `language`.
/// The answer is the audio; `x-gateway-transcript` and `x-gateway-reply-text` carry the two
/// texts, URL-encoded.
async fn speech_to_speech(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
) {
    let form = match read_form(session, state).await {
        Ok(f) => f,
        Err(e) => return refuse_unread(session, ctx, &e).await,
    };
    let field = |name: &str| {
        form.field(name)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let chat_model = field("model");
    let speech_model = field("speech_model");
    let voice = field("voice");
    let instructions = field("instructions");
    let audio_format = field("response_format").unwrap_or_else(|| "mp3".into());
    let mut stt = match audio::parse_stt(form.clone(), false) {
        Ok(r) => r,
        Err(e) if e.param == Some("response_format") => {
            // `response_format` is the audio's here; the transcript is always JSON.
            match audio::parse_stt(strip_format(&form), false) {
                Ok(r) => r,
                Err(e) => return send_error(session, ctx, &e).await,
            }
        }
        Err(e) => return send_error(session, ctx, &e).await,
    };
    stt.model = field("transcription_model");
    stt.format = TextFormat::Json;
    let mut only = vec![("response_format".to_string(), "json".to_string())];
    if let Some(l) = &stt.language {
        only.push(("language".into(), l.clone()));
    }
    stt.only_fields = Some(only);

    // 1. Speech to text.
    let Some((_, body)) = transcribe(gw, state, session, ctx, &stt).await else {
        return;
    };
    let transcript = match serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_string))
    {
        Some(t) => t,
        None => {
            let e = ApiError::upstream(502, "The transcription answer had no `text`.");
            return send_error(session, ctx, &e).await;
        }
    };
    let stt_served = ctx.qualified();

    // 2. The chat answer, routed like any chat request.
    let mut messages = Vec::new();
    if let Some(i) = &instructions {
        messages.push(serde_json::json!({"role": "system", "content": i}));
    }
    messages.push(serde_json::json!({"role": "user", "content": transcript}));
    let chat_body = serde_json::json!({
        "model": chat_model.as_deref().unwrap_or("auto"),
        "messages": messages,
        "stream": false,
    })
    .to_string();
    let Some(reply) = chat_text(gw, state, session, ctx, chat_body.as_bytes()).await else {
        return;
    };
    let chat_served = ctx.qualified();

    // 3. Text to speech, streamed to the client with both texts in headers.
    let speech = audio::speech_from_text(
        speech_model.as_deref(),
        &reply,
        voice.as_deref(),
        &audio_format,
    );
    let extra = vec![
        ("x-gateway-transcript", header_text(&transcript)),
        ("x-gateway-reply-text", header_text(&reply)),
        ("x-gateway-transcription-model", stt_served),
        ("x-gateway-chat-model", chat_served),
    ];
    speak(gw, state, session, ctx, &speech, extra).await
}

/// The form without its `response_format` field (speech-to-speech uses it for audio).
fn strip_format(form: &Form) -> Form {
    Form {
        parts: form
            .parts
            .iter()
            .filter(|p| p.name != "response_format")
            .cloned()
            .collect(),
        ..form.clone()
    }
}

/// A chat completion captured instead of relayed: its message text.
async fn chat_text(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    raw: &[u8],
) -> Option<String> {
    let req = match parse_chat(raw) {
        Ok(r) => r,
        Err(e) => {
            send_error(session, ctx, &e).await;
            return None;
        }
    };
    let meta = metadata(session).ok().flatten();
    let ask = Ask {
        model: req.model.as_deref(),
        needs: &req.needs,
        fallback_auto: fallback_auto(session),
        metadata: meta.as_ref(),
        max_attempts: state.config.server.max_attempts,
    };
    let plan = match state
        .router
        .plan(&state.catalog, &state.live(), &ask, Instant::now())
    {
        Ok(p) => p,
        Err(e) => {
            send_error(session, ctx, &e).await;
            return None;
        }
    };
    let build = |m: &ModelEntry| {
        let t = providers::translator(m.provider_kind);
        let u = t.chat_request(&req, raw, &m.id).map_err(|e| e.message)?;
        Ok(MediaRequest {
            path: u.path,
            content_type: "application/json".into(),
            body: vec![Piece::Raw(u.body)],
            headers: u.headers,
        })
    };
    let capture = |m: &ModelEntry, _ctype: &str, body: Bytes| {
        let t = providers::translator(m.provider_kind).chat_response(body, &m.id)?;
        let v: serde_json::Value = serde_json::from_slice(&t.body)
            .map_err(|e| format!("the chat answer is not JSON: {e}"))?;
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or("the chat answer has no message text")?;
        Ok(("text/plain".to_string(), Bytes::from(text.to_string())))
    };
    let stage = Stage {
        build: &build,
        finish: Finish::Capture(&capture),
    };
    let end = run(gw, state, session, ctx, &plan, &stage).await;
    let (_, body) = finish_capture(session, ctx, end).await?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

// ───────────────────────────── routing ─────────────────────────────

fn plan(
    state: &State,
    session: &Session,
    model: Option<&str>,
    model_type: ModelType,
) -> Result<Vec<usize>, ApiError> {
    let metadata = metadata(session)?;
    let needs = Needs {
        model_type,
        ..Needs::default()
    };
    let ask = Ask {
        model,
        needs: &needs,
        fallback_auto: fallback_auto(session),
        metadata: metadata.as_ref(),
        max_attempts: state.config.server.max_attempts,
    };
    state
        .router
        .plan(&state.catalog, &state.live(), &ask, Instant::now())
}

/// Embedding models outside `space` that could have served: `provider/model` (space).
fn other_spaces(state: &State, space: &str) -> Vec<String> {
    state
        .catalog
        .models
        .iter()
        .filter(|m| {
            m.model_type == ModelType::Embedding && m.space != space && m.unavailable.is_none()
        })
        .map(|m| format!("`{}` (vector space `{}`)", m.qualified, m.space))
        .collect()
}

/// The 503 for an embeddings request whose vector space has no model left.
fn space_refusal(state: &State, space: &str, why: &str) -> ApiError {
    let others = other_spaces(state, space);
    let mut msg = format!(
        "No embedding model in the vector space `{space}` can answer now: {}.",
        why.trim_end_matches('.')
    );
    if !others.is_empty() {
        msg.push_str(&format!(
            " Not falling back to {}: their vectors are not comparable with `{space}` vectors. \
             Retry later, or mark models that produce the same vectors with `vector_space = \"{space}\"`.",
            others.join(", ")
        ));
    }
    ApiError::no_capacity(msg)
}

fn min_retry_after(failures: &[(String, Failure)]) -> Option<u64> {
    failures
        .iter()
        .filter_map(|(_, f)| match f {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        })
        .min()
        .map(|d| d.as_secs().max(1))
}

// ───────────────────────────── the attempt loop ─────────────────────────────

/// What a successful upstream answer becomes.
enum Finish<'a> {
    /// Read whole and translated: `(model, upstream content type, body)` → `(type, body)`.
    Capture(&'a CaptureFn<'a>),
    /// Audio streamed to the client as it arrives, with these extra headers.
    StreamAudio(Vec<(&'static str, String)>),
}

type BuildFn<'a> = dyn Fn(&ModelEntry) -> Result<MediaRequest, String> + Sync + 'a;
type CaptureFn<'a> =
    dyn Fn(&ModelEntry, &str, Bytes) -> Result<(String, Bytes), String> + Sync + 'a;

/// One routed step of a media request.
struct Stage<'a> {
    build: &'a BuildFn<'a>,
    finish: Finish<'a>,
}

/// How a stage ended.
enum End {
    /// Captured (nothing sent to the client yet).
    Captured { ctype: String, body: Bytes },
    /// The client has its answer (streamed audio, or a final upstream client error).
    Answered,
    /// Every candidate failed.
    Exhausted(Vec<(String, Failure)>),
    /// No candidate could take the request (e.g. a response format none supports).
    Refused(ApiError),
}

/// Sends a captured answer's error cases to the client; passes the capture on.
async fn finish_capture(
    session: &mut Session,
    ctx: &mut RequestCtx,
    end: End,
) -> Option<(String, Bytes)> {
    match end {
        End::Captured { ctype, body } => Some((ctype, body)),
        End::Answered => None,
        End::Exhausted(failures) => {
            answer_exhausted(session, ctx, failures).await;
            None
        }
        End::Refused(e) => {
            send_error(session, ctx, &e).await;
            None
        }
    }
}

/// The attempt loop over `plan`, as for chat: health reports, daily counts, failover while
/// nothing has reached the client.
async fn run(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    plan: &[usize],
    stage: &Stage<'_>,
) -> End {
    let timeouts = timeouts(state, session);
    let mut failures = Vec::new();
    let mut refusals = Vec::new();
    // As for chat: a model whose key failed comes again with another key of the pool.
    let mut queue: std::collections::VecDeque<usize> = plan.iter().copied().collect();
    while let Some(idx) = queue.pop_front() {
        let model = &state.catalog.models[idx];
        let live = &state.models[idx];
        let request = match (stage.build)(model) {
            Ok(r) => r,
            Err(why) => {
                refusals.push(format!("`{}`: {why}", model.qualified));
                continue;
            }
        };
        let Some(_slot) = super::chat::claim(state, idx, ctx) else {
            continue;
        };
        let upstream = &state.upstreams[model.provider];
        let started = Instant::now();
        let outcome = attempt(gw, upstream, model, &request, timeouts, stage, session, ctx).await;
        match outcome {
            Attempt::Done(end) => {
                live.count_request();
                live.report(&Report::Success {
                    latency: started.elapsed(),
                    streamed: false,
                });
                return end;
            }
            Attempt::ClientError(status, body) => {
                live.count_request();
                live.report(&Report::ClientError);
                send(session, ctx, status, "application/json", body, &[]).await;
                return End::Answered;
            }
            Attempt::Broken(why) => {
                live.count_request();
                live.report(&Report::Failed { reason: why });
                return End::Answered;
            }
            Attempt::Retry(failure) => {
                log::warn!("{}: {} failed: {failure}", ctx.id, model.qualified);
                if record_failure(state, idx, ctx.upstream_key, &failure) {
                    queue.push_front(idx);
                }
                ctx.failures.push(format!("{}: {failure}", model.qualified));
                failures.push((model.provider_name.clone(), failure));
            }
        }
    }
    if failures.is_empty() {
        if !refusals.is_empty() {
            let mut e = ApiError::invalid(format!(
                "No candidate model can serve this request as asked: {}.",
                refusals.join("; ")
            ));
            e.code = Some("model_not_capable");
            return End::Refused(e);
        }
        return End::Refused(ApiError::no_capacity(format!(
            "No capable model can serve this request now: {}.",
            ctx.failures.join("; ")
        )));
    }
    for r in refusals {
        ctx.failures.push(r);
    }
    End::Exhausted(failures)
}

enum Attempt {
    Done(End),
    /// A final client error from the provider (400, 404, 413, 422…): passed through.
    ClientError(u16, Bytes),
    /// Audio broke off after it started reaching the client.
    Broken(String),
    Retry(Failure),
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Gateway,
    upstream: &Upstream,
    model: &ModelEntry,
    request: &MediaRequest,
    timeouts: Timeouts,
    stage: &Stage<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Attempt {
    let peer = match upstream.peer().await {
        Ok(p) => p,
        Err(e) => return Attempt::Retry(Failure::Connect(e)),
    };
    let header = match request_header(upstream, request, ctx.upstream_key) {
        Ok(h) => h,
        Err(e) => return Attempt::Retry(Failure::Connect(describe(&e))),
    };
    let started = Instant::now();
    let sent = send_request(gw, &peer, header, request, timeouts).await;
    ctx.upstream_wait += started.elapsed();
    let mut http = match sent {
        Ok(h) => h,
        Err(f) => return Attempt::Retry(f),
    };
    let Some(head) = http.response_header() else {
        return Attempt::Retry(Failure::Connect("no response header".into()));
    };
    let status = head.status.as_u16();
    let ctype = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let length = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let retry_after = retry_hint(&head.headers);
    http.set_read_timeout(Some(timeouts.idle));
    let translator = providers::translator(model.provider_kind);

    if is_retryable_status(status) || !(200..300).contains(&status) {
        let body = read_capped(&mut http, MAX_ERROR_BODY, ctx)
            .await
            .unwrap_or_default();
        let body = translator.error(status, &body, &upstream.name);
        if is_retryable_status(status) {
            return Attempt::Retry(Failure::Status {
                status,
                body,
                retry_after,
            });
        }
        return Attempt::ClientError(status, body);
    }

    match &stage.finish {
        Finish::Capture(capture) => {
            let body = match read_capped(&mut http, MAX_ANSWER, ctx).await {
                Ok(b) => b,
                Err(f) => return Attempt::Retry(f),
            };
            release(gw, http, &peer).await;
            match capture(model, &ctype, body) {
                Ok((ctype, body)) => Attempt::Done(End::Captured { ctype, body }),
                Err(e) => Attempt::Retry(Failure::Malformed(e)),
            }
        }
        Finish::StreamAudio(extra) => {
            if ctype.starts_with("application/json") {
                // MeloTTS and friends: base64 audio inside JSON. Anything else (audio bytes,
                // `stream_format: "sse"` events) is relayed as it arrives.
                let body = match read_capped(&mut http, MAX_ANSWER, ctx).await {
                    Ok(b) => b,
                    Err(f) => return Attempt::Retry(f),
                };
                release(gw, http, &peer).await;
                return match audio::speech_from_json(&body) {
                    Ok((ctype, audio)) => {
                        send(session, ctx, 200, &ctype, audio, extra).await;
                        Attempt::Done(End::Answered)
                    }
                    Err(e) => Attempt::Retry(Failure::Malformed(e)),
                };
            }
            stream_audio(
                gw, http, &peer, session, ctx, &ctype, length, extra, timeouts,
            )
            .await
        }
    }
}

/// Relays audio as it arrives. The client's headers wait for the first chunk, so a provider
/// that answers 200 and dies at once is still failed over.
#[allow(clippy::too_many_arguments)]
async fn stream_audio(
    gw: &Gateway,
    mut http: HttpSession,
    peer: &HttpPeer,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ctype: &str,
    length: Option<u64>,
    extra: &[(&'static str, String)],
    timeouts: Timeouts,
) -> Attempt {
    let first = match read_chunk(&mut http, ctx).await {
        Ok(Some(c)) => c,
        Ok(None) => return Attempt::Retry(Failure::Malformed("the audio answer was empty".into())),
        Err(e) if is_timeout(&e) => {
            return Attempt::Retry(Failure::Timeout(format!(
                "no audio within {} ms",
                timeouts.idle.as_millis()
            )))
        }
        Err(e) => return Attempt::Retry(Failure::Connect(describe(&e))),
    };
    ctx.status = 200;
    let Ok(mut resp) = ResponseHeader::build(200, Some(8 + extra.len())) else {
        return Attempt::Retry(Failure::Connect("could not build the response head".into()));
    };
    let ctype = if ctype == "application/octet-stream" {
        audio::sniff_audio(&first)
    } else {
        ctype
    };
    let _ = resp.insert_header(http::header::CONTENT_TYPE, ctype);
    match length {
        Some(n) => {
            let _ = resp.insert_header(http::header::CONTENT_LENGTH, n);
        }
        None => {
            let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
    }
    for (k, v) in extra {
        let _ = resp.insert_header(*k, v.as_str());
    }
    gateway_headers(&mut resp, ctx);
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Attempt::Done(End::Answered);
    }
    let mut chunk = first;
    loop {
        if session
            .write_response_body(Some(chunk), false)
            .await
            .is_err()
        {
            return Attempt::Done(End::Answered); // the client left
        }
        match read_chunk(&mut http, ctx).await {
            Ok(Some(c)) => chunk = c,
            Ok(None) => break,
            Err(e) => {
                let why = format!("the audio stream broke: {}", describe(&e));
                log::warn!("{}: {why}", ctx.id);
                ctx.failures.push(why.clone());
                // The client cannot be told in-band: end the connection short.
                session.set_keepalive(None);
                let _ = session.write_response_body(None, true).await;
                return Attempt::Broken(why);
            }
        }
    }
    let _ = session.write_response_body(None, true).await;
    release(gw, http, peer).await;
    Attempt::Done(End::Answered)
}

fn request_header(
    upstream: &Upstream,
    req: &MediaRequest,
    key: Option<usize>,
) -> pingora::Result<RequestHeader> {
    let shell = UpstreamRequest {
        path: req.path.clone(),
        body: Bytes::new(),
        headers: req.headers.clone(),
    };
    let mut h = upstream.request_header(&shell, false, key)?;
    h.insert_header(http::header::CONTENT_TYPE, req.content_type.as_str())?;
    h.insert_header(http::header::CONTENT_LENGTH, req.len())?;
    h.insert_header(http::header::ACCEPT, "*/*")?;
    Ok(h)
}

/// Connects (retrying once on a stale pooled connection), sends the head and the body
/// pieces, and reads the response head.
async fn send_request(
    gw: &Gateway,
    peer: &HttpPeer,
    header: RequestHeader,
    req: &MediaRequest,
    timeouts: Timeouts,
) -> Result<HttpSession, Failure> {
    let mut stale_retries = 0;
    loop {
        let (mut http, reused) = gw
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| Failure::Connect(describe(&e)))?;
        http.set_read_timeout(Some(timeouts.first_byte));
        let written = async {
            http.write_request_header(Box::new(header.clone())).await?;
            for piece in &req.body {
                for chunk in piece.chunks() {
                    if !chunk.is_empty() {
                        http.write_request_body(chunk, false).await?;
                    }
                }
            }
            http.finish_request_body().await?;
            http.read_response_header().await
        }
        .await;
        match written {
            Ok(()) => return Ok(http),
            Err(e) if reused && !is_timeout(&e) && stale_retries < 2 => stale_retries += 1,
            Err(e) if is_timeout(&e) => {
                return Err(Failure::Timeout(format!(
                    "no response within {} ms",
                    timeouts.first_byte.as_millis()
                )))
            }
            Err(e) => return Err(Failure::Connect(describe(&e))),
        }
    }
}

async fn release(gw: &Gateway, mut http: HttpSession, peer: &HttpPeer) {
    if http.response_done() {
        gw.connector
            .release_http_session(http, peer, peer.options.idle_timeout)
            .await;
    } else {
        http.shutdown().await;
    }
}

fn timeouts(state: &State, session: &Session) -> Timeouts {
    let server = &state.config.server;
    let first_byte = header_str(session, "x-gateway-request-timeout")
        .or_else(|| header_str(session, "cf-aig-request-timeout"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .unwrap_or(server.upstream_timeout_ms);
    Timeouts {
        first_byte: Duration::from_millis(first_byte),
        idle: Duration::from_millis(server.stream_idle_timeout_ms),
    }
}

// ───────────────────────────── request bodies ─────────────────────────────

/// An error answered before the whole body was read: the connection cannot be reused.
async fn refuse_unread(session: &mut Session, ctx: &mut RequestCtx, e: &ApiError) {
    session.set_keepalive(None);
    send_error(session, ctx, e).await
}

/// Reads a multipart upload, scanning it as it arrives.
async fn read_form(session: &mut Session, state: &State) -> Result<Form, ApiError> {
    let ctype = header_str(session, "content-type")
        .unwrap_or("")
        .to_string();
    let boundary = multipart::boundary(&ctype).map_err(ApiError::invalid)?;
    let mut scanner = multipart::Scanner::new(&boundary);
    let body = super::chat::read_body(
        session,
        state.config.server.max_body_bytes,
        Some(&mut scanner),
    )
    .await?;
    scanner
        .finish(body)
        .map_err(|e| ApiError::invalid(format!("The multipart body is malformed: {e}.")))
}

/// Text for a header: URL-encoded (RFC 3986 unreserved characters kept), at most
/// `MAX_HEADER_TEXT` characters of the original.
pub fn header_text(text: &str) -> String {
    let cut: String = text.chars().take(MAX_HEADER_TEXT).collect();
    let mut out = String::with_capacity(cut.len() * 3);
    for b in cut.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RequestCtx {
    /// `provider/model` of the last attempt.
    fn qualified(&self) -> String {
        format!(
            "{}/{}",
            self.provider.as_deref().unwrap_or(""),
            self.model.as_deref().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_is_url_encoded() {
        assert_eq!(header_text("héllo, world!"), "h%C3%A9llo%2C%20world%21");
        assert_eq!(header_text(&"a".repeat(5000)).len(), MAX_HEADER_TEXT);
    }
}
