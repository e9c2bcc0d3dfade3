//! The gateway's own work per chat request: parse the body once, plan the route, rewrite the
//! model into the upstream body; then, for the answer, price it (`usage.cost` spliced into
//! the JSON), make the request context and write the `x-gateway-*` headers.
//! Run: `cargo bench --bench request_path`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use freeway::config::Config;
use freeway::live::endpoints::{EndpointState, Pool};
use freeway::live::{Board, LiveBoard, ProviderState};
use freeway::request::parse_chat;
use freeway::routing::{Ask, Catalog, Router};
use std::hint::black_box;
use std::time::Instant;

fn body_of(size: usize) -> String {
    let mut msgs =
        vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant."})];
    let mut total = 0;
    let mut i = 0;
    while total < size {
        let text =
            format!("Message {i}: tell me something about the number {i} and why it matters. ");
        total += text.len() + 40;
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        msgs.push(serde_json::json!({"role": role, "content": text}));
        i += 1;
    }
    serde_json::json!({"model": "auto", "messages": msgs, "temperature": 0.7, "max_tokens": 512,
                       "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]})
    .to_string()
}

fn catalog(models: usize) -> Catalog {
    let mut text = String::new();
    for p in 0..(models / 10).max(1) {
        text.push_str(&format!(
            "[[providers]]\nname = \"p{p}\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}\"\n",
            1000 + p
        ));
        for m in 0..10.min(models) {
            text.push_str(&format!(
                "  [[providers.models]]\n  id = \"model-{m}\"\n  context_window = 131072\n  capabilities = [\"tools\", \"json\", \"stream\"]\n"
            ));
        }
    }
    let config = Config::parse(&text).unwrap();
    let unavailable = vec![None; config.providers.len()];
    Catalog::build(&config, &unavailable)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_rewrite");
    for size in [1024, 16 * 1024, 256 * 1024] {
        let body = body_of(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let req = parse_chat(black_box(body.as_bytes())).unwrap();
                black_box(req.rewrite_for_upstream(body.as_bytes(), "llama-3.3-70b-versatile"))
            })
        });
    }
    g.finish();

    let cat = catalog(100);
    let router = Router::default();
    let req_body = body_of(1024);
    let needs = parse_chat(req_body.as_bytes()).unwrap().needs;
    // Live health of every model, as the gateway reads it (a lock per candidate).
    let board = Board::in_memory();
    let states: Vec<_> = cat
        .models
        .iter()
        .map(|m| board.model(&m.qualified))
        .collect();
    let providers: Vec<ProviderState> = (0..10).map(|_| ProviderState::default()).collect();
    let pace = freeway::live::pace::Pace::default();
    let live = LiveBoard {
        models: &states,
        providers: &providers,
        slots: &[],
        pools: &[],
        catalog: &cat,
        pace: &pace,
    };
    let ask = Ask {
        model: Some("auto"),
        needs: &needs,
        fallback_auto: false,
        metadata: None,
        max_attempts: 4,
        provider: None,
    };
    c.bench_function("route_plan_auto_100_models", |b| {
        b.iter(|| {
            router
                .plan(black_box(&cat), &live, black_box(&ask), Instant::now())
                .unwrap()
        })
    });

    // A pooled provider's extra work per attempt: choose an endpoint of a 10-endpoint pool
    // (weights 1-3, some requests in flight) and give it back.
    let pool = Pool::new(
        (0..10)
            .map(|i| {
                let state = EndpointState::new("bench-pool", &format!("10.0.0.{i}:8000"));
                (std::sync::Arc::new(state), 1 + (i % 3) as u32, 0)
            })
            .collect(),
        3,
    );
    let _held: Vec<_> = (0..7).filter_map(|_| pool.lease(0)).collect();
    c.bench_function("endpoint_choice_pool_10", |b| {
        b.iter(|| pool.lease(black_box(0)).map(|l| l.index))
    });
}

/// An OpenAI chat completion of about `content` bytes of text, as providers answer it.
fn answer_of(content: usize) -> String {
    let text = "The number forty-two matters because it is the answer. ".repeat(content / 40 + 1);
    serde_json::json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
        "model": "llama-3.3-70b-versatile", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                     "message": {"role": "assistant", "content": &text[..content]}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 64, "total_tokens": 184,
                  "prompt_tokens_details": {"cached_tokens": 0}}
    })
    .to_string()
}

/// The answer's side: pricing a JSON answer, the request context, the gateway's headers.
fn answer(c: &mut Criterion) {
    use freeway::proxy::ctx::RequestCtx;
    let price = freeway::config::Cost {
        input_per_mtok: 0.59,
        output_per_mtok: 0.79,
        ..Default::default()
    };
    let mut g = c.benchmark_group("price_json");
    for size in [200, 4096] {
        let body = bytes::Bytes::from(answer_of(size));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            let mut ctx = RequestCtx::new();
            b.iter(|| freeway::proxy::spend::price_json(&mut ctx, Some(&price), body.clone(), None))
        });
    }
    g.finish();
    // The whole answer's side for an OpenAI-format provider: the translator's reading (which
    // finds `usage`), then the pricing at that position.
    let openai = freeway::providers::translator(freeway::config::ProviderKind::Openai);
    let mut g = c.benchmark_group("answer_openai");
    for size in [200, 4096] {
        let body = bytes::Bytes::from(answer_of(size));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            let mut ctx = RequestCtx::new();
            b.iter(|| {
                let t = openai.chat_response(body.clone(), "m").unwrap();
                freeway::proxy::spend::price_json(&mut ctx, Some(&price), t.body, t.usage_at)
            })
        });
    }
    g.finish();
    c.bench_function("request_ctx_new", |b| b.iter(RequestCtx::new));
    let mut ctx = RequestCtx::new();
    ctx.endpoint = freeway::proxy::endpoint::find("/v1/chat/completions");
    ctx.attempts = 1;
    ctx.provider = Some("groq".into());
    ctx.model = Some("llama-3.3-70b-versatile".into());
    ctx.spend.header = Some(0.0000123);
    c.bench_function("gateway_headers", |b| {
        b.iter(|| {
            let mut head = http::HeaderMap::with_capacity(16);
            freeway::proxy::respond::gateway_headers(&mut head, black_box(&ctx));
            head
        })
    });
}

criterion_group!(benches, bench, answer);
criterion_main!(benches);
