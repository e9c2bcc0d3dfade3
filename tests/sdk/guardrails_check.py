"""Guardrails through the official OpenAI Python SDK (tests/it/guardrails.rs starts the
gateway and the simulator). The simulator echoes the last user message, so a guardrail on
answers sees whatever the prompt carried. Each gateway key has its own guardrail:

  key-0 prompt block  (email)      key-3 response block  (credit_card)
  key-1 prompt redact (email,card) key-4 response redact (email, phone)
  key-2 prompt flag   (bluebird)   key-5 response flag   (bluebird)

Prints GUARDRAILS CHECK OK when every check passed.
"""

import argparse
import json
import urllib.request

import openai

p = argparse.ArgumentParser()
p.add_argument("--base-url", required=True)
p.add_argument("--sim-url", required=True)
p.add_argument("--model", default="sim-openai/echo-1")
a = p.parse_args()

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
PHONE = "+44 20 7946 0958"


def client(i):
    return openai.OpenAI(base_url=a.base_url, api_key=f"sk-gw-{i}", max_retries=0)


def last_upstream_body():
    with urllib.request.urlopen(a.sim_url + "/_sim/last-body") as r:
        return r.read().decode()


def chat(i, text, **kw):
    return client(i).chat.completions.with_raw_response.create(
        model=a.model, messages=[{"role": "user", "content": text}], **kw
    )


def stream(i, text):
    """The streamed text, the raw events, and the error the stream ended with (if any)."""
    raw = client(i).chat.completions.with_raw_response.create(
        model=a.model,
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    header = raw.headers.get("x-gateway-guardrails")
    out, usage, err = [], None, None
    try:
        for chunk in raw.parse():
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    out.append(c.delta.content)
    except openai.APIError as e:
        err = e
    return "".join(out), usage, err, header


def blocked(e, name):
    assert isinstance(e, openai.BadRequestError), repr(e)
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    assert err.get("code") == "content_blocked", body
    assert name in err.get("message", ""), body


# 1. Prompt block: 400 content_blocked naming the guardrail; nothing sent upstream.
before = last_upstream_body()
for kw in ({}, {"stream": True}):
    try:
        chat(0, f"mail me at {EMAIL}", **kw)
        raise AssertionError("the prompt was not blocked")
    except openai.BadRequestError as e:
        blocked(e, "prompt-block")
        assert EMAIL not in str(e.body), e.body
assert last_upstream_body() == before, "a blocked prompt reached the provider"

# 2. Prompt redact: the provider receives the redaction (the echo shows it).
r = chat(1, f"mail {EMAIL}, card {CARD}, thanks")
upstream = last_upstream_body()
assert EMAIL not in upstream and CARD not in upstream, upstream
assert "[REDACTED:email]" in upstream and "[REDACTED:credit_card]" in upstream, upstream
text = r.parse().choices[0].message.content
assert "[REDACTED:email]" in text and EMAIL not in text, text
assert r.headers.get("x-gateway-guardrails") == "prompt-redact", r.headers
text, usage, err, header = stream(1, f"stream to {EMAIL} please")
assert err is None and "[REDACTED:email]" in text and EMAIL not in text, (text, err)
assert EMAIL not in last_upstream_body()
assert header == "prompt-redact", header

# 3. Prompt flag: unchanged, named in the header.
r = chat(2, "Project Bluebird ships")
assert "Project Bluebird ships" in last_upstream_body()
assert r.headers.get("x-gateway-guardrails") == "prompt-flag", r.headers
assert "Bluebird" in r.parse().choices[0].message.content

# 4. Answer block: JSON replaced by the error; a stream never carries the card.
try:
    chat(3, f"card {CARD}")
    raise AssertionError("the answer was not blocked")
except openai.BadRequestError as e:
    blocked(e, "response-block")
    assert "4111" not in str(e.body), e.body
assert CARD in last_upstream_body(), "on = response leaves the prompt alone"
# Long enough that the stream has started before the card arrives.
lead = "the quick brown fox jumps over the lazy dog " * 3  # the echo shows 200 chars
try:
    text, usage, err, header = stream(3, f"{lead}card {CARD} end")
    assert err is not None, "the stream did not end with an error"
    assert "content_blocked" in str(err.body) or "response-block" in str(err), repr(err)
except openai.BadRequestError as e:  # blocked before the first byte reached the client
    blocked(e, "response-block")
    text = ""
assert "4111" not in text, text
assert text.startswith("echo: " + lead[:20]) or text == "", text

# 5. Answer redact: JSON and stream, matches split across chunks included.
r = chat(4, f"reach {EMAIL} or {PHONE} today")
text = r.parse().choices[0].message.content
assert EMAIL in last_upstream_body(), "on = response leaves the prompt alone"
assert "[REDACTED:email]" in text and "[REDACTED:phone]" in text, text
assert EMAIL not in text and "7946" not in text, text
assert r.headers.get("x-gateway-guardrails") == "response-redact", r.headers
text, usage, err, header = stream(4, f"reach {EMAIL} or {PHONE} today")
assert err is None, err
assert text.startswith("echo: reach [REDACTED:email] or [REDACTED:phone] today"), text
assert usage is not None and usage.completion_tokens > 0, usage

# 6. Answer flag: unchanged; JSON header; the stream's header shows what was known.
r = chat(5, "bluebird")
assert r.headers.get("x-gateway-guardrails") == "response-flag", r.headers
text, usage, err, header = stream(5, "the bluebird sings")
assert err is None and "the bluebird sings" in text, (text, err)

# 7. The Responses API goes through the same guardrails.
resp = client(1).responses.create(model=a.model, input=f"mail {EMAIL}")
assert "[REDACTED:email]" in resp.output_text and EMAIL not in resp.output_text, resp
assert EMAIL not in last_upstream_body()
resp = client(4).responses.create(model=a.model, input=f"mail {EMAIL}", stream=True)
out = "".join(e.delta for e in resp if e.type == "response.output_text.delta")
assert "[REDACTED:email]" in out and EMAIL not in out, out

print("GUARDRAILS CHECK OK")
