"""Stream resume through the official SDKs: one streamed answer read the way an application
reads it, printed as JSON for the Rust test (tests/it/resume.rs) to check.

--api chat       openai: client.chat.completions.create(stream=True)
--api responses  openai: client.responses.create(stream=True)
--api messages   anthropic: client.messages.stream(...)

Prints one JSON line: {"text", "finishes", "errors", "models", "usage"}; exits 1 if the SDK
raised (an error event in the stream makes the SDKs raise).
"""

import argparse
import json
import sys

p = argparse.ArgumentParser()
p.add_argument("--base-url", required=True)
p.add_argument("--model", required=True)
p.add_argument("--api", default="chat", choices=["chat", "responses", "messages"])
p.add_argument("--tools", action="store_true", help="declare a tool (chat, messages)")
p.add_argument("--no-resume", action="store_true")
args = p.parse_args()

headers = {} if args.no_resume else {"x-gateway-stream-resume": "true"}
prompt = "tell me the story"
out = {"text": "", "finishes": [], "errors": [], "models": [], "usage": None, "tool_calls": 0}

try:
    if args.api == "messages":
        import anthropic

        client = anthropic.Anthropic(base_url=args.base_url.removesuffix("/v1"), api_key="sk-gw-test",
                                     default_headers=headers, max_retries=0, timeout=60)
        extra = {}
        if args.tools:
            extra["tools"] = [{"name": "lookup", "input_schema": {"type": "object", "properties": {
                "q": {"type": "string"}}, "required": ["q"]}}]
        with client.messages.stream(model=args.model, max_tokens=512,
                                    messages=[{"role": "user", "content": prompt}], **extra) as stream:
            for ev in stream:
                if ev.type == "content_block_start" and ev.content_block.type == "tool_use":
                    out["tool_calls"] += 1
                elif ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                    out["text"] += ev.delta.text
                elif ev.type == "message_delta":
                    out["finishes"].append(ev.delta.stop_reason)
                    out["usage"] = {"output_tokens": ev.usage.output_tokens}
                elif ev.type == "message_start":
                    out["models"].append(ev.message.model)
    else:
        import openai

        client = openai.OpenAI(base_url=args.base_url, api_key="sk-gw-test",
                               default_headers=headers, max_retries=0, timeout=60)
        if args.api == "responses":
            stream = client.responses.create(model=args.model, input=prompt, stream=True)
            for ev in stream:
                if ev.type == "response.output_text.delta":
                    out["text"] += ev.delta
                elif ev.type == "response.completed":
                    out["finishes"].append(ev.response.status)
                    out["models"].append(ev.response.model)
                    if ev.response.usage:
                        out["usage"] = {"input_tokens": ev.response.usage.input_tokens,
                                        "output_tokens": ev.response.usage.output_tokens}
                elif ev.type in ("error", "response.failed"):
                    out["errors"].append(str(ev))
        else:
            extra = {}
            if args.tools:
                extra["tools"] = [{"type": "function", "function": {
                    "name": "lookup", "parameters": {"type": "object", "properties": {
                        "q": {"type": "string"}}, "required": ["q"]}}}]
            stream = client.chat.completions.create(
                model=args.model, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": prompt}], **extra)
            for chunk in stream:
                if chunk.model not in out["models"]:
                    out["models"].append(chunk.model)
                if chunk.usage:
                    out["usage"] = {"prompt_tokens": chunk.usage.prompt_tokens,
                                    "completion_tokens": chunk.usage.completion_tokens}
                for c in chunk.choices:
                    if c.delta.content:
                        out["text"] += c.delta.content
                    if c.delta.tool_calls:
                        out["tool_calls"] += 1
                    if c.finish_reason:
                        out["finishes"].append(c.finish_reason)
except Exception as e:  # the stream's error event, as the SDK raises it
    out["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(out))
    sys.exit(1)
print(json.dumps(out))
