//! The OpenAI error envelope: every error a client sees has this shape.
//!
//! `{"error":{"message":"…","type":"…","code":"…","param":null}}`

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
struct Envelope<'a> {
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
}

/// Serialises an OpenAI error envelope.
pub fn envelope(kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Bytes {
    let env = Envelope {
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
