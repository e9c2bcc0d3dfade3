//! The media endpoints: `POST /v1/embeddings`, `/v1/audio/transcriptions`,
//! `/v1/audio/translations`, `/v1/audio/speech` and freeway's own
//! `/v1/audio/speech-to-speech`.
//!
//! Each reads the body once (an upload is scanned as it arrives), plans candidates of the
//! model type it needs, and runs the same attempt engine as chat with one of two calls:
//! [`Capture`] (read the answer whole and translate it: embeddings, transcripts, the chat
//! step of speech-to-speech) or [`SpeechCall`] (relay audio as it arrives). Upload bodies
//! are sent as pieces of the one client buffer, so failover never needs a second copy.

use super::attempt::{self, min_retry_after, Answer, Call, Failure, Refusal, Reply};
use super::body::{read_body, read_form};
use super::ctx::RequestCtx;
use super::respond::{send, send_error, write_head};
use super::Gateway;
use crate::config::ModelType;
use crate::errors::ApiError;
use crate::multipart::Form;
use crate::providers::audio::{self, SpeechRequest, SttRequest, TextFormat};
use crate::providers::embeddings;
use crate::providers::media::{MediaRequest, Piece};
use crate::providers::{self, Outbound, Usage};
use crate::request::parse_chat;
use crate::routing::{ModelEntry, Needs};
use crate::state::State;
use bytes::Bytes;
use pingora::proxy::Session;

/// The most of a transcript or reply carried in a speech-to-speech header.
const MAX_HEADER_TEXT: usize = 2000;

/// What a media endpoint needs from a model: its type; no output tokens are reserved.
fn needs(model_type: ModelType, prompt_tokens: u32) -> Needs {
    Needs {
        model_type,
        prompt_tokens,
        max_output_tokens: Some(0),
        ..Needs::default()
    }
}

// ───────────────────────────── endpoints ─────────────────────────────

pub async fn embeddings(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let Some(raw) = read_body(gw, session, ctx, state).await else {
        return;
    };
    let req = match embeddings::parse(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = req.model.clone();
    ctx.prompt_estimate = req
        .texts
        .as_ref()
        .map_or(0, |t| t.iter().map(|s| s.len().div_ceil(4) as u32).sum());
    // The vector space the request is bound to, when falling back was possible at all (a
    // pinned model without `x-gateway-fallback: auto` never falls back).
    let pinned = req
        .model
        .as_deref()
        .is_some_and(|n| state.catalog.models.iter().any(|m| m.qualified == n));
    let space = state
        .catalog
        .embedding_space(req.model.as_deref())
        .filter(|_| !pinned || ctx.controls.fallback_auto)
        .map(str::to_string);
    let needs = needs(ModelType::Embedding, ctx.prompt_estimate);
    let plan = match attempt::plan(state, ctx, req.model.as_deref(), &needs) {
        Ok(p) => p,
        Err(e) if e.status == 503 => {
            let e = space.map_or(e.clone(), |s| space_refusal(state, &s, &e.message));
            return send_error(session, ctx, &e).await;
        }
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let call = Capture {
        build: |m: &ModelEntry| embeddings::request(m.provider_kind, &req, &m.id),
        read: |m: &ModelEntry, _ctype: &str, body: Bytes| {
            let (body, usage) = embeddings::response(m.provider_kind, &body, &req, &m.id)?;
            Ok(Captured {
                ctype: "application/json".into(),
                body: Bytes::from(body),
                usage,
            })
        },
        exhausted: |failures: &[(String, Failure)], ctx: &RequestCtx| {
            // A fallback outside the vector space would have been possible: say why not.
            let s = space.as_deref()?;
            if other_spaces(state, s).is_empty() {
                return None;
            }
            let mut e = space_refusal(state, s, &ctx.failures.join("; "));
            e.retry_after = min_retry_after(failures);
            Some(e)
        },
    };
    if let Some(c) = attempt::run(gw, state, session, ctx, plan, &needs, &call).await {
        send(session, ctx, 200, &c.ctype, c.body, &[]).await
    }
}

pub async fn transcription(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    translate: bool,
) {
    let Some(form) = read_form(gw, session, ctx, state).await else {
        return;
    };
    let req = match audio::parse_stt(form, translate) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = req.model.clone();
    if let Some(c) = transcribe(gw, state, session, ctx, &req).await {
        send(session, ctx, 200, &c.ctype, c.body, &[]).await
    }
}

/// Runs speech-to-text; `None` when an error was already answered.
async fn transcribe(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &SttRequest,
) -> Option<Captured> {
    let needs = needs(ModelType::Transcription, 0);
    let plan = match attempt::plan(state, ctx, req.model.as_deref(), &needs) {
        Ok(p) => p,
        Err(e) => {
            send_error(session, ctx, &e).await;
            return None;
        }
    };
    let call = Capture {
        build: |m: &ModelEntry| audio::stt_request(m.provider_kind, req, &m.id),
        read: |m: &ModelEntry, ctype: &str, body: Bytes| {
            let (ctype, body) = audio::stt_response(m.provider_kind, ctype, body, req)?;
            Ok(Captured {
                ctype,
                body,
                usage: None,
            })
        },
        exhausted: no_better_error,
    };
    attempt::run(gw, state, session, ctx, plan, &needs, &call).await
}

pub async fn speech(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let Some(raw) = read_body(gw, session, ctx, state).await else {
        return;
    };
    let req = match audio::parse_speech(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = req.model.clone();
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
    let needs = needs(ModelType::Speech, 0);
    let plan = match attempt::plan(state, ctx, req.model.as_deref(), &needs) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let call = SpeechCall { req, extra };
    attempt::run(gw, state, session, ctx, plan, &needs, &call).await;
}

/// `POST /v1/audio/speech-to-speech`: audio in → transcript → chat answer → audio out.
///
/// Form fields: `file` (the audio), `model` (the chat model, default `auto`),
/// `transcription_model` and `speech_model` (default `auto`), `voice`, `response_format`
/// (of the audio answer, default mp3), `instructions` (a system prompt), `language`.
/// The answer is the audio; `x-gateway-transcript` and `x-gateway-reply-text` carry the two
/// texts, URL-encoded.
pub async fn speech_to_speech(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
) {
    let Some(form) = read_form(gw, session, ctx, state).await else {
        return;
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
    ctx.requested_model = chat_model.clone();
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
    let Some(transcribed) = transcribe(gw, state, session, ctx, &stt).await else {
        return;
    };
    let transcript = match serde_json::from_slice::<serde_json::Value>(&transcribed.body)
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
    let chat_body = Bytes::from(chat_body);
    let prompt = super::guardrails::Prompt::Chat;
    let Some(chat_body) = super::guardrails::prompt(state, session, ctx, chat_body, prompt).await
    else {
        return; // blocked
    };
    let Some(reply) = chat_text(gw, state, session, ctx, &chat_body).await else {
        return;
    };
    let reply = match super::guardrails::answer_text(ctx, reply) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
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
    let plan = match attempt::plan(state, ctx, req.model.as_deref(), &req.needs) {
        Ok(p) => p,
        Err(e) => {
            send_error(session, ctx, &e).await;
            return None;
        }
    };
    let call = Capture {
        build: |m: &ModelEntry| {
            let t = providers::translator(m.provider_kind);
            let u = t.chat_request(&req, raw, &m.id).map_err(|e| e.message)?;
            Ok(MediaRequest {
                path: u.path,
                content_type: "application/json".into(),
                body: vec![Piece::Raw(u.body)],
                headers: u.headers,
            })
        },
        read: |m: &ModelEntry, _ctype: &str, body: Bytes| {
            let t = providers::translator(m.provider_kind).chat_response(body, &m.id)?;
            let v: serde_json::Value = serde_json::from_slice(&t.body)
                .map_err(|e| format!("the chat answer is not JSON: {e}"))?;
            let text = v["choices"][0]["message"]["content"]
                .as_str()
                .ok_or("the chat answer has no message text")?;
            Ok(Captured {
                ctype: "text/plain".into(),
                body: Bytes::from(text.to_string()),
                usage: t.usage,
            })
        },
        exhausted: no_better_error,
    };
    let captured = attempt::run(gw, state, session, ctx, plan, &req.needs, &call).await?;
    Some(String::from_utf8_lossy(&captured.body).into_owned())
}

// ───────────────────────────── vector spaces ─────────────────────────────

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

// ───────────────────────────── the calls ─────────────────────────────

/// An answer read whole and translated.
pub struct Captured {
    pub ctype: String,
    pub body: Bytes,
    /// Tokens the provider reported.
    pub usage: Option<Usage>,
}

/// `exhausted` for captures with nothing better to say than the engine's error.
fn no_better_error(_: &[(String, Failure)], _: &RequestCtx) -> Option<ApiError> {
    None
}

/// A request whose answer is read whole, translated, and handed back to the endpoint.
struct Capture<B, R, X> {
    /// The native request for a model, or why it cannot serve this one.
    build: B,
    /// `(model, upstream content type, body)` → the translated answer.
    read: R,
    exhausted: X,
}

impl<B, R, X> Call for Capture<B, R, X>
where
    B: Fn(&ModelEntry) -> Result<MediaRequest, String> + Sync,
    R: Fn(&ModelEntry, &str, Bytes) -> Result<Captured, String> + Sync,
    X: Fn(&[(String, Failure)], &RequestCtx) -> Option<ApiError> + Sync,
{
    type Out = Captured;

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        Outbound::media((self.build)(model).map_err(Refusal::Skip)?).map_err(Refusal::Final)
    }

    async fn answer(
        &self,
        reply: Reply<'_>,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(Captured, Answer), Failure> {
        let model = reply.model;
        let (ctype, body, answered) = reply.read_all(ctx).await?;
        let captured = (self.read)(model, &ctype, body).map_err(Failure::Malformed)?;
        let answer = Answer {
            usage: captured.usage,
            ..answered
        };
        Ok((captured, answer))
    }

    fn exhausted(&self, failures: &[(String, Failure)], ctx: &RequestCtx) -> Option<ApiError> {
        (self.exhausted)(failures, ctx)
    }
}

/// Text to speech, relayed to the client as the audio arrives.
struct SpeechCall<'a> {
    req: &'a SpeechRequest,
    /// Headers added to the answer (speech-to-speech's texts).
    extra: Vec<(&'static str, String)>,
}

impl Call for SpeechCall<'_> {
    type Out = ();

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        let req = audio::speech_request(model.provider_kind, self.req, &model.id)
            .map_err(Refusal::Skip)?;
        Outbound::media(req).map_err(Refusal::Final)
    }

    async fn answer(
        &self,
        mut reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<((), Answer), Failure> {
        let ctype = reply
            .header(http::header::CONTENT_TYPE)
            .unwrap_or("")
            .to_string();
        if ctype.starts_with("application/json") {
            // MeloTTS and friends: base64 audio inside JSON. Anything else (audio bytes,
            // `stream_format: "sse"` events) is relayed as it arrives.
            let body = reply.whole(ctx).await?;
            let answer = reply.answered(false);
            reply.release().await;
            let (ctype, audio) = audio::speech_from_json(&body).map_err(Failure::Malformed)?;
            send(session, ctx, 200, &ctype, audio, &self.extra).await;
            return Ok(((), answer));
        }
        let answer = self.stream_audio(reply, &ctype, session, ctx).await?;
        Ok(((), answer))
    }
}

impl SpeechCall<'_> {
    /// Relays audio as it arrives. The client's headers wait for the first chunk, so a
    /// provider that answers 200 and dies at once is still failed over.
    async fn stream_audio(
        &self,
        mut reply: Reply<'_>,
        ctype: &str,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Answer, Failure> {
        let length = reply
            .header(http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok());
        let first = match reply.chunk(ctx).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(Failure::Malformed("the audio answer was empty".into())),
            Err(e) => return Err(reply.read_failure(&e, "audio")),
        };
        let mut answer = reply.answered(true);
        let ctype = if ctype == "application/octet-stream" {
            audio::sniff_audio(&first)
        } else {
            ctype
        };
        if !write_head(session, ctx, 200, ctype, length, &self.extra).await {
            return Ok(answer); // the client left
        }
        let mut chunk = first;
        loop {
            if session
                .write_response_body(Some(chunk), false)
                .await
                .is_err()
            {
                return Ok(answer); // the client left
            }
            match reply.chunk(ctx).await {
                Ok(Some(c)) => chunk = c,
                Ok(None) => break,
                Err(e) => {
                    let why = format!("the audio stream failed: {}", attempt::describe(&e));
                    log::warn!("{}: {why}", ctx.id);
                    ctx.failures.push(why);
                    // The client cannot be told in-band: end the connection short.
                    session.set_keepalive(None);
                    let _ = session.write_response_body(None, true).await;
                    answer.broken = true;
                    return Ok(answer);
                }
            }
        }
        let _ = session.write_response_body(None, true).await;
        reply.release().await;
        Ok(answer)
    }
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
