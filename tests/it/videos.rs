//! Video jobs end to end — the OpenAI Python SDK's `client.videos.create`, `retrieve` and
//! `download_content` against simulated providers of each video format
//! (tests/sdk/videos_check.py), a job surviving a gateway restart, what the gateway logged —
//! and the API description: `GET /openapi.json` validated as OpenAPI 3.1 and checked
//! against the endpoint table.

use crate::harness::*;
use crate::media::provider;

const KEY: &str = "video-test-key";
/// A second gateway key: it must not see the first key's jobs.
const OTHER_KEY: &str = "video-other-key";
const OPENAI: &str = "vid-openai/sora-2";
const GEMINI: &str = "vid-gemini/veo-3.0-generate-001";

fn config() -> String {
    let video = |sizes: &str, price: &str| {
        format!("sizes = [{sizes}]\n  cost = {{ per_second = {price} }}\n  auto = false")
    };
    [
        format!("[auth]\nkeys = [\"{KEY}\", \"{OTHER_KEY}\"]\n"),
        "[[guardrails]]\nname = \"no-email\"\npii = [\"email\"]\naction = \"redact\"\n\
         [[guardrails]]\nname = \"no-plans\"\nwords = [\"secret-plan\"]\naction = \"block\"\n"
            .to_string(),
        provider(
            "vid-openai",
            "openai",
            "/voa/v1",
            "",
            &[
                (
                    "sora-2",
                    "video",
                    &video("\"720x1280\", \"1280x720\"", "0.1"),
                ),
                ("echo", "chat", ""),
            ],
        ),
        provider(
            "vid-gemini",
            "gemini",
            "/vgem/v1beta",
            "",
            &[(
                "veo-3.0-generate-001",
                "video",
                &video("\"1280x720\", \"720x1280\"", "0.4"),
            )],
        ),
        provider(
            "vid-down",
            "openai",
            "/vdown/v1",
            "fail-500",
            &[("sora-2", "video", "auto = false")],
        ),
        provider(
            "vid-up",
            "openai",
            "/vup/v1",
            "",
            &[("sora-2", "video", "auto = false")],
        ),
        "[[routes]]\nname = \"film\"\nmodels = [\"vid-down/sora-2\", \"vid-up/sora-2\"]\n"
            .to_string(),
    ]
    .concat()
}

/// `GET path` with a gateway key: (status, content type, body).
fn get(gw: &Proc, path: &str, key: &str) -> (u16, String, Vec<u8>) {
    let resp = client().get(gw.url(path)).bearer_auth(key).send().unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, resp.bytes().unwrap().to_vec())
}

/// Starts a job with a JSON body: its id.
fn create(gw: &Proc, model: &str, prompt: &str) -> String {
    let body = serde_json::json!({"model": model, "prompt": prompt, "seconds": 4,
                                  "size": "1280x720"});
    let (status, _, b) = post(&gw.url("/v1/videos"), Some(KEY), body.to_string());
    let v = json(&b);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["object"].as_str()),
        (Some("queued"), Some("video"))
    );
    v["id"].as_str().unwrap().to_string()
}

/// Polls the job until it is completed (bounded), then downloads it: the MP4's bytes.
fn finish_and_download(gw: &Proc, id: &str) -> Vec<u8> {
    wait_until(20, "the video job to complete", || {
        let (status, _, b) = get(gw, &format!("/v1/videos/{id}"), KEY);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        json(&b)["status"] == "completed"
    });
    let (status, ctype, mp4) = get(gw, &format!("/v1/videos/{id}/content"), KEY);
    assert_eq!((status, ctype.as_str()), (200, "video/mp4"));
    assert_eq!(&mp4[4..8], b"ftyp", "{:?}", &mp4[..16.min(mp4.len())]);
    mp4
}

/// `cost_usd` of the logged video creations for `model`.
fn logged_costs(gw: &Proc, model: &str) -> Vec<f64> {
    rusqlite::Connection::open(gw.dir().join("freeway.db"))
        .and_then(|c| {
            c.prepare(
                "SELECT cost_usd FROM request_log
                 WHERE endpoint = 'videos' AND requested_model = ?1 AND status = 200",
            )?
            .query_map([model], |r| r.get(0))?
            .collect()
        })
        .unwrap_or_default()
}

#[test]
fn openai_sdk_makes_videos_through_each_provider_format() {
    let sim = start_sim();
    let gw = start_gateway(&config(), &sim.addr);
    let models = serde_json::json!({
        "openai": OPENAI,
        "gemini": GEMINI,
        "failover": "dynamic/film",
        "up_provider": "vid-up",
        "chat": "vid-openai/echo",
    });
    run_python(
        &[
            &sdk_script("videos_check.py"),
            "--base-url",
            &gw.url("/v1"),
            "--sim-url",
            &sim.url(""),
            "--key",
            KEY,
            "--models",
            &models.to_string(),
        ],
        "VIDEOS CHECK OK",
        &|| gw.log_text(),
    );

    // The creation is a model request: logged with its cost, `per_second` × seconds.
    wait_until(10, "the video rows in the request log", || {
        logged_costs(&gw, OPENAI)
            .iter()
            .any(|c| (c - 0.8).abs() < 1e-9)
            && logged_costs(&gw, GEMINI)
                .iter()
                .any(|c| (c - 1.6).abs() < 1e-9)
    });

    // Bad input gets the OpenAI envelope.
    let url = gw.url("/v1/videos");
    let (status, _, b) = post(&url, Some(KEY), r#"{"model":"vid-openai/sora-2"}"#);
    let v = assert_error(status, &b, 400, "invalid_request_error");
    assert_eq!(v["error"]["param"], "prompt", "{v}");
    let (status, _, b) = post(&url, Some(KEY), r#"{"model":"nope/nope","prompt":"x"}"#);
    assert!(
        status == 400 || status == 404,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_error(status, &b, status, "invalid_request_error");
    let (status, _, b) = post(&url, None, r#"{"model":"vid-openai/sora-2","prompt":"x"}"#);
    assert_error(status, &b, 401, "authentication_error");
    // A size the model does not take is refused by name.
    let body = r#"{"model":"vid-openai/sora-2","prompt":"x","size":"640x480"}"#;
    let (status, _, b) = post(&url, Some(KEY), body);
    assert_error(status, &b, 400, "invalid_request_error");

    // A job is its key's: another gateway key, or none, does not see it.
    let id = create(&gw, OPENAI, "mine");
    let (status, _, b) = get(&gw, &format!("/v1/videos/{id}"), OTHER_KEY);
    assert_error(status, &b, 404, "invalid_request_error");
    let resp = client()
        .get(gw.url(&format!("/v1/videos/{id}")))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    finish_and_download(&gw, &id);

    // /v1/models lists video models with their type and sizes.
    let models = json(
        &client()
            .get(gw.url("/v1/models"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    );
    let entry = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == GEMINI)
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["type"], "video", "{entry}");
    assert_eq!(
        entry["sizes"],
        serde_json::json!(["1280x720", "720x1280"]),
        "{entry}"
    );
}

#[test]
fn a_video_job_survives_a_gateway_restart_between_create_and_download() {
    let sim = start_sim();
    let mut gw = start_gateway(&config(), &sim.addr);
    let jobs = [
        create(&gw, OPENAI, "before the restart"),
        create(&gw, GEMINI, "before the restart, on veo"),
    ];
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(20), Some(0));
    // A new gateway on the same config and store.
    gw.restart();
    for id in &jobs {
        let mp4 = finish_and_download(&gw, id);
        assert!(mp4.len() > 100, "{} bytes", mp4.len());
    }
}

#[test]
fn openapi_json_is_valid_openapi_3_1_and_lists_every_endpoint_of_the_table() {
    let sim = start_sim();
    let gw = start_gateway(&format!("[auth]\nkeys = [\"{KEY}\"]\n"), &sim.addr);
    // No key needed.
    let resp = client().get(gw.url("/openapi.json")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().unwrap();
    let doc = json(&body);
    assert_eq!(doc["openapi"], "3.1.0");

    let mut listed: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut table = freeway::proxy::openapi::paths();
    listed.sort();
    table.sort();
    assert_eq!(listed, table);
    assert!(
        table.iter().any(|p| p == "/v1/chat/completions"),
        "{table:?}"
    );
    // A keyed model endpoint says so; path parameters are declared.
    let chat = &doc["paths"]["/v1/chat/completions"]["post"];
    assert_eq!(chat["security"][0]["bearerAuth"], serde_json::json!([]));
    let file = &doc["paths"]["/v1/images/files/{id}"];
    assert_eq!(file["parameters"][0]["in"], "path");

    let path = gw.dir().join("openapi.json");
    std::fs::write(&path, &body).unwrap();
    let code = "import json, sys\n\
                from openapi_spec_validator import validate\n\
                from openapi_spec_validator.versions import consts\n\
                from openapi_spec_validator.versions.shortcuts import get_spec_version\n\
                spec = json.load(open(sys.argv[1]))\n\
                assert get_spec_version(spec) == consts.OPENAPIV31, get_spec_version(spec)\n\
                validate(spec)\n\
                print('OPENAPI OK')";
    run_python(&["-c", code, path.to_str().unwrap()], "OPENAPI OK", &|| {
        gw.log_text()
    });
}

#[test]
fn a_failed_job_says_why_and_guardrails_read_the_prompt_of_either_body_shape() {
    let sim = start_sim();
    let gw = start_gateway(&config(), &sim.addr);
    // A job the provider fails: `failed` with its error, and no video to download.
    for model in [OPENAI, GEMINI] {
        let id = create(&gw, model, "sim-fail-job, please");
        let mut last = serde_json::Value::Null;
        wait_until(20, "the job to fail", || {
            let (status, _, b) = get(&gw, &format!("/v1/videos/{id}"), KEY);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
            last = json(&b);
            last["status"] == "failed"
        });
        assert!(
            last["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("sim:")),
            "{last}"
        );
        let (status, _, b) = get(&gw, &format!("/v1/videos/{id}/content"), KEY);
        let v = assert_error(status, &b, 400, "invalid_request_error");
        assert_eq!(v["error"]["code"], "video_not_ready", "{v}");
    }

    // A blocked prompt never goes upstream.
    let creations = || {
        sim_requests(&sim)
            .iter()
            .filter(|r| r["method"] == "POST")
            .count()
    };
    let before = creations();
    let body = serde_json::json!({"model": OPENAI, "prompt": "film the secret-plan"});
    let (status, _, b) = post(&gw.url("/v1/videos"), Some(KEY), body.to_string());
    let v = assert_error(status, &b, 400, "invalid_request_error");
    assert_eq!(v["error"]["code"], "content_blocked", "{v}");
    assert_eq!(creations(), before);

    // A multipart body (the SDK's shape) is redacted like JSON.
    let form = freeway::multipart::build(
        "vidXB",
        &[
            ("model", OPENAI),
            ("prompt", "a clip for ann@example.com"),
            ("seconds", "4"),
            ("size", "1280x720"),
        ],
        None,
    );
    let resp = client()
        .post(gw.url("/v1/videos"))
        .bearer_auth(KEY)
        .header("content-type", "multipart/form-data; boundary=vidXB")
        .body(form)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let sent = sim_requests(&sim)
        .into_iter()
        .rev()
        .find(|r| r["method"] == "POST")
        .unwrap();
    let prompt = sent["fields"]["prompt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        prompt.starts_with("a clip for ") && !prompt.contains("ann@example.com"),
        "{sent}"
    );
}
