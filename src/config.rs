//! Typed configuration (TOML) and its validation.
//!
//! Every error names the key that is wrong (`providers[2].models[0].tier: …`), so `freeway -t`
//! can tell an operator exactly what to fix. Secrets are written as `env:NAME` and resolved
//! here, once; a provider whose key (or URL) does not resolve is kept in the catalog but marked
//! unconfigured, so it is listed and never routed to.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration error: the dotted key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config error: {}", self.message)
        } else {
            write!(f, "config error at `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
    pub observability: ObservabilityConfig,
    pub telemetry: TelemetryConfig,
    pub embeddings: EmbeddingsConfig,
    /// `[images]`: where `/v1/images/generations` keeps images it serves by URL.
    pub images: ImagesConfig,
    pub providers: Vec<ProviderConfig>,
    pub routes: Vec<RouteConfig>,
    /// Per-app gateway keys with their own limits, models and budgets (`[[keys]]`).
    pub keys: Vec<KeyConfig>,
    pub guardrails: Vec<GuardrailConfig>,
}

// Spelled out: one line per section, like the file.
#[allow(clippy::derivable_impls)]
impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
            observability: ObservabilityConfig::default(),
            telemetry: TelemetryConfig::default(),
            embeddings: EmbeddingsConfig::default(),
            images: ImagesConfig::default(),
            providers: Vec::new(),
            routes: Vec::new(),
            keys: Vec::new(),
            guardrails: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<String>,
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub max_body_bytes: usize,
    pub upstream_timeout_ms: u64,
    pub stream_idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub max_attempts: usize,
    /// Client connections open at once. At the cap a new connection displaces the one idle
    /// longest (waiting for a request head); with none idle it is refused with a 503.
    pub max_connections: usize,
    /// Time a client has to send a complete request head, from its connection (or, on a
    /// kept-alive connection, from the head's first byte). Cuts slowloris clients.
    pub header_timeout_seconds: u64,
    /// How long a kept-alive client connection may sit idle between requests.
    pub keepalive_timeout_seconds: u64,
    /// Largest request head (request line + headers); larger → 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a whole request body, from the end of its head; later → 408.
    pub body_timeout_seconds: u64,
    /// Request-body bytes held in memory across all requests at once; a body that would go
    /// past it is refused with a 503 (retry shortly).
    pub max_buffered_body_bytes: usize,
    /// Origins allowed to call the gateway from a browser (CORS); `"*"` for any. Empty: no
    /// CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Whether a text stream that fails after its first content continues on the next
    /// capable model (`x-gateway-stream-resume` asks per request).
    pub stream_resume: StreamResume,
    pub pid_file: String,
    pub upgrade_sock: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["127.0.0.1:8080".into()],
            threads: 2,
            grace_period_seconds: 10,
            graceful_shutdown_timeout_seconds: 5,
            max_body_bytes: 32 * 1024 * 1024,
            upstream_timeout_ms: 120_000,
            stream_idle_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
            max_attempts: 4,
            max_connections: 10_000,
            header_timeout_seconds: 10,
            keepalive_timeout_seconds: 60,
            max_header_bytes: 64 * 1024,
            body_timeout_seconds: 60,
            max_buffered_body_bytes: 512 * 1024 * 1024,
            cors_origins: Vec::new(),
            stream_resume: StreamResume::Off,
            pid_file: "/tmp/freeway.pid".into(),
            upgrade_sock: "/tmp/freeway_upgrade.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub keys: Vec<String>,
    pub key_hashes: Vec<String>,
    pub public_paths: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: Vec::new(),
            key_hashes: Vec::new(),
            public_paths: vec![
                "/health".into(),
                "/v1/routing/status".into(),
                "/v1/models".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub path: String,
    pub redis_url: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: "data/freeway.db".into(),
            redis_url: String::new(),
        }
    }
}

/// `[limits]`: token buckets per client IP and per gateway key (see `limits`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub per_ip: BucketConfig,
    pub per_key: BucketConfig,
    /// Take the client IP from `X-Forwarded-For` (only behind a trusted reverse proxy).
    pub trust_forwarded_for: bool,
    /// Proxies (IPs or CIDRs) skipped from the right of `X-Forwarded-For`; the direct
    /// peer is always trusted when `trust_forwarded_for` is on.
    pub trusted_proxies: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_ip: BucketConfig {
                burst: Some(10),
                per_minute: 20,
            },
            per_key: BucketConfig::default(),
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A token bucket: holds `burst` requests (default: `per_minute`), refilled at
/// `per_minute`. `per_minute = 0` (or `burst = 0`) disables it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketConfig {
    pub burst: Option<u32>,
    pub per_minute: u32,
}

impl BucketConfig {
    /// `(capacity, per_minute)` when the bucket is enabled.
    pub fn enabled(&self) -> Option<(u32, u32)> {
        let burst = self.burst.unwrap_or(self.per_minute);
        (burst > 0 && self.per_minute > 0).then_some((burst, self.per_minute))
    }
}

/// `[cache]`: the exact response cache (see `cache`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// TTL when the request names none; 0 = cache only when the request asks.
    pub default_ttl_seconds: u64,
    /// Upper bound of stored answers (bytes); least recently used go first.
    pub max_bytes: u64,
    /// The largest single answer stored.
    pub max_entry_bytes: u64,
    /// Share cached answers between gateway keys. Off by default: each key sees only the
    /// answers cached for its own requests.
    pub shared: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            default_ttl_seconds: 0,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 4 * 1024 * 1024,
            shared: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9091".into(),
        }
    }
}

/// `[observability]`: the per-request log (SQLite, analytics, dashboard).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// Write a record of every request to the store (`false`: metrics and the access log only).
    pub request_log: bool,
    /// Records waiting for the writer thread; beyond this they are dropped (and counted).
    pub log_queue: usize,
    /// How long the writer gathers records into one transaction, in ms. Longer: fewer,
    /// larger transactions (less CPU per record); records reach analytics that much later.
    pub log_linger_ms: u64,
    /// Records older than this are deleted (0 keeps them forever).
    pub retention_days: u32,
    /// At most this many records are kept, oldest deleted first (0 = no cap).
    pub max_rows: u64,
    /// How client IPs are stored: `false`/`"off"`, `true`/`"truncate"` (IPv4 /24, IPv6 /48),
    /// or `"hash"` (salted sha256, not reversible).
    pub redact_ip: RedactIp,
    /// Salt for `redact_ip = "hash"`; empty = random per process (hashes then only match
    /// within one run).
    pub ip_hash_salt: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            request_log: true,
            log_queue: 65_536,
            log_linger_ms: 25,
            retention_days: 30,
            max_rows: 5_000_000,
            redact_ip: RedactIp::Off,
            ip_hash_salt: String::new(),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP (protobuf). Read at start: a change
/// takes effect on restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`; spans go to `/v1/traces` under
    /// it unless the URL already names a path). Empty: telemetry is off.
    pub otlp_endpoint: String,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Share of new traces recorded (0.0–1.0). A request continuing a client's trace
    /// follows the client's sampled flag.
    pub sample_ratio: f64,
    /// Headers sent to the collector (a token); values may be `env:NAME`. Never logged.
    pub headers: BTreeMap<String, String>,
    /// Extra resource attributes (`deployment.environment = "prod"`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Record the upstream request body (capped) on attempt spans. Off: no prompt or answer
    /// text leaves the gateway in a span.
    pub capture_content: bool,
    /// Finished requests waiting for the exporter; beyond this their spans are dropped and
    /// counted (`freeway_otel_dropped_spans_total`).
    pub queue_size: usize,
    /// How long the exporter gathers spans into one batch, in ms.
    pub batch_delay_ms: u64,
    /// Time limit of one export (connect, send, answer), in ms.
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "freeway".into(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            resource_attributes: BTreeMap::new(),
            capture_content: false,
            queue_size: 4096,
            batch_delay_ms: 200,
            export_timeout_ms: 5000,
        }
    }
}

impl TelemetryConfig {
    /// The collector's traces URL, `None` when telemetry is off.
    pub fn traces_url(&self) -> Result<Option<UpstreamUrl>, String> {
        let Some(raw) = expand_env_placeholders(self.otlp_endpoint.trim()) else {
            return Ok(None);
        };
        if raw.is_empty() {
            return Ok(None);
        }
        let mut url = UpstreamUrl::parse(&raw)?;
        if url.path.is_empty() || url.path == "/" {
            url.path = "/v1/traces".into();
        }
        Ok(Some(url))
    }
}

/// How client IPs are written to the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactIp {
    Off,
    Truncate,
    Hash,
}

impl<'de> Deserialize<'de> for RedactIp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(RedactIp::Off),
            Raw::Bool(true) => Ok(RedactIp::Truncate),
            Raw::Text(t) => match t.as_str() {
                "off" | "none" => Ok(RedactIp::Off),
                "truncate" | "prefix" => Ok(RedactIp::Truncate),
                "hash" => Ok(RedactIp::Hash),
                other => Err(serde::de::Error::custom(format!(
                    "`{other}` is not one of true, false, \"off\", \"truncate\", \"hash\""
                ))),
            },
        }
    }
}

/// `[embeddings]`: which model `auto` means for `/v1/embeddings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsConfig {
    /// `provider/model` (or a bare id); empty = the first `auto = true` embedding model.
    pub default: String,
}

/// `[images]`: images answered with `response_format: "url"` whose provider gave no URL
/// are kept in the embedded store and served at `GET /v1/images/files/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// How long such a URL works (seconds).
    pub url_ttl_seconds: u64,
    /// The most image bytes kept at once; the oldest go first.
    pub max_bytes: u64,
    /// The gateway's address as clients reach it (`https://ai.example.com`); empty = `http://`
    /// and the request's `Host`.
    pub public_base_url: String,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            url_ttl_seconds: 3600,
            max_bytes: 256 * 1024 * 1024,
            public_base_url: String::new(),
        }
    }
}

/// Wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Gemini,
    Anthropic,
    WorkersAi,
    Voyage,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::WorkersAi => "workers-ai",
            ProviderKind::Voyage => "voyage",
        }
    }

    /// The path an endpoint's health check asks for by default: the kind's model listing,
    /// a cheap authenticated GET. Voyage lists no models: a pool of Voyage-compatible
    /// servers needs `health_check.path` (and `expect_status`) of its own.
    pub fn health_path(self) -> &'static str {
        match self {
            ProviderKind::Openai | ProviderKind::Gemini | ProviderKind::Anthropic => "/models",
            ProviderKind::WorkersAi => "/models/search",
            ProviderKind::Voyage => "/models",
        }
    }

    /// Whether this build can talk to the kind. Voyage serves embeddings only: its models
    /// are `type = "embedding"`, so chat never routes there.
    pub fn supported(self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// The provider's one endpoint; or `base_urls` for a pool of several.
    #[serde(default)]
    pub base_url: String,
    /// A pool of endpoints serving the same models (replicas, regions): requests go to a
    /// healthy one, checked actively (`health_check`) and passively (real requests).
    #[serde(default)]
    pub base_urls: Vec<EndpointConfig>,
    /// Active checks of a pool's endpoints (defaults apply when `base_urls` is set).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub api_key: Option<String>,
    /// More keys for the same provider (a pool): requests rotate over them, and a key that
    /// is rate limited (429) rests while the others serve; one the provider rejects
    /// (401/403) is taken out. `api_key`, if set, is the pool's first key.
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub rpm: u32,
    /// Provider-wide token-per-minute ceiling (optional, 0 = none).
    #[serde(default)]
    pub tpm: u32,
    /// Concurrent requests this gateway sends the provider (0 = no cap). At the cap, a
    /// candidate on this provider is skipped like a busy model.
    #[serde(default)]
    pub max_connections: usize,
    /// Simulated providers are labelled as such in `/v1/models` and logs.
    #[serde(default)]
    pub simulated: bool,
    /// Accept a self-signed or otherwise unverifiable certificate. Off by default; only for
    /// local servers an operator controls.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Bring-your-own-key: whether a client may send its own key for this provider
    /// (`x-gateway-provider-key`) on a pinned `provider/model`.
    #[serde(default)]
    pub byok: Byok,
    /// How a resumed stream's continuation is asked of this provider (default: by kind and
    /// known base URL, see [`ProviderConfig::continuation`]).
    #[serde(default)]
    pub continuation: Option<Continuation>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

/// `[server] stream_resume`: the default of `x-gateway-stream-resume`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamResume {
    #[default]
    Off,
    /// Text streams resume on the next capable model.
    Text,
}

/// `[[providers]] continuation`: how the provider continues a partial assistant answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Continuation {
    /// The partial answer as the last (assistant) message: Anthropic's prefill.
    Prefill,
    /// The last assistant message marked `"prefix": true` (DeepSeek's beta prefix
    /// completion, Mistral).
    Prefix,
    /// vLLM: `continue_final_message: true`, `add_generation_prompt: false`.
    ContinueFinalMessage,
    /// The partial answer as an assistant message, then a user turn asking to continue.
    #[default]
    Instruct,
}

/// `[[providers]] byok`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Byok {
    /// Client keys are refused (400).
    #[default]
    Off,
    /// A client key is used when sent; otherwise the provider's own.
    Allow,
    /// Only client keys: a request without one gets 401.
    Require,
}

/// One `[[keys]]` entry: a gateway key for one app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub label: String,
    /// Literal or `env:NAME`.
    #[serde(default)]
    pub key: Option<String>,
    /// sha256 hex of the key, instead of `key`.
    #[serde(default)]
    pub hash: Option<String>,
    /// Requests per minute (0 = no per-key request limit).
    #[serde(default)]
    pub rpm: u32,
    /// Tokens per minute: prompt estimate + `max_tokens` reserved, reconciled with usage.
    #[serde(default)]
    pub tpm: u32,
    #[serde(default)]
    pub budget: BudgetConfig,
    /// Allowed model patterns (`*` wildcards); empty = all.
    #[serde(default)]
    pub models: Vec<String>,
}

/// `budget = { daily_usd, monthly_usd }`; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub daily_usd: f64,
    pub monthly_usd: f64,
}

/// One endpoint of a pool: a URL, or `{ url, weight, max_connections }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    Url(String),
    Weighted {
        url: String,
        #[serde(default = "default_weight")]
        weight: u32,
        /// Requests in flight to this endpoint at most (0 = no cap of its own).
        #[serde(default)]
        max_connections: usize,
    },
}

fn default_weight() -> u32 {
    1
}

impl EndpointConfig {
    pub fn url(&self) -> &str {
        match self {
            EndpointConfig::Url(u) | EndpointConfig::Weighted { url: u, .. } => u,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Url(_) => 1,
            EndpointConfig::Weighted { weight, .. } => *weight,
        }
    }

    pub fn max_connections(&self) -> usize {
        match self {
            EndpointConfig::Url(_) => 0,
            EndpointConfig::Weighted {
                max_connections, ..
            } => *max_connections,
        }
    }
}

/// `[[providers]].health_check`: how a pool's endpoints are checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `GET {base}{path}`; `None`: the kind's listing endpoint (`ProviderKind::health_path`).
    pub path: Option<String>,
    /// Seconds between two checks of an endpoint (jittered by ±20%).
    pub interval_seconds: f64,
    /// A check that has not answered in this time failed.
    pub timeout_ms: u64,
    /// Failed checks (or failed real requests) in a row that take an endpoint out.
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_after: u32,
    /// The status a passing check answers.
    pub expect_status: u16,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: None,
            interval_seconds: 10.0,
            timeout_ms: 2000,
            unhealthy_after: 3,
            healthy_after: 2,
            expect_status: 200,
        }
    }
}

/// The most endpoints one provider's pool may have.
pub const MAX_POOL_ENDPOINTS: usize = 64;

impl ProviderConfig {
    /// The configured endpoints: `base_urls`, or the one `base_url`.
    pub fn endpoints(&self) -> Vec<EndpointConfig> {
        if self.base_urls.is_empty() {
            vec![EndpointConfig::Url(self.base_url.clone())]
        } else {
            self.base_urls.clone()
        }
    }

    /// How a continuation is asked: the configured mode, else Anthropic's prefill for
    /// `anthropic`, prefix completion at Mistral's and DeepSeek's beta API, else an
    /// instruction to continue.
    pub fn continuation(&self) -> Continuation {
        if let Some(c) = self.continuation {
            return c;
        }
        let known = |host: &str| self.endpoints().iter().any(|e| e.url().contains(host));
        match self.kind {
            ProviderKind::Anthropic => Continuation::Prefill,
            ProviderKind::Openai if known("api.mistral.ai") || known("api.deepseek.com/beta") => {
                Continuation::Prefix
            }
            _ => Continuation::Instruct,
        }
    }

    /// Whether the provider is a pool: several endpoints (or one, checked).
    pub fn pooled(&self) -> bool {
        !self.base_urls.is_empty() || self.health_check.is_some()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    #[default]
    Chat,
    Embedding,
    Transcription,
    Speech,
    /// `/v1/images/generations`.
    Image,
    /// `/v1/videos`: asynchronous video jobs.
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cost {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// The price of prompt tokens the provider served from its cache (when it reports
    /// them); unset = `input_per_mtok`.
    pub cached_input_per_mtok: Option<f64>,
    /// A flat price per request (media models: per clip).
    pub per_request: f64,
    /// Image models: the price of one generated image.
    pub per_image: f64,
    /// Video models: the price of one second of generated video.
    pub per_second: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default = "default_model_type", rename = "type")]
    pub model_type: ModelType,
    #[serde(default = "default_context")]
    pub context_window: u32,
    #[serde(default)]
    pub max_output_tokens: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub daily_limit: u32,
    #[serde(default)]
    pub rpm: u32,
    /// Token-per-minute ceiling (optional, 0 = none).
    #[serde(default)]
    pub tpm: u32,
    #[serde(default = "default_tier")]
    pub tier: Tier,
    #[serde(default = "default_true")]
    pub auto: bool,
    #[serde(default)]
    pub cost: Cost,
    /// Embedding models only: models with the same `vector_space` produce interchangeable
    /// vectors, so requests may fail over between them. Unset = the model id (the same model
    /// at another provider).
    #[serde(default)]
    pub vector_space: Option<String>,
    /// Image and video models: the sizes (`"1024x1024"`) the model takes; empty = whatever
    /// the provider accepts. The first is used when a request names none.
    #[serde(default)]
    pub sizes: Vec<String>,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Chat => "chat",
            ModelType::Embedding => "embedding",
            ModelType::Transcription => "transcription",
            ModelType::Speech => "speech",
            ModelType::Image => "image",
            ModelType::Video => "video",
        }
    }
}

/// `"1024x1024"` → `(1024, 1024)`.
pub fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (w, h) = size.split_once('x')?;
    let (w, h) = (w.parse::<u32>().ok()?, h.parse::<u32>().ok()?);
    (w > 0 && h > 0 && w <= 16384 && h <= 16384).then_some((w, h))
}

impl ModelConfig {
    /// The vector space an embedding model writes into.
    pub fn space(&self) -> &str {
        self.vector_space.as_deref().unwrap_or(&self.id)
    }
}

fn default_model_type() -> ModelType {
    ModelType::Chat
}
fn default_context() -> u32 {
    8192
}
fn default_tier() -> Tier {
    Tier::Medium
}
fn default_true() -> bool {
    true
}

/// A named route (`model: "dynamic/<name>"`); see `routing::routes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(flatten)]
    pub targets: RouteTargets,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// A fallback chain and/or a weighted split.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RouteTargets {
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub split: Vec<SplitTarget>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// `x-gateway-metadata` keys and the values they must equal.
    pub when: BTreeMap<String, toml::Value>,
    #[serde(flatten)]
    pub targets: RouteTargets,
}

/// `[[guardrails]]`: what to look for, in which direction, and what to do about it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailConfig {
    pub name: String,
    #[serde(default)]
    pub on: GuardOn,
    /// Built-in detectors ([`PII_KINDS`]).
    #[serde(default)]
    pub pii: Vec<String>,
    /// Case-insensitive whole words.
    #[serde(default)]
    pub words: Vec<String>,
    /// Patterns of the `regex` crate's syntax (linear time).
    #[serde(default)]
    pub regex: Vec<String>,
    pub action: GuardAction,
    /// Gateway key labels it applies to; empty = all.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Models (as the client names them) it applies to; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Prompt roles whose text it reads (tool results are always read).
    #[serde(default = "default_guard_roles")]
    pub roles: Vec<String>,
}

fn default_guard_roles() -> Vec<String> {
    vec!["user".into()]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardOn {
    Prompt,
    Response,
    #[default]
    Both,
}

impl GuardOn {
    pub fn prompt(self) -> bool {
        self != GuardOn::Response
    }
    pub fn response(self) -> bool {
        self != GuardOn::Prompt
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    Block,
    Redact,
    Flag,
}

/// The built-in detectors (`guardrails::detect`).
pub const PII_KINDS: &[&str] = &[
    "api_key",
    "email",
    "iban",
    "credit_card",
    "ipv6",
    "ipv4",
    "phone",
];

/// Roles a guardrail may name.
const GUARD_ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Capability names accepted in `capabilities = [...]`.
pub const CAPABILITIES: &[&str] = &["tools", "json", "vision", "stream", "reasoning"];

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries line/column context; keep its first line only.
            let message = inner.message().lines().next().unwrap_or("").to_string();
            err(if key == "." { String::new() } else { key }, message)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Default config path: `$FREEWAY_CONFIG`, else `conf/freeway.toml`.
    pub fn default_path() -> PathBuf {
        std::env::var_os("FREEWAY_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("conf/freeway.toml"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(err("server.listen", "needs at least one address"));
        }
        for (i, addr) in s.listen.iter().enumerate() {
            addr.parse::<SocketAddr>().map_err(|_| {
                err(
                    format!("server.listen[{i}]"),
                    format!("`{addr}` is not an IP:port address"),
                )
            })?;
        }
        if s.threads == 0 {
            return Err(err("server.threads", "must be at least 1"));
        }
        if s.max_body_bytes == 0 {
            return Err(err("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_attempts == 0 {
            return Err(err("server.max_attempts", "must be at least 1"));
        }
        if s.max_connections == 0 {
            return Err(err("server.max_connections", "must be at least 1"));
        }
        if s.max_buffered_body_bytes < s.max_body_bytes {
            return Err(err(
                "server.max_buffered_body_bytes",
                "must be at least server.max_body_bytes (one body of the largest size must fit)",
            ));
        }
        if s.max_header_bytes < 1024 {
            return Err(err(
                "server.max_header_bytes",
                "must be at least 1024 (a request line and a few headers)",
            ));
        }
        for (key, v) in [
            ("server.upstream_timeout_ms", s.upstream_timeout_ms),
            ("server.stream_idle_timeout_ms", s.stream_idle_timeout_ms),
            ("server.connect_timeout_ms", s.connect_timeout_ms),
            ("server.header_timeout_seconds", s.header_timeout_seconds),
            ("server.body_timeout_seconds", s.body_timeout_seconds),
            (
                "server.keepalive_timeout_seconds",
                s.keepalive_timeout_seconds,
            ),
        ] {
            if v == 0 {
                return Err(err(key, "must be greater than 0"));
            }
        }
        for (i, h) in self.auth.key_hashes.iter().enumerate() {
            parse_key_hash(h).map_err(|m| err(format!("auth.key_hashes[{i}]"), m))?;
        }
        for (i, p) in self.auth.public_paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(err(
                    format!("auth.public_paths[{i}]"),
                    "must start with `/`",
                ));
            }
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(err(
                "metrics.listen",
                format!("`{}` is not an IP:port address", self.metrics.listen),
            ));
        }
        if self.observability.log_queue == 0 {
            return Err(err("observability.log_queue", "must be at least 1"));
        }
        if self.observability.log_linger_ms > 10_000 {
            return Err(err(
                "observability.log_linger_ms",
                "must be at most 10000 (records wait this long before they are written)",
            ));
        }
        self.validate_telemetry()?;
        let mut names = HashSet::new();
        for (pi, p) in self.providers.iter().enumerate() {
            let key = format!("providers[{pi}]");
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err(
                    format!("{key}.name"),
                    format!(
                        "`{}` must be non-empty and use only letters, digits, `-` and `_`",
                        p.name
                    ),
                ));
            }
            if p.name == "dynamic" || p.name == "auto" {
                return Err(err(
                    format!("{key}.name"),
                    format!("`{}` is reserved", p.name),
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("duplicate provider name `{}`", p.name),
                ));
            }
            // A base URL behind env: is checked when it resolves; a literal one now.
            // A base URL that needs an unset variable leaves the provider unconfigured (not
            // an error); one that resolves must be a valid URL.
            match (p.base_url.is_empty(), p.base_urls.is_empty()) {
                (true, true) => {
                    return Err(err(
                        format!("{key}.base_url"),
                        "is required (or `base_urls` for a pool of endpoints)",
                    ))
                }
                (false, false) => {
                    return Err(err(
                        format!("{key}.base_urls"),
                        "set either `base_url` or `base_urls`, not both",
                    ))
                }
                _ => {}
            }
            if let Some(url) = expand_env_placeholders(&p.base_url) {
                if !p.base_url.is_empty() {
                    UpstreamUrl::parse(&url).map_err(|m| err(format!("{key}.base_url"), m))?;
                }
            }
            if p.base_urls.len() > MAX_POOL_ENDPOINTS {
                return Err(err(
                    format!("{key}.base_urls"),
                    format!("at most {MAX_POOL_ENDPOINTS} endpoints"),
                ));
            }
            let mut seen_urls = HashSet::new();
            for (ei, e) in p.base_urls.iter().enumerate() {
                let ekey = format!("{key}.base_urls[{ei}]");
                if let Some(url) = expand_env_placeholders(e.url()) {
                    UpstreamUrl::parse(&url).map_err(|m| err(&ekey, m))?;
                }
                if e.weight() == 0 {
                    return Err(err(format!("{ekey}.weight"), "must be at least 1"));
                }
                if !seen_urls.insert(e.url()) {
                    return Err(err(&ekey, format!("`{}` is listed twice", e.url())));
                }
            }
            if let Some(hc) = &p.health_check {
                let hkey = format!("{key}.health_check");
                if hc.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                    return Err(err(format!("{hkey}.path"), "must start with `/`"));
                }
                if !(hc.interval_seconds.is_finite() && hc.interval_seconds >= 0.05) {
                    return Err(err(
                        format!("{hkey}.interval_seconds"),
                        "must be at least 0.05",
                    ));
                }
                if hc.timeout_ms == 0 {
                    return Err(err(format!("{hkey}.timeout_ms"), "must be at least 1"));
                }
                if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
                    return Err(err(
                        format!("{hkey}.unhealthy_after"),
                        "unhealthy_after and healthy_after must be at least 1",
                    ));
                }
                if !(100..=599).contains(&hc.expect_status) {
                    return Err(err(
                        format!("{hkey}.expect_status"),
                        "must be an HTTP status (100-599)",
                    ));
                }
            }
            for hname in p.headers.keys() {
                http::HeaderName::from_bytes(hname.as_bytes()).map_err(|_| {
                    err(
                        format!("{key}.headers"),
                        format!("`{hname}` is not a valid header name"),
                    )
                })?;
            }
            let mut ids = HashSet::new();
            for (mi, m) in p.models.iter().enumerate() {
                let mkey = format!("{key}.models[{mi}]");
                if m.id.is_empty() {
                    return Err(err(format!("{mkey}.id"), "must not be empty"));
                }
                if !ids.insert(m.id.as_str()) {
                    return Err(err(
                        format!("{mkey}.id"),
                        format!("duplicate model id `{}` in provider `{}`", m.id, p.name),
                    ));
                }
                if m.context_window == 0 {
                    return Err(err(
                        format!("{mkey}.context_window"),
                        "must be greater than 0",
                    ));
                }
                for (ci, c) in m.capabilities.iter().enumerate() {
                    if !CAPABILITIES.contains(&c.as_str()) {
                        return Err(err(
                            format!("{mkey}.capabilities[{ci}]"),
                            format!(
                                "unknown capability `{c}` (expected one of {})",
                                CAPABILITIES.join(", ")
                            ),
                        ));
                    }
                }
                for (ai, a) in m.aliases.iter().enumerate() {
                    if a.is_empty() || a == "auto" {
                        return Err(err(
                            format!("{mkey}.aliases[{ai}]"),
                            format!("`{a}` cannot be an alias"),
                        ));
                    }
                }
                if let Some(space) = &m.vector_space {
                    if m.model_type != ModelType::Embedding {
                        return Err(err(
                            format!("{mkey}.vector_space"),
                            "only embedding models (type = \"embedding\") have a vector space",
                        ));
                    }
                    if space.trim().is_empty() {
                        return Err(err(format!("{mkey}.vector_space"), "must not be empty"));
                    }
                }
            }
        }
        self.validate_embeddings()?;
        self.validate_images()?;
        self.validate_limits_and_cache()?;
        self.validate_keys()?;
        self.validate_guardrails()?;
        self.validate_routes()
    }

    /// A name shared by embedding models must mean one vector space (a bare name fails over
    /// among its models, and mixing spaces would silently corrupt a vector index); the
    /// default must be an embedding model.
    fn validate_embeddings(&self) -> Result<(), ConfigError> {
        let mut space_of: BTreeMap<&str, (&str, String)> = BTreeMap::new();
        for (pi, p) in self.providers.iter().enumerate() {
            for (mi, m) in p.models.iter().enumerate() {
                if m.model_type != ModelType::Embedding {
                    continue;
                }
                for (ai, name) in std::iter::once(&m.id).chain(&m.aliases).enumerate() {
                    let here = format!("{}/{}", p.name, m.id);
                    match space_of.get(name.as_str()) {
                        Some((space, other)) if *space != m.space() => {
                            let key = if ai == 0 {
                                format!("providers[{pi}].models[{mi}].id")
                            } else {
                                format!("providers[{pi}].models[{mi}].aliases[{}]", ai - 1)
                            };
                            return Err(err(
                                key,
                                format!(
                                    "`{name}` names both `{other}` (vector space `{space}`) and `{here}` (vector space `{}`); \
                                     give them the same `vector_space` if they produce the same vectors, else use different names",
                                    m.space()
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            space_of.insert(name, (m.space(), here));
                        }
                    }
                }
            }
        }
        let d = &self.embeddings.default;
        if !d.is_empty() {
            let found = self.providers.iter().any(|p| {
                p.models.iter().any(|m| {
                    m.model_type == ModelType::Embedding
                        && (format!("{}/{}", p.name, m.id) == *d
                            || m.id == *d
                            || m.aliases.contains(d))
                })
            });
            if !found {
                return Err(err(
                    "embeddings.default",
                    format!("`{d}` is not a configured embedding model (type = \"embedding\")"),
                ));
            }
        }
        Ok(())
    }

    /// Image sizes are `WIDTHxHEIGHT`; a URL must live a while, in a bounded store.
    fn validate_images(&self) -> Result<(), ConfigError> {
        for (pi, p) in self.providers.iter().enumerate() {
            for (mi, m) in p.models.iter().enumerate() {
                for (si, size) in m.sizes.iter().enumerate() {
                    if parse_size(size).is_none() {
                        return Err(err(
                            format!("providers[{pi}].models[{mi}].sizes[{si}]"),
                            format!("`{size}` is not a size like \"1024x1024\""),
                        ));
                    }
                }
            }
        }
        let i = &self.images;
        if i.url_ttl_seconds == 0 {
            return Err(err("images.url_ttl_seconds", "must be at least 1"));
        }
        if i.max_bytes == 0 {
            return Err(err("images.max_bytes", "must be above 0"));
        }
        let base = &i.public_base_url;
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return Err(err(
                "images.public_base_url",
                format!("`{base}` must start with http:// or https://"),
            ));
        }
        Ok(())
    }

    fn validate_limits_and_cache(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (key, b) in [("limits.per_ip", &l.per_ip), ("limits.per_key", &l.per_key)] {
            if b.burst.is_some_and(|n| n > 0) && b.per_minute == 0 {
                return Err(err(
                    format!("{key}.per_minute"),
                    "set a refill rate above 0 for the burst (per_minute = 0 disables the limit)",
                ));
            }
        }
        for (i, p) in l.trusted_proxies.iter().enumerate() {
            crate::client_ip::IpNet::parse(p)
                .map_err(|m| err(format!("limits.trusted_proxies[{i}]"), m))?;
        }
        let c = &self.cache;
        if c.enabled && c.max_bytes == 0 {
            return Err(err(
                "cache.max_bytes",
                "must be above 0 (set cache.enabled = false to turn the cache off)",
            ));
        }
        if c.max_entry_bytes == 0 {
            return Err(err("cache.max_entry_bytes", "must be above 0"));
        }
        let url = &self.storage.redis_url;
        if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(err(
                "storage.redis_url",
                format!("`{url}` must start with redis:// or rediss://"),
            ));
        }
        Ok(())
    }

    fn validate_keys(&self) -> Result<(), ConfigError> {
        let mut labels: HashSet<&str> = self
            .auth
            .key_hashes
            .iter()
            .filter_map(|h| h.rsplit_once(':').map(|(l, _)| l))
            .collect();
        for (i, k) in self.keys.iter().enumerate() {
            let key = format!("keys[{i}]");
            let label_ok = !k.label.is_empty()
                && k.label.len() <= 64
                && k.label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !label_ok {
                return Err(err(
                    format!("{key}.label"),
                    "must be 1-64 letters, digits, `-`, `_` or `.`",
                ));
            }
            if !labels.insert(k.label.as_str()) {
                return Err(err(
                    format!("{key}.label"),
                    format!("duplicate key label `{}`", k.label),
                ));
            }
            match (&k.key, &k.hash) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(err(
                        key.as_str(),
                        "needs exactly one of `key` (literal or env:NAME) and `hash` (sha256 hex)",
                    ))
                }
                (None, Some(h)) => {
                    parse_key_hash(&format!("x:{h}")).map_err(|e| err(format!("{key}.hash"), e))?;
                }
                (Some(_), None) => {}
            }
            for (w, v) in [
                ("daily_usd", k.budget.daily_usd),
                ("monthly_usd", k.budget.monthly_usd),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        format!("{key}.budget.{w}"),
                        "must be a number of US dollars, 0 or more (0 = no budget)",
                    ));
                }
            }
            for (j, m) in k.models.iter().enumerate() {
                if m.trim().is_empty() {
                    return Err(err(format!("{key}.models[{j}]"), "must not be empty"));
                }
            }
        }
        Ok(())
    }

    fn validate_guardrails(&self) -> Result<(), ConfigError> {
        if self.guardrails.len() > 64 {
            return Err(err("guardrails", "at most 64 guardrails"));
        }
        let mut names = HashSet::new();
        for (gi, g) in self.guardrails.iter().enumerate() {
            let key = format!("guardrails[{gi}]");
            if g.name.is_empty() || !names.insert(g.name.as_str()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("`{}` is empty or used twice", g.name),
                ));
            }
            if g.pii.is_empty() && g.words.is_empty() && g.regex.is_empty() {
                return Err(err(&key, "needs `pii`, `words` or `regex`"));
            }
            for (i, k) in g.pii.iter().enumerate() {
                if !PII_KINDS.contains(&k.as_str()) {
                    return Err(err(
                        format!("{key}.pii[{i}]"),
                        format!("`{k}` is not one of {}", PII_KINDS.join(", ")),
                    ));
                }
            }
            for (i, w) in g.words.iter().enumerate() {
                if w.trim().is_empty() {
                    return Err(err(format!("{key}.words[{i}]"), "must not be empty"));
                }
            }
            for (i, re) in g.regex.iter().enumerate() {
                let hir = regex_syntax::parse(re).map_err(|e| {
                    let first = e.to_string();
                    let line = first.lines().last().unwrap_or("").to_string();
                    err(
                        format!("{key}.regex[{i}]"),
                        format!("not a valid regex: {line}"),
                    )
                })?;
                if hir.properties().minimum_len().unwrap_or(0) == 0 {
                    return Err(err(
                        format!("{key}.regex[{i}]"),
                        "can match empty text: every match must be at least one character",
                    ));
                }
                regex_automata::meta::Regex::new(re)
                    .map_err(|e| err(format!("{key}.regex[{i}]"), e.to_string()))?;
            }
            for (i, r) in g.roles.iter().enumerate() {
                if !GUARD_ROLES.contains(&r.as_str()) {
                    return Err(err(
                        format!("{key}.roles[{i}]"),
                        format!("`{r}` is not one of {}", GUARD_ROLES.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        let mut known: HashSet<String> = HashSet::from(["auto".to_string()]);
        for p in &self.providers {
            for m in &p.models {
                known.insert(format!("{}/{}", p.name, m.id));
                known.insert(m.id.clone());
                known.extend(m.aliases.iter().cloned());
            }
        }
        let mut names = HashSet::new();
        for (ri, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{ri}]");
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("`{}` is empty or used twice", r.name),
                ));
            }
            let check = |t: &RouteTargets, key: &str, need: bool| {
                if need && t.models.is_empty() && t.split.is_empty() {
                    return Err(err(key, "needs `models` (a fallback chain) or `split`"));
                }
                for (i, m) in t.models.iter().enumerate() {
                    if !known.contains(m) {
                        return Err(err(
                            format!("{key}.models[{i}]"),
                            format!("`{m}` is not a configured model, alias or `auto`"),
                        ));
                    }
                }
                for (i, s) in t.split.iter().enumerate() {
                    if !known.contains(&s.model) {
                        return Err(err(
                            format!("{key}.split[{i}].model"),
                            format!("`{}` is not a configured model, alias or `auto`", s.model),
                        ));
                    }
                    if s.weight == 0 {
                        return Err(err(format!("{key}.split[{i}].weight"), "must be above 0"));
                    }
                }
                Ok(())
            };
            check(&r.targets, &key, true)?;
            for (i, rule) in r.rules.iter().enumerate() {
                check(&rule.targets, &format!("{key}.rules[{i}]"), true)?;
            }
        }
        Ok(())
    }
}

/// Parses `label:sha256hex` into the label and the 32-byte digest.
pub fn parse_key_hash(s: &str) -> Result<(String, [u8; 32]), String> {
    let (label, hexpart) = s
        .rsplit_once(':')
        .ok_or_else(|| "expected `label:sha256hex`".to_string())?;
    let bytes = hex::decode(hexpart).map_err(|_| "the hash is not hexadecimal".to_string())?;
    let digest: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "the hash must be 64 hex characters (sha256)".to_string())?;
    Ok((label.to_string(), digest))
}

/// Resolves a secret written as a literal or `env:NAME`. `None` when the variable is unset
/// or empty.
pub fn resolve_secret(value: &str) -> Option<String> {
    match value.strip_prefix("env:") {
        Some(name) => std::env::var(name).ok().filter(|v| !v.is_empty()),
        None => Some(value.to_string()).filter(|v| !v.is_empty()),
    }
}

impl Config {
    fn validate_telemetry(&self) -> Result<(), ConfigError> {
        let t = &self.telemetry;
        if !t.otlp_endpoint.starts_with("env:") {
            t.traces_url()
                .map_err(|m| err("telemetry.otlp_endpoint", m))?;
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(err("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if t.queue_size == 0 {
            return Err(err("telemetry.queue_size", "must be at least 1"));
        }
        if t.export_timeout_ms == 0 {
            return Err(err("telemetry.export_timeout_ms", "must be greater than 0"));
        }
        if t.batch_delay_ms > 60_000 {
            return Err(err("telemetry.batch_delay_ms", "must be at most 60000"));
        }
        for name in t.headers.keys() {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                err(
                    "telemetry.headers",
                    format!("`{name}` is not a valid header name"),
                )
            })?;
        }
        Ok(())
    }
}

/// Expands `{env:NAME}` placeholders inside a string (used for URLs that embed an account
/// id, such as Workers AI). `None` when a named variable is missing.
pub fn expand_env_placeholders(value: &str) -> Option<String> {
    if let Some(whole) = value.strip_prefix("env:") {
        return std::env::var(whole).ok().filter(|v| !v.is_empty());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("{env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 5..];
        let end = after.find('}')?;
        let var = std::env::var(&after[..end])
            .ok()
            .filter(|v| !v.is_empty())?;
        out.push_str(&var);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A parsed `http(s)://host[:port][/path]` upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`/openai/v1`), possibly empty.
    pub path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{url}` has no usable host"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("`{url}` has a bad IPv6 host"))?;
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("`{url}` has a bad port"))?,
            };
            (v6[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{url}` has a bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if path.contains('?') || path.contains('#') {
            return Err(format!("`{url}` must not have a query or fragment"));
        }
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_valid_with_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.max_attempts, 4);
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080"]);
    }

    #[test]
    fn connection_limits_have_defaults_and_are_checked() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.server.header_timeout_seconds, 10);
        assert_eq!(c.server.keepalive_timeout_seconds, 60);
        assert_eq!(c.server.max_header_bytes, 65536);
        // The body bounds docs/SECURITY.md names: 512 MiB across all bodies, 60 s a body.
        assert_eq!(c.server.max_buffered_body_bytes, 512 * 1024 * 1024);
        assert_eq!(c.server.body_timeout_seconds, 60);
        for (text, key) in [
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nheader_timeout_seconds = 0\n",
                "server.header_timeout_seconds",
            ),
            (
                "[server]\nkeepalive_timeout_seconds = 0\n",
                "server.keepalive_timeout_seconds",
            ),
            (
                "[server]\nmax_header_bytes = 10\n",
                "server.max_header_bytes",
            ),
        ] {
            assert_eq!(Config::parse(text).unwrap_err().key, key, "{text}");
        }
        let p = "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\nmax_connections = 3\n";
        assert_eq!(Config::parse(p).unwrap().providers[0].max_connections, 3);
    }

    #[test]
    fn type_error_names_the_key() {
        let e = Config::parse("[server]\nthreads = \"two\"\n").unwrap_err();
        assert_eq!(e.key, "server.threads");
    }

    #[test]
    fn unknown_field_names_the_section() {
        let e = Config::parse("[server]\nlisten_on = []\n").unwrap_err();
        assert!(e.message.contains("listen_on"), "{e}");
    }

    #[test]
    fn bad_nested_model_key_is_named() {
        let text = r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1"
  [[providers.models]]
  id = "m"
  capabilities = ["telepathy"]
"#;
        let e = Config::parse(text).unwrap_err();
        assert_eq!(e.key, "providers[0].models[0].capabilities[0]");
    }

    #[test]
    fn bad_kind_is_named() {
        let text = "[[providers]]\nname = \"p\"\nkind = \"soap\"\nbase_url = \"http://x\"\n";
        let e = Config::parse(text).unwrap_err();
        assert_eq!(e.key, "providers[0].kind", "{e}");
    }

    #[test]
    fn listen_must_be_socket_addr() {
        let e = Config::parse("[server]\nlisten = [\"localhost\"]\n").unwrap_err();
        assert_eq!(e.key, "server.listen[0]");
    }

    #[test]
    fn route_targets_must_exist() {
        let text = "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://x\"\n  [[providers.models]]\n  id = \"m\"\n[[routes]]\nname = \"r\"\nmodels = [\"p/m\", \"p/nope\"]\n";
        let e = Config::parse(text).unwrap_err();
        assert_eq!(e.key, "routes[0].models[1]", "{e}");
        let e = Config::parse(&text.replace(", \"p/nope\"]", "]\n[[routes]]\nname = \"empty\""))
            .unwrap_err();
        assert_eq!(e.key, "routes[1]", "{e}");
    }

    #[test]
    fn vector_spaces_are_validated() {
        let base = "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://x\"\n";
        let e = Config::parse(&format!(
            "{base}  [[providers.models]]\n  id = \"a\"\n  aliases = [\"emb\"]\n  type = \"embedding\"\n\
               [[providers.models]]\n  id = \"b\"\n  aliases = [\"emb\"]\n  type = \"embedding\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "providers[0].models[1].aliases[0]", "{e}");
        assert!(e.message.contains("vector_space"), "{e}");
        // Declared equivalent: the shared alias is fine.
        Config::parse(&format!(
            "{base}  [[providers.models]]\n  id = \"a\"\n  aliases = [\"emb\"]\n  type = \"embedding\"\n  vector_space = \"s\"\n\
               [[providers.models]]\n  id = \"b\"\n  aliases = [\"emb\"]\n  type = \"embedding\"\n  vector_space = \"s\"\n"
        ))
        .unwrap();
        let e = Config::parse(&format!(
            "{base}  [[providers.models]]\n  id = \"c\"\n  vector_space = \"s\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "providers[0].models[0].vector_space");
        let e = Config::parse(&format!(
            "[embeddings]\ndefault = \"p/c\"\n{base}  [[providers.models]]\n  id = \"c\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "embeddings.default");
    }

    #[test]
    fn limits_and_cache_are_typed_with_named_errors() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.limits.per_ip.enabled(), Some((10, 20)));
        assert_eq!(c.limits.per_key.enabled(), None);
        let c =
            Config::parse("[limits]\nper_ip = { per_minute = 0 }\nper_key = { per_minute = 6 }\n")
                .unwrap();
        assert_eq!(c.limits.per_ip.enabled(), None);
        assert_eq!(c.limits.per_key.enabled(), Some((6, 6)));
        let e = Config::parse("[limits]\nper_ip = { burst = 5 }\n").unwrap_err();
        assert_eq!(e.key, "limits.per_ip.per_minute", "{e}");
        let e = Config::parse("[limits]\nper_ip = { burst = \"x\" }\n").unwrap_err();
        assert_eq!(e.key, "limits.per_ip.burst", "{e}");
        let e = Config::parse("[limits]\ntrusted_proxies = [\"10.0.0.0/99\"]\n").unwrap_err();
        assert_eq!(e.key, "limits.trusted_proxies[0]", "{e}");
        let e = Config::parse("[cache]\nmax_bytes = 0\n").unwrap_err();
        assert_eq!(e.key, "cache.max_bytes", "{e}");
        let e = Config::parse("[cache]\nttl = 5\n").unwrap_err();
        assert!(e.message.contains("ttl"), "{e}");
        let e = Config::parse("[storage]\nredis_url = \"localhost:6379\"\n").unwrap_err();
        assert_eq!(e.key, "storage.redis_url", "{e}");
    }

    #[test]
    fn upstream_url_parsing() {
        let u = UpstreamUrl::parse("https://api.groq.com/openai/v1/").unwrap();
        assert_eq!(
            u,
            UpstreamUrl {
                tls: true,
                host: "api.groq.com".into(),
                port: 443,
                path: "/openai/v1".into()
            }
        );
        assert_eq!(u.host_header(), "api.groq.com");
        let u = UpstreamUrl::parse("http://127.0.0.1:11434/v1").unwrap();
        assert_eq!(u.port, 11434);
        assert_eq!(u.host_header(), "127.0.0.1:11434");
        assert!(UpstreamUrl::parse("ftp://x").is_err());
        assert!(UpstreamUrl::parse("http://x:notaport").is_err());
    }

    #[test]
    fn observability_keys_parse_and_are_checked() {
        let c = Config::parse("[observability]\nredact_ip = true\nmax_rows = 10\n").unwrap();
        assert_eq!(c.observability.redact_ip, RedactIp::Truncate);
        assert_eq!(c.observability.max_rows, 10);
        let c = Config::parse("[observability]\nredact_ip = \"hash\"\n").unwrap();
        assert_eq!(c.observability.redact_ip, RedactIp::Hash);
        let e = Config::parse("[observability]\nredact_ip = \"blur\"\n").unwrap_err();
        assert_eq!(e.key, "observability.redact_ip", "{e}");
        let e = Config::parse("[observability]\nlog_queue = 0\n").unwrap_err();
        assert_eq!(e.key, "observability.log_queue", "{e}");
        let c = Config::parse("[observability]\nlog_linger_ms = 200\n").unwrap();
        assert_eq!(c.observability.log_linger_ms, 200);
        let e = Config::parse("[observability]\nlog_linger_ms = 60000\n").unwrap_err();
        assert_eq!(e.key, "observability.log_linger_ms", "{e}");
    }

    #[test]
    fn key_hash_format() {
        let h = format!("ops:{}", "ab".repeat(32));
        assert_eq!(parse_key_hash(&h).unwrap().0, "ops");
        assert!(parse_key_hash("nolabel").is_err());
        assert!(parse_key_hash("x:abcd").is_err());
    }

    #[test]
    fn env_placeholders_expand() {
        std::env::set_var("FREEWAY_TEST_ACCT", "acct42");
        assert_eq!(
            expand_env_placeholders("https://h/accounts/{env:FREEWAY_TEST_ACCT}/ai/v1").unwrap(),
            "https://h/accounts/acct42/ai/v1"
        );
        assert!(expand_env_placeholders("https://h/{env:FREEWAY_TEST_MISSING_VAR}").is_none());
        assert_eq!(resolve_secret("literal").as_deref(), Some("literal"));
        assert_eq!(resolve_secret("env:FREEWAY_TEST_MISSING_VAR"), None);
    }

    #[test]
    fn continuation_modes_default_by_kind_and_base_url() {
        let p = |kind: &str, url: &str, extra: &str| {
            let text = format!(
                "[server]\nstream_resume = \"text\"\n[[providers]]\nname = \"p\"\nkind = \"{kind}\"\nbase_url = \"{url}\"\n{extra}"
            );
            let c = Config::parse(&text).unwrap();
            assert_eq!(c.server.stream_resume, StreamResume::Text);
            c.providers[0].continuation()
        };
        assert_eq!(
            p("anthropic", "https://api.anthropic.com/v1", ""),
            Continuation::Prefill
        );
        assert_eq!(
            p("openai", "https://api.mistral.ai/v1", ""),
            Continuation::Prefix
        );
        assert_eq!(
            p("openai", "https://api.deepseek.com/beta", ""),
            Continuation::Prefix
        );
        assert_eq!(
            p("openai", "https://api.deepseek.com/v1", ""),
            Continuation::Instruct
        );
        assert_eq!(p("gemini", "https://g", ""), Continuation::Instruct);
        assert_eq!(
            p(
                "openai",
                "http://10.0.0.5:8000/v1",
                "continuation = \"continue_final_message\""
            ),
            Continuation::ContinueFinalMessage
        );
        assert_eq!(Config::default().server.stream_resume, StreamResume::Off);
        let bad = "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://x\"\ncontinuation = \"guess\"\n";
        let e = Config::parse(bad).unwrap_err();
        assert!(e.to_string().contains("continuation"), "{e}");
    }

    #[test]
    fn base_urls_make_a_pool_and_bad_pools_name_their_key() {
        let pool = "[[providers]]\nname = \"p\"\nkind = \"openai\"\n\
                    base_urls = [\"http://10.0.0.5:8000/v1\", { url = \"http://10.0.0.6:8000/v1\", weight = 3, max_connections = 8 }]\n\
                    health_check = { path = \"/health\", interval_seconds = 0.5, unhealthy_after = 4 }\n";
        let c = Config::parse(pool).unwrap();
        let p = &c.providers[0];
        assert!(p.pooled());
        let eps = p.endpoints();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].url(), "http://10.0.0.6:8000/v1");
        assert_eq!((eps[0].weight(), eps[1].weight()), (1, 3));
        assert_eq!(eps[1].max_connections(), 8);
        let hc = p.health_check.as_ref().unwrap();
        assert_eq!(hc.path.as_deref(), Some("/health"));
        assert_eq!(
            (hc.unhealthy_after, hc.healthy_after, hc.timeout_ms),
            (4, 2, 2000)
        );
        // One base_url: no pool, exactly as before.
        let one = "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://x\"\n";
        let c = Config::parse(one).unwrap();
        assert!(!c.providers[0].pooled());
        assert_eq!(c.providers[0].endpoints()[0].url(), "http://x");
        let head = "[[providers]]\nname = \"p\"\nkind = \"openai\"\n";
        for (body, key) in [
            ("", "providers[0].base_url"),
            (
                "base_url = \"http://x\"\nbase_urls = [\"http://y\"]\n",
                "providers[0].base_urls",
            ),
            ("base_urls = [\"ftp://y\"]\n", "providers[0].base_urls[0]"),
            (
                "base_urls = [\"http://y\", \"http://y\"]\n",
                "providers[0].base_urls[1]",
            ),
            (
                "base_urls = [{ url = \"http://y\", weight = 0 }]\n",
                "providers[0].base_urls[0].weight",
            ),
            (
                "base_urls = [\"http://y\"]\nhealth_check = { path = \"models\" }\n",
                "providers[0].health_check.path",
            ),
            (
                "base_urls = [\"http://y\"]\nhealth_check = { healthy_after = 0 }\n",
                "providers[0].health_check.unhealthy_after",
            ),
            (
                "base_urls = [\"http://y\"]\nhealth_check = { interval_seconds = 0 }\n",
                "providers[0].health_check.interval_seconds",
            ),
        ] {
            let text = format!("{head}{body}");
            assert_eq!(Config::parse(&text).unwrap_err().key, key, "{text}");
        }
    }
}
