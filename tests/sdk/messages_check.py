"""The official Anthropic Python SDK through freeway's /v1/messages.

For each provider kind given (an Anthropic provider, served natively; an OpenAI-compatible one
and Gemini, translated): a message and a stream (`client.messages.stream(...)` with
`get_final_message()` assembling the same message), a two-turn tool round trip in both modes,
an image, the stop reasons the provider can give, usage equal to what the provider reported,
`count_tokens`, the error envelope for an unknown model and for the provider's 429, and a
stream dropped mid-way (an `error` event, never `message_stop`). After each call, the body the
simulated provider received is checked: byte for byte the client's apart from `model` on the
Anthropic provider (cache_control, thinking blocks, system blocks), the chat translation
elsewhere. Exits non-zero on the first failure.
Requires: pip install anthropic
"""
import argparse
import json
import re
import sys
import urllib.request

import anthropic

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def sim_get(sim, path):
    with urllib.request.urlopen(sim + path) as r:
        return r.read()


def last_body(sim):
    return sim_get(sim, "/_sim/last-body")


def last_request(sim):
    return json.loads(sim_get(sim, "/_sim/requests"))["recent"][-1]


def check(cond, what, detail=""):
    if not cond:
        print(f"FAIL: {what}: {detail}", flush=True)
        sys.exit(1)


def same_message(a, b, where):
    """Two answers to the same question: the same blocks, stop reason (texts compared with
    the echo's byte count left out: a streamed request's body is longer)."""
    norm = lambda t: re.sub(r"\(\d+ bytes received\)", "(…)", t)
    ka = [(c.type, norm(getattr(c, "text", "")), getattr(c, "name", None), getattr(c, "input", None)) for c in a.content]
    kb = [(c.type, norm(getattr(c, "text", "")), getattr(c, "name", None), getattr(c, "input", None)) for c in b.content]
    check(ka == kb, f"{where}: stream assembles the same message", f"{ka} != {kb}")
    check(a.stop_reason == b.stop_reason, f"{where}: same stop_reason", f"{a.stop_reason} {b.stop_reason}")
    check(a.role == b.role == "assistant" and a.type == b.type == "message", f"{where}: message shape")


def usage_is_providers(r, sim, where):
    """The simulated providers count a quarter of the bytes they received as input."""
    want = len(last_body(sim)) // 4
    check(r.usage.input_tokens == want, f"{where}: input tokens are the provider's", f"{r.usage} != {want}")
    check(r.usage.output_tokens > 0, f"{where}: output tokens", r.usage)


def run(client, sim, label, kind, model):
    native = kind == "anthropic"
    where = f"[{label} {model}]"
    system = [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Shared context " * 20, "cache_control": {"type": "ephemeral"}},
    ]
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello messages", "cache_control": {"type": "ephemeral"}}]}]
    extra = {}
    if native:
        # Earlier reasoning with its signature must reach Anthropic untouched.
        messages = [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                {"type": "text", "text": "ok"}]},
        ] + messages
        extra = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "metadata": {"user_id": "u-1"}}

    # 1. A message.
    r = client.messages.create(model=model, max_tokens=64, system=system, messages=messages, **extra)
    text = "".join(c.text for c in r.content if c.type == "text")
    check(r.type == "message" and "hello messages" in text, f"{where} message", r)
    check(r.stop_reason == "end_turn", f"{where} end_turn", r.stop_reason)
    usage_is_providers(r, sim, where)
    sent = json.loads(last_body(sim))
    if native:
        want = dict(model=model.split("/", 1)[1], max_tokens=64, system=system, messages=messages, **extra)
        check(sent == want, f"{where} the Anthropic provider received the client's request", f"{sent}\n!=\n{want}")
        check(any(c.type == "thinking" and c.signature for c in r.content), f"{where} thinking block comes back", r.content)
        req = last_request(sim)
        check(req["anthropic_version"] == client.default_headers.get("anthropic-version") and req["path"].endswith("/messages"), f"{where} native path", req)
    elif kind == "openai":
        check(sent["messages"][0] == {"role": "system", "content": "You are terse.\n\n" + "Shared context " * 20}, f"{where} system", sent)
        check(sent["max_tokens"] == 64, f"{where} parameters", sent)
    else:
        check("contents" in sent and "systemInstruction" in sent, f"{where} Gemini format", sent)

    # 2. The same, streamed: the typed helper assembles the same message.
    with client.messages.stream(model=model, max_tokens=64, system=system, messages=messages, **extra) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    same_message(r, final, where)
    check(kinds[0] == "message_start" and kinds[-1] == "message_stop", f"{where} stream events", kinds)
    check("content_block_delta" in kinds and "message_delta" in kinds, f"{where} stream deltas", kinds)
    usage_is_providers(final, sim, where + " stream")
    if native:
        sent = json.loads(last_body(sim))
        want = dict(model=model.split("/", 1)[1], max_tokens=64, system=system, messages=messages, stream=True, **extra)
        check(sent == want, f"{where} the Anthropic provider received the client's streamed request", f"{sent}\n!=\n{want}")

    # 3. A two-turn tool round trip, plain and streamed.
    for stream in (False, True):
        ask = [{"role": "user", "content": "weather in Oslo?"}]
        if stream:
            with client.messages.stream(model=model, max_tokens=200, tools=[WEATHER], messages=ask) as s:
                first = s.get_final_message()
        else:
            first = client.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=ask)
        check(first.stop_reason == "tool_use", f"{where} tool_use (stream={stream})", first)
        use = [c for c in first.content if c.type == "tool_use"][0]
        check(use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input, f"{where} tool input", use)
        turn2 = ask + [
            {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "3C and snowing"}]}]},
        ]
        if stream:
            with client.messages.stream(model=model, max_tokens=200, tools=[WEATHER], messages=turn2) as s:
                second = s.get_final_message()
        else:
            second = client.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=turn2)
        text = "".join(c.text for c in second.content if c.type == "text")
        check("3C and snowing" in text and second.stop_reason == "end_turn", f"{where} tool round trip (stream={stream})", second)
        sent = json.loads(last_body(sim))
        if kind == "openai":
            tool_msgs = [m for m in sent["messages"] if m["role"] == "tool"]
            call_ids = [c["id"] for m in sent["messages"] for c in m.get("tool_calls", [])]
            check(tool_msgs and tool_msgs[0]["tool_call_id"] == use.id and use.id in call_ids, f"{where} ids map to tool_call ids", sent)
        elif native:
            check(sent["messages"] == turn2, f"{where} native turns", sent)

    # 4. An image.
    img = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "what is this?"}]}]
    r = client.messages.create(model=model, max_tokens=64, messages=img)
    sent = last_body(sim).decode()
    check(PNG in sent, f"{where} the image reached the provider", sent[:300])
    if kind == "openai":
        check(f"data:image/png;base64,{PNG}" in sent, f"{where} image as a data URL", sent[:300])
    else:
        check("[1 image]" in r.content[0].text, f"{where} the provider saw one image", r.content)

    # 5. Stop reasons (the simulated Gemini honours neither limit).
    if kind != "gemini":
        for stream in (False, True):
            args = dict(model=model, max_tokens=2, messages=[{"role": "user", "content": "one two three four five"}])
            if stream:
                with client.messages.stream(**args) as s:
                    r = s.get_final_message()
            else:
                r = client.messages.create(**args)
            check(r.stop_reason == "max_tokens", f"{where} max_tokens (stream={stream})", r)
            args = dict(model=model, max_tokens=64, stop_sequences=["HALT"], messages=[{"role": "user", "content": "alpha HALT beta"}])
            if stream:
                with client.messages.stream(**args) as s:
                    r = s.get_final_message()
            else:
                r = client.messages.create(**args)
            check(r.stop_reason == "stop_sequence" and r.stop_sequence == "HALT", f"{where} stop_sequence (stream={stream})", r)
            check("beta" not in r.content[0].text, f"{where} cut at the stop sequence", r.content)

    # 6. count_tokens: the provider's own count on Anthropic and Gemini, an estimate elsewhere.
    n = client.messages.count_tokens(model=model, messages=messages, system=system).input_tokens
    if kind == "openai":
        check(n > 0, f"{where} estimated count", n)
    else:
        check(n == len(last_body(sim)) // 4, f"{where} the provider's count", n)
        path = last_request(sim)["path"]
        check(path.endswith("/messages/count_tokens") or path.endswith(":countTokens"), f"{where} count path", path)

    print(f"{where} ok", flush=True)


def errors(client, label, kind, throttled, dropping):
    where = f"[{label} errors]"
    # Unknown model: 400, Anthropic's envelope.
    try:
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        check(False, f"{where} unknown model refused")
    except anthropic.BadRequestError as e:
        check(e.status_code == 400 and e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", f"{where} unknown model envelope", e.body)
    # The provider's 429 on a pinned model: 429 rate_limit_error.
    try:
        client.messages.create(model=throttled, max_tokens=5, messages=[{"role": "user", "content": "x"}])
        check(False, f"{where} 429 passed on")
    except anthropic.RateLimitError as e:
        check(e.body["type"] == "error" and e.body["error"]["type"] == "rate_limit_error" and e.body["error"]["message"], f"{where} 429 envelope", e.body)
        check(e.response.headers.get("retry-after"), f"{where} retry-after", e.response.headers)
    # A stream dropped mid-way: content, then an `error` event; never message_stop.
    seen = []
    try:
        for ev in client.messages.create(model=dropping, max_tokens=64, stream=True,
                                         messages=[{"role": "user", "content": "a b c d e f g h i j k l"}]):
            seen.append(ev.type)
        check(False, f"{where} the drop surfaced", seen)
    except anthropic.APIStatusError as e:
        check(e.body["type"] == "error" and e.body["error"]["type"] == "api_error", f"{where} error event", e.body)
    check("content_block_delta" in seen and "message_stop" not in seen, f"{where} events before the error", seen)
    print(f"{where} ok", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--sim-url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--providers", required=True, help="JSON list of [label, kind, model, throttled, dropping]")
    a = ap.parse_args()
    client = anthropic.Anthropic(base_url=a.base_url, api_key=a.key, max_retries=0)
    for label, kind, model, throttled, dropping in json.loads(a.providers):
        run(client, a.sim_url, label, kind, model)
        errors(client, label, kind, throttled, dropping)
    print("MESSAGES CHECK OK")


if __name__ == "__main__":
    main()
