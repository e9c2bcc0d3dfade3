//! The Pingora `ProxyHttp` implementation. Read it as a table of contents: every phase
//! delegates to a plain function in a sibling module.
//!
//! LLM endpoints are served entirely inside `request_filter` (see `relay` for why), local
//! endpoints too; the stock upstream phases are unused for now. `logging` records every
//! request (metrics, request log) through `observe`.

pub mod attempt;
pub mod body;
pub mod chat;
pub mod controls;
pub mod ctx;
pub mod endpoint;
pub mod guard;
pub mod guardrails;
pub mod images;
pub mod local;
pub mod media;
pub mod messages;
pub mod openapi;
pub mod passthrough;
pub mod record;
pub mod respond;
pub mod resume;
pub mod spend;
pub mod videos;

use crate::errors::ApiError;
use crate::live::Board;
use crate::observe::{analytics, dashboard, metrics, Observer};
use crate::state::State;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::RequestCtx;
use endpoint::Handler;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;

/// The gateway service.
pub struct Gateway {
    /// The running config generation, swapped whole on reload; shared with the metrics
    /// collector, which reads model states at scrape time.
    pub state: Arc<ArcSwap<State>>,
    /// Live model state (health, daily counts) across config generations.
    pub board: Arc<Board>,
    /// Pooled upstream connections, shared by every request.
    pub connector: Connector,
    /// Metrics and the request log.
    pub observer: Arc<Observer>,
    /// Per-client limits, the response cache and the optional Redis link (see `guard`).
    pub limiter: Arc<crate::limits::Limiter>,
    pub cache: Arc<crate::cache::Cache>,
    pub redis: Option<Arc<crate::live::redis_link::RedisLink>>,
    /// Per-key budgets and tokens per minute (`limits::budget`), across config generations.
    pub budgets: Arc<crate::limits::budget::Budgets>,
    /// The client-connection gate (shared with `conn::BoundedHttp`): a request waiting for
    /// its body counts as waiting, like a connection waiting for its head.
    pub gate: Arc<crate::conn::Gate>,
    /// Generated images kept for their URLs (`[images]`), in the embedded store.
    pub images: Arc<crate::image_files::ImageFiles>,
    /// Video jobs handed to providers (`POST /v1/videos`), in the embedded store.
    pub videos: Arc<crate::video_jobs::VideoJobs>,
}

impl Gateway {
    pub fn new(state: State, board: Arc<Board>, observer: Arc<Observer>) -> Gateway {
        let images = crate::image_files::ImageFiles::new(&state.config.storage.path);
        let videos = crate::video_jobs::VideoJobs::new(&state.config.storage.path);
        Gateway {
            state: Arc::new(ArcSwap::from_pointee(state)),
            board,
            connector: Connector::new(None),
            observer,
            limiter: Arc::new(crate::limits::Limiter::new(None)),
            cache: Arc::new(crate::cache::Cache::in_memory(&Default::default())),
            redis: None,
            budgets: Arc::new(crate::limits::budget::Budgets::new(
                None,
                Arc::new(crate::limits::budget::SystemClock),
            )),
            gate: Arc::new(crate::conn::Gate::default()),
            images: Arc::new(images),
            videos: Arc::new(videos),
        }
    }

    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }
}

/// Boxes the future `make` returns, built directly in its heap slot.
///
/// `Box::pin(handler(..))` builds the handler's future on the stack and then copies it into
/// the box: tens of kilobytes per request for the chat handler, whose future holds the
/// attempt engine's (callgrind counted ~13,000 instructions of `memcpy` per request).
/// Allocating first and writing the call's result into the allocation lets the compiler
/// have the call write there (LLVM's call-slot optimisation), so nothing is copied.
fn in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let state = self.state();
        let path = session.req_header().uri.path();
        let ep = endpoint::find(path);
        ctx.endpoint = ep;

        if !state.config.server.cors_origins.is_empty() {
            ctx.cors = respond::cors_origin(&state.config.server.cors_origins, session);
            if session.req_header().method == http::Method::OPTIONS && path.starts_with("/v1/") {
                respond::preflight(session, ctx).await;
                return Ok(true);
            }
        }

        if ep.keyed && !state.auth.is_public(path) {
            match spend::authenticate(&state, &session.req_header().headers, ctx) {
                true => {}
                false => {
                    // A failed authentication costs the client IP a request like any
                    // other, so keys cannot be guessed at line rate.
                    if guard::admit(self, &state, session, ctx).await {
                        session.set_keepalive(None);
                        respond::send_error(session, ctx, &ApiError::unauthorized()).await;
                    }
                    return Ok(true);
                }
            }
        }
        if ep.model {
            if !guard::admit(self, &state, session, ctx).await {
                return Ok(true); // over a per-client limit: 429 sent
            }
            match controls::Controls::parse(&session.req_header().headers) {
                Ok(c) => ctx.controls = c,
                Err(e) => {
                    respond::send_error(session, ctx, &e).await;
                    return Ok(true);
                }
            }
        }
        if !ep.methods.allows(&session.req_header().method) {
            let req = session.req_header();
            let e = ApiError::method_not_allowed(req.method.as_str(), req.uri.path());
            respond::send_error(session, ctx, &e).await;
            return Ok(true);
        }

        // Model handlers are boxed one by one: inline, each request's future (boxed again by
        // async_trait) would be as large as the largest handler's, and copied at that size.
        // `in_place` builds each in its box, so it is not copied either.
        match ep.handler {
            Handler::Passthrough => {
                let req = session.req_header();
                if !passthrough::method_allowed(&req.method) {
                    let e = ApiError::method_not_allowed(req.method.as_str(), req.uri.path());
                    respond::send_error(session, ctx, &e).await;
                    return Ok(true);
                }
                match passthrough::target(&state, req.uri.path(), req.uri.query()).await {
                    Ok(t) => {
                        ctx.attempts = 1;
                        ctx.provider = Some(t.upstream.name.clone());
                        ctx.passthrough = Some(t);
                        return Ok(false); // on to the proxy phases
                    }
                    Err(e) => respond::send_error(session, ctx, &e).await,
                }
            }
            Handler::Chat => {
                in_place(|| chat::handle(self, &state, session, ctx, chat::Api::Chat)).await
            }
            Handler::Responses => {
                in_place(|| chat::handle(self, &state, session, ctx, chat::Api::Responses)).await
            }
            Handler::Messages => in_place(|| messages::handle(self, &state, session, ctx)).await,
            Handler::Embeddings => in_place(|| media::embeddings(self, &state, session, ctx)).await,
            Handler::Transcriptions => {
                in_place(|| media::transcription(self, &state, session, ctx, false)).await
            }
            Handler::Translations => {
                in_place(|| media::transcription(self, &state, session, ctx, true)).await
            }
            Handler::Speech => in_place(|| media::speech(self, &state, session, ctx)).await,
            Handler::SpeechToSpeech => {
                in_place(|| media::speech_to_speech(self, &state, session, ctx)).await
            }
            Handler::Images => in_place(|| images::generations(self, &state, session, ctx)).await,
            Handler::ImageFile => images::file(self, session, ctx).await,
            Handler::Videos => in_place(|| videos::create(self, &state, session, ctx)).await,
            Handler::Video => in_place(|| videos::job(self, &state, session, ctx, false)).await,
            Handler::VideoContent => {
                in_place(|| videos::job(self, &state, session, ctx, true)).await
            }
            Handler::Models => respond::send_json(session, ctx, 200, local::models(&state)).await,
            Handler::Budget => {
                let body = spend::status(self, ctx).await;
                respond::send_json(session, ctx, 200, bytes::Bytes::from(body.to_string())).await
            }
            Handler::RoutingStatus => {
                // Public by default: key hints only for a caller with a valid key.
                let detailed = ctx.key_label.is_some() || {
                    let h = &session.req_header().headers;
                    state
                        .auth
                        .check(
                            h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
                            h.get("x-api-key").map(|v| v.as_bytes()),
                        )
                        .is_some()
                };
                let body = local::routing_status(&state, detailed);
                respond::send_json(session, ctx, 200, body).await
            }
            Handler::Health => {
                let (status, body) = local::health(&state, guard::storage_health(self));
                respond::send_json(session, ctx, status, body).await
            }
            Handler::Analytics | Handler::AnalyticsFailures => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                let answer = if ep.handler == Handler::Analytics {
                    analytics::analytics(&self.observer, &query).await
                } else {
                    analytics::failures(&self.observer, &query).await
                };
                match answer {
                    Ok(body) => {
                        let body = spend::with_budget_lines(&state, &query, body);
                        respond::send_json(session, ctx, 200, body).await
                    }
                    Err(e) => respond::send_error(session, ctx, &e).await,
                }
            }
            Handler::Usage => {
                let page = bytes::Bytes::from_static(dashboard::PAGE.as_bytes());
                let ct = "text/html; charset=utf-8";
                let headers = dashboard::security_headers();
                respond::send(session, ctx, 200, ct, page, headers).await
            }
            Handler::OpenApi => respond::send_json(session, ctx, 200, openapi::body()).await,
            Handler::Metrics => {
                let body = bytes::Bytes::from(metrics::render());
                let ct = "text/plain; version=0.0.4; charset=utf-8";
                respond::send(session, ctx, 200, ct, body, &[]).await
            }
            Handler::NotFound => {
                let e = ApiError::not_found(session.req_header().uri.path());
                respond::send_error(session, ctx, &e).await
            }
        }
        Ok(true)
    }

    /// The connection layer's note about this request's connection (`conn::Pipelined`: more
    /// requests were pipelined behind it, so this answer closes the connection).
    fn on_connection_reuse(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
        note: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if note.is::<crate::conn::Pipelined>() {
            session.set_keepalive(None);
        }
    }

    /// Every request ends here, whichever way it was answered: record it.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        record::record(&self.observer, session, ctx);
    }

    /// Only passthrough requests reach the proxy phases.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_started = Some(std::time::Instant::now());
        match &ctx.passthrough {
            Some(t) => Ok(Box::new((*t.peer).clone())),
            None => Error::e_explain(ErrorType::InternalError, "no upstream for this request"),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        passthrough::rewrite(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = upstream_response.status.as_u16();
        if let Some(t) = ctx.upstream_started.take() {
            ctx.upstream_wait += t.elapsed();
        }
        if ctx.status >= 400 {
            // An error body may echo the key the provider received: held and scrubbed.
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            ctx.error_body = Some(bytes::BytesMut::new());
        }
        respond::gateway_headers(upstream_response, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(held) = &mut ctx.error_body {
            passthrough::hold_error_body(held, body, end_of_stream, &self.state().secrets);
        }
        Ok(None)
    }

    /// Errors Pingora raises itself (bad HTTP, internal failures) get the OpenAI envelope.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // The client's connection broke: nobody to answer. The provider's breaking
            // before its answer is a 502 like any upstream failure.
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
                if e.esource() != &pingora::ErrorSource::Upstream =>
            {
                0
            }
            _ if e.esource() == &pingora::ErrorSource::Downstream => 400,
            _ if e.esource() == &pingora::ErrorSource::Upstream => 502,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            // In words, without Pingora's internals (Pingora logs the full error).
            let err = match code {
                400..=499 => {
                    ApiError::invalid("The request could not be processed: it is not valid HTTP.")
                }
                502 => {
                    ApiError::upstream(502, format!("Upstream failure: {}.", attempt::describe(e)))
                }
                _ => {
                    ApiError::internal("Internal gateway error: the gateway's log has the details.")
                }
            };
            let err = ApiError {
                status: code,
                ..err
            };
            respond::send_error(session, ctx, &err).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests;
