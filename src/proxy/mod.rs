//! The Pingora `ProxyHttp` implementation. Read it as a table of contents: every phase
//! delegates to a plain function in a sibling module.
//!
//! LLM endpoints are served entirely inside `request_filter` (see `relay` for why), local
//! endpoints too; the stock upstream phases are unused for now. `logging` records every
//! request (metrics, request log) through `observe`.

pub mod chat;
pub mod ctx;
pub mod guard;
pub mod local;
pub mod media;
pub mod passthrough;
pub mod relay;
pub mod respond;

use crate::errors::ApiError;
use crate::observe::{analytics, dashboard, metrics, Observer};
use crate::routing::board::Board;
use crate::state::State;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::RequestCtx;
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
    pub redis: Option<Arc<crate::redis_link::RedisLink>>,
}

impl Gateway {
    pub fn new(state: State, board: Arc<Board>, observer: Arc<Observer>) -> Gateway {
        Gateway {
            state: Arc::new(ArcSwap::from_pointee(state)),
            board,
            connector: Connector::new(None),
            observer,
            limiter: Arc::new(crate::limits::Limiter::new(None)),
            cache: Arc::new(crate::cache::Cache::in_memory(&Default::default())),
            redis: None,
        }
    }

    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }
}

/// What a request asks for, by method and path.
enum Endpoint {
    Chat,
    Responses,
    Media(media::Media),
    Models,
    RoutingStatus,
    Health,
    Analytics,
    AnalyticsFailures,
    Usage,
    Metrics,
    NotFound,
    WrongMethod,
}

fn endpoint(method: &http::Method, path: &str) -> Endpoint {
    let (want_post, ep) = match path {
        "/v1/chat/completions" | "/chat/completions" => (true, Endpoint::Chat),
        "/v1/responses" | "/responses" => (true, Endpoint::Responses),
        "/v1/embeddings" | "/embeddings" => (true, Endpoint::Media(media::Media::Embeddings)),
        "/v1/audio/transcriptions" => (true, Endpoint::Media(media::Media::Transcriptions)),
        "/v1/audio/translations" => (true, Endpoint::Media(media::Media::Translations)),
        "/v1/audio/speech" => (true, Endpoint::Media(media::Media::Speech)),
        "/v1/audio/speech-to-speech" => (true, Endpoint::Media(media::Media::SpeechToSpeech)),
        "/v1/models" | "/models" => (false, Endpoint::Models),
        "/v1/routing/status" => (false, Endpoint::RoutingStatus),
        "/health" | "/healthz" => (false, Endpoint::Health),
        "/v1/analytics" => (false, Endpoint::Analytics),
        "/v1/analytics/failures" => (false, Endpoint::AnalyticsFailures),
        "/usage" => (false, Endpoint::Usage),
        "/metrics" => (false, Endpoint::Metrics),
        _ => return Endpoint::NotFound,
    };
    let ok = if want_post {
        method == http::Method::POST
    } else {
        method == http::Method::GET || method == http::Method::HEAD
    };
    if ok {
        ep
    } else {
        Endpoint::WrongMethod
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let state = self.state();
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();

        // The dashboard page holds no data: it asks for the key and sends it on its API calls.
        if !state.auth.is_public(&path) && path != "/usage" {
            let h = &session.req_header().headers;
            let label = state.auth.check(
                h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
                h.get("x-api-key").map(|v| v.as_bytes()),
            );
            match label {
                Some(l) => ctx.key_label = Some(l.to_string()),
                None => {
                    session.set_keepalive(None);
                    respond::send_error(session, ctx, &ApiError::unauthorized()).await;
                    return Ok(true);
                }
            }
        }

        if !guard::admit(self, &state, session, ctx, &path).await {
            return Ok(true); // over a per-client limit: 429 sent
        }

        if path.starts_with("/providers/") {
            let query = session.req_header().uri.query().map(str::to_string);
            match passthrough::target(&state, &path, query.as_deref()).await {
                Ok(t) => {
                    ctx.attempts = 1;
                    ctx.provider = Some(t.upstream.name.clone());
                    ctx.passthrough = Some(t);
                    return Ok(false); // on to the proxy phases
                }
                Err(e) => {
                    respond::send_error(session, ctx, &e).await;
                    return Ok(true);
                }
            }
        }

        let ep = endpoint(&method, &path);
        match ep {
            Endpoint::Chat => chat::handle(self, &state, session, ctx, chat::Api::Chat).await,
            Endpoint::Responses => {
                chat::handle(self, &state, session, ctx, chat::Api::Responses).await
            }
            Endpoint::Media(m) => media::handle(self, &state, session, ctx, m).await,
            Endpoint::Models => respond::send_json(session, ctx, 200, local::models(&state)).await,
            Endpoint::RoutingStatus => {
                respond::send_json(session, ctx, 200, local::routing_status(&state)).await
            }
            Endpoint::Health => {
                let (status, body) = local::health(&state, guard::storage_health(self));
                respond::send_json(session, ctx, status, body).await
            }
            Endpoint::Analytics | Endpoint::AnalyticsFailures => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                let answer = if matches!(ep, Endpoint::Analytics) {
                    analytics::analytics(&self.observer, &query).await
                } else {
                    analytics::failures(&self.observer, &query).await
                };
                match answer {
                    Ok(body) => respond::send_json(session, ctx, 200, body).await,
                    Err(e) => respond::send_error(session, ctx, &e).await,
                }
            }
            Endpoint::Usage => {
                let page = bytes::Bytes::from_static(dashboard::PAGE.as_bytes());
                respond::send(session, ctx, 200, "text/html; charset=utf-8", page, &[]).await
            }
            Endpoint::Metrics => {
                let body = bytes::Bytes::from(metrics::render());
                let ct = "text/plain; version=0.0.4; charset=utf-8";
                respond::send(session, ctx, 200, ct, body, &[]).await
            }
            Endpoint::NotFound => {
                respond::send_error(session, ctx, &ApiError::not_found(&path)).await
            }
            Endpoint::WrongMethod => {
                let e = ApiError::method_not_allowed(method.as_str(), &path);
                respond::send_error(session, ctx, &e).await
            }
        }
        Ok(true)
    }

    /// Every request ends here, whichever way it was answered: record it.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.observer.record(session, ctx);
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
        respond::gateway_headers(upstream_response, ctx);
        Ok(())
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
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
            _ if e.esource() == &pingora::ErrorSource::Downstream => 400,
            _ if e.esource() == &pingora::ErrorSource::Upstream => 502,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            let err = match code {
                400..=499 => ApiError::invalid(format!("The request could not be processed: {e}")),
                502 => ApiError::upstream(502, format!("Upstream failure: {e}")),
                _ => ApiError::internal(format!("Internal gateway error: {e}")),
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
