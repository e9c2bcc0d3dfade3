//! Client connections, bounded: how many may be open, how long one may take to send its
//! request head, how long it may idle between requests, and how large its head may be.
//!
//! [`BoundedHttp`] wraps the Pingora HTTP app and runs the HTTP/1 keep-alive loop that
//! Pingora would otherwise run itself, reading each request head under one total deadline
//! ([`head`]) before handing the bytes to Pingora. Pingora's own head reader times each
//! `read()` separately, so a client dribbling a byte at a time would never be cut.
//!
//! At `server.max_connections`, a new connection displaces the connection that has waited
//! longest for a request head (an idle keep-alive or a never-finished head); only when every
//! connection is busy with a request is the new one refused, with a 503. So a flood of idle
//! connections cannot lock out clients that send requests. Every limit ends in a clean close
//! or an OpenAI-shaped error, and is counted in `freeway_connections_*`.

pub mod head;
pub mod metrics;

use crate::errors::ApiError;
use crate::state::State;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use head::{HeadError, HeadLimits};
use metrics::CONN;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{timeout, timeout_at, Instant};

/// The connection limits of `[server]`, read from the live config for each connection and
/// each request head (so a reload applies to the next head).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    keepalive_seconds: u64,
    head: HeadLimits,
}

impl Limits {
    fn of(state: &State) -> Limits {
        let s = &state.config.server;
        Limits {
            max_connections: s.max_connections,
            keepalive_seconds: s.keepalive_timeout_seconds,
            head: HeadLimits {
                head: Duration::from_secs(s.header_timeout_seconds),
                idle: Duration::from_secs(s.keepalive_timeout_seconds),
                max_bytes: s.max_header_bytes,
            },
        }
    }
}

/// A Pingora HTTP app (the gateway's proxy) behind the connection limits.
pub struct BoundedHttp<A> {
    app: Arc<A>,
    state: Arc<ArcSwap<State>>,
    /// Shared with the gateway, which waits for request bodies through it.
    gate: Arc<Gate>,
}

impl<A> BoundedHttp<A> {
    pub fn new(app: A, state: Arc<ArcSwap<State>>, gate: Arc<Gate>) -> BoundedHttp<A> {
        std::sync::LazyLock::force(&CONN);
        BoundedHttp {
            app: Arc::new(app),
            state,
            gate,
        }
    }

    fn limits(&self) -> Limits {
        Limits::of(&self.state.load())
    }
}

#[async_trait]
impl<A> ServerApp for BoundedHttp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.limits();
        let Some(_open) = self.gate.admit(limits.max_connections) else {
            CONN.rejected_max.inc();
            let mut e = ApiError::no_capacity(format!(
                "The gateway is at its connection limit ({} client connections, \
                 server.max_connections) and every connection is busy. Retry shortly.",
                limits.max_connections
            ));
            e.code = Some("too_many_connections");
            e.retry_after = Some(1);
            // Answer once the request is in: a client that meets a response before it sent
            // its request may take it for a broken connection (hyper does).
            let quick = HeadLimits {
                head: limits.head.head.min(REFUSAL_HEAD_WAIT),
                ..limits.head
            };
            if head::read_head(&mut stream, &quick, true).await.is_ok() {
                answer_and_close(stream, &e).await;
            }
            return None;
        };
        let custom = self
            .app
            .server_options()
            .is_some_and(|o| o.h2c || o.force_custom);
        if custom || stream.get_ssl_digest().is_some() {
            // TLS (ALPN may pick h2) or cleartext h2: Pingora's own handling, still counted.
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }

        let mut settings = None;
        let mut fresh = true;
        loop {
            let limits = self.limits();
            let read = async {
                tokio::select! {
                    biased;
                    r = head::read_head(&mut stream, &limits.head, fresh) => Some(r),
                    _ = shutting_down(shutdown.clone()) => None,
                }
            };
            let bytes = match self.gate.idle(read).await {
                Waited::Displaced => {
                    CONN.closed_evicted.inc();
                    return None;
                }
                Waited::Done(None) => return None, // shutting down
                Waited::Done(Some(Ok(bytes))) => bytes,
                Waited::Done(Some(Err(e))) => {
                    refuse_head(stream, e, &limits).await;
                    return None;
                }
            };
            // Pingora would answer a malformed or ambiguous head with an empty 400: the
            // gateway answers it in its envelope, counted.
            let head = match head::validate(&bytes) {
                Ok(h) => h,
                Err(why) => {
                    CONN.closed_bad_request.inc();
                    let e = ApiError::invalid(format!("Bad request: {why}."));
                    answer_and_close(stream, &e).await;
                    return None;
                }
            };
            // Requests pipelined behind this one (RFC 9112 §9.3.2): this one is answered
            // with `Connection: close` and the client sends the rest again on a new
            // connection, as the RFC expects of it.
            let pipelined = head.end().is_some_and(|end| bytes.len() > end);
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session),
                None => {
                    session.set_keepalive(Some(limits.keepalive_seconds));
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            if pipelined {
                // Pingora resets keep-alive when it reads the request: the gateway closes
                // it in `on_connection_reuse`, which receives this note.
                CONN.closed_pipelined.inc();
                session.set_connection_user_context(Some(Box::new(Pipelined)));
            }
            // Pingora parses these bytes before reading the socket again.
            session.set_pipelined_prefix(bytes);
            let reused = self.app.process_new_http(session, shutdown).await?;
            (stream, settings) = reused.consume();
            fresh = false;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// The note a connection carries into its request when more requests were pipelined behind
/// it: that request is answered with `Connection: close` (see `ProxyHttp::on_connection_reuse`
/// in `proxy`).
pub struct Pipelined;

/// Resolves once the server begins shutting down (never if the signal is gone).
async fn shutting_down(mut watch: ShutdownWatch) {
    if watch.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Ends a connection whose head did not arrive as it should, counting why.
async fn refuse_head(stream: Stream, e: HeadError, limits: &Limits) {
    match e {
        HeadError::Closed | HeadError::Broken => {}
        HeadError::Idle => CONN.closed_idle_timeout.inc(),
        HeadError::TimedOut { received } => {
            CONN.closed_header_timeout.inc();
            if received > 0 {
                let e = ApiError {
                    status: 408,
                    kind: "invalid_request_error",
                    code: Some("header_timeout"),
                    param: None,
                    message: format!(
                        "The request head did not arrive within {} s \
                         (server.header_timeout_seconds).",
                        limits.head.head.as_secs()
                    ),
                    retry_after: None,
                };
                answer_and_close(stream, &e).await;
            }
        }
        HeadError::TooLarge => {
            CONN.closed_header_too_large.inc();
            let e = ApiError {
                status: 431,
                kind: "invalid_request_error",
                code: Some("header_too_large"),
                param: None,
                message: format!(
                    "The request line and headers are larger than the gateway's limit of \
                     {} bytes (server.max_header_bytes).",
                    limits.head.max_bytes
                ),
                retry_after: None,
            };
            answer_and_close(stream, &e).await;
        }
    }
}

/// How long a refused client has to send its request head before it is closed unanswered.
const REFUSAL_HEAD_WAIT: Duration = Duration::from_secs(1);

/// How long a refused client is read from after its answer, before the close.
const LINGER: Duration = Duration::from_millis(250);

/// Writes `e` as a complete `Connection: close` response, then closes the connection.
async fn answer_and_close(mut stream: Stream, e: &ApiError) {
    let bytes = raw_response(e);
    let wrote = timeout(Duration::from_secs(1), async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    })
    .await;
    if !matches!(wrote, Ok(Ok(()))) {
        return;
    }
    let _ = timeout(LINGER, AsyncWriteExt::shutdown(&mut stream)).await;
    // Closing with unread bytes would reset the connection, and a reset can discard the
    // answer before the client reads it: read (and drop) what it still sends, briefly.
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// An HTTP/1.1 response carrying the OpenAI error envelope.
fn raw_response(e: &ApiError) -> Vec<u8> {
    let body = e.body();
    let reason = http::StatusCode::from_u16(e.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        e.status,
        body.len()
    );
    if let Some(s) = e.retry_after {
        out.push_str(&format!("retry-after: {s}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The open-connection count and the connections waiting for a request head, which a new
/// connection at the cap may displace (oldest first).
#[derive(Default)]
pub struct Gate {
    open: AtomicUsize,
    /// Connections registered as waiting, minus displacements claimed but not yet carried
    /// out. Can dip below zero for a moment when a claimed connection got its head first.
    waiting: AtomicIsize,
    /// Waiters in arrival order: `notify_one` wakes the oldest.
    displace: Notify,
}

/// Counts one open connection until dropped.
pub struct Open<'a>(&'a Gate);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        CONN.open.dec();
    }
}

/// How a wait for a request head ended.
pub enum Waited<T> {
    Done(T),
    /// A new connection took this one's place.
    Displaced,
}

impl Gate {
    /// Admits a new connection under `max` open ones, displacing a waiting connection if the
    /// cap is reached; `None` when every open connection is busy.
    pub fn admit(&self, max: usize) -> Option<Open<'_>> {
        let n = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if n > max && !self.claim_waiting() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        CONN.open.inc();
        CONN.accepted.inc();
        Some(Open(self))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn claim_waiting(&self) -> bool {
        let claimed = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n - 1)
            })
            .is_ok();
        if claimed {
            self.displace.notify_one();
        }
        claimed
    }

    /// Runs `wait` (reading a request head) as a connection a newcomer may displace.
    pub async fn idle<F: Future>(&self, wait: F) -> Waited<F::Output> {
        let displaced = self.displace.notified();
        tokio::pin!(displaced);
        // Registers in arrival order. A claim whose target got its head first was kept as a
        // permit and lands here: honour it, so a claim always closes one connection.
        let landed = displaced.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if landed {
            return Waited::Displaced;
        }
        tokio::select! {
            biased;
            out = wait => {
                // Not displaced: a claim that picked this connection meanwhile is passed on
                // to the next waiter when `displaced` is dropped.
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                Waited::Done(out)
            }
            _ = displaced => Waited::Displaced,
        }
    }
}

/// Raises the soft open-file limit toward what `max_connections` needs (a client socket, and
/// often an upstream one, per connection), and warns when the hard limit is lower.
pub fn ensure_fd_limit(max_connections: usize) {
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(1024);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur < max_connections as u64 + 256 {
        log::warn!(
            "server.max_connections = {max_connections} but only {} files may be open \
             (ulimit -n / LimitNOFILE): connections beyond that fail at accept",
            lim.rlim_cur
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_when_nobody_waits() {
        let gate = Gate::default();
        let a = gate.admit(2).unwrap();
        let _b = gate.admit(2).unwrap();
        assert!(gate.admit(2).is_none());
        assert_eq!(gate.open(), 2);
        drop(a);
        assert!(gate.admit(2).is_some());
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_waiting_connection_is_displaced() {
        let gate = Arc::new(Gate::default());
        let mut waiters = Vec::new();
        for i in 0..3 {
            let g = gate.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let _open = g.admit(3).unwrap();
                match g.idle(rx).await {
                    Waited::Displaced => i,
                    Waited::Done(_) => 100 + i,
                }
            });
            waiters.push((task, tx));
            // Registered in this order.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gate.open(), 3);
        let newcomer = gate.admit(3).expect("a waiting connection makes room");
        let (first, _tx) = waiters.remove(0);
        assert_eq!(first.await.unwrap(), 0, "the oldest waiter goes");
        assert_eq!(gate.open(), 3);
        // The others got their heads: they were not displaced.
        for (task, tx) in waiters {
            tx.send(()).unwrap();
            assert!(task.await.unwrap() >= 100);
        }
        drop(newcomer);
        assert_eq!(gate.open(), 0);
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_claim_on_a_connection_that_got_its_head_lands_on_the_next_waiter() {
        let gate = Gate::default();
        let _a = gate.admit(1).unwrap();
        // `a` waits and its head arrives in the same instant it is claimed.
        let wait = gate.idle(async {
            assert!(gate.claim_waiting());
        });
        assert!(matches!(wait.await, Waited::Done(())));
        // The claim was kept: the next connection to wait is the one closed.
        assert!(matches!(
            gate.idle(std::future::pending::<()>()).await,
            Waited::Displaced
        ));
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn refusals_are_complete_http_responses_with_the_envelope() {
        let mut e = ApiError::no_capacity("full");
        e.retry_after = Some(1);
        let text = String::from_utf8(raw_response(&e)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close") && head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "service_unavailable");
    }
}
