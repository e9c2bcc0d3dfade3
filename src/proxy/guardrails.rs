//! Guardrails on the pipeline (the matching is `crate::guardrails`): the prompt before
//! anything goes upstream, answers read whole, the stream wrapper, the cache key's scope,
//! the `x-gateway-guardrails` header and what the request log and metrics get. Every hook
//! costs a request with no guardrail one branch.

use super::ctx::RequestCtx;
use super::respond::send_error;
use crate::errors::ApiError;
use crate::guardrails::{stream::GuardStream, Applied};
use crate::observe::metrics;
use crate::providers::{StreamTranslator, Translated};
use crate::state::State;
use bytes::Bytes;
use pingora::proxy::Session;
use std::sync::Arc;

/// The shape of a prompt body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// A chat completion request (also the Responses API's and speech-to-speech's).
    Chat,
    /// An Anthropic Messages request.
    Messages,
    /// An image generation request (`prompt`, `negative_prompt`).
    Image,
}

/// Runs the prompt guardrails applying to this request (its key, its model) on `raw`:
/// the body to send on (redacted where a guardrail said so), or `None` when a guardrail
/// blocked it (a 400 `content_blocked` has been sent; nothing goes upstream).
pub async fn prompt(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    raw: Bytes,
    shape: Prompt,
) -> Option<Bytes> {
    let Some(mut g) = state.guardrails.start(ctx.key_label.as_deref()) else {
        return Some(raw);
    };
    let result = match shape {
        Prompt::Chat => g.chat_prompt(&raw),
        Prompt::Messages => g.messages_prompt(&raw),
        Prompt::Image => g.image_prompt(&raw),
    };
    let g = Arc::new(g);
    if g.active() {
        ctx.guardrails = Some(g.clone());
    }
    match result {
        Ok(None) => Some(raw),
        Ok(Some(redacted)) => Some(Bytes::from(redacted)),
        Err(b) => {
            log::info!("{}: prompt blocked by a guardrail", ctx.id);
            send_error(session, ctx, &g.blocked(b)).await;
            None
        }
    }
}

fn answering(ctx: &RequestCtx) -> Option<&Applied> {
    ctx.guardrails.as_deref().filter(|g| g.guards_response())
}

/// A chat completion answer through the answer guardrails: rewritten in place (a redacted
/// answer), or the error that replaces it.
pub fn chat_answer(ctx: &RequestCtx, answer: &mut Translated) -> Result<(), ApiError> {
    let Some(g) = answering(ctx) else {
        return Ok(());
    };
    match g.chat_answer(&answer.body) {
        Ok(None) => Ok(()),
        Ok(Some(b)) => {
            answer.rewrite(Bytes::from(b));
            Ok(())
        }
        Err(b) => Err(g.blocked(b)),
    }
}

/// An Anthropic `message` answer (native providers) through the answer guardrails.
pub fn messages_answer(ctx: &RequestCtx, body: Bytes) -> Result<Bytes, ApiError> {
    let Some(g) = answering(ctx) else {
        return Ok(body);
    };
    match g.messages_answer(&body) {
        Ok(None) => Ok(body),
        Ok(Some(b)) => Ok(Bytes::from(b)),
        Err(b) => Err(g.blocked(b)),
    }
}

/// A plain answer text (speech-to-speech's reply) through the answer guardrails.
pub fn answer_text(ctx: &RequestCtx, text: String) -> Result<String, ApiError> {
    let Some(g) = answering(ctx) else {
        return Ok(text);
    };
    let mut text = text;
    match g.answer_text(&mut text) {
        Ok(()) => Ok(text),
        Err(b) => Err(g.blocked(b)),
    }
}

/// The provider's chat stream translator, guarded when answer guardrails apply (placed
/// inside the Responses and Messages reshapers: they see guarded OpenAI chunks).
pub fn stream(ctx: &RequestCtx, tr: Box<dyn StreamTranslator>) -> Box<dyn StreamTranslator> {
    match &ctx.guardrails {
        Some(g) if g.guards_response() => Box::new(GuardStream::new(tr, g.clone())),
        _ => tr,
    }
}

/// A native Anthropic Messages stream, guarded when answer guardrails apply.
pub fn anthropic_stream(
    ctx: &RequestCtx,
    tr: Box<dyn StreamTranslator>,
) -> Box<dyn StreamTranslator> {
    match &ctx.guardrails {
        Some(g) if g.guards_response() => Box::new(GuardStream::anthropic(tr, g.clone())),
        _ => tr,
    }
}

/// What keeps guarded answers apart in the cache: answers stored after the answer
/// guardrails of one definition are served only to requests under the same ones.
pub fn cache_scope(ctx: &RequestCtx) -> Option<String> {
    answering(ctx).map(|g| format!("guardrails:{:016x}", g.response_fingerprint()))
}

/// `x-gateway-guardrails`: the guardrails that matched so far.
pub fn header(ctx: &RequestCtx) -> Option<String> {
    let names = ctx.guardrails.as_deref()?.names();
    (!names.is_empty()).then(|| names.join(", "))
}

/// Counts the hits (`freeway_guardrail_hits_total`) and returns the request log's list.
pub fn record(ctx: &RequestCtx) -> Vec<String> {
    let Some(g) = ctx.guardrails.as_deref() else {
        return Vec::new();
    };
    for (name, action, on) in g.hits() {
        metrics::guardrail_hit(name, action, on);
    }
    g.names().into_iter().map(str::to_string).collect()
}
