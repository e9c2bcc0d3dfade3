"""The status codes and request controls of SPEC.md through the official SDKs.

    python3 contract_check.py --base-url http://gw/v1 --case NAME [--sim-url URL]

One case per run; prints `CONTRACT OK <case>` or exits non-zero with what went wrong.
Requires: pip install openai anthropic
"""
import argparse
import json
import sys

import anthropic
import openai


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def chat(client, model, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], **kw
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--sim-url")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="sk-none", max_retries=0)

    if args.case == "every-model-rate-limited":
        # Both providers serving `shared` answer 429: the gateway says 503 no_capacity.
        for attempt in range(2):
            try:
                chat(client, "shared")
                fail("expected an error")
            except openai.APIStatusError as e:
                if e.status_code != 503:
                    fail(f"attempt {attempt}: status {e.status_code}: {e.body}")
                if e.body.get("type") != "service_unavailable" or e.body.get("code") != "no_capacity":
                    fail(f"attempt {attempt}: body {e.body}")
                if not e.response.headers.get("retry-after", "").isdigit():
                    fail(f"attempt {attempt}: no retry-after: {dict(e.response.headers)}")
    elif args.case == "pinned-rate-limited":
        # A pinned model's provider answers 429: the SDK's RateLimitError, the gateway's
        # type, the provider's message.
        for attempt in range(2):
            try:
                chat(client, "busy/m")
                fail("expected a rate limit error")
            except openai.RateLimitError as e:
                if e.body.get("type") != "rate_limit_error":
                    fail(f"attempt {attempt}: type {e.body}")
                if attempt == 0 and "Rate limit reached for model" not in e.body.get("message", ""):
                    fail(f"provider message lost: {e.body}")
                if not e.response.headers.get("retry-after", "").isdigit():
                    fail(f"attempt {attempt}: no retry-after: {dict(e.response.headers)}")
    elif args.case == "controls":
        # One attempt only: the failing first candidate is final.
        try:
            chat(client, "dynamic/chain", extra_headers={"x-gateway-max-attempts": "1"})
            fail("expected the first candidate's failure")
        except openai.APIStatusError as e:
            if e.response.headers.get("x-gateway-attempts") != "1":
                fail(f"attempts {dict(e.response.headers)}")
        raw = client.chat.completions.with_raw_response.create(
            model="dynamic/chain", messages=[{"role": "user", "content": "hi"}]
        )
        if raw.headers.get("x-gateway-attempts") != "2":
            fail(f"default attempts: {dict(raw.headers)}")
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-gateway-force-provider": "good"},
        )
        if raw.headers.get("x-gateway-provider") != "good":
            fail(f"force-provider: {dict(raw.headers)}")
        try:
            chat(client, "auto", extra_headers={"cf-aig-max-attempts": "zero"})
            fail("a bad control value must be refused")
        except openai.BadRequestError as e:
            if "x-gateway-max-attempts" not in e.body.get("message", ""):
                fail(f"bad control message: {e.body}")
    elif args.case == "anthropic-passthrough":
        # The official Anthropic SDK with base_url = /providers/<name>: it adds /v1 itself.
        a = anthropic.Anthropic(base_url=args.base_url, api_key="sk-none", max_retries=0)
        msg = a.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello through passthrough"}],
        )
        if msg.type != "message" or not msg.content or msg.content[0].type != "text":
            fail(f"answer {msg}")
        with a.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "stream through passthrough"}],
        ) as s:
            text = "".join(s.text_stream)
        if not text:
            fail("empty stream")
    else:
        fail(f"no case {args.case}")
    print(f"CONTRACT OK {args.case}")


main()
