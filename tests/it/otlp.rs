//! An OTLP/HTTP receiver for the tests: a small HTTP server on loopback that decodes each
//! `POST /v1/traces` body as an `ExportTraceServiceRequest` (the `opentelemetry-proto`
//! types) and keeps the spans. Stopped on drop; every connection has a read time limit.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    resources: Vec<Vec<KeyValue>>,
    /// `(path, content-type, every header line)` of each export.
    requests: Vec<(String, String, Vec<String>)>,
}

pub struct Otlp {
    pub addr: String,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

impl Otlp {
    pub fn start() -> Otlp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let g = g.clone();
                        std::thread::spawn(move || serve(conn, g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Otlp { addr, got, stop }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.got.lock().unwrap().spans.clone()
    }

    pub fn resources(&self) -> Vec<Vec<KeyValue>> {
        self.got.lock().unwrap().resources.clone()
    }

    pub fn requests(&self) -> Vec<(String, String, Vec<String>)> {
        self.got.lock().unwrap().requests.clone()
    }

    /// The spans of the trace whose server span has `freeway.request_id` = `id`, once its
    /// server span and `n` spans in all have arrived (within 15 s).
    pub fn trace_of(&self, id: &str, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans();
            if let Some(server) = spans
                .iter()
                .find(|s| attr_str(s, "freeway.request_id").as_deref() == Some(id))
            {
                let trace: Vec<Span> = spans
                    .iter()
                    .filter(|s| s.trace_id == server.trace_id)
                    .cloned()
                    .collect();
                if trace.len() >= n {
                    return trace;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no trace of {n} spans for request {id} within 15 s; got {} spans",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, got: Arc<Mutex<Received>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut len = 0usize;
        let mut ctype = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_string(),
                    _ => {}
                }
            }
            headers.push(line);
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let decoded = ExportTraceServiceRequest::decode(&body[..]);
        {
            let mut g = got.lock().unwrap();
            g.requests.push((path, ctype, headers));
            if let Ok(req) = decoded {
                for rs in req.resource_spans {
                    g.resources
                        .push(rs.resource.map(|r| r.attributes).unwrap_or_default());
                    for ss in rs.scope_spans {
                        g.spans.extend(ss.spans);
                    }
                }
            }
        }
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if w.write_all(ok).is_err() {
            return;
        }
    }
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn attr_str(s: &Span, key: &str) -> Option<String> {
    kv_str(&s.attributes, key)
}

pub fn kv_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value(attrs, key)? {
        any_value::Value::StringValue(v) => Some(v.clone()),
        _ => None,
    }
}

pub fn attr_int(s: &Span, key: &str) -> Option<i64> {
    match value(&s.attributes, key)? {
        any_value::Value::IntValue(v) => Some(*v),
        _ => None,
    }
}

pub fn attr_f64(s: &Span, key: &str) -> Option<f64> {
    match value(&s.attributes, key)? {
        any_value::Value::DoubleValue(v) => Some(*v),
        _ => None,
    }
}

pub fn attr_strings(s: &Span, key: &str) -> Vec<String> {
    match value(&s.attributes, key) {
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .filter_map(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
