//! `[telemetry]`: OpenTelemetry spans exported over OTLP/HTTP to a receiver in the test
//! (`otlp::Otlp`), W3C trace context continued and sent upstream, and a dead collector
//! costing requests nothing.

use crate::harness::*;
use crate::otlp::*;
use opentelemetry_proto::tonic::trace::v1::Span;

const KEY: &str = "sk-gw-test";
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn telemetry(collector: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\nsample_ratio = 1.0\n\
         batch_delay_ms = 20\nheaders = {{ \"x-collector-token\" = \"t0ken\" }}\n\
         resource_attributes = {{ \"deployment.environment\" = \"test\" }}\n"
    )
}

fn gateway(sim: &Proc, collector: &str, providers: &str) -> Proc {
    start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}{providers}",
            telemetry(collector)
        ),
        &sim.addr,
    )
}

fn request_id(h: &reqwest::header::HeaderMap) -> String {
    h["x-gateway-request-id"].to_str().unwrap().to_string()
}

fn server_span(trace: &[Span]) -> &Span {
    let servers: Vec<&Span> = trace.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 1, "{trace:#?}");
    servers[0]
}

/// The attempt spans, in attempt order.
fn client_spans(trace: &[Span]) -> Vec<&Span> {
    let mut c: Vec<&Span> = trace.iter().filter(|s| s.kind == CLIENT).collect();
    c.sort_by_key(|s| attr_int(s, "freeway.attempt"));
    c
}

fn event_names(s: &Span) -> Vec<&str> {
    s.events.iter().map(|e| e.name.as_str()).collect()
}

/// `(trace id, span id, flags)` of a recorded upstream `traceparent`.
fn upstream_parent(rec: &serde_json::Value) -> (String, String, String) {
    let tp = rec["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {rec}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// No prompt or answer text in any attribute (`capture_content = false`).
fn assert_no_text(trace: &[Span], text: &str) {
    for s in trace {
        for a in &s.attributes {
            let v = format!("{:?}", a.value);
            assert!(!v.contains(text), "{} carries content: {v}", a.key);
        }
    }
}

#[test]
fn chat_and_stream_spans_carry_the_genai_attributes() {
    let sim = start_sim();
    let otlp = Otlp::start();
    let gw = gateway(&sim, &otlp.addr, &sim_provider("alpha", "", &["m1"]));
    let secret = "the quick secret prompt";
    let body = serde_json::json!({
        "model": "alpha/m1", "max_tokens": 50, "temperature": 0.25,
        "messages": [{"role": "user", "content": secret}],
    });
    let (status, h, resp) = post(&gw.url("/v1/chat/completions"), Some(KEY), body.to_string());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let trace = otlp.trace_of(&request_id(&h), 2);
    assert_eq!(trace.len(), 2, "{trace:#?}");
    let server = server_span(&trace);
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert!(server.parent_span_id.is_empty());
    assert_eq!(
        attr_str(server, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attr_str(server, "http.route").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(attr_int(server, "http.response.status_code"), Some(200));
    assert_eq!(
        attr_str(server, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(attr_str(server, "freeway.key_label").is_some_and(|k| !k.is_empty()));
    assert!(attr_str(server, "freeway.cache_status").is_some());
    assert!(attr_f64(server, "freeway.cost_usd").is_some());
    assert_eq!(attr_int(server, "freeway.attempts"), Some(1));
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    let [client] = client_spans(&trace)[..] else {
        panic!("one attempt span expected: {trace:#?}")
    };
    assert_eq!(client.name, "chat m1");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(
        attr_str(client, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        attr_str(client, "gen_ai.provider.name").as_deref(),
        Some("alpha")
    );
    assert_eq!(
        attr_str(client, "gen_ai.request.model").as_deref(),
        Some("m1")
    );
    assert_eq!(
        attr_str(client, "gen_ai.response.model").as_deref(),
        Some("m1")
    );
    assert_eq!(attr_int(client, "gen_ai.request.max_tokens"), Some(50));
    assert_eq!(attr_f64(client, "gen_ai.request.temperature"), Some(0.25));
    assert!(attr_int(client, "gen_ai.usage.input_tokens").is_some_and(|t| t > 0));
    assert!(attr_int(client, "gen_ai.usage.output_tokens").is_some_and(|t| t > 0));
    assert_eq!(
        attr_strings(client, "gen_ai.response.finish_reasons"),
        ["stop"]
    );
    assert_eq!(
        attr_str(client, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    let sim_port: i64 = sim.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(attr_int(client, "server.port"), Some(sim_port));
    assert_eq!(attr_int(client, "freeway.attempt"), Some(1));
    assert!(attr_str(client, "error.type").is_none());
    assert_eq!(event_names(client), ["freeway.first_token"]);
    assert_no_text(&trace, secret);

    // The upstream received the attempt span's context.
    let rec = sim_requests(&sim);
    let (trace_id, span_id, flags) = upstream_parent(rec.last().unwrap());
    assert_eq!(trace_id, hex(&server.trace_id));
    assert_eq!(span_id, hex(&client.span_id));
    assert_eq!(flags, "01");

    // The export itself: OTLP/HTTP protobuf to /v1/traces with the configured header and
    // resource.
    let exports = otlp.requests();
    let (path, ctype, headers) = &exports[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(ctype, "application/x-protobuf");
    assert!(headers.iter().any(|h| h == "x-collector-token: t0ken"));
    let resource = &otlp.resources()[0];
    assert_eq!(kv_str(resource, "service.name").as_deref(), Some("freeway"));
    assert_eq!(
        kv_str(resource, "deployment.environment").as_deref(),
        Some("test")
    );

    // A stream: the first token and the stream's end are events of the attempt span.
    let (status, h, resp) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("alpha/m1", secret, true),
    );
    assert_eq!(status, 200);
    assert_eq!(sse_data(&resp).last().map(String::as_str), Some("[DONE]"));
    let trace = otlp.trace_of(&request_id(&h), 2);
    let [client] = client_spans(&trace)[..] else {
        panic!("one attempt span expected: {trace:#?}")
    };
    assert_eq!(
        event_names(client),
        ["freeway.first_token", "freeway.stream.end"]
    );
    let first = &client.events[0];
    assert!(first.time_unix_nano >= client.start_time_unix_nano);
    assert!(first.time_unix_nano <= client.end_time_unix_nano);
    assert_eq!(
        attr_strings(client, "gen_ai.response.finish_reasons"),
        ["stop"]
    );
    assert_no_text(&trace, secret);
}

#[test]
fn a_failover_has_one_span_per_attempt_the_failed_one_with_its_error_type() {
    let sim = start_sim();
    let otlp = Otlp::start();
    let providers =
        sim_provider("broken", "fail-500", &["m-broken"]) + &sim_provider("good", "", &["m-good"]);
    let gw = gateway(&sim, &otlp.addr, &providers);
    let (status, h, resp) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("broken/m-broken", "hello", false),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(h["x-gateway-attempts"], "2");
    let trace = otlp.trace_of(&request_id(&h), 3);
    let server = server_span(&trace);
    assert_eq!(attr_int(server, "freeway.attempts"), Some(2));
    assert!(attr_str(server, "error.type").is_none());
    let clients = client_spans(&trace);
    assert_eq!(clients.len(), 2, "{trace:#?}");
    let (first, second) = (clients[0], clients[1]);
    assert_eq!(attr_int(first, "freeway.attempt"), Some(1));
    assert_eq!(
        attr_str(first, "gen_ai.provider.name").as_deref(),
        Some("broken")
    );
    assert_eq!(attr_str(first, "error.type").as_deref(), Some("500"));
    assert_eq!(first.status.as_ref().map(|s| s.code), Some(2)); // STATUS_CODE_ERROR
    assert!(attr_str(first, "gen_ai.response.model").is_none());
    assert_eq!(attr_int(second, "freeway.attempt"), Some(2));
    assert_eq!(
        attr_str(second, "gen_ai.provider.name").as_deref(),
        Some("good")
    );
    assert!(attr_str(second, "error.type").is_none());
    assert!(first.end_time_unix_nano <= second.start_time_unix_nano);

    // Each attempt sent its own span id upstream, in the same trace.
    let rec = sim_requests(&sim);
    assert_eq!(rec.len(), 2);
    for (r, span) in rec.iter().zip([first, second]) {
        let (trace_id, span_id, _) = upstream_parent(r);
        assert_eq!(trace_id, hex(&server.trace_id));
        assert_eq!(span_id, hex(&span.span_id));
    }
}

#[test]
fn an_embeddings_call_is_an_embeddings_span() {
    let sim = start_sim();
    let otlp = Otlp::start();
    let provider = "[[providers]]\nname = \"emb\"\nkind = \"openai\"\n\
         base_url = \"http://{sim}/emb/v1\"\napi_key = \"sk-upstream-emb\"\nsimulated = true\n\
         [[providers.models]]\nid = \"text-embedding-3-small\"\ntype = \"embedding\"\n";
    let gw = gateway(&sim, &otlp.addr, provider);
    let body = serde_json::json!({"model": "emb/text-embedding-3-small", "input": ["vector me"]});
    let (status, h, resp) = post(&gw.url("/v1/embeddings"), Some(KEY), body.to_string());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let trace = otlp.trace_of(&request_id(&h), 2);
    let server = server_span(&trace);
    assert_eq!(server.name, "POST /v1/embeddings");
    let [client] = client_spans(&trace)[..] else {
        panic!("one attempt span expected: {trace:#?}")
    };
    assert_eq!(client.name, "embeddings text-embedding-3-small");
    assert_eq!(
        attr_str(client, "gen_ai.operation.name").as_deref(),
        Some("embeddings")
    );
    assert_eq!(
        attr_str(client, "gen_ai.request.model").as_deref(),
        Some("text-embedding-3-small")
    );
    assert!(attr_str(client, "error.type").is_none());
    let (trace_id, span_id, _) = upstream_parent(sim_requests(&sim).last().unwrap());
    assert_eq!(trace_id, hex(&server.trace_id));
    assert_eq!(span_id, hex(&client.span_id));
}

#[test]
fn an_incoming_traceparent_is_continued_upstream_and_through_passthrough() {
    let sim = start_sim();
    let otlp = Otlp::start();
    let gw = gateway(&sim, &otlp.addr, &sim_provider("alpha", "", &["m1"]));
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";

    // An unsampled client trace is passed on (flags 00) but not exported.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let (status, _, _) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("alpha/m1", "hi", false),
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    );
    assert_eq!(status, 200);
    let (t, s, flags) = upstream_parent(sim_requests(&sim).last().unwrap());
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));
    assert_ne!(s, "b7ad6b7169203331");

    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let (status, h, _) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("alpha/m1", "hi", false),
        &[
            ("traceparent", &traceparent),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ],
    );
    assert_eq!(status, 200);
    let trace = otlp.trace_of(&request_id(&h), 2);
    let server = server_span(&trace);
    assert_eq!(hex(&server.trace_id), client_trace);
    assert_eq!(hex(&server.parent_span_id), client_span);
    assert_eq!(server.trace_state, "rojo=00f067aa0ba902b7");
    let [attempt] = client_spans(&trace)[..] else {
        panic!("one attempt span expected: {trace:#?}")
    };
    let rec = sim_requests(&sim);
    let last = rec.last().unwrap();
    let (t, s, flags) = upstream_parent(last);
    assert_eq!(t, client_trace);
    assert_eq!(s, hex(&attempt.span_id));
    assert_eq!(flags, "01");
    assert_eq!(last["tracestate"], "rojo=00f067aa0ba902b7");
    assert!(
        otlp.spans().iter().all(|s| hex(&s.trace_id) != unsampled),
        "an unsampled trace was exported"
    );

    // Passthrough: the client's traceparent is replaced by the gateway's attempt span.
    // (Another trace id: one trace per request keeps the lookup simple.)
    let pass_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let (status, h, _) = post_with(
        &gw.url("/providers/alpha/chat/completions"),
        Some(KEY),
        chat_body("m1", "hi", false),
        &[("traceparent", &format!("00-{pass_trace}-{client_span}-01"))],
    );
    assert_eq!(status, 200);
    let trace = otlp.trace_of(&request_id(&h), 2);
    let server = server_span(&trace);
    assert_eq!(hex(&server.trace_id), pass_trace);
    let [attempt] = client_spans(&trace)[..] else {
        panic!("one attempt span expected: {trace:#?}")
    };
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(
        attr_str(attempt, "gen_ai.provider.name").as_deref(),
        Some("alpha")
    );
    assert_eq!(attr_int(attempt, "http.response.status_code"), Some(200));
    let (t, s, _) = upstream_parent(sim_requests(&sim).last().unwrap());
    assert_eq!(t, pass_trace);
    assert_eq!(s, hex(&attempt.span_id));
}

fn dropped_spans(gw: &Proc) -> u64 {
    let text = gw.metrics(KEY);
    text.lines()
        .find_map(|l| l.strip_prefix("freeway_otel_dropped_spans_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[test]
fn with_the_collector_down_requests_succeed_and_dropped_spans_are_counted() {
    let sim = start_sim();
    // Nothing listens there.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = gateway(&sim, &dead, &sim_provider("alpha", "", &["m1"]));
    for i in 0..5 {
        let started = std::time::Instant::now();
        let (status, _, resp) = post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("alpha/m1", &format!("hi {i}"), i % 2 == 1),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    // Each request is a server span and an attempt span.
    wait_until(15, "10 dropped spans", || dropped_spans(&gw) >= 10);
    assert_alive(&gw);

    // Telemetry off: nothing is sent upstream.
    let plain = start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}",
            sim_provider("alpha", "", &["m1"])
        ),
        &sim.addr,
    );
    let (status, _, _) = post(
        &plain.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("alpha/m1", "hi", false),
    );
    assert_eq!(status, 200);
    assert!(sim_requests(&sim).last().unwrap()["traceparent"].is_null());
}
