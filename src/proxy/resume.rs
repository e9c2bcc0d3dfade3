//! Stream resume in the pipeline: a chat, Responses or Messages text stream that fails after
//! its first content is paused (its translator stack, reshapers and all, kept on the
//! context), the attempt engine (`attempt::run`) sends a continuation request to the next
//! candidate (`Call::resume`), and the relay splices that candidate's stream into the same
//! client stream (`providers::resume::Seam`). Nothing here runs unless resume is on for the
//! request (`x-gateway-stream-resume`, `[server] stream_resume`).

use super::ctx::RequestCtx;
use crate::errors::ApiError;
use crate::observe::metrics;
use crate::providers::resume::Seam;
use crate::providers::{StreamTranslator, Usage};
use crate::routing::ModelEntry;
use bytes::Bytes;
use pingora::proxy::Session;
use std::sync::Mutex;
use std::time::Instant;

/// A stream paused after its provider failed, waiting for a continuation.
pub struct Paused {
    /// The text the client has received (the continuation's partial assistant turn).
    pub partial: String,
    /// The continuation must have sent content by then, or the stream ends with the error.
    pub deadline: Instant,
    /// Why the stream broke (the error event's message if no continuation comes).
    why: String,
    /// The client's translator stack; taken by the relay while a continuation is tried.
    /// (In a `Mutex` only for `Sync`: it is moved in and out, never locked.)
    stack: Option<Mutex<Box<dyn StreamTranslator>>>,
}

/// The request's resume state (on `RequestCtx`).
#[derive(Default)]
pub struct Resume {
    /// Resume is on for this request.
    pub on: bool,
    paused: Option<Box<Paused>>,
    /// Usage and cost of the attempts that broke off before the current one.
    carried: Option<Usage>,
    carried_cost: f64,
    /// Where the stream was resumed: `from → to after N characters`, one per resume.
    resumed: Vec<String>,
}

impl Resume {
    pub fn paused(&self) -> Option<&Paused> {
        self.paused.as_deref()
    }

    /// A continuation is being relayed (its stack taken from the pause).
    pub fn continuing(&self) -> bool {
        self.paused.as_ref().is_some_and(|p| p.stack.is_none())
    }

    /// An answer's usage less what earlier attempts used (the Seam reports the sum).
    pub fn own(&self, usage: Option<Usage>) -> Option<Usage> {
        match (usage, self.carried) {
            (Some(u), Some(c)) => Some(Usage {
                prompt_tokens: u.prompt_tokens.saturating_sub(c.prompt_tokens),
                completion_tokens: u.completion_tokens.saturating_sub(c.completion_tokens),
            }),
            (u, _) => u,
        }
    }

    /// The cost of a usage chunk carrying every attempt's tokens: the earlier attempts' cost
    /// plus this attempt's tokens at `price`.
    pub fn price(&self, prompt: u64, completion: u64, price: impl Fn(u64, u64) -> f64) -> f64 {
        let c = self.carried.unwrap_or_default();
        self.carried_cost
            + price(
                prompt.saturating_sub(c.prompt_tokens),
                completion.saturating_sub(c.completion_tokens),
            )
    }
}

/// The translator stack for a streamed answer of `model`: `inner` (the provider's
/// translator) wrapped by `wrap` (guardrails, the client API's reshaper), with the resume
/// layer under the reshaper when resume is on; while a continuation is tried, the paused
/// stack with `inner` spliced in instead.
pub fn stack(
    ctx: &mut RequestCtx,
    inner: Box<dyn StreamTranslator>,
    reshape: impl FnOnce(Box<dyn StreamTranslator>) -> Box<dyn StreamTranslator>,
) -> Box<dyn StreamTranslator> {
    let guarded = super::guardrails::stream(ctx, inner);
    if !ctx.resume.on {
        return reshape(guarded);
    }
    let carried = ctx.resume.carried;
    if let Some(mut tr) = ctx
        .resume
        .paused
        .as_mut()
        .and_then(|p| p.stack.take())
        .map(unlocked)
    {
        if let Some(seam) = tr.seam() {
            seam.splice(guarded, carried);
        }
        return tr;
    }
    reshape(Box::new(Seam::new(guarded)))
}

/// A continuation must be a stream (it was asked for one): a JSON answer cannot join the
/// client's stream, so it fails over.
pub fn expect_stream(ctx: &RequestCtx, sse: bool) -> Result<(), super::attempt::Failure> {
    if sse || ctx.resume.paused().is_none() {
        return Ok(());
    }
    Err(super::attempt::Failure::Malformed(
        "the continuation was not a stream".into(),
    ))
}

/// A continuation failed before joining the stream: its stack goes back to the pause for
/// the next candidate.
pub fn put_back(ctx: &mut RequestCtx, tr: Box<dyn StreamTranslator>) {
    if let Some(p) = ctx.resume.paused.as_mut() {
        p.stack = Some(Mutex::new(tr));
    }
}

/// The stream from `model` failed after content (`why`): pauses it for a continuation when
/// resume is on and only text went out. `Err(tr)` when it cannot be resumed: end it.
pub fn pause(
    ctx: &mut RequestCtx,
    mut tr: Box<dyn StreamTranslator>,
    why: &str,
    deadline: Instant,
) -> Result<(), Box<dyn StreamTranslator>> {
    if !ctx.resume.on {
        return Err(tr);
    }
    let partial = match tr.seam() {
        Some(s) if s.resumable() => s.partial().to_string(),
        _ => {
            metrics::stream_resume("refused");
            return Err(tr);
        }
    };
    ctx.resume.paused = Some(Box::new(Paused {
        partial,
        deadline,
        why: why.to_string(),
        stack: Some(Mutex::new(tr)),
    }));
    Ok(())
}

/// The continuation from `model` joined the stream.
pub fn joined(ctx: &mut RequestCtx, model: &ModelEntry) {
    let Some(p) = ctx.resume.paused.take() else {
        return;
    };
    metrics::stream_resume("resumed");
    let line = format!(
        "stream resumed on `{}` after {} characters",
        model.qualified,
        p.partial.chars().count()
    );
    log::info!("{}: {line}", ctx.id);
    ctx.failures.push(line.clone());
    ctx.resume.resumed.push(model.qualified.clone());
}

/// After an answered attempt's accounting: when it paused the stream, carries its usage
/// (the provider's, else the estimate) and cost into the next attempt and says `true`:
/// try the next candidate. A resumed stream's cost becomes the sum of its attempts'.
pub fn after_answer(ctx: &mut RequestCtx, own: Option<Usage>) -> bool {
    if !ctx.resume.on {
        return false;
    }
    let cost = ctx.spend.cost.unwrap_or(0.0);
    if ctx.resume.paused.is_some() {
        let spent = own.unwrap_or(Usage {
            prompt_tokens: u64::from(ctx.prompt_estimate),
            completion_tokens: ctx.spend.delivered_chars.div_ceil(4),
        });
        let r = &mut ctx.resume;
        r.carried = crate::providers::resume::add(r.carried, Some(spent));
        r.carried_cost += cost;
        return true;
    }
    if ctx.resume.carried_cost > 0.0 {
        ctx.spend.cost = Some(cost + ctx.resume.carried_cost);
    }
    false
}

/// The trailer of a resumed stream (its headers have gone): an SSE comment with the
/// attempts and where the stream was resumed.
pub fn trailer(ctx: &RequestCtx) -> Option<Bytes> {
    if ctx.resume.resumed.is_empty() {
        return None;
    }
    Some(Bytes::from(format!(
        ": x-gateway-attempts: {}; x-gateway-resumed-on: {}\n\n",
        ctx.attempts,
        ctx.resume.resumed.join(", ")
    )))
}

/// No continuation came (every candidate failed, none is left, time ran out, or the
/// request may not make another attempt): the paused stream ends with its error event,
/// as an unresumed one would. `false` when no stream is paused.
pub async fn give_up(session: &mut Session, ctx: &mut RequestCtx, detail: &str) -> bool {
    let Some(p) = ctx.resume.paused.take() else {
        return false;
    };
    metrics::stream_resume("failed");
    let Some(mut tr) = p.stack.map(unlocked) else {
        return true;
    };
    let why = format!("{}; no other model continued it: {detail}", p.why);
    log::warn!("{}: {why}", ctx.id);
    let mut out = Vec::new();
    tr.error_event(&ApiError::upstream(502, why), &mut out);
    let _ = session
        .write_response_body(Some(Bytes::from(out)), true)
        .await;
    true
}

fn unlocked(m: Mutex<Box<dyn StreamTranslator>>) -> Box<dyn StreamTranslator> {
    m.into_inner().unwrap_or_else(|e| e.into_inner())
}
