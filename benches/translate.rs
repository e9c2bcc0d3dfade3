//! Stream translation throughput: native SSE in, OpenAI `chat.completion.chunk` SSE out, for
//! Anthropic → OpenAI, Gemini → OpenAI and Workers AI → OpenAI. Streams are fed in 16 KiB
//! reads, as they arrive from an upstream socket. Target: ≥ 200 MB/s per core.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use freeway::config::ProviderKind;
use freeway::providers::translator;
use support::thread_cpu_time;

mod support;

/// Text deltas of typical token sizes, some with characters that need JSON escapes.
const PIECES: [&str; 6] = [
    "Hello",
    ", this is",
    " a streamed answer",
    " with \\\"quotes\\\" and",
    " a newline\\n",
    " — and unicode.",
];
const EVENTS: usize = 20_000;

fn anthropic_stream() -> Vec<u8> {
    let mut s = String::new();
    s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
    s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..EVENTS {
        s.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            PIECES[i % PIECES.len()]
        ));
    }
    s.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":20000}}\n\n");
    s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn gemini_stream() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..EVENTS {
        let finish = if i + 1 == EVENTS {
            ",\"finishReason\":\"STOP\""
        } else {
            ""
        };
        s.push_str(&format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":12,\"candidatesTokenCount\":{i},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"n1Z_aL2xFqGz7M8P2vXJ0Ag\"}}\r\n\r\n",
            PIECES[i % PIECES.len()],
            12 + i
        ));
    }
    s.into_bytes()
}

fn workers_stream() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..EVENTS {
        s.push_str(&format!(
            "data: {{\"response\":\"{}\",\"p\":\"abcdefghijklmnop\"}}\n\n",
            PIECES[i % PIECES.len()]
        ));
    }
    s.push_str("data: {\"response\":\"\",\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":20000,\"total_tokens\":20021}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn translate_once(kind: ProviderKind, model: &str, stream: &[u8], out: &mut Vec<u8>) -> usize {
    let mut t = translator(kind).chat_stream(model, true);
    out.clear();
    for piece in stream.chunks(16 * 1024) {
        t.feed(piece, out).unwrap();
    }
    t.finish(out).unwrap();
    out.len()
}

fn bench(c: &mut Criterion) {
    let streams = [
        (
            "anthropic_to_openai",
            ProviderKind::Anthropic,
            "claude-sonnet-4-5",
            anthropic_stream(),
        ),
        (
            "gemini_to_openai",
            ProviderKind::Gemini,
            "gemini-2.5-flash",
            gemini_stream(),
        ),
        (
            "workers_ai_to_openai",
            ProviderKind::WorkersAi,
            "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
            workers_stream(),
        ),
    ];
    // Wall-clock time.
    let mut g = c.benchmark_group("stream_translate");
    for (name, kind, model, stream) in &streams {
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_function(*name, |b| {
            let mut out = Vec::with_capacity(stream.len() * 2);
            b.iter(|| black_box(translate_once(*kind, model, stream, &mut out)))
        });
    }
    g.finish();
    // CPU time of the translating thread: MB/s per core.
    let mut g = c.benchmark_group("stream_translate_cpu");
    for (name, kind, model, stream) in &streams {
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_function(*name, |b| {
            let mut out = Vec::with_capacity(stream.len() * 2);
            b.iter_custom(|iters| {
                let start = thread_cpu_time();
                for _ in 0..iters {
                    black_box(translate_once(*kind, model, stream, &mut out));
                }
                thread_cpu_time() - start
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
