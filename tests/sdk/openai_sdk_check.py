"""The official OpenAI Python SDK against a running freeway (demo), plus schema checks.

Every JSON body and stream chunk freeway returns is validated against OpenAI's published
OpenAPI schema (tests/openapi/openapi.json, a subset of OpenAI's published one). Exits non-zero on the first failure.
Requires: pip install openai jsonschema
"""
import argparse
import json
import sys

import urllib.error
import urllib.request
import jsonschema
import openai
from openai import OpenAI


def openapi_nullable(node):
    """The spec marks nullable fields OpenAPI-3.0 style (`nullable: true`); JSON Schema
    spells that as a "null" type (and a None enum member)."""
    if isinstance(node, dict):
        if node.get("nullable") is True:
            t = node.get("type")
            if isinstance(t, str):
                node["type"] = [t, "null"]
            if isinstance(node.get("enum"), list) and None not in node["enum"]:
                node["enum"].append(None)
            if "$ref" in node or "allOf" in node or "anyOf" in node or "oneOf" in node:
                inner = {k: node.pop(k) for k in ("$ref", "allOf", "anyOf", "oneOf") if k in node}
                node["anyOf"] = [inner, {"type": "null"}]
        for v in node.values():
            openapi_nullable(v)
    elif isinstance(node, list):
        for v in node:
            openapi_nullable(v)


def validator(spec, name):
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--openapi", required=True)
    args = ap.parse_args()
    spec = json.load(open(args.openapi))
    openapi_nullable(spec)
    completion_schema = validator(spec, "CreateChatCompletionResponse")
    chunk_schema = validator(spec, "CreateChatCompletionStreamResponse")
    error_schema = validator(spec, "ErrorResponse")
    models_schema = validator(spec, "ListModelsResponse")

    client = OpenAI(base_url=args.base_url, api_key="demo-no-key-needed", max_retries=0)

    # Chat.
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello sdk"}])
    assert r.choices[0].message.content.startswith("echo: hello sdk"), r
    assert r.usage and r.usage.total_tokens > 0, r

    # Stream.
    parts = []
    stream = client.chat.completions.create(
        model="echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream please"}])
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    text = "".join(parts)
    assert text.startswith("echo: stream please"), text
    assert usage is not None and usage.completion_tokens > 0

    # Errors surface as the SDK's typed exceptions.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.BadRequestError as e:
        assert e.code == "model_not_found", e

    # Raw responses against the OpenAPI schema.
    def call(method, path, body=None):
        req = urllib.request.Request(args.base_url + path, data=body, method=method,
                                     headers={"content-type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            return e

    body = {"model": "auto", "messages": [{"role": "user", "content": "schema"}]}
    resp = call("POST", "/chat/completions", json.dumps(body).encode())
    assert resp.status == 200
    completion_schema.validate(json.load(resp))

    resp = call("POST", "/chat/completions", json.dumps({**body, "stream": True}).encode())
    assert resp.headers["content-type"].startswith("text/event-stream")
    n = 0
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk_schema.validate(json.loads(line[6:]))
            n += 1
    assert n >= 3, n

    for bad in [b"{oops", b"", json.dumps({"model": "nope", "messages": []}).encode()]:
        resp = call("POST", "/chat/completions", bad)
        assert resp.status == 400, resp.read()
        error_schema.validate(json.load(resp))

    # Responses API on top of the chat providers, through the SDK and against the schema.
    r = client.responses.create(model="auto", instructions="be brief", input="hello responses")
    assert r.output_text.startswith("echo: hello responses"), r
    assert r.usage and r.usage.total_tokens > 0, r
    resp = call("POST", "/responses", json.dumps({"model": "auto", "input": "schema responses"}).encode())
    assert resp.status == 200
    validator(spec, "Response").validate(json.load(resp))
    kinds, text = [], ""
    with client.responses.create(
            model="echo", stream=True,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "stream responses"}]}]) as events:
        for ev in events:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
    assert text.startswith("echo: stream responses"), text
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    event_schemas = {
        "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
        "response.output_item.added": "ResponseOutputItemAddedEvent",
        "response.content_part.added": "ResponseContentPartAddedEvent",
        "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
        "response.content_part.done": "ResponseContentPartDoneEvent",
        "response.output_item.done": "ResponseOutputItemDoneEvent",
        "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
        "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
        "response.completed": "ResponseCompletedEvent", "error": "ResponseErrorEvent",
    }
    event_validators = {k: validator(spec, v) for k, v in event_schemas.items()}
    resp = call("POST", "/responses", json.dumps({"model": "auto", "input": "raw events", "stream": True}).encode())
    n = 0
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            ev = json.loads(line[6:])
            event_validators[ev["type"]].validate(ev)
            n += 1
    assert n >= 8, n
    try:
        client.responses.create(model="auto", input="x", previous_response_id="resp_1")
        raise AssertionError("previous_response_id accepted")
    except openai.BadRequestError as e:
        assert e.param == "previous_response_id", e

    models = json.load(call("GET", "/models"))
    models_schema.validate(models)
    assert any(m["id"] == "sim-alpha/echo-large" and m["simulated"] for m in models["data"]), models
    listed = client.models.list()
    assert any(m.id == "auto" for m in listed.data)

    print("SDK CHECK OK: chat, stream, errors, responses (JSON + stream), models; schema-valid")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report and fail
        print(f"SDK CHECK FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
