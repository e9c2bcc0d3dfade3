//! Image generation end to end: the OpenAI Python SDK's `client.images.generate` against
//! simulated providers of every image format (tests/sdk/images_check.py), then what the
//! gateway recorded: the request log's `images` count and cost, and `/v1/models`.

use crate::harness::*;
use crate::media::provider;

const KEY: &str = "img-test-key";
/// `[images] url_ttl_seconds` of the test gateway: short, so expiry is seen quickly.
const TTL: u64 = 2;

fn config() -> String {
    let image =
        |sizes: &str, price: &str| format!("sizes = [{sizes}]\n  cost = {{ per_image = {price} }}");
    let small = image("\"256x256\", \"512x512\", \"1024x1024\"", "0.04");
    [
        format!("[auth]\nkeys = [\"{KEY}\"]\n[images]\nurl_ttl_seconds = {TTL}\n"),
        "[[guardrails]]\nname = \"no-email\"\npii = [\"email\"]\naction = \"redact\"\n\
         [[guardrails]]\nname = \"no-plans\"\nwords = [\"secret-plan\"]\naction = \"block\"\n"
            .to_string(),
        provider(
            "img-openai",
            "openai",
            "/oa/v1",
            "",
            &[("gpt-image-1", "image", &small), ("echo", "chat", "")],
        ),
        provider(
            "img-link",
            "openai",
            "/link/v1",
            "",
            &[("dall-e-3", "image", "auto = false")],
        ),
        provider(
            "img-workers",
            "workers-ai",
            "/cf/client/v4/accounts/acct1/ai",
            "",
            &[
                (
                    "@cf/black-forest-labs/flux-1-schnell",
                    "image",
                    &image("\"1024x1024\"", "0.00065"),
                ),
                (
                    "@cf/stabilityai/stable-diffusion-xl-base-1.0",
                    "image",
                    &image("\"512x512\", \"1024x1024\"", "0.002"),
                ),
            ],
        ),
        provider(
            "img-gemini",
            "gemini",
            "/gemini/v1beta",
            "",
            &[(
                "gemini-2.5-flash-image",
                "image",
                &image("\"1024x1024\", \"1344x768\"", "0.039"),
            )],
        ),
        provider(
            "img-down",
            "openai",
            "/down/v1",
            "fail-500",
            &[("gpt-image-1", "image", "auto = false")],
        ),
        provider(
            "img-up",
            "openai",
            "/up/v1",
            "",
            &[("gpt-image-1", "image", "auto = false")],
        ),
        "[[routes]]\nname = \"paint\"\nmodels = [\"img-down/gpt-image-1\", \"img-up/gpt-image-1\"]\n"
            .to_string(),
    ]
    .concat()
}

/// `(images, cost_usd)` of the logged image requests for `model`.
fn logged(gw: &Proc, model: &str) -> Vec<(i64, f64)> {
    rusqlite::Connection::open(gw.dir().join("freeway.db"))
        .and_then(|c| {
            c.prepare(
                "SELECT images, cost_usd FROM request_log
                 WHERE endpoint = 'images' AND requested_model = ?1 AND status = 200",
            )?
            .query_map([model], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .unwrap_or_default()
}

#[test]
fn openai_sdk_generates_images_through_every_provider_format() {
    let sim = start_sim();
    let gw = start_gateway(&config(), &sim.addr);
    let script = &sdk_script("images_check.py");
    let models = serde_json::json!({
        "openai": "img-openai/gpt-image-1",
        "flux": "img-workers/@cf/black-forest-labs/flux-1-schnell",
        "sdxl": "img-workers/@cf/stabilityai/stable-diffusion-xl-base-1.0",
        "gemini": "img-gemini/gemini-2.5-flash-image",
        "linker": "img-link/dall-e-3",
        "failover": "dynamic/paint",
        "chat": "img-openai/echo",
    });
    let ttl = TTL.to_string();
    run_python(
        &[
            script,
            "--base-url",
            &gw.url("/v1"),
            "--sim-url",
            &sim.url(""),
            "--key",
            KEY,
            "--ttl",
            &ttl,
            "--models",
            &models.to_string(),
        ],
        "IMAGES CHECK OK",
        &|| gw.log_text(),
    );

    // One row per request: the images count and the cost per image, summed over the two
    // calls a one-image-per-call format needed for n = 2.
    wait_until(10, "the n = 2 rows in the request log", || {
        logged(&gw, "img-openai/gpt-image-1").contains(&(2, 0.08))
            && logged(
                &gw,
                "img-workers/@cf/stabilityai/stable-diffusion-xl-base-1.0",
            )
            .iter()
            .any(|&(n, c)| n == 2 && (c - 0.004).abs() < 1e-12)
    });
    // A cache hit generated nothing: no images, no cost.
    let sdxl = logged(
        &gw,
        "img-workers/@cf/stabilityai/stable-diffusion-xl-base-1.0",
    );
    assert!(sdxl.contains(&(0, 0.0)), "{sdxl:?}");
    assert!(sdxl.contains(&(1, 0.002)), "{sdxl:?}");

    // Without the key, no image is generated.
    let body = r#"{"model":"img-openai/gpt-image-1","prompt":"x"}"#;
    let (status, _, b) = post(&gw.url("/v1/images/generations"), None, body);
    assert_error(status, &b, 401, "authentication_error");

    // /v1/models lists image models with their type and sizes.
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
        .find(|m| m["id"] == "img-gemini/gemini-2.5-flash-image")
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["type"], "image", "{entry}");
    assert_eq!(
        entry["sizes"],
        serde_json::json!(["1024x1024", "1344x768"]),
        "{entry}"
    );
}
