//! The exporter: a Pingora background service (its own runtime) that wakes every
//! `batch_delay_ms`, takes what the request path queued, encodes one
//! `ExportTraceServiceRequest` and POSTs it to the collector (OTLP/HTTP protobuf) with the
//! gateway's own pooled connector (TLS included).
//!
//! It polls rather than waits on the queue so a request's `try_send` never has to wake
//! another thread. A failed export (collector down, slow, or refusing) drops the batch and
//! counts its spans; nothing is retried, so a dead collector costs one failed connect per
//! batch and never grows memory.

// Batches hold the boxes the request path queued: moved, never copied or re-allocated.
#![allow(clippy::vec_box)]

use super::span::{str_kv, Trace};
use super::{warn_rate_limited, METRICS};
use crate::config::{resolve_secret, TelemetryConfig, UpstreamUrl};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Most traces (requests) in one export.
const MAX_BATCH: usize = 1024;

pub struct Exporter {
    rx: Mutex<Option<Receiver<Box<Trace>>>>,
    url: UpstreamUrl,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    resource: Resource,
    delay: Duration,
    timeout: Duration,
    last_warning: AtomicU64,
}

impl Exporter {
    pub fn new(rx: Receiver<Box<Trace>>, url: UpstreamUrl, t: &TelemetryConfig) -> Exporter {
        let headers = t
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let value = resolve_secret(v).or_else(|| {
                    log::warn!("telemetry.headers.{k}: not set, the header is left out");
                    None
                })?;
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    http::HeaderValue::from_str(&value).ok()?,
                ))
            })
            .collect();
        let mut attributes = vec![
            str_kv("service.name", t.service_name.clone()),
            str_kv("service.version", env!("CARGO_PKG_VERSION")),
            str_kv("telemetry.sdk.name", "freeway"),
            str_kv("telemetry.sdk.language", "rust"),
        ];
        for (k, v) in &t.resource_attributes {
            attributes.retain(|a| &a.key != k);
            attributes.push(str_kv(k, v.clone()));
        }
        Exporter {
            rx: Mutex::new(Some(rx)),
            url,
            headers,
            resource: Resource {
                attributes,
                ..Default::default()
            },
            delay: Duration::from_millis(t.batch_delay_ms.max(1)),
            timeout: Duration::from_millis(t.export_timeout_ms),
            last_warning: AtomicU64::new(0),
        }
    }

    /// The protobuf body for a batch.
    pub fn encode(&self, batch: Vec<Box<Trace>>) -> Vec<u8> {
        let mut spans = Vec::with_capacity(batch.len() * 2);
        for t in batch {
            t.into_spans(&mut spans);
        }
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "freeway".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        req.encode_to_vec()
    }

    async fn peer(&self) -> Result<HttpPeer, String> {
        let u = &self.url;
        let addr = match u.host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, u.port),
            Err(_) => tokio::net::lookup_host((u.host.as_str(), u.port))
                .await
                .map_err(|e| format!("cannot resolve `{}`: {e}", u.host))?
                .next()
                .ok_or_else(|| format!("`{}` resolved to no address", u.host))?,
        };
        let mut peer = HttpPeer::new(addr, u.tls, u.host.clone());
        peer.options.connection_timeout = Some(self.timeout.min(Duration::from_secs(2)));
        peer.options.total_connection_timeout = Some(self.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        Ok(peer)
    }

    /// POSTs one body; `Err` with why when the collector did not accept it.
    async fn post(&self, connector: &Connector, body: Bytes) -> Result<(), String> {
        let peer = self.peer().await?;
        let mut h = RequestHeader::build("POST", self.url.path.as_bytes(), Some(8))
            .map_err(|e| e.to_string())?;
        let host = self.url.host_header();
        let set = |h: &mut RequestHeader, k: http::HeaderName, v: http::HeaderValue| {
            h.insert_header(k, v).map_err(|e| e.to_string())
        };
        use http::header::*;
        set(
            &mut h,
            HOST,
            HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
        )?;
        set(
            &mut h,
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        )?;
        set(&mut h, CONTENT_LENGTH, HeaderValue::from(body.len()))?;
        set(
            &mut h,
            USER_AGENT,
            HeaderValue::from_static(concat!("freeway/", env!("CARGO_PKG_VERSION"))),
        )?;
        for (k, v) in &self.headers {
            set(&mut h, k.clone(), v.clone())?;
        }
        let (mut http, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect: {}", e.etype().as_str()))?;
        http.set_read_timeout(Some(self.timeout));
        http.set_write_timeout(Some(self.timeout));
        let exchange = async {
            http.write_request_header(Box::new(h)).await?;
            http.write_request_body(body, true).await?;
            http.finish_request_body().await?;
            http.read_response_header().await?;
            while http.read_response_body().await?.is_some() {}
            Ok::<(), Box<pingora::Error>>(())
        };
        let status = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(())) => http.response_header().map_or(0, |r| r.status.as_u16()),
            Ok(Err(e)) => return Err(format!("the exchange failed: {}", e.etype().as_str())),
            Err(_) => return Err("the collector did not answer in time".into()),
        };
        if http.response_done() {
            connector
                .release_http_session(http, &peer, peer.options.idle_timeout)
                .await;
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the collector answered HTTP {status}"))
        }
    }

    /// Exports a batch; `true` when it was full (more may be waiting).
    async fn flush(&self, batch: Vec<Box<Trace>>, connector: &Connector) -> bool {
        if batch.is_empty() {
            return false;
        }
        let full = batch.len() == MAX_BATCH;
        let spans: u64 = batch.iter().map(|t| t.span_count()).sum();
        let body = Bytes::from(self.encode(batch));
        match self.post(connector, body).await {
            Ok(()) => METRICS.exported.inc_by(spans),
            Err(why) => {
                METRICS.dropped.inc_by(spans);
                warn_rate_limited(&self.last_warning, &why);
            }
        }
        full
    }
}

/// What is queued, up to a batch.
fn take(rx: &Receiver<Box<Trace>>) -> Vec<Box<Trace>> {
    let mut batch = Vec::new();
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(t) => batch.push(t),
            Err(_) => break,
        }
    }
    batch
}

#[async_trait::async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let connector = Connector::new(None);
        let mut stopping = false;
        loop {
            if stopping {
                tokio::time::sleep(self.delay).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(self.delay) => {}
                    // Requests finishing in the grace period still export: keep going until
                    // Pingora drops this future with its runtime.
                    _ = shutdown.changed() => stopping = true,
                }
            }
            // A full batch: more may be waiting.
            while self.flush(take(&rx), &connector).await {}
        }
    }
}
