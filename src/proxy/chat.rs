//! `POST /v1/chat/completions` and `POST /v1/responses`: parse the body once, look in the
//! cache, plan, and run the attempt engine with a [`ChatCall`], which relays the answer —
//! whole for JSON, event by event for SSE, through the provider's translator (and, for
//! the Responses API, the Responses reshaper).

use super::attempt::{self, Answer, Call, Failure, Refusal, Reply};
use super::body::read_body;
use super::ctx::RequestCtx;
use super::guard::Ticket;
use super::guardrails::Prompt;
use super::respond::{send, send_error, write_head};
use super::Gateway;
use crate::errors::ApiError;
use crate::providers::{self, Outbound, StreamError, StreamTranslator};
use crate::request::{parse_chat, ChatRequest};
use crate::responses;
use crate::routing::ModelEntry;
use crate::state::State;
use bytes::Bytes;
use pingora::proxy::Session;
use std::sync::Arc;

/// Which API the client speaks; both run on chat providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Responses,
}

pub async fn handle(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    api: Api,
) {
    let Some(raw) = read_body(gw, session, ctx, state).await else {
        return;
    };
    let (raw, responses) = match api {
        Api::Chat => (raw, None),
        Api::Responses => match responses::to_chat(&raw) {
            Ok((chat, meta)) => (Bytes::from(chat), Some(meta)),
            Err(e) => return send_error(session, ctx, &e).await,
        },
    };
    let Some(raw) = super::guardrails::prompt(state, session, ctx, raw, Prompt::Chat).await else {
        return; // blocked
    };
    let req = match parse_chat(&raw) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = req.model.as_deref().map(str::to_string);
    ctx.prompt_estimate = req.needs.prompt_tokens;
    // The Responses API is reshaped per request: only chat completions are cached.
    let cacheable = api == Api::Chat;
    let ask = super::guard::CacheAsk::chat(&req);
    let Some(ticket) =
        super::guard::cache_gate(gw, state, session, ctx, cacheable, &raw, &ask).await
    else {
        return; // answered from the cache
    };
    let plan = match attempt::plan(state, ctx, req.model.as_deref(), &req.needs) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let call = ChatCall {
        gw,
        secrets: &state.secrets,
        req: &req,
        raw: &raw,
        responses,
        ticket: &ticket,
    };
    attempt::run(gw, state, session, ctx, plan, &req.needs, &call).await;
}

/// A chat completion relayed to the client.
struct ChatCall<'a> {
    gw: &'a Gateway,
    /// Scrubbed from a provider's error text before it reaches the client or the log.
    secrets: &'a crate::secrets::Secrets,
    req: &'a ChatRequest<'a>,
    raw: &'a [u8],
    /// Set for `/v1/responses`: the chat answer is reshaped into the Responses API.
    responses: Option<Arc<responses::Meta>>,
    /// Where a complete answer is cached: it is stored *before* its last bytes reach the
    /// client, so a client that got the answer finds it cached on every instance.
    ticket: &'a Ticket,
}

impl Call for ChatCall<'_> {
    type Out = ();

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        providers::translator(model.provider_kind)
            .chat_request(self.req, self.raw, &model.id)
            .map(|r| Outbound::json(r, self.req.stream))
            .map_err(Refusal::Final)
    }

    fn resume(&self, model: &ModelEntry, partial: &str) -> Result<Outbound, Refusal> {
        continuation(model, self.raw, partial)
    }

    async fn answer(
        &self,
        reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<((), Answer), Failure> {
        super::resume::expect_stream(ctx, reply.is_sse())?;
        let answer = if reply.is_sse() {
            self.relay_stream(reply, session, ctx).await?
        } else {
            self.relay_whole(reply, session, ctx).await?
        };
        Ok(((), answer))
    }
}

impl ChatCall<'_> {
    /// A non-streamed answer: read it whole (a failure here can still fail over),
    /// translate, then send.
    async fn relay_whole(
        &self,
        mut reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Answer, Failure> {
        let body = reply.whole(ctx).await?;
        let model = reply.model;
        let mut translated = providers::translator(model.provider_kind)
            .chat_response(body, &model.id)
            .map_err(Failure::Malformed)?;
        let answer = Answer {
            usage: translated.usage,
            ..reply.answered(false)
        };
        if let Err(blocked) = super::guardrails::chat_answer(ctx, &mut translated) {
            reply.release().await;
            send_error(session, ctx, &blocked).await;
            return Ok(answer);
        }
        if let Some(meta) = &self.responses {
            let reshaped =
                responses::from_chat_completion(meta, &translated.body, translated.usage)
                    .map_err(Failure::Malformed)?;
            translated.rewrite(reshaped);
        }
        reply.release().await;
        self.keep(ctx, Some(translated.body.clone())).await;
        // The answer's cost (`usage.cost`, `x-gateway-cost-usd`); cached without it.
        let priced =
            super::spend::price_json(ctx, Some(&model.cost), translated.body, translated.usage_at);
        send(session, ctx, answer.status, "application/json", priced, &[]).await;
        Ok(answer)
    }

    /// A streamed answer through the provider's translator (and the Responses reshaper).
    async fn relay_stream(
        &self,
        reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Answer, Failure> {
        let model = reply.model;
        let inner = providers::translator(model.provider_kind)
            .chat_stream(&model.id, self.req.include_usage);
        let tr = super::resume::stack(ctx, inner, |tr| match &self.responses {
            Some(meta) => Box::new(responses::ResponsesStream::new(tr, meta.clone(), &model.id)),
            None => tr,
        });
        let keep = self.capturing().then_some(Keep {
            gw: self.gw,
            ticket: self.ticket,
        });
        relay_stream(reply, session, ctx, tr, self.secrets, keep).await
    }

    /// Whether the complete answer is wanted for the cache.
    fn capturing(&self) -> bool {
        self.responses.is_none() && self.ticket.capture()
    }

    /// Caches a complete, successful chat completion.
    async fn keep(&self, ctx: &RequestCtx, completion: Option<Bytes>) {
        if let (Some(body), true) = (completion, self.capturing()) {
            self.ticket.store(&self.gw.cache, ctx, body).await;
        }
    }
}

/// The continuation request for `model` of a stream paused after `partial`: the client's
/// chat body (`chat_body`) with the partial answer as the provider's partial assistant turn.
pub(super) fn continuation(
    model: &ModelEntry,
    chat_body: &[u8],
    partial: &str,
) -> Result<Outbound, Refusal> {
    let body = providers::resume::continuation_body(chat_body, model.continuation, partial)
        .map_err(Refusal::Skip)?;
    let req = parse_chat(&body).map_err(|e| Refusal::Skip(e.message))?;
    providers::translator(model.provider_kind)
        .chat_request(&req, &body, &model.id)
        .map(|r| Outbound::json(r, true))
        .map_err(|e| Refusal::Skip(e.message))
}

/// Where a relayed stream's complete answer is cached (chat completions only).
pub(super) struct Keep<'a> {
    gw: &'a Gateway,
    ticket: &'a Ticket,
}

impl Keep<'_> {
    async fn store(&self, ctx: &RequestCtx, completion: Option<Bytes>) {
        if let Some(body) = completion {
            self.ticket.store(&self.gw.cache, ctx, body).await;
        }
    }
}

/// Relays a streamed answer through `tr` (the provider's translator, possibly wrapped by
/// the client API's reshaper: Responses, Anthropic Messages): the client's headers are held
/// until the first content (before it, a failure fails over), then translated events go
/// out as they arrive; a failure after that ends the stream with `tr`'s error event — or,
/// with stream resume on, pauses it for the engine to continue on the next candidate
/// (`proxy::resume`). A continuation is relayed here too: held until its first content
/// joins the client's stream (before it, a failure tries the next candidate).
pub(super) async fn relay_stream(
    mut reply: Reply<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut tr: Box<dyn StreamTranslator>,
    secrets: &crate::secrets::Secrets,
    keep: Option<Keep<'_>>,
) -> Result<Answer, Failure> {
    let model = reply.model;
    let continuing = ctx.resume.continuing();
    let keep = keep.filter(|_| !continuing);
    let mut out = Vec::new();
    let mut assembled = keep
        .as_ref()
        .map(|_| crate::cache::sse::Assembler::default());
    // The failover gate: nothing reaches the client before the first content.
    let mut ended = match gate(&mut reply, ctx, tr.as_mut(), &mut out, continuing).await {
        Ok(ended) => ended,
        Err(Gated::Failed(f)) if continuing => {
            super::resume::put_back(ctx, tr);
            return Err(f);
        }
        Err(Gated::Failed(f)) => return Err(f),
        Err(Gated::Blocked(name)) if continuing => {
            // The client's stream is open: what was released, then the guardrail's error.
            tr.error_event(&crate::guardrails::content_blocked(&name), &mut out);
            super::resume::joined(ctx, model);
            let _ = session
                .write_response_body(Some(Bytes::from(out)), true)
                .await;
            return Ok(reply.answered(true));
        }
        Err(Gated::Blocked(name)) => {
            // A guardrail blocked the answer before the client saw a byte: its error.
            let answer = reply.answered(true);
            send_error(session, ctx, &crate::guardrails::content_blocked(&name)).await;
            return Ok(answer);
        }
    };
    let mut answer = reply.answered(true);

    if continuing {
        super::resume::joined(ctx, model);
    } else {
        ctx.streamed = true;
        if !write_head(session, ctx, 200, "text/event-stream", None, &[]).await {
            return Ok(answer); // the client left; dropping the reply closes upstream
        }
    }

    loop {
        if !out.is_empty() {
            let mut events = std::mem::take(&mut out);
            if let Some(a) = &mut assembled {
                a.feed(&events);
            }
            // The cost goes into the usage chunk the client sees (cached without it), and
            // what was delivered is what an aborted stream is charged for.
            super::spend::price_events(ctx, Some(&model.cost), &mut events);
            let delivered = super::spend::content_chars(&events);
            let events = Bytes::from(events);
            if ended {
                if let Some(k) = &keep {
                    k.store(ctx, assembled.take().and_then(|a| a.finish()))
                        .await;
                }
            }
            if session
                .write_response_body(Some(events), false)
                .await
                .is_err()
            {
                log::info!("{}: client disconnected mid-stream", ctx.id);
                answer.usage = tr.usage();
                return Ok(answer);
            }
            ctx.spend.delivered_chars += delivered;
        }
        if ended {
            break;
        }
        let failure = match reply.chunk(ctx).await {
            Ok(Some(chunk)) => match tr.feed(&chunk, &mut out) {
                Ok(()) => continue,
                Err(e) => e,
            },
            Ok(None) => match tr.finish(&mut out) {
                Ok(()) => {
                    ended = true;
                    continue;
                }
                Err(e) => e,
            },
            Err(e) if attempt::is_timeout(&e) => StreamError::Malformed(format!(
                "stalled for {} ms",
                reply.timeouts.idle.as_millis()
            )),
            Err(e) => StreamError::Malformed(attempt::describe(&e)),
        };
        if let StreamError::Blocked(name) = &failure {
            // Not the provider's failure: what was released, then the guardrail's error.
            tr.error_event(&crate::guardrails::content_blocked(name), &mut out);
            let _ = session
                .write_response_body(Some(Bytes::from(out)), true)
                .await;
            answer.usage = tr.usage();
            return Ok(answer);
        }
        // Complete events translated before the failure still go out, then the error.
        let why = format!("the stream from `{}` failed: {failure}", model.qualified);
        let why = secrets.scrub(&why).into_owned();
        log::warn!("{}: {why}", ctx.id);
        ctx.failures.push(why.clone());
        answer.usage = tr.usage();
        answer.broken = true;
        let deadline = std::time::Instant::now() + reply.timeouts.first_byte;
        match super::resume::pause(ctx, tr, &why, deadline) {
            // Paused: the engine asks the next candidate to continue the answer.
            Ok(()) => {
                if !out.is_empty() {
                    super::spend::price_events(ctx, Some(&model.cost), &mut out);
                    ctx.spend.delivered_chars += super::spend::content_chars(&out);
                    let _ = session
                        .write_response_body(Some(Bytes::from(out)), false)
                        .await;
                }
                return Ok(answer);
            }
            Err(mut tr) => {
                tr.error_event(&ApiError::upstream(502, why), &mut out);
                let _ = session
                    .write_response_body(Some(Bytes::from(out)), true)
                    .await;
                return Ok(answer);
            }
        }
    }
    if let Some(k) = &keep {
        k.store(ctx, assembled.and_then(|a| a.finish())).await;
    }
    if let Some(trailer) = super::resume::trailer(ctx) {
        let _ = session.write_response_body(Some(trailer), false).await;
    }
    let _ = session.write_response_body(None, true).await;
    reply.release().await;
    answer.usage = tr.usage();
    Ok(answer)
}

/// Why the first-content gate was not passed.
enum Gated {
    /// Fail over (nothing of this attempt reached the client).
    Failed(Failure),
    /// A guardrail blocked the answer.
    Blocked(String),
}

/// Reads until the first content (`continuing`: until the continuation joins the paused
/// stream, within the resume deadline). `Ok(true)`: the upstream also ended.
async fn gate(
    reply: &mut Reply<'_>,
    ctx: &mut RequestCtx,
    tr: &mut dyn StreamTranslator,
    out: &mut Vec<u8>,
    continuing: bool,
) -> Result<bool, Gated> {
    let deadline = ctx.resume.paused().map(|p| p.deadline);
    let mut ended = false;
    loop {
        let passed = if continuing {
            tr.seam().is_none_or(|s| s.joined())
        } else {
            tr.started()
        };
        if passed {
            return Ok(ended);
        }
        let read = match deadline.filter(|_| continuing) {
            Some(d) => tokio::time::timeout_at(d.into(), reply.chunk(ctx))
                .await
                .map_err(|_| Failure::Timeout("the continuation sent no content in time".into())),
            None => Ok(reply.chunk(ctx).await),
        };
        let fed = match read.map_err(Gated::Failed)? {
            Ok(Some(chunk)) => tr.feed(&chunk, out),
            Ok(None) => {
                ended = true;
                tr.finish(out)
            }
            Err(e) => {
                return Err(Gated::Failed(
                    reply.read_failure(&e, "stream before its first content"),
                ))
            }
        };
        match fed {
            Err(StreamError::Blocked(name)) => return Err(Gated::Blocked(name)),
            Err(e) => return Err(Gated::Failed(Failure::Malformed(e.to_string()))),
            Ok(()) if ended && !tr.started() => {
                return Err(Gated::Failed(Failure::Malformed(
                    "the stream ended without any content".into(),
                )));
            }
            Ok(()) if ended => return Ok(true),
            Ok(()) => {}
        }
    }
}
