//! What the request path records for one sampled request: plain fields, moved or copied
//! once, and turned into OTLP protobuf spans only on the exporter's thread.

use crate::providers::Usage;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One sampled request: its server span, the attempts' client spans, and the ids that go
/// upstream.
#[derive(Debug)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The client's span, when the request continued its trace.
    pub parent: Option<[u8; 8]>,
    /// The server span's id.
    pub span_id: [u8; 8],
    /// Whether the spans are exported (a client's unsampled trace is still propagated).
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub start_ns: u64,
    /// The attempt under way.
    pub pending: Option<Pending>,
    /// Finished attempts.
    pub attempts: Vec<ClientSpan>,
    pub server: ServerEnd,
}

/// An attempt begun and not yet ended.
#[derive(Debug)]
pub struct Pending {
    pub span_id: [u8; 8],
    pub start_ns: u64,
    pub temperature: Option<f64>,
    /// The upstream request body (`capture_content` only).
    pub content: Option<String>,
    /// `finish_reason`s seen in the answer so far.
    pub finish_reasons: Vec<String>,
    /// A passthrough's provider, host and port (model attempts pass them at the end).
    pub target: Option<(String, String, u16)>,
}

/// A finished upstream attempt (a CLIENT span).
#[derive(Debug, Default)]
pub struct ClientSpan {
    pub span_id: [u8; 8],
    pub start_ns: u64,
    pub end_ns: u64,
    /// `gen_ai.operation.name` (`chat`, `embeddings`…); `None` for passthrough.
    pub operation: Option<&'static str>,
    pub provider: String,
    pub model: String,
    pub server_address: String,
    pub server_port: u16,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub status: u16,
    pub usage: Option<Usage>,
    pub finish_reasons: Vec<String>,
    /// From the attempt's start.
    pub first_content: Option<Duration>,
    pub streamed: bool,
    pub broken: bool,
    pub error_type: Option<String>,
    pub attempt: u32,
    pub content: Option<String>,
}

/// The server span's attributes, filled in when the request is recorded.
#[derive(Debug, Default)]
pub struct ServerEnd {
    pub end_ns: u64,
    pub method: &'static str,
    pub route: Option<&'static str>,
    pub status: u16,
    pub client_ip: Option<IpAddr>,
    pub key_label: Option<String>,
    pub cache_status: &'static str,
    pub cost_usd: f64,
    pub attempts: u32,
    pub request_id: String,
    pub requested_model: Option<String>,
    pub usage: Option<Usage>,
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The value of the first `"temperature":` key in a JSON body (any nesting: Gemini keeps it
/// in `generationConfig`), skipping the text inside strings' escaped quotes.
pub fn find_temperature(body: &[u8]) -> Option<f64> {
    let key = b"\"temperature\"";
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&body[from..], key) {
        let at = from + i;
        from = at + key.len();
        if at > 0 && body[at - 1] == b'\\' {
            continue;
        }
        let rest = body[from..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let end = rest
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E'))
            .unwrap_or(rest.len());
        return std::str::from_utf8(&rest[..end]).ok()?.parse().ok();
    }
    None
}

/// `finish_reason` values in OpenAI-shaped JSON or SSE (`"finish_reason":"stop"`), once each.
pub fn finish_reasons(body: &[u8], out: &mut Vec<String>) {
    for key in [
        &b"\"finish_reason\":\""[..],
        b"\"stop_reason\":\"",
        b"\"finishReason\":\"",
    ] {
        reasons_after(body, key, out);
    }
}

fn reasons_after(body: &[u8], key: &[u8], out: &mut Vec<String>) {
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&body[from..], key) {
        let start = from + i + key.len();
        let Some(len) = body[start..].iter().position(|&b| b == b'"') else {
            return;
        };
        from = start + len;
        if let Ok(r) = std::str::from_utf8(&body[start..from]) {
            if r.len() <= 64 && !out.iter().any(|o| o == r) && out.len() < 8 {
                out.push(r.to_string());
            }
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn str_kv(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn int_kv(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn f64_kv(key: &str, v: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(v))
}

fn bool_kv(key: &str, v: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(v))
}

fn strings_kv(key: &str, v: &[String]) -> KeyValue {
    let values = v
        .iter()
        .map(|s| AnyValue {
            value: Some(any_value::Value::StringValue(s.clone())),
        })
        .collect();
    kv(key, any_value::Value::ArrayValue(ArrayValue { values }))
}

fn error_status(message: &str) -> Option<Status> {
    Some(Status {
        message: message.to_string(),
        code: status::StatusCode::Error as i32,
    })
}

/// W3C flags: sampled, and (OTLP 1.4+) "the parent is remote" known.
const FLAG_SAMPLED: u32 = 0x1;
const FLAG_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_CONTEXT_IS_REMOTE: u32 = 0x200;

impl Trace {
    /// Spans this trace exports.
    pub fn span_count(&self) -> u64 {
        1 + self.attempts.len() as u64
    }

    /// The OTLP spans: the server span first, then one client span per attempt.
    pub fn into_spans(self, out: &mut Vec<Span>) {
        let trace_id = self.trace_id.to_vec();
        let s = self.server;
        let name = match s.route {
            Some(r) => format!("{} {r}", s.method),
            None => s.method.to_string(),
        };
        let mut attributes = vec![
            str_kv("http.request.method", s.method),
            int_kv("http.response.status_code", i64::from(s.status)),
            str_kv("freeway.request_id", s.request_id),
            str_kv("freeway.cache_status", s.cache_status),
            f64_kv("freeway.cost_usd", s.cost_usd),
            int_kv("freeway.attempts", i64::from(s.attempts)),
        ];
        if let Some(r) = s.route {
            attributes.push(str_kv("http.route", r));
        }
        if let Some(ip) = s.client_ip {
            attributes.push(str_kv("client.address", ip.to_string()));
        }
        if let Some(k) = s.key_label {
            attributes.push(str_kv("freeway.key_label", k));
        }
        if let Some(m) = s.requested_model {
            attributes.push(str_kv("gen_ai.request.model", m));
        }
        if let Some(u) = s.usage {
            attributes.push(int_kv("gen_ai.usage.input_tokens", u.prompt_tokens as i64));
            attributes.push(int_kv(
                "gen_ai.usage.output_tokens",
                u.completion_tokens as i64,
            ));
        }
        let status = if s.status >= 500 {
            attributes.push(str_kv("error.type", s.status.to_string()));
            error_status(&s.status.to_string())
        } else {
            None
        };
        let flags = FLAG_SAMPLED
            | FLAG_CONTEXT_HAS_IS_REMOTE
            | if self.parent.is_some() {
                FLAG_CONTEXT_IS_REMOTE
            } else {
                0
            };
        let trace_state = self.tracestate.unwrap_or_default();
        out.push(Span {
            trace_id: trace_id.clone(),
            span_id: self.span_id.to_vec(),
            trace_state: trace_state.clone(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags,
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: self.start_ns,
            end_time_unix_nano: s.end_ns.max(self.start_ns),
            attributes,
            status,
            ..Default::default()
        });
        for a in self.attempts {
            out.push(a.into_span(trace_id.clone(), self.span_id.to_vec(), trace_state.clone()));
        }
    }
}

impl ClientSpan {
    fn into_span(self, trace_id: Vec<u8>, parent: Vec<u8>, trace_state: String) -> Span {
        let name = match self.operation {
            Some(op) => format!("{op} {}", self.model),
            None => format!("passthrough {}", self.provider),
        };
        let mut attributes = vec![
            str_kv("gen_ai.provider.name", self.provider),
            str_kv("server.address", self.server_address),
            int_kv("server.port", i64::from(self.server_port)),
            int_kv("freeway.attempt", i64::from(self.attempt)),
        ];
        if let Some(op) = self.operation {
            attributes.push(str_kv("gen_ai.operation.name", op));
            attributes.push(str_kv("gen_ai.request.model", self.model.clone()));
            if self.error_type.is_none() {
                attributes.push(str_kv("gen_ai.response.model", self.model));
            }
        }
        if self.status > 0 {
            attributes.push(int_kv("http.response.status_code", i64::from(self.status)));
        }
        if let Some(t) = self.max_tokens {
            attributes.push(int_kv("gen_ai.request.max_tokens", i64::from(t)));
        }
        if let Some(t) = self.temperature {
            attributes.push(f64_kv("gen_ai.request.temperature", t));
        }
        if let Some(u) = self.usage {
            attributes.push(int_kv("gen_ai.usage.input_tokens", u.prompt_tokens as i64));
            attributes.push(int_kv(
                "gen_ai.usage.output_tokens",
                u.completion_tokens as i64,
            ));
        }
        if !self.finish_reasons.is_empty() {
            attributes.push(strings_kv(
                "gen_ai.response.finish_reasons",
                &self.finish_reasons,
            ));
        }
        if let Some(c) = self.content {
            attributes.push(str_kv("freeway.upstream.request_body", c));
        }
        let mut events = Vec::new();
        if let Some(t) = self.first_content {
            events.push(span::Event {
                time_unix_nano: self.start_ns + t.as_nanos() as u64,
                name: "freeway.first_token".into(),
                attributes: vec![f64_kv(
                    "freeway.time_to_first_token_seconds",
                    t.as_secs_f64(),
                )],
                ..Default::default()
            });
        }
        if self.streamed {
            events.push(span::Event {
                time_unix_nano: self.end_ns,
                name: "freeway.stream.end".into(),
                attributes: vec![bool_kv("freeway.stream.broken", self.broken)],
                ..Default::default()
            });
        }
        let status = match &self.error_type {
            Some(e) => {
                attributes.push(str_kv("error.type", e.clone()));
                error_status(e)
            }
            None => None,
        };
        Span {
            trace_id,
            span_id: self.span_id.to_vec(),
            trace_state,
            parent_span_id: parent,
            flags: FLAG_SAMPLED | FLAG_CONTEXT_HAS_IS_REMOTE,
            name,
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: self.start_ns,
            end_time_unix_nano: self.end_ns.max(self.start_ns),
            attributes,
            events,
            status,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::context::hex;
    use super::*;

    #[test]
    fn temperature_is_found_at_any_depth_but_not_inside_text() {
        assert_eq!(
            find_temperature(br#"{"model":"m","temperature": 0.7}"#),
            Some(0.7)
        );
        assert_eq!(
            find_temperature(br#"{"generationConfig":{"temperature":1}}"#),
            Some(1.0)
        );
        assert_eq!(
            find_temperature(br#"{"messages":[{"content":"\"temperature\": 3"}]}"#),
            None
        );
        assert_eq!(find_temperature(br#"{"model":"m"}"#), None);
    }

    #[test]
    fn finish_reasons_are_collected_once_each() {
        let mut out = Vec::new();
        finish_reasons(
            br#"data: {"choices":[{"finish_reason":null}]}

data: {"choices":[{"finish_reason":"stop"},{"finish_reason":"length"},{"finish_reason":"stop"}]}"#,
            &mut out,
        );
        assert_eq!(out, ["stop", "length"]);
    }

    #[test]
    fn a_trace_becomes_a_server_span_and_its_attempts() {
        let t = Trace {
            trace_id: [1; 16],
            parent: Some([2; 8]),
            span_id: [3; 8],
            sampled: true,
            tracestate: None,
            start_ns: 10,
            pending: None,
            attempts: vec![ClientSpan {
                span_id: [4; 8],
                operation: Some("chat"),
                model: "m1".into(),
                error_type: Some("500".into()),
                ..Default::default()
            }],
            server: ServerEnd {
                method: "POST",
                route: Some("/v1/chat/completions"),
                status: 200,
                ..Default::default()
            },
        };
        let mut spans = Vec::new();
        t.into_spans(&mut spans);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "POST /v1/chat/completions");
        assert_eq!(spans[0].parent_span_id, vec![2; 8]);
        assert_eq!(spans[1].parent_span_id, vec![3; 8]);
        assert_eq!(spans[1].name, "chat m1");
        assert!(spans[1].attributes.iter().any(|a| a.key == "error.type"));
        assert!(!spans[1]
            .attributes
            .iter()
            .any(|a| a.key == "gen_ai.response.model"));
        assert_eq!(hex(&spans[0].trace_id), "01".repeat(16));
    }
}
