//! Workers AI's error bodies → OpenAI error envelopes.

use super::chat::Envelope;
use crate::providers::common;
use bytes::Bytes;
use serde_json::Value;

/// A Workers AI error body (`{"success":false,"errors":[{"code","message"}]}`) → envelope.
pub fn translate_error(status: u16, body: &[u8], provider: &str) -> Bytes {
    let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
        return crate::errors::upstream_envelope(status, provider, body);
    };
    if env.errors.is_empty() {
        return crate::errors::upstream_envelope(status, provider, body);
    }
    let message: Vec<String> = env
        .errors
        .iter()
        .map(|e| match &e.code {
            Some(c) => format!("{} (code {c})", e.message),
            None => e.message.clone(),
        })
        .collect();
    let code = env.errors[0].code.as_ref().map(|c| match c {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    common::native_error(
        status,
        provider,
        common::kind_for_status(status),
        code.as_deref(),
        &message.join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_openai_envelopes() {
        let b = translate_error(
            400,
            br#"{"result":null,"success":false,"errors":[{"code":5006,"message":"Error: oneOf at '/' not met"}],"messages":[]}"#,
            "workers-ai",
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "5006");
        assert!(v["error"]["message"].as_str().unwrap().contains("oneOf"));
    }
}
