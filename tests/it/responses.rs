//! `client.responses.create(...)`, JSON and streamed, against an OpenAI-compatible and an
//! Anthropic provider (simulated), with a tool round trip on the native one.

use crate::harness::*;

#[test]
fn responses_api_works_on_openai_and_anthropic_providers() {
    let sim = start_sim();
    let providers = format!(
        "[auth]\nkeys = [\"sk-gw-test\"]\n{}\
         [[providers]]\nname = \"sim-anthropic\"\nkind = \"anthropic\"\nbase_url = \"http://{{sim}}/anthropic/v1\"\n\
         api_key = \"key-anthropic\"\nsimulated = true\n  [[providers.models]]\n  id = \"claude-sonnet-4-5\"\n  \
         context_window = 200000\n  capabilities = [\"tools\", \"json\", \"vision\", \"stream\"]\n",
        sim_provider("sim-openai", "", &["echo-1"])
    );
    let gw = start_gateway(&providers, &sim.addr);
    let script = sdk_script("responses_check.py");
    for (model, tools) in [
        ("sim-openai/echo-1", false),
        ("sim-anthropic/claude-sonnet-4-5", true),
    ] {
        let url = gw.url("/v1");
        let mut args = vec![script.as_str(), "--base-url", &url, "--model", model];
        if tools {
            args.push("--tools");
        }
        run_python(&args, "RESPONSES CHECK OK", &|| gw.log_text());
    }
    // The Anthropic upstream received the Messages API format.
    let rec = sim_requests(&sim);
    assert!(
        rec.iter().any(|r| r["path"] == "/anthropic/v1/messages"),
        "{rec:?}"
    );
}
