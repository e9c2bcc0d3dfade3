//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API on
//! the one pipeline. The body is parsed once (`messages::parse`: the routing fields, the
//! splice point of `model`, the chat translation), routed like a chat request (its
//! capabilities read from the translation), and run by the attempt engine with a
//! [`MessagesCall`]: native to Anthropic providers (the client's bytes, only `model`
//! spliced; the answer relayed unchanged but for `model`), translated through the provider's
//! chat translator to every other kind. Errors are Anthropic's envelope (the endpoint's
//! entry says so; `respond::send_error` renders it).

use super::attempt::{self, Answer, Call, Failure, Refusal, Reply};
use super::body::read_body;
use super::chat::relay_stream;
use super::ctx::RequestCtx;
use super::guardrails::Prompt;
use super::respond::{send, send_error, send_json};
use super::Gateway;
use crate::config::ProviderKind;
use crate::messages::{self, answer, MessagesStream, NativeStream};
use crate::providers::anthropic::API_VERSION;
use crate::providers::{self, Body, Outbound, StreamTranslator};
use crate::request::{parse_chat, ChatRequest};
use crate::routing::ModelEntry;
use crate::state::State;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde_json::{json, Value};

pub async fn handle(gw: &Gateway, state: &State, session: &mut Session, ctx: &mut RequestCtx) {
    let count = session.req_header().uri.path().ends_with("/count_tokens");
    let headers = anthropic_headers(session);
    let Some(raw) = read_body(gw, session, ctx, state).await else {
        return;
    };
    let Some(raw) = super::guardrails::prompt(state, session, ctx, raw, Prompt::Messages).await
    else {
        return; // blocked
    };
    let msg = match messages::parse(&raw, count) {
        Ok(m) => m,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let req = match parse_chat(&msg.chat) {
        Ok(r) => r,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    ctx.requested_model = msg.model.as_deref().map(str::to_string);
    ctx.prompt_estimate = req.needs.prompt_tokens;
    let plan = match attempt::plan(state, ctx, msg.model.as_deref(), &req.needs) {
        Ok(p) => p,
        Err(e) => return send_error(session, ctx, &e).await,
    };
    let call = MessagesCall {
        secrets: &state.secrets,
        msg: &msg,
        req: &req,
        raw: &raw,
        headers,
    };
    if count {
        // Providers with a counting API count; otherwise the gateway's estimate answers.
        let counting: Vec<usize> = plan
            .into_iter()
            .filter(|&i| counts(state.catalog.models[i].provider_kind))
            .collect();
        if counting.is_empty() {
            let body = json!({"input_tokens": req.needs.prompt_tokens}).to_string();
            return send_json(session, ctx, 200, Bytes::from(body)).await;
        }
        let call = CountCall(call);
        attempt::run(gw, state, session, ctx, counting, &req.needs, &call).await;
        return;
    }
    // Answers are reshaped per request and per provider kind: not cached (the cache holds
    // chat completions).
    let ask = super::guard::CacheAsk::chat(&req);
    if super::guard::cache_gate(gw, state, session, ctx, false, &msg.chat, &ask)
        .await
        .is_none()
    {
        return;
    }
    attempt::run(gw, state, session, ctx, plan, &req.needs, &call).await;
}

/// The client's `anthropic-version` (or the gateway's) and `anthropic-beta`, for native
/// requests.
fn anthropic_headers(session: &Session) -> Vec<(HeaderName, HeaderValue)> {
    let h = &session.req_header().headers;
    let version = h
        .get("anthropic-version")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(API_VERSION));
    let mut out = vec![(HeaderName::from_static("anthropic-version"), version)];
    for beta in h.get_all("anthropic-beta") {
        out.push((HeaderName::from_static("anthropic-beta"), beta.clone()));
    }
    out
}

/// Whether a provider kind has its own token counting API.
fn counts(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Anthropic | ProviderKind::Gemini)
}

fn native(kind: ProviderKind) -> bool {
    kind == ProviderKind::Anthropic
}

/// A Messages request relayed to the client.
struct MessagesCall<'a> {
    secrets: &'a crate::secrets::Secrets,
    msg: &'a messages::Request<'a>,
    /// Its chat translation, parsed.
    req: &'a ChatRequest<'a>,
    /// The client's body.
    raw: &'a [u8],
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl MessagesCall<'_> {
    /// The client's body to `path` of an Anthropic provider, `model` spliced.
    fn native_request(&self, model: &ModelEntry, path: &str, stream: bool) -> Outbound {
        let body = self.msg.rewrite_for_upstream(self.raw, &model.id);
        Outbound {
            path: path.to_string(),
            content_type: HeaderValue::from_static("application/json"),
            accept: if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
            body: Body::One(Bytes::from(body)),
            headers: self.headers.clone(),
        }
    }

    fn translatable(&self) -> Result<(), Refusal> {
        match &self.msg.untranslatable {
            Some(why) => Err(Refusal::Skip(why.clone())),
            None => Ok(()),
        }
    }
}

impl Call for MessagesCall<'_> {
    type Out = ();

    fn resume(&self, model: &ModelEntry, partial: &str) -> Result<Outbound, Refusal> {
        // Continued through the chat translation, Anthropic providers included: the
        // paused stream is a chat stream reshaped into Messages events.
        self.translatable()?;
        super::chat::continuation(model, &self.msg.chat, partial)
    }

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        if native(model.provider_kind) {
            return Ok(self.native_request(model, "/messages", self.msg.stream));
        }
        self.translatable()?;
        providers::translator(model.provider_kind)
            .chat_request(self.req, &self.msg.chat, &model.id)
            .map(|r| Outbound::json(r, self.msg.stream))
            .map_err(Refusal::Final)
    }

    async fn answer(
        &self,
        mut reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<((), Answer), Failure> {
        let model = reply.model;
        let kind = model.provider_kind;
        super::resume::expect_stream(ctx, reply.is_sse())?;
        if reply.is_sse() {
            // A continuation goes through the chat translation even on Anthropic.
            let tr: Box<dyn StreamTranslator> = if native(kind) && ctx.resume.paused().is_none() {
                super::guardrails::anthropic_stream(ctx, Box::new(NativeStream::new(&model.id)))
            } else {
                let inner = providers::translator(kind).chat_stream(&model.id, true);
                let meta = self.msg.meta.clone();
                super::resume::stack(ctx, inner, |tr| {
                    Box::new(MessagesStream::new(tr, meta, &model.id))
                })
            };
            let answer = relay_stream(reply, session, ctx, tr, self.secrets, None).await?;
            return Ok(((), answer));
        }
        let body = reply.whole(ctx).await?;
        let (body, usage) = if native(kind) {
            let (b, usage) = answer::native(&body, &model.id).map_err(Failure::Malformed)?;
            (super::guardrails::messages_answer(ctx, b), usage)
        } else {
            let mut t = providers::translator(kind)
                .chat_response(body, &model.id)
                .map_err(Failure::Malformed)?;
            let guarded = match super::guardrails::chat_answer(ctx, &mut t) {
                Ok(()) => Ok(
                    answer::from_chat_completion(&self.msg.meta, &t.body, t.usage)
                        .map_err(Failure::Malformed)?,
                ),
                Err(e) => Err(e),
            };
            (guarded, t.usage)
        };
        let answer = Answer {
            usage,
            ..reply.answered(false)
        };
        reply.release().await;
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                send_error(session, ctx, &e).await;
                return Ok(((), answer));
            }
        };
        send(session, ctx, answer.status, "application/json", body, &[]).await;
        Ok(((), answer))
    }
}

/// `count_tokens` at a provider that counts: Anthropic's `/messages/count_tokens` with the
/// client's body, Gemini's `countTokens` with the translated request.
struct CountCall<'a>(MessagesCall<'a>);

impl Call for CountCall<'_> {
    type Out = ();

    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal> {
        let c = &self.0;
        match model.provider_kind {
            ProviderKind::Anthropic => Ok(c.native_request(model, "/messages/count_tokens", false)),
            ProviderKind::Gemini => {
                c.translatable()?;
                let up = providers::translator(model.provider_kind)
                    .chat_request(c.req, &c.msg.chat, &model.id)
                    .map_err(Refusal::Final)?;
                let mut native: Value = serde_json::from_slice(&up.body)
                    .map_err(|e| Refusal::Skip(format!("the Gemini request is not JSON: {e}")))?;
                native["model"] = json!(format!("models/{}", model.id));
                let body = json!({ "generateContentRequest": native });
                let mut up = providers::UpstreamRequest::json(
                    up.path.replacen(":generateContent", ":countTokens", 1),
                    &body,
                );
                up.headers.clear();
                Ok(Outbound::json(up, false))
            }
            _ => Err(Refusal::Skip("no token counting API".into())),
        }
    }

    async fn answer(
        &self,
        mut reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<((), Answer), Failure> {
        let body = reply.whole(ctx).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::Malformed(format!("the token count is not JSON: {e}")))?;
        let n = v["input_tokens"]
            .as_u64()
            .or_else(|| v["totalTokens"].as_u64())
            .ok_or_else(|| Failure::Malformed(format!("no token count in {v}")))?;
        let answer = reply.answered(false);
        reply.release().await;
        let body = Bytes::from(json!({ "input_tokens": n }).to_string());
        send(session, ctx, answer.status, "application/json", body, &[]).await;
        Ok(((), answer))
    }
}
