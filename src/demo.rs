//! `freeway demo`: the gateway in front of simulated providers, so it runs with no keys.

use crate::config::{Config, ConfigError};

/// The demo config: a few simulated providers that show routing and invisible failover.
pub fn config(listen: &str, sim: &str) -> Result<Config, ConfigError> {
    let storage = std::env::temp_dir().join(format!("freeway-demo-{}.db", std::process::id()));
    let text = DEMO_TOML
        .replace("{listen}", listen)
        .replace("{sim}", sim)
        .replace("{storage}", &storage.to_string_lossy());
    Config::parse(&text)
}

const DEMO_TOML: &str = r#"
[server]
listen = ["{listen}"]
threads = 2
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
upstream_timeout_ms = 10000
stream_idle_timeout_ms = 5000
max_attempts = 3
pid_file = "/tmp/freeway-demo.pid"
upgrade_sock = "/tmp/freeway-demo-upgrade.sock"

[storage]
path = "{storage}"

# Generous per-IP limit so scripted tries stay under it; answers still show the headers.
[limits]
per_ip = { burst = 600, per_minute = 600 }

# Cache on request: send `x-gateway-cache-ttl: 60` and repeat to see HIT.
[cache]
default_ttl_seconds = 0

# No [auth] keys: the demo is open on loopback (the gateway warns about it at start).

# A guardrail: e-mail addresses and card numbers (Luhn-checked) are redacted on the way to
# the provider and on the way back, streams included. `action = "block"` refuses instead
# (400 content_blocked), `"flag"` only reports it (`x-gateway-guardrails`); `keys = [...]`
# limits it to some gateway keys. Try: "my card is 4111 1111 1111 1111".
[[guardrails]]
name = "no-pii"
on = "both"
pii = ["email", "credit_card"]
action = "redact"

# Two healthy providers serving the same model under the alias "echo".
[[providers]]
name = "sim-alpha"
kind = "openai"
base_url = "http://{sim}/alpha/v1"
api_key = "sim-key-alpha"
simulated = true
  [[providers.models]]
  id = "echo-large"
  aliases = ["echo"]
  context_window = 131072
  max_output_tokens = 8192
  capabilities = ["tools", "json", "vision", "stream"]
  tier = "high"
  [[providers.models]]
  id = "echo-small"
  context_window = 32768
  capabilities = ["json", "stream"]
  tier = "low"
  # Media: embeddings, speech-to-text and text-to-speech (POST /v1/embeddings, /v1/audio/*).
  [[providers.models]]
  id = "text-embedding-3-small"
  type = "embedding"
  [[providers.models]]
  id = "whisper-large-v3"
  aliases = ["whisper"]
  type = "transcription"
  [[providers.models]]
  id = "tts-1"
  type = "speech"
  # Images (POST /v1/images/generations): real small PNGs, b64_json or a link to the image
  # kept by the gateway (response_format "url").
  [[providers.models]]
  id = "gpt-image-1"
  aliases = ["image"]
  type = "image"
  sizes = ["256x256", "512x512", "1024x1024"]
  cost = { per_image = 0.01 }
  # Video jobs (POST /v1/videos, then GET /v1/videos/{id} and …/content): a tiny real MP4
  # after about a second.
  [[providers.models]]
  id = "sora-2"
  aliases = ["video"]
  type = "video"
  sizes = ["720x1280", "1280x720"]
  cost = { per_second = 0.1 }

[[providers]]
name = "sim-beta"
kind = "openai"
base_url = "http://{sim}/beta/v1"
api_key = "sim-key-beta"
simulated = true
  [[providers.models]]
  id = "echo-large"
  aliases = ["echo"]
  context_window = 131072
  capabilities = ["tools", "json", "vision", "stream"]
  tier = "high"
  # The same embedding model: the same vector space, so embeddings may fail over here.
  [[providers.models]]
  id = "text-embedding-3-small"
  type = "embedding"
  [[providers.models]]
  id = "whisper-large-v3-turbo"
  aliases = ["whisper"]
  type = "transcription"

# Fails half of its requests with 500: `auto` fails over to another provider invisibly.
[[providers]]
name = "sim-flaky"
kind = "openai"
base_url = "http://{sim}/flaky/v1"
api_key = "sim-key-flaky"
simulated = true
headers = { "x-sim-behavior" = "flaky" }
  [[providers.models]]
  id = "flaky-medium"
  context_window = 65536
  capabilities = ["tools", "json", "stream"]

# Always throttled (429, retry-after: 30): visible only in x-gateway-attempts.
[[providers]]
name = "sim-throttled"
kind = "openai"
base_url = "http://{sim}/throttled/v1"
api_key = "sim-key-throttled"
simulated = true
headers = { "x-sim-behavior" = "fail-429" }
  [[providers.models]]
  id = "busy-large"
  context_window = 131072
  capabilities = ["tools", "json", "stream"]

# Native wire formats, translated by the gateway: pin "sim-gemini/gemini-2.5-flash",
# "sim-anthropic/claude-sonnet-4-5" or "sim-workers-ai/@cf/meta/llama-3.1-8b-instruct-fast".
[[providers]]
name = "sim-gemini"
kind = "gemini"
base_url = "http://{sim}/gemini/v1beta"
api_key = "sim-key-gemini"
simulated = true
  [[providers.models]]
  id = "gemini-2.5-flash"
  context_window = 1048576
  capabilities = ["tools", "json", "vision", "stream"]
  auto = false
  # Veo video jobs as Gemini's long-running operations (pin "sim-gemini/veo-3.0-generate-001").
  [[providers.models]]
  id = "veo-3.0-generate-001"
  type = "video"
  sizes = ["1280x720", "720x1280"]
  cost = { per_second = 0.4 }

# Claude-style clients (the Anthropic SDK, POST /v1/messages): "claude-sonnet-4-5" (or its
# alias "claude") is served natively here, "auto" is translated from the providers above.
[[providers]]
name = "sim-anthropic"
kind = "anthropic"
base_url = "http://{sim}/anthropic/v1"
api_key = "sim-key-anthropic"
simulated = true
  [[providers.models]]
  id = "claude-sonnet-4-5"
  aliases = ["claude"]
  context_window = 200000
  capabilities = ["tools", "json", "vision", "stream"]
  auto = false

[[providers]]
name = "sim-workers-ai"
kind = "workers-ai"
base_url = "http://{sim}/workers-ai/client/v4/accounts/demo/ai"
api_key = "sim-key-workers-ai"
simulated = true
  [[providers.models]]
  id = "@cf/meta/llama-3.1-8b-instruct-fast"
  context_window = 128000
  capabilities = ["json", "stream"]
  auto = false

# Behaviours to try by pinning them: "sim-lab/slow", "sim-lab/drop", "sim-lab/fail-500".
[[providers]]
name = "sim-lab"
kind = "openai"
base_url = "http://{sim}/lab/v1"
api_key = "sim-key-lab"
simulated = true
  [[providers.models]]
  id = "slow"
  capabilities = ["stream"]
  auto = false
  [[providers.models]]
  id = "drop"
  capabilities = ["stream"]
  auto = false
  [[providers.models]]
  id = "fail-500"
  capabilities = ["stream"]
  auto = false
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn demo_config_is_valid() {
        let c = super::config("127.0.0.1:8080", "127.0.0.1:18080").unwrap();
        assert!(c.providers.iter().all(|p| p.simulated));
    }
}
