"""A cached answer replayed to the official OpenAI Python SDK as a stream (and as JSON).

Exits 0 and prints CACHE REPLAY OK when the stream parses, carries the expected text and
says x-gateway-cache-status: HIT.
"""
import argparse
import sys

from openai import OpenAI

p = argparse.ArgumentParser()
p.add_argument("--base-url", required=True)
p.add_argument("--model", required=True)
p.add_argument("--text", required=True)
p.add_argument("--expect", required=True)
a = p.parse_args()

client = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0)
headers = {"x-gateway-cache-ttl": "60"}
messages = [{"role": "user", "content": a.text}]

raw = client.chat.completions.with_raw_response.create(
    model=a.model, messages=messages, stream=True,
    stream_options={"include_usage": True}, extra_headers=headers)
status = raw.headers.get("x-gateway-cache-status")
if status != "HIT":
    sys.exit(f"stream: cache status {status!r}, wanted HIT")
text, finish, usage, chunks = "", None, None, 0
for chunk in raw.parse():
    chunks += 1
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
if text != a.expect:
    sys.exit(f"stream text {text!r} != {a.expect!r}")
# The entry was first stored from a stream without usage: the replay has none to give.
if finish != "stop" or chunks < 3:
    sys.exit(f"finish={finish!r} usage={usage!r} chunks={chunks}")

r = client.chat.completions.with_raw_response.create(
    model=a.model, messages=messages, extra_headers=headers)
if r.headers.get("x-gateway-cache-status") != "HIT":
    sys.exit("json: not a HIT")
if r.parse().choices[0].message.content != a.expect:
    sys.exit("json: wrong text")
print("CACHE REPLAY OK")
