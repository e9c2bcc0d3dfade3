//! The streaming guardrail matcher with the default PII set (email, phone, credit card,
//! IBAN, API keys, IPv4, IPv6; redact): model-answer-like prose with numbers, punctuation,
//! some non-ASCII and an occasional match, fed whole, in 64-byte and in 16-byte pieces
//! (token-sized deltas), timed by the wall clock and by the thread's CPU time (per core: on
//! a shared machine the wall clock also counts time spent descheduled). Target: ≥ 200 MB/s
//! per core.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use freeway::config::Config;
use freeway::guardrails::{Guardrails, Side};
use std::sync::Arc;
use std::time::Duration;
use support::thread_cpu_time;

mod support;

const SENTENCES: [&str; 8] = [
    "The deployment finished at 14:32 and served 1,204 requests in 3.5 seconds. ",
    "You can configure the retry policy in the settings page, under Advanced. ",
    "Revenue grew 12% year over year, to $4.2 million in Q3 2025 — a record. ",
    "Die Lieferung erfolgt übermorgen; bitte prüfen Sie die Rechnung Nr. 2024-118. ",
    "Version 2.14.1 fixes the crash on startup (see issue #4411 for details). ",
    "To reach support, write to help.desk@example.com or call +1 415 555 2671. ",
    "First, install the package; then run the migration and restart the service. ",
    "The model answered in JSON: {\"ok\": true, \"items\": [1, 2, 3]} as requested. ",
];

fn text(len: usize) -> String {
    let mut s = String::with_capacity(len + 100);
    let mut i = 0;
    while s.len() < len {
        s.push_str(SENTENCES[i % SENTENCES.len()]);
        i += 1;
    }
    s
}

fn guardrails() -> Arc<Guardrails> {
    let config = Config::parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[guardrails]]\nname = \"no-pii\"\n\
         pii = [\"email\", \"phone\", \"credit_card\", \"iban\", \"api_key\", \"ipv4\", \"ipv6\"]\n\
         action = \"redact\"\n",
    )
    .unwrap();
    Arc::new(Guardrails::new(&config.guardrails).unwrap())
}

/// One pass over `text` in pieces of `piece` bytes (0: whole).
fn stream(g: &Arc<Guardrails>, text: &str, piece: usize, out: &mut String) -> usize {
    out.clear();
    let mut s = g.text_stream(Side::Response, g.all());
    if piece == 0 {
        s.push(text, out).unwrap();
    } else {
        let mut at = 0;
        while at < text.len() {
            let end = text.ceil_char_boundary(at + piece);
            s.push(&text[at..end], out).unwrap();
            at = end;
        }
    }
    s.finish(out).unwrap();
    out.len()
}

fn bench(c: &mut Criterion) {
    let g = guardrails();
    let text = text(1 << 20);
    let name = |piece: usize| match piece {
        0 => "stream_whole".to_string(),
        n => format!("stream_{n}_byte_pieces"),
    };
    let mut group = c.benchmark_group("guardrails");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    for piece in [0usize, 64, 16] {
        group.bench_function(name(piece), |b| {
            let mut out = String::with_capacity(text.len() + 4096);
            b.iter(|| black_box(stream(&g, &text, piece, &mut out)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("guardrails_cpu");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    for piece in [0usize, 64, 16] {
        group.bench_function(name(piece), |b| {
            let mut out = String::with_capacity(text.len() + 4096);
            b.iter_custom(|iters| {
                let start = thread_cpu_time();
                for _ in 0..iters {
                    black_box(stream(&g, &text, piece, &mut out));
                }
                thread_cpu_time() - start
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
