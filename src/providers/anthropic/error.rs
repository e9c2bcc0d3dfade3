//! Anthropic's error bodies → OpenAI error envelopes.

use crate::providers::common;
use bytes::Bytes;
use serde::Deserialize;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`) → OpenAI envelope.
pub fn translate_error(status: u16, body: &[u8], provider: &str) -> Bytes {
    let Ok(e) = serde_json::from_slice::<ErrorBody>(body) else {
        return crate::errors::upstream_envelope(status, provider, body);
    };
    let kind = match e.error.kind.as_str() {
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            "invalid_request_error"
        }
        "authentication_error" | "permission_error" => "authentication_error",
        "rate_limit_error" => "rate_limit_error",
        _ => common::kind_for_status(status),
    };
    let code = (!e.error.kind.is_empty()).then_some(e.error.kind.as_str());
    common::native_error(status, provider, kind, code, &e.error.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn errors_become_openai_envelopes() {
        let b = translate_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            "anthropic",
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["code"], "overloaded_error");
        let b = translate_error(
            401,
            br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            "anthropic",
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid x-api-key"));
    }
}
