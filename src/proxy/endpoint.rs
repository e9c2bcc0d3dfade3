//! Every endpoint the gateway serves, declared once: its paths, method, whether it needs a
//! key, whether it is a model endpoint (per-client limits, routing, tokens and cost in the
//! log), its metric/log label, and which handler serves it. Routing (`proxy::mod`), the
//! limits (`guard`), the request log, the metrics and the API description
//! (`GET /openapi.json`, [`super::openapi`]) all read the entry stored on the request
//! context or the table itself; nothing else in the gateway matches paths.

pub use crate::errors::Envelope;

/// Which handler serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Chat,
    Responses,
    /// Anthropic's Messages API (`/v1/messages` and `/v1/messages/count_tokens`).
    Messages,
    Embeddings,
    Transcriptions,
    Translations,
    Speech,
    SpeechToSpeech,
    /// `POST /v1/images/generations`.
    Images,
    /// `GET /v1/images/files/{id}`: an image kept for a `url` answer.
    ImageFile,
    /// `POST /v1/videos`: starts a video job.
    Videos,
    /// `GET /v1/videos/{id}`: a video job's status.
    Video,
    /// `GET /v1/videos/{id}/content`: a completed job's video.
    VideoContent,
    /// `/providers/{name}/…`: the stock proxy phases.
    Passthrough,
    Models,
    /// `GET /v1/budget`: the calling key's spend and limits.
    Budget,
    RoutingStatus,
    Health,
    Analytics,
    AnalyticsFailures,
    Usage,
    Metrics,
    /// `GET /openapi.json`: this table as an OpenAPI 3.1 document.
    OpenApi,
    /// No endpoint has the path (404).
    NotFound,
}

/// The methods an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    Post,
    /// `GET` and `HEAD`.
    Get,
    /// Whatever the provider's API takes (passthrough).
    Any,
}

impl Methods {
    pub fn allows(self, m: &http::Method) -> bool {
        match self {
            Methods::Post => m == http::Method::POST,
            Methods::Get => m == http::Method::GET || m == http::Method::HEAD,
            Methods::Any => true,
        }
    }
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub handler: Handler,
    /// Its paths. A segment `{name}` matches any one non-empty segment (a path parameter);
    /// a path ending in `/` matches every path under it.
    pub paths: &'static [&'static str],
    pub methods: Methods,
    /// Whether a gateway key is required (unless `[auth].public_paths` lists the path).
    /// Only the dashboard page is open: it holds no data and sends the key on its API calls.
    pub keyed: bool,
    /// A model endpoint: charged to the per-IP/per-key limits, routed over candidates, and
    /// logged with tokens and cost.
    pub model: bool,
    /// `endpoint` label of the metrics and the request log.
    pub label: &'static str,
    /// Polled by dashboards and probes: successful answers are not written to the log.
    pub polled: bool,
    /// One line for humans (the API description).
    pub summary: &'static str,
    /// The content types its request body may have (none: it takes no body).
    pub body_types: &'static [&'static str],
    /// The envelope every error of this endpoint is answered in, whoever produced it (the
    /// gateway's auth, limits and routing, or a provider): `respond::send_error` reads it.
    pub errors: Envelope,
}

/// A model endpoint (`POST`, keyed, limited, logged with tokens) or, with `model` false, a
/// local one (`GET`, keyed, polled).
const fn entry(
    handler: Handler,
    paths: &'static [&'static str],
    label: &'static str,
    model: bool,
    summary: &'static str,
) -> Endpoint {
    Endpoint {
        handler,
        paths,
        methods: if model { Methods::Post } else { Methods::Get },
        keyed: true,
        model,
        label,
        polled: !model,
        summary,
        body_types: if model { JSON } else { &[] },
        errors: Envelope::OpenAi,
    }
}

const JSON: &[&str] = &["application/json"];
const FORM: &[&str] = &["multipart/form-data"];

const MODEL: bool = true;
const LOCAL: bool = false;

/// The table. Order only matters for prefixes (none overlap).
pub static ENDPOINTS: &[Endpoint] = &[
    entry(
        Handler::Chat,
        &["/v1/chat/completions", "/chat/completions"],
        "chat",
        MODEL,
        "OpenAI chat completions, JSON or SSE, on any chat provider",
    ),
    entry(
        Handler::Responses,
        &["/v1/responses", "/responses"],
        "responses",
        MODEL,
        "OpenAI Responses API, JSON or SSE, on any chat provider",
    ),
    Endpoint {
        errors: Envelope::Anthropic,
        ..entry(
            Handler::Messages,
            &["/v1/messages", "/v1/messages/count_tokens"],
            "messages",
            MODEL,
            "Anthropic Messages API, JSON or SSE, on any chat provider (native on Anthropic)",
        )
    },
    entry(
        Handler::Embeddings,
        &["/v1/embeddings", "/embeddings"],
        "embeddings",
        MODEL,
        "Embeddings; never mixes vector spaces",
    ),
    Endpoint {
        body_types: FORM,
        ..entry(
            Handler::Transcriptions,
            &["/v1/audio/transcriptions"],
            "transcriptions",
            MODEL,
            "Speech to text (multipart upload)",
        )
    },
    Endpoint {
        body_types: FORM,
        ..entry(
            Handler::Translations,
            &["/v1/audio/translations"],
            "translations",
            MODEL,
            "Speech to English text (multipart upload)",
        )
    },
    entry(
        Handler::Speech,
        &["/v1/audio/speech"],
        "speech",
        MODEL,
        "Text to speech (audio bytes)",
    ),
    Endpoint {
        body_types: FORM,
        ..entry(
            Handler::SpeechToSpeech,
            &["/v1/audio/speech-to-speech"],
            "speech_to_speech",
            MODEL,
            "Audio in, transcript, chat answer, audio out",
        )
    },
    entry(
        Handler::Images,
        &["/v1/images/generations", "/images/generations"],
        "images",
        MODEL,
        "Image generation (b64_json or url)",
    ),
    // The id is the credential (128 random bits): the link works in an <img> tag, no key.
    Endpoint {
        keyed: false,
        polled: false,
        ..entry(
            Handler::ImageFile,
            &["/v1/images/files/{id}"],
            "image_files",
            LOCAL,
            "A generated image kept for a url answer (expires)",
        )
    },
    Endpoint {
        body_types: &["application/json", "multipart/form-data"],
        ..entry(
            Handler::Videos,
            &["/v1/videos", "/videos"],
            "videos",
            MODEL,
            "Video generation: starts an asynchronous job (JSON or multipart)",
        )
    },
    // Polled by clients until done: successful polls are not logged.
    entry(
        Handler::Video,
        &["/v1/videos/{id}", "/videos/{id}"],
        "video_status",
        LOCAL,
        "A video job's status, asked of the provider holding it",
    ),
    Endpoint {
        polled: false,
        ..entry(
            Handler::VideoContent,
            &["/v1/videos/{id}/content", "/videos/{id}/content"],
            "video_content",
            LOCAL,
            "A completed video job's MP4",
        )
    },
    Endpoint {
        methods: Methods::Any,
        body_types: &["*/*"],
        ..entry(
            Handler::Passthrough,
            &["/providers/"],
            "passthrough",
            MODEL,
            "Native passthrough to a provider with its stored key",
        )
    },
    entry(
        Handler::Models,
        &["/v1/models", "/models"],
        "models",
        LOCAL,
        "The models the gateway can route to",
    ),
    entry(
        Handler::Budget,
        &["/v1/budget"],
        "budget",
        LOCAL,
        "The calling key's spend, budget and limits",
    ),
    entry(
        Handler::RoutingStatus,
        &["/v1/routing/status"],
        "routing_status",
        LOCAL,
        "Every model's state: health, cooldowns, daily use",
    ),
    entry(
        Handler::Health,
        &["/health", "/healthz"],
        "health",
        LOCAL,
        "Liveness and readiness",
    ),
    entry(
        Handler::Analytics,
        &["/v1/analytics"],
        "analytics",
        LOCAL,
        "Aggregates from the request log",
    ),
    entry(
        Handler::AnalyticsFailures,
        &["/v1/analytics/failures"],
        "analytics_failures",
        LOCAL,
        "Recent failed requests",
    ),
    Endpoint {
        keyed: false,
        ..entry(
            Handler::Usage,
            &["/usage"],
            "usage",
            LOCAL,
            "The usage dashboard",
        )
    },
    entry(
        Handler::Metrics,
        &["/metrics"],
        "metrics",
        LOCAL,
        "Prometheus metrics",
    ),
    // The API description holds nothing a key protects.
    Endpoint {
        keyed: false,
        polled: false,
        ..entry(
            Handler::OpenApi,
            &["/openapi.json"],
            "openapi",
            LOCAL,
            "This API's OpenAPI 3.1 description, generated from the endpoint table",
        )
    },
];

/// What an unknown path is logged as.
pub static NOT_FOUND: Endpoint = Endpoint {
    handler: Handler::NotFound,
    paths: &[],
    methods: Methods::Any,
    keyed: true,
    model: false,
    label: "other",
    polled: false,
    summary: "",
    body_types: &[],
    errors: Envelope::OpenAi,
};

/// The endpoint serving `path` ([`NOT_FOUND`] when none does).
pub fn find(path: &str) -> &'static Endpoint {
    ENDPOINTS
        .iter()
        .find(|e| e.paths.iter().any(|p| matches(p, path)))
        .unwrap_or(&NOT_FOUND)
}

/// Whether `path` is served by the table's `pattern` (see [`Endpoint::paths`]).
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, prefix) = match pattern.strip_suffix('/') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return !prefix,
            // A prefix matches a path with at least one more segment.
            (None, Some(_)) => return prefix,
            (Some(_), None) => return false,
            (Some(w), Some(g)) if is_param(w) && g.is_empty() => return false,
            (Some(w), Some(g)) if !is_param(w) && w != g => return false,
            _ => {}
        }
    }
}

/// A path segment naming a parameter (`{id}`).
pub fn is_param(segment: &str) -> bool {
    segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}')
}

/// The value of the parameter segment `name` of `path` served by `ep` (`{id}` of
/// `/v1/videos/{id}/content`), if its patterns have it.
pub fn param<'p>(ep: &Endpoint, path: &'p str, name: &str) -> Option<&'p str> {
    let want = format!("{{{name}}}");
    ep.paths.iter().filter(|p| matches(p, path)).find_map(|p| {
        let at = p.split('/').position(|s| s == want)?;
        path.split('/').nth(at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_finds_its_own_entry() {
        for e in ENDPOINTS {
            for p in e.paths {
                let path = if p.ends_with('/') {
                    format!("{p}x/y")
                } else {
                    p.replace("{id}", "x")
                };
                assert_eq!(find(&path).handler, e.handler, "{path}");
            }
        }
        assert_eq!(find("/v1/nope").handler, Handler::NotFound);
        assert_eq!(find("/providers").handler, Handler::NotFound);
        assert_eq!(find("/v1/chat/completions/x").label, "other");
        assert_eq!(find("/v1/images/files/").handler, Handler::NotFound);
        assert_eq!(find("/v1/images/files/a/b").handler, Handler::NotFound);
        let file = find("/v1/images/files/abc");
        assert_eq!(param(file, "/v1/images/files/abc", "id"), Some("abc"));
        assert_eq!(find("/v1/videos").handler, Handler::Videos);
        assert_eq!(find("/v1/videos/video_1").handler, Handler::Video);
        let content = find("/videos/video_1/content");
        assert_eq!(content.handler, Handler::VideoContent);
        assert_eq!(
            param(content, "/videos/video_1/content", "id"),
            Some("video_1")
        );
        assert_eq!(find("/v1/videos/a/b").handler, Handler::NotFound);
        assert_eq!(find("/v1/videos//content").handler, Handler::NotFound);
    }

    #[test]
    fn labels_are_unique_and_model_endpoints_are_limited_posts_with_keys() {
        let mut labels: Vec<_> = ENDPOINTS.iter().map(|e| e.label).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), ENDPOINTS.len());
        for e in ENDPOINTS.iter().filter(|e| e.model) {
            assert!(e.keyed, "{}", e.label);
            assert!(!e.polled, "{}", e.label);
        }
        let model_labels: Vec<_> = ENDPOINTS
            .iter()
            .filter(|e| e.model)
            .map(|e| e.label)
            .collect();
        assert_eq!(
            model_labels,
            [
                "chat",
                "responses",
                "messages",
                "embeddings",
                "transcriptions",
                "translations",
                "speech",
                "speech_to_speech",
                "images",
                "videos",
                "passthrough"
            ]
        );
    }
}
