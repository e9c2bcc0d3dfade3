//! Gemini's error bodies → OpenAI error envelopes.

use crate::providers::common;
use bytes::Bytes;
use serde::Deserialize;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
}

/// A Gemini error body (`{"error":{"code","message","status"}}`) → OpenAI envelope.
pub fn translate_error(status: u16, body: &[u8], provider: &str) -> Bytes {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().or_else(|| {
        // Some proxies answer a one-element array of errors.
        serde_json::from_slice::<Vec<ErrorBody>>(body)
            .ok()?
            .into_iter()
            .next()
    });
    let Some(e) = parsed else {
        return crate::errors::upstream_envelope(status, provider, body);
    };
    let kind = match e.error.status.as_deref() {
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "NOT_FOUND" | "OUT_OF_RANGE") => {
            "invalid_request_error"
        }
        Some("UNAUTHENTICATED" | "PERMISSION_DENIED") => "authentication_error",
        Some("RESOURCE_EXHAUSTED") => "rate_limit_error",
        _ => common::kind_for_status(status),
    };
    let code = e.error.status.as_deref().map(str::to_ascii_lowercase);
    common::native_error(status, provider, kind, code.as_deref(), &e.error.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn errors_become_openai_envelopes() {
        let b = translate_error(
            429,
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
            "gemini",
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "resource_exhausted");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Quota exceeded"));
        let b = translate_error(
            400,
            br#"[{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT"}}]"#,
            "gemini",
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v: Value = serde_json::from_slice(&translate_error(503, b"nope", "gemini")).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
    }
}
