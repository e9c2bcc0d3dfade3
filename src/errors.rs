//! The OpenAI error envelope: every error a client sees has this shape.
//!
//! `{"error":{"message":"…","type":"…","code":"…","param":null}}`
//!
//! An endpoint of another API answers its own envelope ([`Envelope`]): the Anthropic
//! Messages endpoint renders every error, the gateway's and the providers', as
//! `{"type":"error","error":{"type":"…","message":"…"}}` with Anthropic's error types.

use bytes::Bytes;
use serde::Serialize;

/// An error answered to the client, with the HTTP status it travels with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub message: String,
    /// Seconds for `retry-after`, when the client should come back later.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: Option<&'a str>,
    param: Option<&'a str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: Option<&'static str>, msg: String) -> Self {
        ApiError {
            status,
            kind,
            code,
            param: None,
            message: msg,
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", None, msg.into())
    }

    /// 400 about one field.
    pub fn invalid_param(param: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::new(
                400,
                "invalid_request_error",
                Some("invalid_value"),
                msg.into(),
            )
        }
    }

    pub fn unknown_model(msg: impl Into<String>) -> Self {
        ApiError {
            param: Some("model"),
            ..Self::new(
                400,
                "invalid_request_error",
                Some("model_not_found"),
                msg.into(),
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "authentication_error",
            Some("invalid_api_key"),
            "Missing or invalid gateway key. Send it as `Authorization: Bearer <key>` or `x-api-key`."
                .into(),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("not_found"),
            format!("No endpoint at `{path}`. See GET /v1/models and the README for the API."),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("`{method} {path}` is not supported."),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("body_too_large"),
            format!("Request body is larger than the gateway's limit of {limit} bytes (server.max_body_bytes)."),
        )
    }

    pub fn no_capacity(msg: impl Into<String>) -> Self {
        Self::new(503, "service_unavailable", Some("no_capacity"), msg.into())
    }

    pub fn upstream(status: u16, msg: impl Into<String>) -> Self {
        Self::new(status, "upstream_error", Some("upstream_error"), msg.into())
    }

    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(504, "timeout", Some("timeout"), msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, "server_error", Some("internal_error"), msg.into())
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        envelope(self.kind, self.code, self.param, &self.message)
    }

    /// The JSON body in the envelope of `api`.
    pub fn body_in(&self, api: Envelope) -> Bytes {
        match api {
            Envelope::OpenAi => self.body(),
            Envelope::Anthropic => {
                anthropic_envelope(anthropic_type(self.status, self.code), &self.message)
            }
        }
    }
}

/// The error envelope an endpoint answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `{"error":{"message","type","code","param"}}`.
    OpenAi,
    /// Anthropic's `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

/// Anthropic's error types (<https://docs.anthropic.com/en/api/errors>).
const ANTHROPIC_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
];

/// Anthropic's error type for an error with this status: the provider's own Anthropic
/// type when it gave one (kept as `code` by the Anthropic error translation), else the type
/// Anthropic uses for the status.
pub fn anthropic_type(status: u16, code: Option<&str>) -> &'static str {
    if let Some(t) = code.and_then(|c| ANTHROPIC_TYPES.iter().find(|t| **t == c)) {
        return t;
    }
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Serialises an Anthropic error envelope.
pub fn anthropic_envelope(kind: &str, message: &str) -> Bytes {
    let v = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    Bytes::from(v.to_string())
}

/// An error body in the gateway's OpenAI envelope (as the attempt engine keeps upstream
/// errors) re-rendered in the envelope of `api`, keeping its message.
pub fn reshape(api: Envelope, status: u16, openai: Bytes) -> Bytes {
    if api == Envelope::OpenAi {
        return openai;
    }
    let v: serde_json::Value = serde_json::from_slice(&openai).unwrap_or_default();
    let e = &v["error"];
    let message = e["message"].as_str().map_or_else(
        || String::from_utf8_lossy(&openai).into_owned(),
        str::to_string,
    );
    anthropic_envelope(anthropic_type(status, e["code"].as_str()), &message)
}

/// Serialises an OpenAI error envelope.
pub fn envelope(kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Bytes {
    let env = OpenAiEnvelope {
        error: Body {
            message,
            kind,
            code,
            param,
        },
    };
    // Serialising plain strings into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&env).unwrap_or_default())
}

/// The gateway's `error.type` for an upstream status passed on to the client (the table
/// in SPEC.md "Errors"): a provider's own types (`requests`, `tokens`, …) never leak through.
pub fn kind_for_status(status: u16) -> &'static str {
    match status {
        401 | 403 => "authentication_error",
        408 | 504 => "timeout",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        // A provider's 5xx is an upstream error; `service_unavailable` is the gateway's own.
        _ => "upstream_error",
    }
}

/// Makes an upstream error body into the gateway's envelope: an upstream that already speaks
/// the envelope keeps its message, code and param, with the gateway's `type` for the status;
/// anything else is wrapped with its text.
pub fn upstream_envelope(status: u16, provider: &str, body: &[u8]) -> Bytes {
    let kind = kind_for_status(status);
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v.get_mut("error").filter(|e| e.get("message").is_some()) {
            if e.get("type").and_then(|t| t.as_str()) == Some(kind) {
                return Bytes::copy_from_slice(body);
            }
            e["type"] = serde_json::Value::String(kind.into());
            for field in ["code", "param"] {
                if e.get(field).is_none() {
                    e[field] = serde_json::Value::Null;
                }
            }
            return Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]);
    envelope(
        kind,
        Some("upstream_error"),
        None,
        &format!("Provider `{provider}` answered {status}: {}", text.trim()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let b = ApiError::unauthorized().body();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["message"].as_str().unwrap().contains("Bearer"));
    }

    #[test]
    fn anthropic_envelopes_carry_anthropics_types() {
        let v: serde_json::Value =
            serde_json::from_slice(&ApiError::unauthorized().body_in(Envelope::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-api-key"));
        for (status, code, want) in [
            (400, None, "invalid_request_error"),
            (403, None, "permission_error"),
            (404, None, "not_found_error"),
            (429, Some("rate_limit_exceeded"), "rate_limit_error"),
            (503, Some("no_capacity"), "overloaded_error"),
            (529, Some("overloaded_error"), "overloaded_error"),
            (502, Some("upstream_error"), "api_error"),
            (500, Some("overloaded_error"), "overloaded_error"),
        ] {
            assert_eq!(anthropic_type(status, code), want, "{status} {code:?}");
        }
        let openai = upstream_envelope(
            429,
            "groq",
            br#"{"error":{"message":"slow down","type":"requests"}}"#,
        );
        let v: serde_json::Value =
            serde_json::from_slice(&reshape(Envelope::Anthropic, 429, openai)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    #[test]
    fn upstream_envelope_passes_openai_errors_through() {
        let body = br#"{"error":{"message":"bad","type":"invalid_request_error","code":null,"param":"x"}}"#;
        assert_eq!(&upstream_envelope(400, "p", body)[..], &body[..]);
    }

    #[test]
    fn upstream_envelope_gives_provider_errors_the_gateways_type() {
        let body = br#"{"error":{"message":"Rate limit reached for model x","type":"requests","code":"rate_limit_exceeded"}}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&upstream_envelope(429, "groq", body)).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "Rate limit reached for model x");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn upstream_envelope_wraps_other_bodies() {
        let b = upstream_envelope(502, "groq", b"<html>bad gateway</html>");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad gateway"));
    }
}
