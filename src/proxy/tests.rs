//! The pipeline driven in-process: a real `Gateway` and Pingora `Session` (over an in-memory
//! duplex stream) against fake upstreams on loopback that answer as each test scripts.
//! Checks the attempt engine's decisions: failover order, key-pool rotation, the stale
//! pooled-connection retry, and what it records (usage, price, health, attempts).

use super::chat::{self, Api};
use super::ctx::RequestCtx;
use super::Gateway;
use crate::config::Config;
use crate::live::Board;
use crate::observe::Observer;
use crate::state::State;
use parking_lot::Mutex;
use pingora::proxy::Session;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request a fake upstream received.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection (0-based) carried it.
    conn: usize,
    path: String,
    authorization: String,
    body: String,
}

/// What a fake upstream does with a request.
enum Act {
    Respond(u16, String),
    /// Close the connection without answering.
    Close,
}

type Script = dyn Fn(usize, &Seen) -> Act + Send + Sync;

/// An HTTP/1.1 upstream on loopback; `script(n, request)` decides the n-th request's fate.
struct Fake {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(script: Box<Script>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::from(script);
        let log = seen.clone();
        tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, conn, script.clone(), log.clone()));
                conn += 1;
            }
        });
        Fake { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then `content-length` bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let len: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request = Seen {
            conn,
            path: head.split(' ').nth(1).unwrap_or("").to_string(),
            authorization: header("authorization"),
            body: String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        };
        buf.drain(..head_end + len);
        let n = {
            let mut s = seen.lock();
            s.push(request.clone());
            s.len() - 1
        };
        match script(n, &request) {
            Act::Close => return,
            Act::Respond(status, body) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A chat completion as an OpenAI-compatible provider answers it.
fn completion(text: &str, prompt: u64, completion: u64) -> String {
    serde_json::json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    })
    .to_string()
}

fn gateway(providers: &str) -> (Gateway, Arc<State>) {
    let text = format!(
        "[server]\nupstream_timeout_ms = 3000\nstream_idle_timeout_ms = 3000\n\
         [observability]\nrequest_log = false\n[cache]\nenabled = false\n{providers}"
    );
    let config = Config::parse(&text).unwrap();
    let board = Arc::new(Board::in_memory());
    let (observer, _) = Observer::new(&config);
    let gw = Gateway::new(State::new(config, &board), board, Arc::new(observer));
    let state = gw.state();
    (gw, state)
}

/// Runs one chat request through the pipeline; the client's status and body, and the
/// context as the `logging` phase would see it.
async fn chat_request(gw: &Gateway, state: &State, body: &str) -> (u16, String, RequestCtx) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut session = Session::new_h1(Box::new(server));
    assert!(session.read_request().await.unwrap());
    let mut ctx = RequestCtx::new();
    chat::handle(gw, state, &mut session, &mut ctx, Api::Chat).await;
    drop(session);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body, ctx)
}

fn provider(name: &str, addr: &str, keys: &str, price: (f64, f64)) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\n\
         {keys}\n  [[providers.models]]\n  id = \"m\"\n  capabilities = [\"stream\"]\n  \
         cost = {{ input_per_mtok = {}, output_per_mtok = {} }}\n",
        price.0, price.1
    )
}

const ASK: &str = r#"{"model":"dynamic/chain","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn fails_over_in_plan_order_and_records_the_answer_that_served() {
    let down = Fake::start(Box::new(|_, _| {
        Act::Respond(500, r#"{"error":{"message":"boom"}}"#.into())
    }))
    .await;
    let up = Fake::start(Box::new(|_, _| {
        Act::Respond(200, completion("hello", 7, 3))
    }))
    .await;
    let (gw, state) = gateway(&format!(
        "{}{}[[routes]]\nname = \"chain\"\nmodels = [\"down/m\", \"up/m\"]\n",
        provider("down", &down.addr, "api_key = \"k-down\"", (1.0, 1.0)),
        provider("up", &up.addr, "api_key = \"k-up\"", (2.0, 4.0)),
    ));
    let (status, body, ctx) = chat_request(&gw, &state, ASK).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello"), "{body}");
    // The first candidate was tried first, failed, and the second served.
    assert_eq!(down.seen().len(), 1);
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.seen()[0].path, "/v1/chat/completions");
    assert_eq!(up.seen()[0].authorization, "Bearer k-up");
    assert!(
        up.seen()[0].body.contains(r#""model":"m""#),
        "{:?}",
        up.seen()
    );
    assert_eq!(ctx.attempts, 2);
    assert_eq!(ctx.failures.len(), 1);
    assert!(
        ctx.failures[0].starts_with("down/m: HTTP 500"),
        "{:?}",
        ctx.failures
    );
    assert_eq!(ctx.provider.as_deref(), Some("up"));
    // Usage as the provider reported it, and the price of the model that served.
    let usage = ctx.usage.expect("usage recorded");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));
    let price = ctx.price.expect("price recorded");
    assert_eq!((price.input_per_mtok, price.output_per_mtok), (2.0, 4.0));
    // Health: the failed model remembers why.
    let down_idx = state
        .catalog
        .models
        .iter()
        .position(|m| m.qualified == "down/m")
        .unwrap();
    let h = state.models[down_idx].health.lock();
    assert!(
        h.last_error.as_deref().is_some_and(|e| e.contains("500")),
        "{:?}",
        h.last_error
    );
}

#[tokio::test]
async fn a_rate_limited_key_rests_and_the_same_model_is_retried_with_the_next_key() {
    let fake = Fake::start(Box::new(|_, r| {
        if r.authorization == "Bearer k-1" {
            Act::Respond(429, r#"{"error":{"message":"slow down"}}"#.into())
        } else {
            Act::Respond(200, completion("from k-2", 1, 1))
        }
    }))
    .await;
    let (gw, state) = gateway(&format!(
        "{}[[routes]]\nname = \"chain\"\nmodels = [\"pool/m\"]\n",
        provider(
            "pool",
            &fake.addr,
            "api_keys = [\"k-1\", \"k-2\"]",
            (0.0, 0.0)
        ),
    ));
    let (status, body, ctx) = chat_request(&gw, &state, ASK).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from k-2"), "{body}");
    let keys: Vec<String> = fake.seen().into_iter().map(|s| s.authorization).collect();
    assert_eq!(keys, ["Bearer k-1", "Bearer k-2"]);
    assert_eq!(ctx.attempts, 2);
    let up = &state.upstreams[0];
    assert!(up.keys[0].resting_until().is_some(), "k-1 rests");
    assert!(up.keys[1].resting_until().is_none(), "k-2 does not");
    // The next request goes straight to the key that works.
    let (status, _, ctx) = chat_request(&gw, &state, ASK).await;
    assert_eq!(status, 200);
    assert_eq!(ctx.attempts, 1);
    assert_eq!(fake.seen().last().unwrap().authorization, "Bearer k-2");
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried_on_a_fresh_one_without_an_attempt() {
    // Every connection's second request finds it closed (the provider dropped an idle
    // keep-alive connection just as the gateway reused it).
    let fake = Fake::start(Box::new(|_, r| {
        let reused = r.body.contains("second") && r.conn == 0;
        if reused {
            Act::Close
        } else {
            Act::Respond(200, completion("ok", 1, 1))
        }
    }))
    .await;
    let (gw, state) = gateway(&format!(
        "{}[[routes]]\nname = \"chain\"\nmodels = [\"p/m\"]\n",
        provider("p", &fake.addr, "api_key = \"k\"", (0.0, 0.0)),
    ));
    let (status, _, _) = chat_request(&gw, &state, ASK).await;
    assert_eq!(status, 200);
    let second = ASK.replace("hi", "second");
    let (status, body, ctx) = chat_request(&gw, &state, &second).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ctx.attempts, 1,
        "a stale connection is not a failed attempt"
    );
    assert!(ctx.failures.is_empty(), "{:?}", ctx.failures);
    let conns: Vec<usize> = fake.seen().into_iter().map(|s| s.conn).collect();
    assert_eq!(
        conns,
        [0, 0, 1],
        "reused, found closed, then a fresh connection"
    );
}

#[tokio::test]
async fn a_client_error_from_the_provider_is_final_and_not_failed_over() {
    let first = Fake::start(Box::new(|_, _| {
        Act::Respond(
            400,
            r#"{"error":{"message":"bad field","type":"invalid_request_error"}}"#.into(),
        )
    }))
    .await;
    let second = Fake::start(Box::new(|_, _| Act::Respond(200, completion("no", 1, 1)))).await;
    let (gw, state) = gateway(&format!(
        "{}{}[[routes]]\nname = \"chain\"\nmodels = [\"a/m\", \"b/m\"]\n",
        provider("a", &first.addr, "api_key = \"k\"", (0.0, 0.0)),
        provider("b", &second.addr, "api_key = \"k\"", (0.0, 0.0)),
    ));
    let (status, body, ctx) = chat_request(&gw, &state, ASK).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad field"), "{body}");
    assert_eq!(second.seen().len(), 0);
    assert_eq!(ctx.attempts, 1);
}
