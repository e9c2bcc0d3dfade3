"""The official OpenAI Python SDK through freeway against simulated native providers.

For each native kind (Gemini, Anthropic, Workers AI) pinned by model name: chat, stream,
a tool-calling round trip (call -> tool result -> answer, plain and streamed), image input
and JSON mode. Every JSON body and stream chunk is validated against OpenAI's OpenAPI schema,
and after each call the simulated provider's last received body is checked to be the
provider's native format. Exits non-zero on the first failure.
Requires: pip install openai jsonschema
"""
import argparse
import json
import sys
import urllib.error
import urllib.request

from openai import OpenAI

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from openai_sdk_check import openapi_nullable, validator  # noqa: E402

# A 1x1 transparent PNG.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--sim-url", required=True)
    ap.add_argument("--openapi", required=True)
    ap.add_argument("--models", required=True, help='JSON {"gemini": model, ...}')
    args = ap.parse_args()
    spec = json.load(open(args.openapi))
    openapi_nullable(spec)
    completion_schema = validator(spec, "CreateChatCompletionResponse")
    chunk_schema = validator(spec, "CreateChatCompletionStreamResponse")
    client = OpenAI(base_url=args.base_url, api_key="no-key-needed", max_retries=0)

    def last_body():
        with urllib.request.urlopen(args.sim_url + "/_sim/last-body", timeout=30) as r:
            return json.load(r)

    def raw(body):
        req = urllib.request.Request(args.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{e.code}: {e.read()!r}")

    def raw_json(body):
        v = json.load(raw(body))
        completion_schema.validate(v)
        return v

    def raw_stream(body):
        resp = raw({**body, "stream": True, "stream_options": {"include_usage": True}})
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
        chunks, done = [], False
        for line in resp:
            line = line.decode().rstrip("\r\n")
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                c = json.loads(line[6:])
                assert "error" not in c, c
                chunk_schema.validate(c)
                chunks.append(c)
        assert done, "stream did not end with [DONE]"
        return chunks

    for kind, model in json.loads(args.models).items():
        where = f"[{kind} {model}]"

        # Chat.
        r = client.chat.completions.create(model=model, messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello native"}], temperature=0.3, max_tokens=64)
        assert r.choices[0].message.content.startswith("echo: hello native"), (where, r)
        assert r.choices[0].finish_reason == "stop", (where, r)
        assert r.usage and r.usage.total_tokens > 0, (where, r)
        native = last_body()
        if kind == "gemini":
            assert native["systemInstruction"] == {"parts": [{"text": "You are terse."}]}, native
            assert native["contents"] == [{"role": "user", "parts": [{"text": "hello native"}]}], native
            assert native["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 64}, native
        elif kind == "anthropic":
            assert native["system"] == "You are terse.", native
            assert native["max_tokens"] == 64 and native["messages"][0]["role"] == "user", native
            assert "stream" not in native, native
        else:
            assert native["messages"][0] == {"role": "system", "content": "You are terse."}, native
            assert native["stream"] is False and native["max_tokens"] == 64, native
        raw_json({"model": model, "messages": [{"role": "user", "content": "schema"}]})

        # Stream.
        parts, usage = [], None
        for chunk in client.chat.completions.create(
                model=model, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "stream please"}]):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        assert "".join(parts).startswith("echo: stream please"), (where, parts)
        assert usage is not None and usage.completion_tokens > 0, where
        if kind == "anthropic":
            assert last_body()["stream"] is True
        chunks = raw_stream({"model": model, "messages": [{"role": "user", "content": "chunks"}]})
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop", chunks[-2]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0, chunks[-1]

        # Tool round trip: call -> result -> answer.
        messages = [{"role": "user", "content": "Oslo"}]
        r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", (where, r)
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather", (where, call)
        assert json.loads(call.function.arguments) == {"city": "Oslo"}, (where, call)
        native = last_body()
        if kind == "gemini":
            decl = native["tools"][0]["functionDeclarations"][0]
            assert decl["name"] == "get_weather" and "additionalProperties" not in decl["parameters"], decl
        elif kind == "anthropic":
            assert native["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}, native
        else:
            assert native["tools"][0]["function"]["name"] == "get_weather", native
        messages += [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp": "3C"}'}]
        r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        assert r.choices[0].finish_reason == "stop", (where, r)
        assert "the tool said" in r.choices[0].message.content and "3C" in r.choices[0].message.content, (where, r)
        native = last_body()
        if kind == "gemini":
            assert native["contents"][1]["parts"][0]["functionCall"]["name"] == "get_weather", native
            assert native["contents"][2]["parts"][0]["functionResponse"] == {
                "name": "get_weather", "response": {"temp": "3C"}}, native
        elif kind == "anthropic":
            assert native["messages"][1]["content"][-1]["type"] == "tool_use", native
            assert native["messages"][2]["content"][0] == {
                "type": "tool_result", "tool_use_id": call.id, "content": '{"temp": "3C"}'}, native
        else:
            assert native["messages"][2]["role"] == "tool" and native["messages"][2]["name"] == "get_weather", native
        raw_json({"model": model, "messages": messages[:1], "tools": [WEATHER_TOOL]})

        # The same call, streamed: tool-call deltas reassemble into one call.
        calls = {}
        finish = None
        for c in raw_stream({"model": model, "messages": messages[:1], "tools": [WEATHER_TOOL]}):
            for ch in c["choices"]:
                for tc in ch["delta"].get("tool_calls") or []:
                    slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                    slot["id"] = tc.get("id") or slot["id"]
                    slot["name"] += tc.get("function", {}).get("name") or ""
                    slot["arguments"] += tc.get("function", {}).get("arguments") or ""
                finish = ch.get("finish_reason") or finish
        assert finish == "tool_calls", (where, finish)
        assert calls[0]["id"] and calls[0]["name"] == "get_weather", (where, calls)
        assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}, (where, calls)

        # Image input.
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}]}])
        assert r.choices[0].message.content.startswith("echo: describe [1 image]"), (where, r)
        native = last_body()
        if kind == "gemini":
            assert native["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}, native
        elif kind == "anthropic":
            assert native["messages"][0]["content"][1]["source"] == {
                "type": "base64", "media_type": "image/png", "data": PNG}, native
        else:
            assert native["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,"), native

        # JSON mode.
        schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"],
                  "additionalProperties": False}
        for rf in [{"type": "json_object"},
                   {"type": "json_schema", "json_schema": {"name": "echo", "strict": True, "schema": schema}}]:
            r = client.chat.completions.create(model=model, response_format=rf,
                                               messages=[{"role": "user", "content": "as json"}])
            parsed = json.loads(r.choices[0].message.content)
            assert parsed["echo"].startswith("echo: as json"), (where, parsed)
            native = last_body()
            if kind == "gemini":
                assert native["generationConfig"]["responseMimeType"] == "application/json", native
                if rf["type"] == "json_schema":
                    assert native["generationConfig"]["responseSchema"] == {
                        "type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}, native
            elif kind == "anthropic":
                # JSON mode is a forced call of the gateway's JSON tool.
                assert native["tool_choice"] == {"type": "tool", "name": "json_answer"}, native
                assert native["tools"][-1]["name"] == "json_answer", native
                if rf["type"] == "json_schema":
                    assert native["tools"][-1]["input_schema"] == schema, native
            else:
                # Workers AI takes the schema itself, not OpenAI's {name, strict, schema}.
                want = rf if rf["type"] == "json_object" else {"type": "json_schema", "json_schema": schema}
                assert native["response_format"] == want, native
        print(f"{where} ok")

    print("NATIVE CHECK OK: chat, stream, tools, images, json; schema-valid; native upstream bodies")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report and fail
        print(f"NATIVE CHECK FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
