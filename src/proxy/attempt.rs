//! The one attempt engine every model endpoint runs (chat, Responses, embeddings, audio,
//! speech-to-speech, images, the creation of video jobs): take the planned candidates in order, claim one (a slot at its
//! provider, a key of its pool, the recovery probe), build its upstream request, send it,
//! classify the answer, decide what comes next (another key of the pool, the next candidate,
//! or done) and record the attempt — health, daily count, rate pace, the attempt metric,
//! usage and price — in one place.
//!
//! An endpoint supplies only what differs, as a [`Call`]: how to build its request for a
//! model, and how to read a successful answer (relay it to the client, or capture it).
//! [`open`] and [`fetch`] are the one exchange outside the engine: a `GET` to the provider
//! that already holds a video job (its poll, its download), with no routing.
//!
//! The gateway drives the upstream exchange itself with Pingora's pooled connector rather
//! than the stock proxy phases: that works for bodies of any size (the stock path can replay
//! only 64 KiB on retry), and lets an answer be held until its first content, so a provider
//! that opens a 200 and dies at once is still failed over invisibly.

use super::ctx::RequestCtx;
use super::respond::{send_error, send_upstream_error};
use super::Gateway;
use crate::errors::{upstream_envelope, ApiError};
use crate::live::endpoints::Lease;
use crate::live::slots::Slot;
use crate::observe::metrics;
use crate::providers::media::Piece;
use crate::providers::{self, Body, Outbound, Usage};
use crate::routing::health::{parse_reset, Report};
use crate::routing::{Ask, ModelEntry, Needs};
use crate::state::State;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most of an upstream answer read whole into memory (JSON answers, transcripts,
/// embeddings, audio in JSON).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// The most of an upstream error body kept for the client's error message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long a pooled key rests after a 429 that did not say (`retry-after`).
const KEY_REST: Duration = Duration::from_secs(30);

/// What one endpoint adds to the engine.
pub trait Call: Sync {
    /// What a successful attempt hands back to the endpoint (`()` when the answer was
    /// already relayed to the client).
    type Out: Send;

    /// The upstream request for `model`.
    fn build(&self, model: &ModelEntry) -> Result<Outbound, Refusal>;

    /// Reads a 2xx answer. `Err` while nothing has reached the client: the engine fails
    /// over. Once the client has seen bytes, a failure is an `Ok` with `answer.broken`.
    fn answer(
        &self,
        reply: Reply<'_>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> impl Future<Output = Result<(Self::Out, Answer), Failure>> + Send;

    /// The continuation of a stream paused after `partial` (stream resume) for `model`.
    /// By default an endpoint does not resume: the candidate is skipped.
    fn resume(&self, _model: &ModelEntry, _partial: &str) -> Result<Outbound, Refusal> {
        Err(Refusal::Skip(
            "this endpoint does not resume streams".into(),
        ))
    }

    /// The error to answer when every candidate failed, where the endpoint can say more
    /// than the generic one.
    fn exhausted(&self, _failures: &[(String, Failure)], _ctx: &RequestCtx) -> Option<ApiError> {
        None
    }
}

/// Why a candidate is not tried.
pub enum Refusal {
    /// This model cannot serve the request as asked (another may).
    Skip(String),
    /// The request cannot be served as asked: answered to the client at once.
    Final(ApiError),
}

/// Time limits for one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Until the response head arrives.
    pub first_byte: Duration,
    /// Between two reads of the body (SSE silence).
    pub idle: Duration,
}

/// Why one attempt failed in a way worth trying the next candidate.
#[derive(Debug)]
pub enum Failure {
    /// Could not connect, TLS failed, or the connection broke before an answer.
    Connect(String),
    /// No answer (or no further body) within the time limit.
    Timeout(String),
    /// A retryable status: 429, 5xx, 408, or 401/403 (a bad provider key is the gateway's
    /// problem, not the client's).
    Status {
        status: u16,
        /// The provider's error, as an OpenAI envelope.
        body: Bytes,
        /// When the provider said to come back (`retry-after`, or the later of its
        /// `x-ratelimit-reset-*` hints).
        retry_after: Option<Duration>,
    },
    /// The provider answered 200 with something that is not its format.
    Malformed(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "{e}"),
            Failure::Timeout(e) => write!(f, "timeout: {e}"),
            Failure::Malformed(e) => write!(f, "bad answer: {e}"),
            Failure::Status { status, body, .. } => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                write!(f, "HTTP {status} {}", text.trim())
            }
        }
    }
}

impl Failure {
    /// `outcome` label of `freeway_upstream_attempts_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Status { status: 429, .. } => "rate_limited",
            Failure::Status {
                status: 401 | 403, ..
            } => "auth_error",
            Failure::Status { .. } => "upstream_error",
            Failure::Timeout(_) => "timeout",
            Failure::Connect(_) => "connect_error",
            Failure::Malformed(_) => "malformed",
        }
    }
}

/// What an answered attempt produced, for health tracking and the request log.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    /// Time from sending the request to the first content (stream) or the whole answer.
    pub first_content: Duration,
    /// Tokens the provider reported.
    pub usage: Option<Usage>,
    /// The answer broke off after it started reaching the client.
    pub broken: bool,
    pub streamed: bool,
}

impl Answer {
    /// `outcome` label of `freeway_upstream_attempts_total`.
    fn outcome(&self) -> &'static str {
        match self.status {
            _ if self.broken => "broken_stream",
            400.. => "client_error",
            _ => "success",
        }
    }

    fn report(&self) -> Report {
        if self.broken {
            Report::Failed {
                reason: "the answer broke off mid-way".into(),
            }
        } else if self.status >= 400 {
            Report::ClientError
        } else {
            Report::Success {
                latency: self.first_content,
                streamed: self.streamed,
            }
        }
    }
}

/// A 2xx answer being read.
pub struct Reply<'a> {
    http: HttpSession,
    peer: Arc<HttpPeer>,
    connector: &'a Connector,
    pub model: &'a ModelEntry,
    /// When the request was sent.
    pub started: Instant,
    pub timeouts: Timeouts,
}

impl Reply<'_> {
    pub fn status(&self) -> u16 {
        self.http
            .response_header()
            .map_or(200, |h| h.status.as_u16())
    }

    /// The answer as it stands now: its status, and the time since the request was sent
    /// as the time to first content.
    pub fn answered(&self, streamed: bool) -> Answer {
        Answer {
            status: self.status(),
            first_content: self.started.elapsed(),
            streamed,
            ..Answer::default()
        }
    }

    pub fn header(&self, name: http::header::HeaderName) -> Option<&str> {
        self.http
            .response_header()?
            .headers
            .get(name)?
            .to_str()
            .ok()
    }

    pub fn is_sse(&self) -> bool {
        self.header(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    /// The next body chunk (`None` at the end); upstream time is not gateway overhead.
    pub async fn chunk(&mut self, ctx: &mut RequestCtx) -> pingora::Result<Option<Bytes>> {
        read_chunk(&mut self.http, ctx).await
    }

    /// The whole body, failing over if it is larger than [`MAX_ANSWER_BYTES`].
    pub async fn whole(&mut self, ctx: &mut RequestCtx) -> Result<Bytes, Failure> {
        read_capped(&mut self.http, MAX_ANSWER_BYTES, ctx).await
    }

    /// The first-content failure for an error while reading.
    pub fn read_failure(&self, e: &Error, what: &str) -> Failure {
        if is_timeout(e) {
            Failure::Timeout(format!(
                "{what}: silent for {} ms",
                self.timeouts.idle.as_millis()
            ))
        } else {
            Failure::Connect(describe(e))
        }
    }

    /// Reads the answer whole and releases the connection: (its content type, its body, the
    /// answer as it stands).
    pub async fn read_all(
        mut self,
        ctx: &mut RequestCtx,
    ) -> Result<(String, Bytes, Answer), Failure> {
        let body = self.whole(ctx).await?;
        let ctype = self
            .header(http::header::CONTENT_TYPE)
            .unwrap_or("")
            .to_string();
        let answered = self.answered(false);
        self.release().await;
        Ok((ctype, body, answered))
    }

    /// Returns the connection to the pool if the answer was read to its end.
    pub async fn release(mut self) {
        if self.http.response_done() {
            let idle = self.peer.options.idle_timeout;
            self.connector
                .release_http_session(self.http, &*self.peer, idle)
                .await;
        } else {
            self.http.shutdown().await;
        }
    }
}

/// The request's routing inputs from its controls: the candidates to try, in order.
pub fn plan(
    state: &State,
    ctx: &RequestCtx,
    model: Option<&str>,
    needs: &Needs,
) -> Result<Vec<usize>, ApiError> {
    let c = &ctx.controls;
    let ask = Ask {
        model,
        needs,
        fallback_auto: c.fallback_auto,
        metadata: c.metadata.as_ref(),
        max_attempts: c.attempts(state.config.server.max_attempts),
        provider: c.force_provider.as_deref(),
    };
    let planned = state
        .router
        .plan(&state.catalog, &state.live(), &ask, Instant::now());
    super::spend::filter_plan(state, ctx, model, planned)
}

/// The time limits for this request.
pub fn timeouts(state: &State, ctx: &RequestCtx) -> Timeouts {
    let server = &state.config.server;
    Timeouts {
        first_byte: Duration::from_millis(ctx.controls.first_byte_ms(server.upstream_timeout_ms)),
        idle: Duration::from_millis(server.stream_idle_timeout_ms),
    }
}

/// Runs the candidates of `plan` until one answers. `None` when the client has already been
/// answered with an error (every attempt failed, or the request was refused).
pub async fn run<C: Call>(
    gw: &Gateway,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    plan: Vec<usize>,
    needs: &Needs,
    call: &C,
) -> Option<C::Out> {
    let timeouts = timeouts(state, ctx);
    ctx.resume.on = ctx.controls.resume(state.config.server.stream_resume);
    let max = ctx.controls.attempts(state.config.server.max_attempts);
    let mut failures: Vec<(String, Failure)> = Vec::new();
    let mut refusals = Vec::new();
    // A model whose key was rate limited or rejected comes again at once with another key
    // of its provider's pool (after the client's retry delay, if it asked for one).
    let mut queue = VecDeque::from(plan);
    let mut tried: Vec<usize> = Vec::new();
    // A pooled provider's endpoints this request tried, and the key to keep on the next.
    let mut pool_turn = PoolTurn::default();
    while let Some(idx) = queue.pop_front() {
        let model = &state.catalog.models[idx];
        // A paused stream: the continuation, within its deadline and the attempts allowed.
        let (request, timeouts) = match ctx.resume.paused() {
            None => (call.build(model), timeouts),
            Some(p) => {
                let left = p.deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || ctx.attempts as usize >= max {
                    break;
                }
                let capped = Timeouts {
                    first_byte: timeouts.first_byte.min(left),
                    idle: timeouts.idle,
                };
                (call.resume(model, &p.partial), capped)
            }
        };
        let request = match request {
            Ok(r) => r,
            Err(Refusal::Skip(why)) => {
                refusals.push(format!("`{}`: {why}", model.qualified));
                continue;
            }
            Err(Refusal::Final(e)) => {
                if !super::resume::give_up(session, ctx, &e.message).await {
                    send_error(session, ctx, &e).await;
                }
                return None;
            }
        };
        let retry = tried.iter().filter(|&&i| i == idx).count() as u32;
        if retry > 0 {
            let wait = ctx.controls.retry_delay(retry);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let Ok(endpoint) = pool_turn.lease(state, model, ctx) else {
            continue;
        };
        let Some(_slot) = claim(state, idx, ctx) else {
            continue;
        };
        pool_turn.keep_key(ctx);
        tried.push(idx);
        ctx.price = Some(model.cost);
        let hold = match super::spend::reserve(gw, ctx, model, needs).await {
            Ok(h) => h,
            Err(e) => {
                if !super::resume::give_up(session, ctx, &e.message).await {
                    send_error(session, ctx, &e).await;
                }
                return None;
            }
        };
        let reserved = gw.board.pace.reserve(model, needs);
        let attempt_start = Instant::now();
        crate::telemetry::attempt_begin(&mut ctx.trace, session.req_header(), ctx.start, &request);
        let ep = endpoint.as_ref().map_or(0, |l| l.index);
        let outcome = attempt(gw, state, model, request, timeouts, call, session, ctx, ep).await;
        let endpoint_fault =
            observe_endpoint(state, model, endpoint.as_ref(), &outcome, attempt_start);
        let live = &state.models[idx];
        match outcome {
            Attempt::Done(out, answer) => {
                // This attempt's own usage (a resumed stream reports every attempt's).
                let own = ctx.resume.own(answer.usage);
                gw.board.pace.settle_answer(model, reserved, own);
                record_answer(ctx, model, live, attempt_start, &answer);
                super::spend::settle(gw, ctx, model, hold, own).await;
                trace_attempt(ctx, state, model, ep, needs, Ok(&answer));
                if super::resume::after_answer(ctx, own) {
                    continue; // the stream broke off and waits for a continuation
                }
                return Some(out);
            }
            Attempt::Refused { status, body } => {
                gw.board.pace.release(model, reserved);
                super::spend::release(gw, hold).await;
                let answer = Answer {
                    status,
                    first_content: attempt_start.elapsed(),
                    ..Answer::default()
                };
                record_answer(ctx, model, live, attempt_start, &answer);
                trace_attempt(ctx, state, model, ep, needs, Ok(&answer));
                let body = upstream_envelope(status, &model.provider_name, &body);
                let why = format!(
                    "`{}` refused the continuation: HTTP {status} {}",
                    model.qualified,
                    String::from_utf8_lossy(&body)
                );
                if !super::resume::give_up(session, ctx, &why).await {
                    send_upstream_error(session, ctx, status, body, &[]).await;
                }
                return None;
            }
            Attempt::Retry(failure) => {
                metrics::attempt(&model.provider_name, &model.id, failure.outcome());
                trace_attempt(ctx, state, model, ep, needs, Err(&failure));
                gw.board.pace.release(model, reserved);
                super::spend::release(gw, hold).await;
                let why = state.secrets.scrub(&failure.to_string()).into_owned();
                log::warn!("{}: {} failed: {why}", ctx.id, model.qualified);
                // A client's own key says nothing about the provider's keys.
                let byok = ctx.spend.byok.is_some();
                if endpoint_fault && pool_turn.retry(state, model, ctx, max, &mut queue, idx) {
                    // Another endpoint of the same provider, before the next model: the
                    // failure was this endpoint's, not the model's.
                    ctx.failures
                        .push(format!("{} (one endpoint): {why}", model.qualified));
                    failures.push((model.provider_name.clone(), failure));
                    continue;
                }
                if !byok && record_failure(state, idx, ctx.upstream_key, &failure) {
                    queue.push_front(idx);
                }
                ctx.failures.push(format!("{}: {why}", model.qualified));
                failures.push((model.provider_name.clone(), failure));
            }
        }
    }
    if ctx.resume.paused().is_some() {
        let mut tried: Vec<String> = ctx.failures.clone();
        tried.append(&mut refusals);
        let detail = if tried.is_empty() {
            "no candidate left".to_string()
        } else {
            tried.join("; ")
        };
        super::resume::give_up(session, ctx, &detail).await;
        return None;
    }
    if failures.is_empty() {
        let e = if refusals.is_empty() {
            // Every candidate was claimed by other requests' probes meanwhile.
            ApiError::no_capacity(format!(
                "No capable model can serve this request now: {}.",
                ctx.failures.join("; ")
            ))
        } else {
            let mut e = ApiError::invalid(format!(
                "No candidate model can serve this request as asked: {}.",
                refusals.join("; ")
            ));
            e.code = Some("model_not_capable");
            e
        };
        send_error(session, ctx, &e).await;
        return None;
    }
    ctx.failures.append(&mut refusals);
    match call.exhausted(&failures, ctx) {
        Some(e) => send_error(session, ctx, &e).await,
        None => {
            let now = Instant::now();
            let cooling = tried
                .iter()
                .filter_map(|&i| match state.models[i].health.lock().gate(now) {
                    crate::routing::health::Gate::Cooling(until) => {
                        Some(until.saturating_duration_since(now).as_secs().max(1))
                    }
                    _ => None,
                })
                .min();
            let pinned =
                !ctx.controls.fallback_auto && state.catalog.pinned(ctx.requested_model.as_deref());
            answer_exhausted(session, ctx, failures, Exhausted { pinned, cooling }).await
        }
    }
    None
}

/// Records an answered attempt: the attempt metric, health, daily count, usage and the
/// time to first content.
fn record_answer(
    ctx: &mut RequestCtx,
    model: &ModelEntry,
    live: &crate::live::ModelState,
    attempt_start: Instant,
    answer: &Answer,
) {
    metrics::attempt(&model.provider_name, &model.id, answer.outcome());
    live.count_request();
    live.report(&answer.report());
    if answer.usage.is_some() {
        ctx.usage = answer.usage;
    }
    // A resumed stream's first content came with its first attempt.
    if ctx.ttft.is_none() {
        ctx.ttft = Some(attempt_start.duration_since(ctx.start) + answer.first_content);
    }
}

/// Closes the attempt's client span (`[telemetry]`; one branch when not traced).
fn trace_attempt(
    ctx: &mut RequestCtx,
    state: &State,
    model: &ModelEntry,
    ep: usize,
    needs: &Needs,
    end: Result<&Answer, &Failure>,
) {
    if !matches!(ctx.trace, crate::telemetry::TraceSlot::On(_)) {
        return;
    }
    let (status, error_type, answer) = match end {
        Ok(a) if a.broken => (a.status, Some("broken_stream".to_string()), Some(a)),
        Ok(a) if a.status >= 400 => (a.status, Some(a.status.to_string()), Some(a)),
        Ok(a) => (a.status, None, Some(a)),
        Err(Failure::Status { status, .. }) => (*status, Some(status.to_string()), None),
        Err(Failure::Timeout(_)) => (0, Some("timeout".to_string()), None),
        Err(Failure::Connect(_)) => (0, Some("connect_error".to_string()), None),
        Err(Failure::Malformed(_)) => (0, Some("malformed_response".to_string()), None),
    };
    let end = crate::telemetry::AttemptEnd {
        operation: crate::telemetry::operation(ctx.endpoint.label),
        provider: &model.provider_name,
        model: &model.id,
        url: state.upstreams[model.provider]
            .endpoints
            .get(ep)
            .and_then(|e| e.url.as_ref()),
        attempt: ctx.attempts,
        max_tokens: needs.max_output_tokens,
        status,
        usage: answer.and_then(|a| a.usage),
        first_content: answer.filter(|a| a.status < 400).map(|a| a.first_content),
        streamed: answer.is_some_and(|a| a.streamed),
        broken: answer.is_some_and(|a| a.broken),
        error_type,
    };
    crate::telemetry::attempt_end(&mut ctx.trace, end);
}

/// How one attempt ended.
enum Attempt<T> {
    /// An answer (relayed or captured).
    Done(T, Answer),
    /// The provider refused the request itself (400, 404, 413, 422…): final, the error is
    /// passed on, never retried elsewhere.
    Refused {
        status: u16,
        body: Bytes,
    },
    Retry(Failure),
}

#[allow(clippy::too_many_arguments)]
async fn attempt<C: Call>(
    gw: &Gateway,
    state: &State,
    model: &ModelEntry,
    request: Outbound,
    timeouts: Timeouts,
    call: &C,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ep: usize,
) -> Attempt<C::Out> {
    let upstream = &state.upstreams[model.provider];
    let peer = match upstream.peer(ep).await {
        Ok(p) => p,
        Err(e) => return Attempt::Retry(Failure::Connect(e)),
    };
    let mut header = match upstream.request_header(&request, ctx.upstream_key, ep) {
        Ok(mut h) => match &ctx.spend.byok {
            Some(k) => match super::spend::apply_client_key(&mut h, model, k) {
                Ok(()) => h,
                Err(e) => return Attempt::Retry(Failure::Connect(describe(&e))),
            },
            None => h,
        },
        Err(e) => return Attempt::Retry(Failure::Connect(describe(&e))),
    };
    crate::telemetry::attempt_header(&mut ctx.trace, &mut header);
    let started = Instant::now();
    let sent = send_request(&gw.connector, &peer, header, &request, timeouts).await;
    ctx.upstream_wait += started.elapsed();
    let mut http = match sent {
        Ok(h) => h,
        Err(f) => return Attempt::Retry(f),
    };
    let Some(head) = http.response_header() else {
        return Attempt::Retry(Failure::Connect("no response header".into()));
    };
    let status = head.status.as_u16();
    let retry_after = retry_hint(&head.headers);
    http.set_read_timeout(Some(timeouts.idle));
    if !(200..300).contains(&status) {
        let body = read_capped(&mut http, MAX_ERROR_BODY, ctx)
            .await
            .unwrap_or_default();
        // A provider may echo the key it was sent: scrubbed before it goes anywhere.
        let body = super::spend::scrub(ctx, state.secrets.scrub_bytes(&body).into());
        // Kept as an OpenAI envelope: it may become the final answer.
        let body = providers::translator(model.provider_kind).error(status, &body, &upstream.name);
        // The provider refusing a client's own key is the client's answer.
        let client_key_refused = ctx.spend.byok.is_some() && matches!(status, 401 | 403);
        return if is_retryable_status(status) && !client_key_refused {
            Attempt::Retry(Failure::Status {
                status,
                body,
                retry_after,
            })
        } else {
            Attempt::Refused { status, body }
        };
    }
    let reply = Reply {
        http,
        peer,
        connector: &gw.connector,
        model,
        started,
        timeouts,
    };
    match call.answer(reply, session, ctx).await {
        Ok((out, answer)) => Attempt::Done(out, answer),
        Err(f) => Attempt::Retry(f),
    }
}

/// An answer fetched outside the engine (`fetch`), read whole.
pub struct Fetched {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// An answer fetched outside the engine (`open`) whose head has arrived: its body is read
/// chunk by chunk (a video relayed as it comes) or whole.
pub struct Opened {
    http: HttpSession,
    peer: Arc<HttpPeer>,
    pub status: u16,
    pub content_type: String,
    /// `content-length`, when the provider said.
    pub length: Option<u64>,
    /// Where a redirect points.
    location: Option<String>,
}

impl Opened {
    /// The next body chunk (`None` at the end).
    pub async fn chunk(&mut self, ctx: &mut RequestCtx) -> pingora::Result<Option<Bytes>> {
        read_chunk(&mut self.http, ctx).await
    }

    /// The whole body (an error body scrubbed of secrets), the connection released.
    pub async fn whole(
        mut self,
        gw: &Gateway,
        state: &State,
        ctx: &mut RequestCtx,
    ) -> Result<Fetched, Failure> {
        let ok = (200..300).contains(&self.status);
        let cap = if ok { MAX_ANSWER_BYTES } else { MAX_ERROR_BODY };
        let body = read_capped(&mut self.http, cap, ctx).await?;
        let (status, content_type) = (self.status, std::mem::take(&mut self.content_type));
        self.release(gw).await;
        // A provider may echo the key it was sent.
        let body = if ok {
            body
        } else {
            Bytes::from(state.secrets.scrub_bytes(&body))
        };
        Ok(Fetched {
            status,
            content_type,
            body,
        })
    }

    /// Returns the connection to the pool if the answer was read to its end.
    pub async fn release(self, gw: &Gateway) {
        let Opened { mut http, peer, .. } = self;
        if http.response_done() {
            let idle = peer.options.idle_timeout;
            gw.connector.release_http_session(http, &*peer, idle).await;
        } else {
            http.shutdown().await;
        }
    }
}

/// Redirects a download follows at most.
const MAX_REDIRECTS: usize = 3;

/// `GET {base}{path}` at `model`'s provider with key `key` of its pool, read whole: a video
/// job's poll, which must go to the provider that holds the job. See [`open`].
pub async fn fetch(
    gw: &Gateway,
    state: &State,
    model: &ModelEntry,
    key: Option<usize>,
    path: &str,
    ctx: &mut RequestCtx,
) -> Result<Fetched, Failure> {
    open(gw, state, model, key, path, ctx)
        .await?
        .whole(gw, state, ctx)
        .await
}

/// `GET {base}{path}` (or a URL on the provider's host) at `model`'s provider with key `key`
/// of its pool, up to its response head: a video job's poll or download, which must go to
/// the provider that holds the job (no failover, no health report: the job is not a new
/// request to route). Redirects are followed; the key goes only to the provider's own host
/// (a download Gemini redirects to its storage is fetched there without it). `Err` is a
/// failure to reach the provider, in words for the client.
pub async fn open(
    gw: &Gateway,
    state: &State,
    model: &ModelEntry,
    key: Option<usize>,
    path: &str,
    ctx: &mut RequestCtx,
) -> Result<Opened, Failure> {
    let upstream = &state.upstreams[model.provider];
    let timeouts = timeouts(state, ctx);
    let mut target = path.to_string();
    let mut redirects = 0;
    loop {
        let own = !target.starts_with("http") || upstream.serves_url(0, &target);
        let (peer, header) = if own {
            let peer = upstream.peer(0).await.map_err(Failure::Connect)?;
            let header = upstream
                .get_header(0, &target, key)
                .map_err(|e| Failure::Connect(describe(&e)))?;
            (peer, header)
        } else {
            let (peer, host, path) = upstream
                .redirect_peer(&target)
                .await
                .map_err(Failure::Connect)?;
            let header = plain_get(&host, &path).map_err(|e| Failure::Connect(describe(&e)))?;
            (Arc::new(peer), header)
        };
        let mut opened = open_one(gw, peer, header, timeouts, ctx).await?;
        match opened.location.take() {
            Some(next) if redirects < MAX_REDIRECTS => {
                // The redirect's own body is small: read, so the connection can be reused.
                let _ = opened.whole(gw, state, ctx).await;
                redirects += 1;
                // A path alone stays on the host that answered.
                target = match (next.starts_with('/'), own) {
                    (true, true) => format!("{}{next}", upstream.origin(0)),
                    (true, false) => format!("{}{next}", origin(&target)),
                    (false, _) => next,
                };
            }
            _ => return Ok(opened),
        }
    }
}

/// `scheme://authority` of an absolute URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    url[after..].find('/').map_or(url, |i| &url[..after + i])
}

/// A `GET` head with only `Host` and the user agent (for a host that is not a provider's).
fn plain_get(host: &str, path: &str) -> pingora::Result<RequestHeader> {
    let mut h = RequestHeader::build("GET", path.as_bytes(), None)?;
    h.insert_header(http::header::HOST, host)?;
    h.insert_header(
        http::header::USER_AGENT,
        concat!("freeway/", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(h)
}

/// One `GET` exchange, up to its response head.
async fn open_one(
    gw: &Gateway,
    peer: Arc<HttpPeer>,
    header: RequestHeader,
    timeouts: Timeouts,
    ctx: &mut RequestCtx,
) -> Result<Opened, Failure> {
    let started = Instant::now();
    let empty = Outbound {
        path: String::new(),
        content_type: http::HeaderValue::from_static("application/json"),
        accept: "*/*",
        body: Body::One(Bytes::new()),
        headers: Vec::new(),
    };
    let sent = send_request(&gw.connector, &peer, header, &empty, timeouts).await;
    ctx.upstream_wait += started.elapsed();
    let mut http = sent?;
    let Some(head) = http.response_header() else {
        return Err(Failure::Connect("no response header".into()));
    };
    let status = head.status.as_u16();
    let text = |name: http::header::HeaderName| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = text(http::header::CONTENT_TYPE).unwrap_or_default();
    let length = text(http::header::CONTENT_LENGTH).and_then(|n| n.trim().parse().ok());
    let location =
        text(http::header::LOCATION).filter(|_| matches!(status, 301 | 302 | 303 | 307 | 308));
    http.set_read_timeout(Some(timeouts.idle));
    Ok(Opened {
        http,
        peer,
        status,
        content_type,
        length,
        location,
    })
}

/// Connects (retrying on a stale pooled connection), sends the head and the body, and reads
/// the response head.
async fn send_request(
    connector: &Connector,
    peer: &HttpPeer,
    header: RequestHeader,
    req: &Outbound,
    timeouts: Timeouts,
) -> Result<HttpSession, Failure> {
    let mut stale_retries = 0;
    loop {
        let (mut http, reused) = connector
            .get_http_session(peer)
            .await
            .map_err(|e| Failure::Connect(describe(&e)))?;
        http.set_read_timeout(Some(timeouts.first_byte));
        match write_and_read_head(&mut http, header.clone(), &req.body).await {
            Ok(()) => return Ok(http),
            // A pooled connection the provider already closed: try a fresh one.
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

async fn write_and_read_head(
    http: &mut HttpSession,
    header: RequestHeader,
    body: &Body,
) -> pingora::Result<()> {
    // Pingora flushes the head and the body in separate writes; corking the socket sends
    // them as one segment, which on loopback halves the receive work done on our CPU.
    let fd = http.stream().map(|s| s.id());
    set_cork(fd, true);
    let written = async {
        http.write_request_header(Box::new(header)).await?;
        match body {
            Body::One(b) => {
                http.write_request_body(b.clone(), true).await?;
            }
            Body::Pieces(pieces) => {
                for chunk in pieces.iter().flat_map(Piece::chunks) {
                    if !chunk.is_empty() {
                        http.write_request_body(chunk, false).await?;
                    }
                }
            }
        }
        http.finish_request_body().await
    }
    .await;
    set_cork(fd, false);
    written?;
    http.read_response_header().await
}

/// Sets TCP_CORK on an upstream socket (best effort: a failure only costs a packet).
fn set_cork(fd: Option<i32>, on: bool) {
    let Some(fd) = fd else { return };
    let value: libc::c_int = on.into();
    // SAFETY: setsockopt on a descriptor owned by the live session, with a valid int option.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn read_chunk(
    http: &mut HttpSession,
    ctx: &mut RequestCtx,
) -> pingora::Result<Option<Bytes>> {
    let t = Instant::now();
    let r = http.read_response_body().await;
    ctx.upstream_wait += t.elapsed();
    if let Ok(Some(chunk)) = &r {
        crate::telemetry::answer_bytes(&mut ctx.trace, chunk);
    }
    r
}

/// Reads a whole response body, failing if it exceeds `cap`.
async fn read_capped(
    http: &mut HttpSession,
    cap: usize,
    ctx: &mut RequestCtx,
) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        match read_chunk(http, ctx).await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(Failure::Connect(format!(
                        "the provider's answer is larger than {cap} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) if is_timeout(&e) => return Err(Failure::Timeout(describe(&e))),
            Err(e) => return Err(Failure::Connect(describe(&e))),
        }
    }
}

/// `retry-after`, else the later of the `x-ratelimit-reset-*` hints.
fn retry_hint(headers: &http::HeaderMap) -> Option<Duration> {
    let parse = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_reset)
    };
    parse("retry-after").or_else(|| {
        [
            "x-ratelimit-reset-requests",
            "x-ratelimit-reset-tokens",
            "x-ratelimit-reset",
        ]
        .into_iter()
        .filter_map(parse)
        .max()
    })
}

fn is_retryable_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429) || status >= 500
}

pub fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    )
}

/// What went wrong with an upstream exchange, in words a client understands: no Pingora
/// internals, no addresses (the full error is logged at debug level for operators).
pub fn describe(e: &Error) -> String {
    use ErrorType::*;
    log::debug!("upstream error: {e}");
    match e.etype() {
        ConnectTimedout => "connecting to the provider timed out",
        ConnectRefused => "the provider refused the connection",
        ConnectNoRoute => "the provider cannot be reached (no route)",
        TLSWantX509Lookup | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
        | HandshakeError => "the TLS handshake with the provider failed",
        ConnectError | BindError | SocketError | ConnectProxyFailure | AcceptError => {
            "could not connect to the provider"
        }
        InvalidHTTPHeader | H1Error | H2Error | H2Downgrade | InvalidH2 => {
            "the provider's answer was not valid HTTP"
        }
        ReadTimedout => "the provider went silent (read timed out)",
        WriteTimedout => "sending the request to the provider timed out",
        ConnectionClosed => "the provider closed the connection",
        ReadError => "the connection to the provider broke while reading its answer",
        WriteError => "the connection to the provider broke while sending the request",
        _ => "the exchange with the provider failed",
    }
    .to_string()
}

/// Claims candidate `idx` for one attempt, and stamps it on `ctx`: a slot at its provider
/// (held for the whole exchange: the provider may have filled up since planning), a key of
/// its pool and, if the model is recovering, its single probe (another request may have
/// taken it since planning). `None`, with the reason in `ctx.failures`, when one is taken.
fn claim(state: &State, idx: usize, ctx: &mut RequestCtx) -> Option<Slot> {
    let model = &state.catalog.models[idx];
    let Some(slot) = state.slots[model.provider].try_acquire() else {
        ctx.failures.push(format!(
            "{}: skipped (provider at max_connections)",
            model.qualified
        ));
        return None;
    };
    let key = match state.upstreams[model.provider].pick_key() {
        Ok(k) => k,
        Err(why) => {
            ctx.failures
                .push(format!("{}: skipped ({why})", model.qualified));
            return None;
        }
    };
    if state.models[idx].acquire().is_none() {
        ctx.failures
            .push(format!("{}: skipped (recovering)", model.qualified));
        return None;
    }
    ctx.upstream_key = key;
    ctx.attempts += 1;
    ctx.provider = Some(model.provider_name.clone());
    ctx.model = Some(model.id.clone());
    Some(slot)
}

/// The endpoints of a pooled provider one request has tried: a failed attempt tries another
/// healthy endpoint of the same provider, same model and same key, before the next model.
#[derive(Default)]
struct PoolTurn {
    /// The provider whose endpoints `tried` marks.
    provider: Option<usize>,
    tried: u64,
    /// The key the next attempt keeps (an endpoint retry).
    key: Option<Option<usize>>,
}

impl PoolTurn {
    /// An endpoint of the candidate's pool (`Ok(None)`: a single `base_url`). `Err`, with
    /// the reason in `ctx.failures`, when no healthy endpoint is left to try.
    fn lease(
        &mut self,
        state: &State,
        model: &ModelEntry,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Lease>, ()> {
        let Some(pool) = &state.pools[model.provider] else {
            return Ok(None);
        };
        if self.provider != Some(model.provider) {
            *self = PoolTurn {
                provider: Some(model.provider),
                ..PoolTurn::default()
            };
        }
        match pool.lease(self.tried) {
            Some(l) => {
                self.tried |= 1 << l.index;
                Ok(Some(l))
            }
            None => {
                self.key = None;
                ctx.failures.push(format!(
                    "{}: skipped (no healthy endpoint of its provider left to try)",
                    model.qualified
                ));
                Err(())
            }
        }
    }

    /// After the claim: an endpoint retry keeps the key the failed attempt used.
    fn keep_key(&mut self, ctx: &mut RequestCtx) {
        if let Some(k) = self.key.take() {
            ctx.upstream_key = k;
        }
    }

    /// Queues `idx` again for another endpoint if one is healthy and untried and the
    /// request has attempts left (`max_attempts` counts endpoint retries too).
    fn retry(
        &mut self,
        state: &State,
        model: &ModelEntry,
        ctx: &RequestCtx,
        max_attempts: usize,
        queue: &mut VecDeque<usize>,
        idx: usize,
    ) -> bool {
        let Some(pool) = &state.pools[model.provider] else {
            return false;
        };
        if ctx.attempts as usize >= max_attempts || !pool.another_healthy(self.tried) {
            return false;
        }
        while ctx.attempts as usize + queue.len() >= max_attempts {
            queue.pop_back();
        }
        queue.push_front(idx);
        self.key = Some(ctx.upstream_key);
        true
    }
}

/// Reports an attempt to its endpoint (of a pooled provider): latency and the outcome
/// metric; a connect failure, timeout or 5xx counts towards taking the endpoint out.
/// `true` when the failure was the endpoint's own: another endpoint may serve.
fn observe_endpoint<T>(
    state: &State,
    model: &ModelEntry,
    lease: Option<&Lease>,
    outcome: &Attempt<T>,
    started: Instant,
) -> bool {
    let (Some(lease), Some(pool)) = (lease, &state.pools[model.provider]) else {
        return false;
    };
    let ep = &lease.state;
    match outcome {
        Attempt::Done(_, answer) => {
            ep.count(answer.outcome());
            ep.request_served(answer.first_content);
            false
        }
        Attempt::Refused { .. } => {
            ep.count("client_error");
            ep.request_served(started.elapsed());
            false
        }
        Attempt::Retry(f) => {
            ep.count(f.outcome());
            let own = match f {
                Failure::Connect(_) | Failure::Timeout(_) => true,
                Failure::Status { status, .. } => *status >= 500 || *status == 408,
                Failure::Malformed(_) => false,
            };
            if own {
                let why = state.secrets.scrub(&f.to_string()).into_owned();
                ep.request_failed(&why, pool.unhealthy_after);
            }
            own
        }
    }
}

/// Updates health, daily counts and provider state after a failed attempt.
///
/// With a pool of keys, a 429 or a rejected key is the key's, not the model's: the key rests
/// (or is taken out) and, when another key can serve, this returns `true`: try the model
/// again with it.
fn record_failure(state: &State, idx: usize, key: Option<usize>, failure: &Failure) -> bool {
    let model = &state.catalog.models[idx];
    let live = &state.models[idx];
    let upstream = &state.upstreams[model.provider];
    if let (
        Some(k),
        Failure::Status {
            status,
            retry_after,
            ..
        },
    ) = (key, failure)
    {
        let pooled = upstream.keys.len() > 1;
        match status {
            429 if pooled => {
                let wait = retry_after.unwrap_or(KEY_REST);
                upstream.keys[k].rest(wait);
                log::warn!(
                    "provider `{}`: key {} rate limited, resting {} s",
                    model.provider_name,
                    upstream.keys[k].hint,
                    wait.as_secs()
                );
                if upstream.other_key_usable(k) {
                    return true;
                }
            }
            401 | 403 if pooled => {
                let why = format!("the provider rejected this key (HTTP {status})");
                log::error!(
                    "provider `{}`: key {}: {why}: fix or remove it and reload",
                    model.provider_name,
                    upstream.keys[k].hint
                );
                upstream.keys[k].reject(why);
                if upstream.other_key_usable(k) {
                    live.count_request();
                    return true;
                }
            }
            _ => {}
        }
    }
    let report = match failure {
        Failure::Status {
            status: 429,
            retry_after,
            ..
        } => Report::RateLimited {
            retry_after: *retry_after,
        },
        Failure::Status {
            status: status @ (401 | 403),
            ..
        } => {
            // The provider refused our key: no request can succeed there until the config
            // changes. Say so loudly and stop routing to it.
            let why = format!(
                "the provider rejected its API key (HTTP {status}): fix the key and reload"
            );
            log::error!("provider `{}`: {why}", model.provider_name);
            state.providers[model.provider].block(why);
            live.count_request();
            return false;
        }
        Failure::Status { status, .. } => Report::Failed {
            reason: format!("HTTP {status}"),
        },
        Failure::Timeout(_) => Report::TimedOut,
        Failure::Connect(e) => Report::Failed { reason: e.clone() },
        Failure::Malformed(e) => Report::Failed { reason: e.clone() },
    };
    // The provider counted the request unless it refused it (429) or never saw it.
    if matches!(failure, Failure::Malformed(_))
        || matches!(failure, Failure::Status { status, .. } if *status != 429)
    {
        live.count_request();
    }
    live.report(&report);
    false
}

/// The soonest time a failed attempt said capacity returns, in whole seconds.
pub fn min_retry_after(failures: &[(String, Failure)]) -> Option<u64> {
    failures
        .iter()
        .filter_map(|(_, f)| match f {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        })
        .min()
        .map(|d| d.as_secs().max(1))
}

/// How the engine answers when every attempt failed.
struct Exhausted {
    /// The client pinned one model (`provider/model`) without `x-gateway-fallback: auto`.
    pinned: bool,
    /// Seconds until the soonest tried model ends its cooldown, if one is cooling.
    cooling: Option<u64>,
}

/// The answer when every attempt failed. Every capable model rate-limited is a 503
/// `no_capacity` (the free gateway's promise), except a pinned model's own 429, which is
/// the client's; a single upstream error passes through in the gateway's envelope;
/// otherwise one error lists what each attempt ran into. Any error that knows when
/// capacity returns carries `retry-after`.
async fn answer_exhausted(
    session: &mut Session,
    ctx: &mut RequestCtx,
    failures: Vec<(String, Failure)>,
    how: Exhausted,
) {
    let retry_after = min_retry_after(&failures).or(how.cooling);
    let summary = ctx.failures.join("; ");
    let n = failures.len();
    let all = |pred: fn(&Failure) -> bool| failures.iter().all(|(_, f)| pred(f));
    let all_rate_limited = all(|f| matches!(f, Failure::Status { status: 429, .. }));
    if all_rate_limited && !how.pinned {
        let mut e = ApiError::no_capacity(format!(
            "Every capable model is rate-limited ({n} tried): {summary}"
        ));
        e.retry_after = retry_after;
        return send_error(session, ctx, &e).await;
    }
    if let [(provider, Failure::Status { status, body, .. })] = failures.as_slice() {
        let extra: Vec<(&'static str, String)> = retry_after
            .map(|s| vec![("retry-after", s.to_string())])
            .unwrap_or_default();
        // A bad provider key is the gateway's problem, not the client's.
        let status = if *status == 401 || *status == 403 {
            502
        } else {
            *status
        };
        let envelope = upstream_envelope(status, provider, body);
        send_upstream_error(session, ctx, status, envelope, &extra).await;
        return;
    }
    let mut err = if all_rate_limited {
        let mut e = ApiError::upstream(
            429,
            format!("The pinned model is rate-limited ({n} tried): {summary}"),
        );
        e.kind = "rate_limit_error";
        e.code = Some("rate_limited");
        e
    } else if all(|f| matches!(f, Failure::Timeout(_))) {
        ApiError::timeout(format!(
            "No provider answered in time ({n} tried): {summary}"
        ))
    } else {
        ApiError::upstream(
            502,
            format!("Every upstream attempt failed ({n} tried): {summary}"),
        )
    };
    err.retry_after = retry_after;
    send_error(session, ctx, &err).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every arm of `describe`, each error type it names and one it does not: plain words,
    /// none of Pingora's names or its `context:` text.
    #[test]
    fn describe_words_every_upstream_failure_without_pingora_internals() {
        use ErrorType::*;
        let cases: Vec<(ErrorType, &str)> = vec![
            (ConnectTimedout, "connecting to the provider timed out"),
            (ConnectRefused, "the provider refused the connection"),
            (ConnectNoRoute, "the provider cannot be reached (no route)"),
            (
                TLSWantX509Lookup,
                "the TLS handshake with the provider failed",
            ),
            (
                TLSHandshakeFailure,
                "the TLS handshake with the provider failed",
            ),
            (
                TLSHandshakeTimedout,
                "the TLS handshake with the provider failed",
            ),
            (InvalidCert, "the TLS handshake with the provider failed"),
            (HandshakeError, "the TLS handshake with the provider failed"),
            (ConnectError, "could not connect to the provider"),
            (BindError, "could not connect to the provider"),
            (SocketError, "could not connect to the provider"),
            (ConnectProxyFailure, "could not connect to the provider"),
            (AcceptError, "could not connect to the provider"),
            (
                InvalidHTTPHeader,
                "the provider's answer was not valid HTTP",
            ),
            (H1Error, "the provider's answer was not valid HTTP"),
            (H2Error, "the provider's answer was not valid HTTP"),
            (H2Downgrade, "the provider's answer was not valid HTTP"),
            (InvalidH2, "the provider's answer was not valid HTTP"),
            (ReadTimedout, "the provider went silent (read timed out)"),
            (
                WriteTimedout,
                "sending the request to the provider timed out",
            ),
            (ConnectionClosed, "the provider closed the connection"),
            (
                ReadError,
                "the connection to the provider broke while reading its answer",
            ),
            (
                WriteError,
                "the connection to the provider broke while sending the request",
            ),
            (InternalError, "the exchange with the provider failed"),
            (HTTPStatus(502), "the exchange with the provider failed"),
        ];
        for (etype, want) in cases {
            let name = format!("{etype:?}");
            let e = Error::explain(etype, "sim: dropping mid-stream at 10.0.0.7:443");
            let got = describe(&e);
            assert_eq!(got, want, "{name}");
            for internal in [
                name.as_str(),
                "context:",
                "sim:",
                "10.0.0.7",
                "pingora",
                "ErrorType",
                "broke:",
            ] {
                assert!(!got.contains(internal), "{name}: {got}");
            }
        }
    }
}
