//! Embeddings, speech-to-text, text-to-speech and speech-to-speech end to end: the OpenAI
//! Python SDK against simulated providers of every kind, transcription failover with a real
//! (espeak-ng) recording, vector-space-safe embedding fallback, and the memory bound of a
//! 25 MiB upload.

use crate::harness::*;
use freeway::multipart;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn provider(
    name: &str,
    kind: &str,
    base: &str,
    behavior: &str,
    models: &[(&str, &str, &str)],
) -> String {
    let mut s = format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"http://{{sim}}{base}\"\n\
         api_key = \"key-{name}\"\nsimulated = true\n"
    );
    if !behavior.is_empty() {
        s.push_str(&format!(
            "headers = {{ \"x-sim-behavior\" = \"{behavior}\" }}\n"
        ));
    }
    // (id, type, extra keys)
    for (id, ty, extra) in models {
        s.push_str(&format!(
            "  [[providers.models]]\n  id = \"{id}\"\n  type = \"{ty}\"\n  capabilities = [\"stream\"]\n  {extra}\n"
        ));
    }
    s
}

/// A WAV of real speech, made once per test run with espeak-ng (~20 s).
fn speech_wav(dir: &Path) -> PathBuf {
    let path = dir.join("speech.wav");
    let text = "Freeway is an OpenAI compatible gateway. It routes every request to a healthy \
                provider, fails over when one is throttled or down, and streams answers straight \
                through. This recording checks that an uploaded file reaches the speech to text \
                provider byte for byte, even after the first provider fails with a server error, \
                and that the gateway keeps its memory use bounded while it does so. One, two, \
                three, four, five, six, seven, eight, nine, ten.";
    let ok = Command::new("espeak-ng")
        .args(["-s", "120", "-w"])
        .arg(&path)
        .arg(text)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "espeak-ng is needed for the audio tests (bash scripts/setup.sh --test installs it)"
    );
    path
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("freeway-media-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `(status, headers, body)` of a multipart POST built with the gateway's own builder.
pub(crate) fn post_form(
    url: &str,
    fields: &[(&str, &str)],
    file: &[u8],
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let body = multipart::build(
        "fwtestboundary",
        fields,
        Some(("speech.wav", "audio/wav", file)),
    );
    let mut req = client()
        .post(url)
        .header(
            "content-type",
            "multipart/form-data; boundary=fwtestboundary",
        )
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().unwrap().to_vec())
}

fn last_request_to(sim: &Proc, prefix: &str) -> serde_json::Value {
    sim_requests(sim)
        .into_iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no request under {prefix}"))
}

fn all_kinds() -> String {
    [
        provider(
            "sim-openai",
            "openai",
            "/oa/v1",
            "",
            &[
                ("text-embedding-3-small", "embedding", ""),
                ("whisper-large-v3", "transcription", ""),
                ("gpt-4o-mini-tts", "speech", ""),
                ("echo", "chat", ""),
            ],
        ),
        provider(
            "sim-gemini",
            "gemini",
            "/gemini/v1beta",
            "",
            &[
                ("gemini-embedding-001", "embedding", ""),
                ("gemini-2.5-flash", "transcription", ""),
            ],
        ),
        provider(
            "sim-workers",
            "workers-ai",
            "/cf/client/v4/accounts/acct1/ai",
            "",
            &[
                ("@cf/baai/bge-m3", "embedding", ""),
                ("@cf/openai/whisper-large-v3-turbo", "transcription", ""),
                ("@cf/openai/whisper", "transcription", ""),
                ("@cf/myshell-ai/melotts", "speech", ""),
            ],
        ),
        provider(
            "sim-voyage",
            "voyage",
            "/voyage/v1",
            "",
            &[("voyage-3.5", "embedding", "")],
        ),
    ]
    .concat()
}

#[test]
fn openai_sdk_embeds_transcribes_and_speaks_through_every_provider_kind() {
    let sim = start_sim();
    let gw = start_gateway(&all_kinds(), &sim.addr);
    let dir = scratch("sdk");
    let wav = speech_wav(&dir);
    let script = &sdk_script("media_check.py");
    let models = serde_json::json!({
        "embed_openai": "sim-openai/text-embedding-3-small",
        "embed_gemini": "sim-gemini/gemini-embedding-001",
        "embed_workers": "sim-workers/@cf/baai/bge-m3",
        "embed_voyage": "sim-voyage/voyage-3.5",
        "stt_openai": "sim-openai/whisper-large-v3",
        "stt_workers_turbo": "sim-workers/@cf/openai/whisper-large-v3-turbo",
        "stt_workers_whisper": "sim-workers/@cf/openai/whisper",
        "stt_gemini": "sim-gemini/gemini-2.5-flash",
        "tts_openai": "sim-openai/gpt-4o-mini-tts",
        "tts_workers": "sim-workers/@cf/myshell-ai/melotts",
    });
    run_python(
        &[
            script,
            "--base-url",
            &gw.url("/v1"),
            "--sim-url",
            &sim.url(""),
            "--audio",
            wav.to_str().unwrap(),
            "--models",
            &models.to_string(),
        ],
        "MEDIA CHECK OK",
        &|| gw.log_text(),
    );
    // Daily counts and health cover the media endpoints like chat.
    let status = gw.model_status("sim-voyage/voyage-3.5");
    assert!(status["daily_used"].as_u64().unwrap() >= 3, "{status}");
}

#[test]
fn transcription_fails_over_and_the_audio_arrives_byte_exact() {
    let sim = start_sim();
    let body = [
        provider("stt-down", "openai", "/down/v1", "fail-500", &[("whisper-large-v3", "transcription", "aliases = [\"whisper\"]")]),
        provider("stt-down2", "openai", "/down2/v1", "fail-500", &[("whisper-large-v3", "transcription", "")]),
        provider("stt-up", "openai", "/up/v1", "", &[("whisper-large-v3-turbo", "transcription", "aliases = [\"whisper\"]")]),
        provider("stt-cf", "workers-ai", "/cf/ai", "", &[("@cf/openai/whisper-large-v3-turbo", "transcription", "auto = false")]),
        "[[routes]]\nname = \"stt-multipart\"\nmodels = [\"stt-down/whisper-large-v3\", \"stt-up/whisper-large-v3-turbo\"]\n\
         [[routes]]\nname = \"stt-workers\"\nmodels = [\"stt-down2/whisper-large-v3\", \"stt-cf/@cf/openai/whisper-large-v3-turbo\"]\n"
            .to_string(),
    ]
    .concat();
    let gw = start_gateway(&body, &sim.addr);
    let dir = scratch("failover");
    let audio = std::fs::read(speech_wav(&dir)).unwrap();
    // About 20 s of 22 kHz 16-bit mono.
    assert!(
        audio.len() > 600_000,
        "espeak-ng made {} bytes",
        audio.len()
    );
    let sha = sha256_hex(&audio);

    // A failing provider cools down after its failure: each route has its own.
    for (route, down, upstream, prefix) in [
        ("dynamic/stt-multipart", "/down/", "stt-up", "/up/"),
        ("dynamic/stt-workers", "/down2/", "stt-cf", "/cf/"),
    ] {
        let down_before = sim_count(&sim, down);
        let (status, headers, b) = post_form(
            &gw.url("/v1/audio/transcriptions"),
            &[("model", route), ("response_format", "json")],
            &audio,
            &[],
        );
        assert_eq!(status, 200, "{route}: {}", String::from_utf8_lossy(&b));
        assert_eq!(headers["x-gateway-provider"], upstream);
        assert_eq!(headers["x-gateway-attempts"], "2");
        assert_eq!(
            sim_count(&sim, down),
            down_before + 1,
            "the first provider was tried"
        );
        let text = json(&b)["text"].as_str().unwrap().to_string();
        assert!(
            text.contains(&format!("{} bytes, sha256 {sha}", audio.len())),
            "{text}"
        );
        let got = last_request_to(&sim, prefix);
        assert_eq!(got["file_sha256"], sha, "{got}");
        assert_eq!(got["file_bytes"], audio.len(), "{got}");
        if upstream == "stt-up" {
            // Only the model field changed: the upstream body is the client's, model rewritten.
            let sent = multipart::build(
                "fwtestboundary",
                &[
                    ("model", "whisper-large-v3-turbo"),
                    ("response_format", "json"),
                ],
                Some(("speech.wav", "audio/wav", &audio)),
            );
            assert_eq!(got["sha256"], sha256_hex(&sent));
        }
    }
    // The failing provider's health shows it, like for chat.
    let down = gw.model_status("stt-down/whisper-large-v3");
    assert!(down["success_rate"].as_f64().unwrap() < 1.0, "{down}");
}

#[test]
fn embedding_fallback_never_crosses_vector_spaces_unless_declared() {
    let sim = start_sim();
    let body = [
        "[embeddings]\ndefault = \"emb-down/text-embedding-3-small\"\n".to_string(),
        provider(
            "emb-down",
            "openai",
            "/edown/v1",
            "fail-500",
            &[
                ("text-embedding-3-small", "embedding", ""),
                ("BAAI/bge-m3", "embedding", "vector_space = \"bge-m3\""),
            ],
        ),
        provider(
            "emb-voyage",
            "voyage",
            "/ev/v1",
            "",
            &[("voyage-3.5", "embedding", "")],
        ),
        provider(
            "emb-cf",
            "workers-ai",
            "/ecf/ai",
            "",
            &[("@cf/baai/bge-m3", "embedding", "vector_space = \"bge-m3\"")],
        ),
    ]
    .concat();
    let gw = start_gateway(&body, &sim.addr);
    let req = |model: &str, fallback: bool| {
        let body = serde_json::json!({"model": model, "input": ["vector me"]}).to_string();
        let h: &[(&str, &str)] = if fallback {
            &[("x-gateway-fallback", "auto")]
        } else {
            &[]
        };
        post_with(&gw.url("/v1/embeddings"), None, body, h)
    };

    // Not declared equivalent: the healthy Voyage and bge-m3 models are never used.
    for model in ["auto", "text-embedding-3-small"] {
        let (status, _, b) = req(model, false);
        let v = assert_error(status, &b, 503, "service_unavailable");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("vector space `text-embedding-3-small`"),
            "{msg}"
        );
        assert!(
            msg.contains("Not falling back to") && msg.contains("emb-voyage/voyage-3.5"),
            "{msg}"
        );
        assert!(msg.contains("vector_space"), "{msg}");
    }
    assert_eq!(sim_count(&sim, "/ev/"), 0);
    assert_eq!(sim_count(&sim, "/ecf/"), 0);

    // Pinned without the fallback header stays pinned: the provider's error passes through.
    let (status, _, b) = req("emb-down/BAAI/bge-m3", false);
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&b));
    // Its cooldown (1 s after one failure) passes; then it is probed first again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Declared equivalent (vector_space = "bge-m3"): fails over to the other provider, and
    // the vector is the same model's.
    let (status, headers, b) = req("emb-down/BAAI/bge-m3", true);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(headers["x-gateway-provider"], "emb-cf");
    assert_eq!(headers["x-gateway-attempts"], "2");
    let v = json(&b);
    let vector: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        vector,
        freeway::sim::media::vector("bge-m3", "vector me", 16)
    );
    assert_eq!(sim_count(&sim, "/ev/"), 0, "never the other space");
}

#[test]
fn speech_streams_audio_and_speech_to_speech_round_trips() {
    let sim = start_sim();
    let gw = start_gateway(&all_kinds(), &sim.addr);
    let (status, headers, b) = post(
        &gw.url("/v1/audio/speech"),
        None,
        r#"{"model":"sim-openai/gpt-4o-mini-tts","input":"hello there","voice":"alloy","response_format":"wav"}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(headers["content-type"], "audio/wav");
    assert!(b.starts_with(b"RIFF"));

    let dir = scratch("s2s");
    let audio = std::fs::read(speech_wav(&dir)).unwrap();
    let (status, headers, b) = post_form(
        &gw.url("/v1/audio/speech-to-speech"),
        &[
            ("model", "sim-openai/echo"),
            (
                "transcription_model",
                "sim-workers/@cf/openai/whisper-large-v3-turbo",
            ),
            ("speech_model", "sim-openai/gpt-4o-mini-tts"),
            ("response_format", "wav"),
        ],
        &audio,
        &[],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert!(b.starts_with(b"RIFF"), "audio body");
    let decode = |h: &str| {
        let raw = headers[h].to_str().unwrap();
        let mut out = Vec::new();
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&raw[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    let transcript = decode("x-gateway-transcript");
    let reply = decode("x-gateway-reply-text");
    assert!(transcript.contains(&sha256_hex(&audio)), "{transcript}");
    assert!(reply.starts_with(&format!("echo: {transcript}")), "{reply}");
    assert_eq!(headers["x-gateway-provider"], "sim-openai");
    assert_eq!(headers["x-gateway-model"], "gpt-4o-mini-tts");
    assert_eq!(headers["x-gateway-attempts"], "3");
    // The speech provider was asked to speak the chat reply.
    let tts = last_request_to(&sim, "/oa/v1/audio/speech");
    assert_eq!(tts["json"]["input"], reply.as_str());
    // The transcription provider got the audio as base64 JSON, not the client's form.
    let stt = last_request_to(&sim, "/cf/");
    assert_eq!(stt["file_sha256"], sha256_hex(&audio));
}

#[test]
fn media_errors_are_openai_envelopes() {
    let sim = start_sim();
    let gw = start_gateway(&all_kinds(), &sim.addr);
    let url = gw.url("/v1/audio/transcriptions");
    // Not multipart.
    let (status, _, b) = post(&url, None, "{}");
    assert_error(status, &b, 400, "invalid_request_error");
    // Truncated multipart.
    let mut body = multipart::build(
        "bb",
        &[("model", "whisper")],
        Some(("a.wav", "audio/wav", b"xyz")),
    );
    body.truncate(body.len() - 8);
    let r = client()
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=bb")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.bytes().unwrap(), 400, "invalid_request_error");
    // No file part.
    let body = multipart::build("bb", &[("model", "whisper")], None);
    let r = client()
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=bb")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let v = assert_error(status, &r.bytes().unwrap(), 400, "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("file"),
        "{v}"
    );
    // A chat model is not an embedding model.
    let (status, _, b) = post(
        &gw.url("/v1/embeddings"),
        None,
        r#"{"model":"sim-openai/echo","input":"x"}"#,
    );
    let v = assert_error(status, &b, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an embedding model"),
        "{v}"
    );
    let (status, _, b) = post(&gw.url("/v1/audio/speech"), None, r#"{"model":"auto"}"#);
    assert_error(status, &b, 400, "invalid_request_error");
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_25_mib_upload_keeps_gateway_memory_under_twice_its_size() {
    let sim = start_sim();
    let body = provider(
        "big",
        "openai",
        "/big/v1",
        "",
        &[("whisper-large-v3", "transcription", "")],
    );
    // The simulator hashes 25 MiB twice in a debug build: give it time.
    let gw = start_gateway_with(
        &[
            ("max_body_bytes", "33554432"),
            ("upstream_timeout_ms", "60000"),
        ],
        &body,
        &sim.addr,
    );
    // Warm up: connections, pools and allocator arenas exist before measuring.
    for _ in 0..3 {
        let (status, _, b) = post_form(
            &gw.url("/v1/audio/transcriptions"),
            &[("model", "big/whisper-large-v3")],
            &[7u8; 100_000],
            &[],
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    }
    let size = 25 * 1024 * 1024;
    let mut audio = vec![0u8; size];
    let mut x: u32 = 12345;
    for b in audio.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let (rss0, hwm0) = memory_kib(gw.pid());
    let (status, _, b) = post_form(
        &gw.url("/v1/audio/transcriptions"),
        &[("model", "big/whisper-large-v3")],
        &audio,
        &[],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let (rss1, hwm1) = memory_kib(gw.pid());
    let got = last_request_to(&sim, "/big/");
    assert_eq!(got["file_sha256"], sha256_hex(&audio));
    let size_kib = (size / 1024) as u64;
    eprintln!(
        "25 MiB upload: gateway VmRSS {rss0} -> {rss1} kB (+{} kB), VmHWM {hwm0} -> {hwm1} kB (+{} kB); file {size_kib} kB",
        rss1.saturating_sub(rss0),
        hwm1.saturating_sub(hwm0)
    );
    assert!(
        hwm1.saturating_sub(hwm0) < 2 * size_kib,
        "peak memory grew by {} kB for a {size_kib} kB upload",
        hwm1 - hwm0
    );
    assert!(rss1.saturating_sub(rss0) < 2 * size_kib);
}
