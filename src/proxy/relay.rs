//! The attempt loop: send the request to each candidate in turn, fail over while nothing has
//! reached the client, then relay the answer.
//!
//! The gateway drives the upstream exchange itself with Pingora's pooled connector rather
//! than the stock proxy phases: that works for bodies of any size (the stock path can replay
//! only 64 KiB on retry) and lets a stream be held until its first complete event, so a
//! provider that opens a 200 stream and dies at once is still failed over invisibly.

use super::ctx::RequestCtx;
use super::respond::{gateway_headers, send, send_error};
use crate::errors::{upstream_envelope, ApiError};
use crate::providers::{Translator, Upstream, UpstreamRequest, Usage};
use crate::responses;
use crate::routing::health::parse_reset;
use crate::routing::ModelEntry;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most of a non-streamed upstream answer the gateway holds in memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// The most of an upstream error body kept for the client's error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

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

/// `retry-after`, else the later of the `x-ratelimit-reset-*` hints.
pub(super) fn retry_hint(headers: &http::HeaderMap) -> Option<Duration> {
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

pub(super) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429) || status >= 500
}

pub(super) fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    )
}

pub(super) fn describe(e: &Error) -> String {
    // Pingora's Display carries the type, source and context; that is what operators need.
    e.to_string()
}

/// One request, one candidate.
pub struct Exchange<'a> {
    pub connector: &'a Connector,
    pub upstream: &'a Upstream,
    pub model: &'a ModelEntry,
    pub translator: &'static dyn Translator,
    pub request: UpstreamRequest,
    pub stream: bool,
    /// The client asked for the usage chunk.
    pub include_usage: bool,
    pub timeouts: Timeouts,
    /// Set for `/v1/responses`: the chat answer is reshaped into the Responses API.
    pub responses: Option<Arc<responses::Meta>>,
    /// Where a complete answer is cached: it is stored *before* its last bytes reach the
    /// client, so a client that got the answer finds it cached on every instance.
    pub keep: Option<Keep<'a>>,
}

/// The response cache and this request's ticket for it.
#[derive(Clone, Copy)]
pub struct Keep<'a> {
    pub cache: &'a crate::cache::Cache,
    pub ticket: &'a super::guard::Ticket,
}

/// What an answered attempt produced, for health tracking and the request log.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    /// Time from sending the request to the first content (stream) or the whole answer.
    pub first_content: Duration,
    pub usage: Option<Usage>,
    /// The answer broke off after it started (a stream that failed mid-way).
    pub broken: bool,
}

/// How one attempt ended.
pub enum Outcome {
    /// A response (success, or a final client error) was written to the client.
    Answered(Answer),
    Retry(Failure),
}

impl Exchange<'_> {
    /// Runs the attempt; writes to the client only when the answer is final.
    pub async fn run(self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let peer = match self.upstream.peer().await {
            Ok(p) => p,
            Err(e) => return Outcome::Retry(Failure::Connect(e)),
        };
        let header =
            match self
                .upstream
                .request_header(&self.request, self.stream, ctx.upstream_key)
            {
                Ok(h) => h,
                Err(e) => return Outcome::Retry(Failure::Connect(describe(&e))),
            };
        let started = Instant::now();
        let sent = self.send(&peer, header).await;
        ctx.upstream_wait += started.elapsed();
        let mut http = match sent {
            Ok(h) => h,
            Err(f) => return Outcome::Retry(f),
        };
        let Some(head) = http.response_header() else {
            return Outcome::Retry(Failure::Connect("no response header".into()));
        };
        let status = head.status.as_u16();
        let is_sse = head
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let retry_after = retry_hint(&head.headers);
        http.set_read_timeout(Some(self.timeouts.idle));

        if is_retryable_status(status) {
            let body = read_capped(&mut http, MAX_ERROR_BODY, ctx)
                .await
                .unwrap_or_default();
            // Kept as an OpenAI envelope: it may become the final answer.
            let body = self.translator.error(status, &body, &self.upstream.name);
            return Outcome::Retry(Failure::Status {
                status,
                body,
                retry_after,
            });
        }
        if !(200..300).contains(&status) {
            // The client's own mistake (400, 404, 422…): final, never retried elsewhere.
            let body = read_capped(&mut http, MAX_ERROR_BODY, ctx)
                .await
                .unwrap_or_default();
            let envelope = self.translator.error(status, &body, &self.upstream.name);
            send(session, ctx, status, "application/json", envelope, &[]).await;
            return Outcome::Answered(Answer {
                status,
                first_content: started.elapsed(),
                ..Answer::default()
            });
        }
        if is_sse {
            self.relay_stream(http, &peer, session, ctx, started).await
        } else {
            self.relay_whole(http, &peer, session, ctx, started).await
        }
    }

    /// Connects (retrying once on a stale pooled connection), sends the request and reads
    /// the response head.
    async fn send(&self, peer: &HttpPeer, header: RequestHeader) -> Result<HttpSession, Failure> {
        let body = self.request.body.clone();
        let mut stale_retries = 0;
        loop {
            let (mut http, reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(|e| Failure::Connect(describe(&e)))?;
            http.set_read_timeout(Some(self.timeouts.first_byte));
            match write_and_read_head(&mut http, header.clone(), body.clone()).await {
                Ok(()) => return Ok(http),
                // A pooled connection the provider already closed: try a fresh one.
                Err(e) if reused && !is_timeout(&e) && stale_retries < 2 => stale_retries += 1,
                Err(e) if is_timeout(&e) => {
                    return Err(Failure::Timeout(format!(
                        "no response within {} ms",
                        self.timeouts.first_byte.as_millis()
                    )))
                }
                Err(e) => return Err(Failure::Connect(describe(&e))),
            }
        }
    }

    /// A non-streamed answer: read it whole (a failure here can still fail over), translate,
    /// then send.
    async fn relay_whole(
        &self,
        mut http: HttpSession,
        peer: &HttpPeer,
        session: &mut Session,
        ctx: &mut RequestCtx,
        started: Instant,
    ) -> Outcome {
        let body = match read_capped(&mut http, MAX_RESPONSE_BYTES, ctx).await {
            Ok(b) => b,
            Err(f) => return Outcome::Retry(f),
        };
        let mut translated = match self.translator.chat_response(body, &self.model.id) {
            Ok(t) => t,
            Err(e) => return Outcome::Retry(Failure::Malformed(e)),
        };
        if let Some(meta) = &self.responses {
            match responses::from_chat_completion(meta, &translated.body, translated.usage) {
                Ok(b) => translated.body = b,
                Err(e) => return Outcome::Retry(Failure::Malformed(e)),
            }
        }
        let first_content = started.elapsed();
        let status = http.response_header().map_or(200, |h| h.status.as_u16());
        self.release(http, peer).await;
        self.keep(ctx, Some(translated.body.clone())).await;
        send(
            session,
            ctx,
            status,
            "application/json",
            translated.body,
            &[],
        )
        .await;
        Outcome::Answered(Answer {
            status,
            first_content,
            usage: translated.usage,
            broken: false,
        })
    }

    /// A streamed answer: hold the client's headers until the first content delta, then
    /// forward translated events as they arrive.
    async fn relay_stream(
        &self,
        mut http: HttpSession,
        peer: &HttpPeer,
        session: &mut Session,
        ctx: &mut RequestCtx,
        started: Instant,
    ) -> Outcome {
        let mut tr = self
            .translator
            .chat_stream(&self.model.id, self.include_usage);
        if let Some(meta) = &self.responses {
            tr = Box::new(responses::ResponsesStream::new(
                tr,
                meta.clone(),
                &self.model.id,
            ));
        }
        let mut out = Vec::new();
        let mut ended = false;
        let mut assembled = self.capturing().then(crate::cache::sse::Assembler::default);
        // The failover gate: nothing reaches the client before the first content.
        while !tr.started() {
            match read_chunk(&mut http, ctx).await {
                Ok(Some(chunk)) => {
                    if let Err(e) = tr.feed(&chunk, &mut out) {
                        return Outcome::Retry(Failure::Malformed(e.to_string()));
                    }
                }
                Ok(None) => {
                    if let Err(e) = tr.finish(&mut out) {
                        return Outcome::Retry(Failure::Malformed(e.to_string()));
                    }
                    if !tr.started() {
                        return Outcome::Retry(Failure::Malformed(
                            "the stream ended without any content".into(),
                        ));
                    }
                    ended = true;
                }
                Err(e) if is_timeout(&e) => {
                    return Outcome::Retry(Failure::Timeout(format!(
                        "stream silent for {} ms before its first content",
                        self.timeouts.idle.as_millis()
                    )))
                }
                Err(e) => return Outcome::Retry(Failure::Connect(describe(&e))),
            }
        }
        let first_content = started.elapsed();

        ctx.streamed = true;
        ctx.status = 200;
        let mut resp = match ResponseHeader::build(200, Some(8)) {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(Failure::Connect(describe(&e))),
        };
        let _ = resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream");
        let _ = resp.insert_header(http::header::CACHE_CONTROL, "no-cache");
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        gateway_headers(&mut resp, ctx);
        let mut answer = Answer {
            status: 200,
            first_content,
            ..Answer::default()
        };
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_err()
        {
            return Outcome::Answered(answer); // the client left; dropping `http` closes upstream
        }

        loop {
            if !out.is_empty() {
                let events = Bytes::from(std::mem::take(&mut out));
                if let Some(a) = &mut assembled {
                    a.feed(&events);
                }
                if ended {
                    self.keep(ctx, assembled.take().and_then(|a| a.finish()))
                        .await;
                }
                if session
                    .write_response_body(Some(events), false)
                    .await
                    .is_err()
                {
                    log::info!("{}: client disconnected mid-stream", ctx.id);
                    answer.usage = tr.usage();
                    return Outcome::Answered(answer);
                }
            }
            if ended {
                break;
            }
            let failure = match read_chunk(&mut http, ctx).await {
                Ok(Some(chunk)) => match tr.feed(&chunk, &mut out) {
                    Ok(()) => continue,
                    Err(e) => e.to_string(),
                },
                Ok(None) => match tr.finish(&mut out) {
                    Ok(()) => {
                        ended = true;
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) if is_timeout(&e) => {
                    format!("stalled for {} ms", self.timeouts.idle.as_millis())
                }
                Err(e) => format!("broke: {}", describe(&e)),
            };
            // Complete events translated before the failure still go out, then the error.
            let why = format!(
                "the stream from `{}` failed: {failure}",
                self.model.qualified
            );
            log::warn!("{}: {why}", ctx.id);
            ctx.failures.push(why.clone());
            tr.error_event(&ApiError::upstream(502, why), &mut out);
            let _ = session
                .write_response_body(Some(Bytes::from(out)), true)
                .await;
            answer.usage = tr.usage();
            answer.broken = true;
            return Outcome::Answered(answer);
        }
        self.keep(ctx, assembled.and_then(|a| a.finish())).await;
        let _ = session.write_response_body(None, true).await;
        self.release(http, peer).await;
        answer.usage = tr.usage();
        Outcome::Answered(answer)
    }

    /// Whether the complete answer is wanted for the cache (Responses API answers are
    /// reshaped per request and never cached).
    fn capturing(&self) -> bool {
        self.responses.is_none() && self.keep.is_some_and(|k| k.ticket.capture())
    }

    /// Caches a complete, successful chat completion.
    async fn keep(&self, ctx: &RequestCtx, completion: Option<Bytes>) {
        if let (Some(k), Some(body), true) = (self.keep, completion, self.capturing()) {
            k.ticket.store(k.cache, ctx, body).await;
        }
    }

    async fn release(&self, mut http: HttpSession, peer: &HttpPeer) {
        if http.response_done() {
            self.connector
                .release_http_session(http, peer, peer.options.idle_timeout)
                .await;
        } else {
            http.shutdown().await;
        }
    }
}

async fn write_and_read_head(
    http: &mut HttpSession,
    header: RequestHeader,
    body: Bytes,
) -> pingora::Result<()> {
    // Pingora flushes the head and the body in separate writes; corking the socket sends
    // them as one segment, which on loopback halves the receive work done on our CPU.
    let fd = http.stream().map(|s| s.id());
    set_cork(fd, true);
    let written = async {
        http.write_request_header(Box::new(header)).await?;
        http.write_request_body(body, true).await?;
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

pub(super) async fn read_chunk(
    http: &mut HttpSession,
    ctx: &mut RequestCtx,
) -> pingora::Result<Option<Bytes>> {
    let t = Instant::now();
    let r = http.read_response_body().await;
    ctx.upstream_wait += t.elapsed();
    r
}

/// Reads a whole response body, failing if it exceeds `cap`.
pub(super) async fn read_capped(
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
                        "response larger than {cap} bytes"
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

/// The answer when every attempt failed: a single upstream error passes through; otherwise
/// one error that lists what each attempt ran into.
pub async fn answer_exhausted(
    session: &mut Session,
    ctx: &mut RequestCtx,
    failures: Vec<(String, Failure)>,
) {
    if let [(
        provider,
        Failure::Status {
            status,
            body,
            retry_after,
        },
    )] = failures.as_slice()
    {
        let extra: Vec<(&'static str, String)> = retry_after
            .map(|d| vec![("retry-after", d.as_secs().max(1).to_string())])
            .unwrap_or_default();
        let envelope = upstream_envelope(*status, provider, body);
        let status = if *status == 401 || *status == 403 {
            502
        } else {
            *status
        };
        send(session, ctx, status, "application/json", envelope, &extra).await;
        return;
    }
    let summary = ctx.failures.join("; ");
    let n = failures.len();
    let all = |pred: fn(&Failure) -> bool| failures.iter().all(|(_, f)| pred(f));
    let mut err = if all(|f| matches!(f, Failure::Status { status: 429, .. })) {
        let mut e = ApiError::upstream(
            429,
            format!("Every candidate model is rate-limited ({n} tried): {summary}"),
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
    err.retry_after = failures
        .iter()
        .filter_map(|(_, f)| match f {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        })
        .min()
        .map(|d| d.as_secs().max(1));
    send_error(session, ctx, &err).await;
}
