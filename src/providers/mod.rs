//! Providers at run time: where they are, how to authenticate, and how to talk to them.
//!
//! An [`Upstream`] is built once per configured provider: its base URL and key resolved from
//! the environment, its auth and extra headers pre-built, and its socket address resolved off
//! the request path (Pingora's `HttpPeer::new` would resolve DNS synchronously).
//! One module per wire format (`openai/`, `gemini/`, `anthropic/`, `workers_ai/`, `voyage/`)
//! implements the endpoints that format serves; [`format()`] maps a kind to it.

pub mod anthropic;
pub mod audio;
pub mod caps;
pub mod chat;
pub mod common;
pub mod embeddings;
pub mod gemini;
#[cfg(test)]
mod golden;
pub mod images;
pub mod media;
pub mod openai;
pub mod resume;
pub mod videos;
pub mod voyage;
pub mod workers_ai;

pub use caps::{format, Auth, Embeddings, Format, Images, Speech, Transcription, Videos};

use crate::config::{
    expand_env_placeholders, resolve_secret, HealthCheckConfig, ProviderConfig, ProviderKind,
    UpstreamUrl,
};
use crate::errors::ApiError;
use crate::request::ChatRequest;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::upstreams::peer::HttpPeer;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Tokens a provider reported (or the gateway estimated) for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The upstream request a translator built: path under the provider's base URL (with any
/// query), body, and headers specific to the format.
pub struct UpstreamRequest {
    pub path: String,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl UpstreamRequest {
    /// A JSON body to `path`, with no headers of the format's own.
    pub fn json(path: String, body: &serde_json::Value) -> UpstreamRequest {
        UpstreamRequest {
            path,
            body: Bytes::from(body.to_string()),
            headers: Vec::new(),
        }
    }
}

/// An upstream request: `POST {base}{path}`.
pub struct Outbound {
    pub path: String,
    pub content_type: HeaderValue,
    pub accept: &'static str,
    pub body: Body,
    /// Headers the format needs (`anthropic-version`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// An upstream body: one buffer, or pieces that reference the client's buffer (uploads are
/// never copied whole, see `providers::media`).
pub enum Body {
    One(Bytes),
    Pieces(Vec<media::Piece>),
}

impl Outbound {
    /// A JSON request built by a chat translator.
    pub fn json(req: UpstreamRequest, stream: bool) -> Outbound {
        Outbound {
            path: req.path,
            content_type: HeaderValue::from_static("application/json"),
            accept: if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
            body: Body::One(req.body),
            headers: req.headers,
        }
    }

    /// A media request (JSON, multipart or raw audio).
    pub fn media(req: media::MediaRequest) -> Result<Outbound, ApiError> {
        let content_type = HeaderValue::from_str(&req.content_type)
            .map_err(|_| ApiError::invalid("The upload's content type is not valid."))?;
        Ok(Outbound {
            path: req.path,
            content_type,
            accept: "*/*",
            body: Body::Pieces(req.body),
            headers: req.headers,
        })
    }

    pub fn body_len(&self) -> usize {
        match &self.body {
            Body::One(b) => b.len(),
            Body::Pieces(p) => p.iter().map(media::Piece::len).sum(),
        }
    }
}

/// A chat translator's upstream request, or why the request cannot be served as asked.
pub type BuiltRequest = Result<UpstreamRequest, ApiError>;

/// A native answer made into OpenAI's `chat.completion` JSON.
pub struct Translated {
    pub body: Bytes,
    pub usage: Option<Usage>,
    /// Where `body`'s top-level `usage` value is (byte range), when the translator found it
    /// in its own walk of the answer: the pricing then parses just that range instead of
    /// scanning the answer again. `None` = not known (the pricing scans for it).
    pub usage_at: Option<std::ops::Range<usize>>,
}

impl Translated {
    /// Replaces the body (a guardrail's or the Responses reshaper's rewrite). The usage
    /// position described the old bytes, so it is forgotten.
    pub fn rewrite(&mut self, body: Bytes) {
        self.body = body;
        self.usage_at = None;
    }
}

/// Why a stream could not be translated further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The provider sent an error event (its message).
    Upstream(String),
    /// The provider sent something that is not its documented format.
    Malformed(String),
    /// A guardrail blocked the answer (its name): not the provider's failure.
    Blocked(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Upstream(m) => write!(f, "the provider reported an error: {m}"),
            StreamError::Malformed(m) => write!(f, "{m}"),
            StreamError::Blocked(name) => write!(f, "blocked by the guardrail `{name}`"),
        }
    }
}

/// One wire format: OpenAI requests in, native requests out, native answers back to OpenAI.
pub trait Translator: Send + Sync {
    /// The native request for a chat completion, from the client's OpenAI body.
    fn chat_request(&self, req: &ChatRequest, body: &[u8], model_id: &str) -> BuiltRequest;

    /// A native non-streamed answer → OpenAI `chat.completion`.
    fn chat_response(&self, body: Bytes, model_id: &str) -> Result<Translated, String>;

    /// A fresh per-request state machine for a streamed answer.
    fn chat_stream(&self, model_id: &str, include_usage: bool) -> Box<dyn StreamTranslator>;

    /// A native error body → OpenAI error envelope.
    fn error(&self, status: u16, body: &[u8], provider: &str) -> Bytes;
}

/// Translates one streamed answer, chunk by chunk, into OpenAI `chat.completion.chunk`
/// events. Output depends only on the bytes fed, never on how they were split.
pub trait StreamTranslator: Send {
    /// Feeds upstream bytes (any chunking); appends complete OpenAI SSE events to `out`.
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError>;
    /// The upstream ended: appends the closing events (finish, usage, `[DONE]`).
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError>;
    /// Whether a content delta, tool call or finish reason has been emitted. Until then a
    /// failure can still fail over to another candidate.
    fn started(&self) -> bool;
    /// Usage seen so far.
    fn usage(&self) -> Option<Usage>;
    /// Appends the event that ends a stream failing mid-way (never a fake `[DONE]`): for
    /// chat, `data: {"error":{…}}`.
    fn error_event(&mut self, err: &ApiError, out: &mut Vec<u8>) {
        crate::sse::write_data(out, &err.body());
    }
    /// The resume layer of this stack of translators, if resume is on (wrappers hand on
    /// their inner translator's).
    fn seam(&mut self) -> Option<&mut resume::Seam> {
        None
    }
}

/// The chat translator for a provider kind. A kind without chat (Voyage: embeddings only)
/// gets no chat requests (its models are not chat models); it gets OpenAI's, whose error
/// translation is the one such kinds use.
pub fn translator(kind: ProviderKind) -> &'static dyn Translator {
    format(kind).chat.unwrap_or(&openai::OpenAi)
}

/// Timeouts applied to every upstream connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    /// How long a pooled idle upstream connection is kept.
    pub idle: Duration,
}

/// One endpoint of a provider: its URL, `Host` header and peer (its own connection pool).
/// A provider with one `base_url` has one; a pool (`base_urls`) has several.
pub struct Endpoint {
    /// `None` when the URL did not resolve (missing `env:` variable).
    pub url: Option<UpstreamUrl>,
    pub host_header: HeaderValue,
    pub weight: u32,
    /// Requests in flight to this endpoint at most (0: no cap of its own).
    pub max_connections: usize,
    /// The URL as configured (before `env:` expansion): the endpoint's identity across
    /// reloads, never shown (it may name a host an unauthorized caller must not see).
    pub configured: String,
    /// `host:port`: the endpoint in metrics and in the status shown to authorized callers.
    pub address: String,
    peer: ArcSwapOption<HttpPeer>,
}

impl Endpoint {
    /// Whether the host is a name that must be resolved (and re-resolved) by DNS.
    fn needs_dns(&self) -> bool {
        self.url
            .as_ref()
            .is_some_and(|u| u.host.parse::<IpAddr>().is_err())
    }
}

/// One configured provider, ready to send requests to.
pub struct Upstream {
    pub name: String,
    pub kind: ProviderKind,
    pub simulated: bool,
    /// At least one; several for a pool (`base_urls`).
    pub endpoints: Vec<Endpoint>,
    /// The resolved `health_check` of a pool (`None`: not a pool).
    pub health_check: Option<HealthCheckConfig>,
    /// The provider's keys (empty when it takes none), each as the header carrying it in
    /// the provider's format (`authorization: Bearer …`, `x-goog-api-key`, `x-api-key`).
    pub keys: Vec<PoolKey>,
    next_key: AtomicUsize,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Why this provider is not routable, if it is not.
    pub unavailable: Option<String>,
    insecure: bool,
    timeouts: PeerTimeouts,
}

/// A base URL from the config: expanded and parsed, or why it cannot be used.
fn endpoint_url(kind: ProviderKind, configured: &str) -> Result<UpstreamUrl, String> {
    let Some(u) = expand_env_placeholders(configured) else {
        return Err(format!(
            "base_url `{configured}` needs an environment variable that is not set"
        ));
    };
    let mut u = UpstreamUrl::parse(&u).map_err(|e| format!("base_url is invalid: {e}"))?;
    // Cloudflare's docs write the Workers AI base as `…/ai/run`; requests add
    // `/run/{model}` themselves, so both spellings mean the same base.
    if kind == ProviderKind::WorkersAi {
        if let Some(base) = u.path.strip_suffix("/run") {
            u.path = base.to_string();
        }
    }
    Ok(u)
}

impl Upstream {
    pub fn new(cfg: &ProviderConfig, timeouts: PeerTimeouts) -> Upstream {
        let mut unavailable = None;
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for spec in cfg.endpoints() {
            let url = match endpoint_url(cfg.kind, spec.url()) {
                Ok(u) => Some(u),
                Err(why) => {
                    // A pool serves from the endpoints that resolve; one that cannot is left
                    // out with a warning. With none left, the provider is unavailable.
                    if cfg.pooled() {
                        log::warn!("provider `{}`: an endpoint is left out: {why}", cfg.name);
                        continue;
                    }
                    unavailable = Some(why);
                    None
                }
            };
            let host_header = url
                .as_ref()
                .and_then(|u| HeaderValue::from_str(&u.host_header()).ok())
                .unwrap_or_else(|| HeaderValue::from_static("invalid"));
            let address = url.as_ref().map_or_else(String::new, |u| u.host_header());
            endpoints.push(Endpoint {
                url,
                host_header,
                weight: spec.weight().max(1),
                max_connections: spec.max_connections(),
                configured: spec.url().to_string(),
                address,
                peer: ArcSwapOption::empty(),
            });
        }
        if endpoints.is_empty() {
            unavailable = Some("no endpoint of `base_urls` can be used (see the log)".into());
            endpoints.push(Endpoint {
                url: None,
                host_header: HeaderValue::from_static("invalid"),
                weight: 1,
                max_connections: 0,
                configured: String::new(),
                address: String::new(),
                peer: ArcSwapOption::empty(),
            });
        }
        // Two endpoints on one host:port (different paths) are told apart by their place.
        for i in 0..endpoints.len() {
            if endpoints
                .iter()
                .filter(|e| e.address == endpoints[i].address)
                .count()
                > 1
            {
                endpoints[i].address = format!("{}#{}", endpoints[i].address, i + 1);
            }
        }
        let health_check = cfg.pooled().then(|| {
            let mut hc = cfg.health_check.clone().unwrap_or_default();
            hc.path
                .get_or_insert_with(|| cfg.kind.health_path().to_string());
            hc
        });
        // The pool: every key that resolves. A pool with none left is unavailable, with the
        // first key's reason.
        let mut keys = Vec::new();
        let mut key_problem = None;
        for spec in cfg.api_key.iter().chain(&cfg.api_keys) {
            let problem = match resolve_secret(spec) {
                Some(key) => match format(cfg.kind).auth.header(&key) {
                    Ok(header) => {
                        keys.push(PoolKey::new(header, &key, keys.len()));
                        continue;
                    }
                    Err(_) => "api_key contains invalid characters".to_string(),
                },
                None => match spec.strip_prefix("env:") {
                    Some(var) => format!("{var} is not set"),
                    None => "api_key is empty".into(),
                },
            };
            log::warn!("provider `{}`: a key is left out: {problem}", cfg.name);
            key_problem.get_or_insert(problem);
        }
        // A provider that only takes its clients' own keys needs none of its own.
        if keys.is_empty() && cfg.byok != crate::config::Byok::Require {
            if let Some(problem) = key_problem {
                unavailable.get_or_insert(problem);
            }
        }
        if !cfg.kind.supported() {
            unavailable.get_or_insert(format!(
                "provider kind `{}` is not supported by this build yet",
                cfg.kind.as_str()
            ));
        }
        let extra_headers = cfg
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let v = resolve_secret(v)?;
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(&v).ok()?,
                ))
            })
            .collect();
        let up = Upstream {
            name: cfg.name.clone(),
            kind: cfg.kind,
            simulated: cfg.simulated,
            endpoints,
            health_check,
            keys,
            next_key: AtomicUsize::new(0),
            extra_headers,
            unavailable,
            insecure: cfg.insecure_skip_verify,
            timeouts,
        };
        // An IP literal needs no resolution: build its peer now.
        for ep in &up.endpoints {
            if let Some(u) = &ep.url {
                if let Ok(ip) = u.host.parse::<IpAddr>() {
                    ep.peer.store(Some(Arc::new(
                        up.make_peer(ep, SocketAddr::new(ip, u.port)),
                    )));
                }
            }
        }
        up
    }

    /// Whether the provider is a pool of endpoints (checked, chosen per attempt).
    pub fn pooled(&self) -> bool {
        self.health_check.is_some()
    }

    /// Whether a host must be resolved (and re-resolved) by DNS.
    pub fn needs_dns(&self) -> bool {
        self.unavailable.is_none() && self.endpoints.iter().any(Endpoint::needs_dns)
    }

    fn make_peer(&self, ep: &Endpoint, addr: SocketAddr) -> HttpPeer {
        let (tls, sni) = match &ep.url {
            Some(u) => (u.tls, u.host.clone()),
            None => (false, String::new()),
        };
        self.new_peer(addr, tls, sni)
    }

    /// A peer at `addr` with the provider's timeouts and TLS checks.
    fn new_peer(&self, addr: SocketAddr, tls: bool, sni: String) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect * 2);
        o.idle_timeout = Some(self.timeouts.idle);
        if self.insecure {
            o.verify_cert = false;
            o.verify_hostname = false;
        }
        peer
    }

    /// The peer of endpoint `ep` (0 for a single `base_url`); resolves its host now if it
    /// has never been resolved.
    pub async fn peer(&self, ep: usize) -> Result<Arc<HttpPeer>, String> {
        let endpoint = self.endpoint(ep);
        if let Some(p) = endpoint.peer.load_full() {
            return Ok(p);
        }
        self.resolve(ep).await?;
        endpoint
            .peer
            .load_full()
            .ok_or_else(|| format!("`{}` has no resolved address", self.name))
    }

    /// Endpoint `ep`, or the first if there is no such endpoint.
    pub fn endpoint(&self, ep: usize) -> &Endpoint {
        self.endpoints.get(ep).unwrap_or(&self.endpoints[0])
    }

    /// Resolves every endpoint's host name (off the request path); the first error, if any.
    pub async fn resolve_all(&self) -> Result<(), String> {
        let mut first = Ok(());
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.needs_dns() {
                if let Err(e) = self.resolve(i).await {
                    first = first.and(Err(e));
                }
            }
        }
        first
    }

    /// Resolves endpoint `ep`'s host asynchronously and stores the first address.
    pub async fn resolve(&self, ep: usize) -> Result<(), String> {
        let endpoint = self.endpoint(ep);
        let Some(u) = &endpoint.url else {
            return Err(format!("`{}` has no base URL", self.name));
        };
        let mut addrs = tokio::net::lookup_host((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("cannot resolve `{}`: {e}", u.host))?;
        let addr = addrs
            .next()
            .ok_or_else(|| format!("`{}` resolved to no address", u.host))?;
        let current = endpoint.peer.load();
        if current.as_ref().and_then(|p| p._address.as_inet().copied()) != Some(addr) {
            endpoint
                .peer
                .store(Some(Arc::new(self.make_peer(endpoint, addr))));
        }
        Ok(())
    }

    /// The full upstream path at endpoint `ep` for an API path such as `/chat/completions`.
    pub fn path(&self, ep: usize, api_path: &str) -> String {
        let prefix = self
            .endpoint(ep)
            .url
            .as_ref()
            .map_or("", |u| u.path.as_str());
        let mut path = String::with_capacity(prefix.len() + api_path.len());
        path.push_str(prefix);
        path.push_str(api_path);
        path
    }

    /// The key for the next attempt: round-robin over the keys neither resting nor
    /// rejected. `Ok(None)`: the provider takes no key. `Err`: every key is out, and why.
    pub fn pick_key(&self) -> Result<Option<usize>, String> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let now = unix_ms();
        // Each turn of the counter that lands on a key out is skipped, so the usable keys
        // share the load evenly.
        (0..self.keys.len())
            .map(|_| self.next_key.fetch_add(1, Ordering::Relaxed) % self.keys.len())
            .find(|&k| self.keys[k].usable(now))
            .map(Some)
            .ok_or_else(|| {
                if self.keys.iter().all(|k| k.rejected().is_some()) {
                    "every key was rejected by the provider".to_string()
                } else {
                    "every key is resting after a 429".to_string()
                }
            })
    }

    /// Whether a key other than `key` could serve now.
    pub fn other_key_usable(&self, key: usize) -> bool {
        let now = unix_ms();
        self.keys
            .iter()
            .enumerate()
            .any(|(i, k)| i != key && k.usable(now))
    }

    /// The request head for `POST {base}{req.path}` at endpoint `ep`, carrying key `key` of
    /// the pool.
    ///
    /// Built without Pingora's case map, so header names go out in lowercase (as HTTP/2
    /// always sends them, and as Node's `fetch` does over HTTP/1.1; names are
    /// case-insensitive, RFC 9110 §5.1). The case map doubled the work of every header
    /// inserted and of the head's copy for a retry, on every attempt.
    pub fn request_header(
        &self,
        req: &Outbound,
        key: Option<usize>,
        ep: usize,
    ) -> pingora::Result<pingora::http::RequestHeader> {
        use http::header;
        let path = self.path(ep, &req.path);
        let mut h = pingora::http::RequestHeader::build_no_case(
            "POST",
            path.as_bytes(),
            Some(8 + self.extra_headers.len() + req.headers.len()),
        )?;
        h.insert_header(header::HOST, self.endpoint(ep).host_header.clone())?;
        if let Some((name, value)) = key.and_then(|k| self.keys.get(k)).map(|k| &k.header) {
            h.insert_header(name.clone(), value.clone())?;
        }
        h.insert_header(header::CONTENT_TYPE, req.content_type.clone())?;
        h.insert_header(header::CONTENT_LENGTH, req.body_len())?;
        h.insert_header(header::ACCEPT, req.accept)?;
        h.insert_header(
            header::USER_AGENT,
            concat!("freeway/", env!("CARGO_PKG_VERSION")),
        )?;
        for (k, v) in self.extra_headers.iter().chain(&req.headers) {
            h.insert_header(k.clone(), v.clone())?;
        }
        Ok(h)
    }
}

impl Upstream {
    /// The head of an active health check of endpoint `ep`: `GET {base}{path}` with the
    /// provider's key (the first one usable) and configured headers, as a request would.
    pub fn check_header(
        &self,
        ep: usize,
        path: &str,
    ) -> pingora::Result<pingora::http::RequestHeader> {
        use http::header;
        let full = self.path(ep, path);
        let mut h = pingora::http::RequestHeader::build("GET", full.as_bytes(), None)?;
        h.insert_header(header::HOST, self.endpoint(ep).host_header.clone())?;
        let now = unix_ms();
        let key = self
            .keys
            .iter()
            .find(|k| k.usable(now))
            .or(self.keys.first());
        if let Some((name, value)) = key.map(|k| &k.header) {
            h.insert_header(name.clone(), value.clone())?;
        }
        h.insert_header(
            header::USER_AGENT,
            concat!("freeway/", env!("CARGO_PKG_VERSION"), " health-check"),
        )?;
        for (k, v) in &self.extra_headers {
            h.insert_header(k.clone(), v.clone())?;
        }
        Ok(h)
    }
}

impl Upstream {
    /// The head of `GET {base}{path}` with key `key` of the pool (a video job's poll and
    /// download go with the key that created the job) and the configured headers. A `path`
    /// that is a URL on the provider's own host (Gemini names its files so) is used as is.
    pub fn get_header(
        &self,
        ep: usize,
        path: &str,
        key: Option<usize>,
    ) -> pingora::Result<pingora::http::RequestHeader> {
        use http::header;
        let full = match on_host(path) {
            Some(p) => p.to_string(),
            None => self.path(ep, path),
        };
        let mut h = pingora::http::RequestHeader::build("GET", full.as_bytes(), None)?;
        h.insert_header(header::HOST, self.endpoint(ep).host_header.clone())?;
        if let Some((name, value)) = key.and_then(|k| self.keys.get(k)).map(|k| &k.header) {
            h.insert_header(name.clone(), value.clone())?;
        }
        h.insert_header(
            header::USER_AGENT,
            concat!("freeway/", env!("CARGO_PKG_VERSION")),
        )?;
        for (k, v) in &self.extra_headers {
            h.insert_header(k.clone(), v.clone())?;
        }
        Ok(h)
    }

    /// `http(s)://host[:port]` of endpoint `ep`.
    pub fn origin(&self, ep: usize) -> String {
        let tls = self.endpoint(ep).url.as_ref().is_some_and(|u| u.tls);
        let host = self.endpoint(ep).host_header.to_str().unwrap_or("");
        format!("{}://{host}", if tls { "https" } else { "http" })
    }

    /// Whether `url` (absolute) is on endpoint `ep`'s host: only there may the key go.
    pub fn serves_url(&self, ep: usize, url: &str) -> bool {
        let Some(rest) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        else {
            return false;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        self.endpoint(ep)
            .host_header
            .to_str()
            .is_ok_and(|h| h.eq_ignore_ascii_case(authority))
    }
}

impl Upstream {
    /// A peer for `url` on another host than the provider's — where it redirected a
    /// download (Gemini sends its videos to its storage) — resolved now, with the provider's
    /// timeouts and TLS checks: (peer, `Host` header, path and query). An IPv4 address is
    /// preferred when the name has one (a host without an IPv6 route is common).
    pub async fn redirect_peer(&self, url: &str) -> Result<(HttpPeer, String, String), String> {
        let bare = url.split(['?', '#']).next().unwrap_or(url);
        let u = UpstreamUrl::parse(bare)?;
        let path = on_host(url).unwrap_or("/").to_string();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("cannot resolve `{}`: {e}", u.host))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("`{}` resolved to no address", u.host))?;
        let peer = self.new_peer(addr, u.tls, u.host.clone());
        Ok((peer, u.host_header(), path))
    }
}

/// The path and query of an absolute URL (`None` for a path).
fn on_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// One key of a provider's pool, and whether it may be used now.
pub struct PoolKey {
    pub header: (HeaderName, HeaderValue),
    /// `…` and the key's last four characters: enough to tell keys apart in status and logs.
    pub hint: String,
    /// Unix ms until which the key rests after a 429 (0 = not resting).
    resting_until: AtomicU64,
    /// Why the provider rejected the key (401/403), once it has (read without a lock on
    /// every pick).
    rejected: OnceLock<String>,
}

impl PoolKey {
    /// `index`: the key's place in the pool. Its last four characters are shown only for
    /// keys long enough that they give nothing away (a short key would be shown whole).
    fn new(header: (HeaderName, HeaderValue), key: &str, index: usize) -> PoolKey {
        let chars: Vec<char> = key.chars().collect();
        let hint = if chars.len() >= 16 {
            let tail: String = chars[chars.len() - 4..].iter().collect();
            format!("#{} …{tail}", index + 1)
        } else {
            format!("#{}", index + 1)
        };
        PoolKey {
            header,
            hint,
            resting_until: AtomicU64::new(0),
            rejected: OnceLock::new(),
        }
    }

    fn usable(&self, now_ms: u64) -> bool {
        self.resting_until.load(Ordering::Relaxed) <= now_ms && self.rejected.get().is_none()
    }

    /// Rests the key for `wait` (a 429).
    pub fn rest(&self, wait: Duration) {
        let until = unix_ms() + wait.as_millis() as u64;
        self.resting_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Takes the key out: the provider refused it.
    pub fn reject(&self, why: String) {
        let _ = self.rejected.set(why);
    }

    pub fn rejected(&self) -> Option<&str> {
        self.rejected.get().map(String::as_str)
    }

    /// Unix ms the key rests until, if it is resting now.
    pub fn resting_until(&self) -> Option<u64> {
        let until = self.resting_until.load(Ordering::Relaxed);
        (until > unix_ms()).then_some(until)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
