"""Conformance of what real clients do, through freeway, with the official OpenAI Python SDK.

Modes (one per run):
  --mode native --models '{"gemini": M, "anthropic": M, "workers": M}' --sim-url URL
      structured outputs with nested Pydantic models (`client.beta.chat.completions.parse`
      and `.stream`) on Gemini, Anthropic and Workers AI; nested Pydantic tools on Gemini;
      a recursive model refused on Gemini; tool-call ids unique across turns (Gemini,
      Workers AI) and mapped back to their functions; `n` = 2 served on Gemini and refused
      on Anthropic and Workers AI. After each call the simulated provider's last received body
      is checked.
  --mode responses-drop --model M
      `client.responses.stream` over a provider that dies mid-stream: the stream ends with
      `response.failed` carrying the error.
  --mode demo --sim-url URL
      `freeway demo`'s `echo` and `auto` models: a tool round trip (plain and streamed) and
      structured outputs (`parse`, `stream`) with a nested model.
Prints "CONFORMANCE OK: <mode>" on success.
"""
import argparse
import json
import sys
import urllib.request
from typing import List, Optional

import openai
from openai import OpenAI
from pydantic import BaseModel


class Address(BaseModel):
    city: str
    zip: Optional[str] = None


class Customer(BaseModel):
    name: str
    address: Address


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    customer: Customer
    lines: List[Line]
    rush: bool
    billing: Optional[Address] = None


class Node(BaseModel):
    value: int
    children: List["Node"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": False},
    },
}


def sim_last_body(sim_url):
    with urllib.request.urlopen(sim_url + "/_sim/last-body", timeout=30) as r:
        return json.load(r)


def sim_total(sim_url):
    with urllib.request.urlopen(sim_url + "/_sim/requests", timeout=30) as r:
        return json.load(r)["total"]


def Order_schema():
    from openai.lib._pydantic import to_strict_json_schema
    return to_strict_json_schema(Order)


def check_order(order, where):
    assert isinstance(order, Order), (where, order)
    assert isinstance(order.customer.address, Address) and order.customer.address.city, (where, order)
    assert order.lines and isinstance(order.lines[0], Line) and isinstance(order.lines[0].qty, int), (where, order)


def no_refs(v):
    return "$ref" not in json.dumps(v) and "$defs" not in json.dumps(v)


def parse_both_ways(client, model, where):
    """`parse` (JSON) and `stream` (SSE) with the nested model; returns the parsed orders."""
    msgs = [{"role": "user", "content": "Ada in Oslo orders two mugs, rush."}]
    r = client.beta.chat.completions.parse(model=model, messages=msgs, response_format=Order)
    check_order(r.choices[0].message.parsed, where + " parse")
    assert r.choices[0].finish_reason == "stop", (where, r)
    with client.beta.chat.completions.stream(model=model, messages=msgs, response_format=Order) as s:
        final = s.get_final_completion()
    check_order(final.choices[0].message.parsed, where + " stream")


def native(args, client):
    models = json.loads(args.models)
    last = lambda: sim_last_body(args.sim_url)  # noqa: E731

    # Gemini: nested models are inlined ($ref/$defs gone, Optional → nullable).
    g = models["gemini"]
    parse_both_ways(client, g, "[gemini]")
    schema = last()["generationConfig"]["responseSchema"]
    assert no_refs(schema), schema
    assert schema["properties"]["customer"]["properties"]["address"]["properties"]["city"]["type"] == "string", schema
    assert schema["properties"]["lines"]["items"]["required"] == ["sku", "qty"], schema
    assert schema["properties"]["billing"]["nullable"] is True, schema
    assert schema["properties"]["billing"]["properties"]["city"] == {"type": "string", "title": "City"}, schema

    # Gemini: a nested Pydantic tool; its call parses back into the model.
    tool = openai.pydantic_function_tool(Order, name="save_order")
    r = client.beta.chat.completions.parse(
        model=g, tools=[tool], messages=[{"role": "user", "content": "save Ada's order"}])
    call = r.choices[0].message.tool_calls[0]
    check_order(call.function.parsed_arguments, "[gemini tool]")
    params = last()["tools"][0]["functionDeclarations"][0]["parameters"]
    assert no_refs(params) and params["properties"]["customer"]["properties"]["address"]["type"] == "object", params

    # Gemini: a recursive model cannot be inlined: a clear 400, nothing sent upstream.
    before = sim_total(args.sim_url)
    try:
        client.beta.chat.completions.parse(model=g, response_format=Node,
                                           messages=[{"role": "user", "content": "a tree"}])
        raise AssertionError("a recursive schema was accepted for Gemini")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "recursive" in str(e) and "#/$defs/Node" in str(e), e
        assert e.body["type"] == "invalid_request_error", e.body
    assert sim_total(args.sim_url) == before, "a refused request reached the provider"

    # Anthropic: JSON mode is a forced tool call; its input is the message content.
    a = models["anthropic"]
    parse_both_ways(client, a, "[anthropic]")
    body = last()
    assert body["stream"] is True, body
    assert body["tool_choice"] == {"type": "tool", "name": "json_answer"}, body
    assert body["tools"][-1]["name"] == "json_answer", body
    # Anthropic takes JSON Schema with references: the client's schema goes unchanged.
    assert body["tools"][-1]["input_schema"] == Order_schema(), body
    assert "system" not in body, body
    r = client.chat.completions.create(model=a, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "as json"}])
    assert json.loads(r.choices[0].message.content)["echo"].startswith("echo: as json"), r
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop", r

    # Workers AI: the schema itself, not OpenAI's {name, strict, schema} wrapper.
    w = models["workers"]
    parse_both_ways(client, w, "[workers]")
    rf = last()["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["type"] == "object", rf
    assert "name" not in rf["json_schema"] and "strict" not in rf["json_schema"], rf
    assert "customer" in rf["json_schema"]["properties"], rf

    # Tool-call ids: unique per answer, so a conversation of several tool turns never holds
    # two calls with one id; each result is mapped back to its function.
    for kind in ["gemini", "workers"]:
        m = models[kind]
        first = [{"role": "user", "content": "Oslo"}]
        msgs, ids = list(first), []
        for turn in range(2):
            r = client.chat.completions.create(model=m, messages=first, tools=[WEATHER], tool_choice="required")
            call = r.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls", (kind, r)
            ids.append(call.id)
            msgs += [r.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": f"turn {turn}: 3C"}]
        assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids), (kind, ids)
        r = client.chat.completions.create(model=m, messages=msgs, tools=[WEATHER])
        content = r.choices[0].message.content
        assert "the tool said" in content and "turn 1: 3C" in content, (kind, r)
        body = last()
        if kind == "gemini":
            calls = [p["functionCall"]["name"] for t in body["contents"] for p in t["parts"] if "functionCall" in p]
            responses = [p["functionResponse"] for t in body["contents"] for p in t["parts"] if "functionResponse" in p]
            assert calls == ["get_weather"] * 2 and [x["name"] for x in responses] == ["get_weather"] * 2, body
        else:
            tools = [x for x in body["messages"] if x["role"] == "tool"]
            assert [x["tool_call_id"] for x in tools] == ids and all(x["name"] == "get_weather" for x in tools), body
        # The streamed call gets a fresh id too.
        streamed = None
        for c in client.chat.completions.create(model=m, messages=first, tools=[WEATHER], stream=True):
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                streamed = tc.id or streamed
        assert streamed and streamed not in ids, (kind, streamed, ids)

    # n = 2: Gemini's candidates, in JSON and streamed.
    r = client.chat.completions.create(model=g, n=2, messages=[{"role": "user", "content": "two please"}])
    assert [c.index for c in r.choices] == [0, 1], r
    assert r.choices[0].message.content.startswith("echo: two please"), r
    assert r.choices[1].message.content.endswith("(candidate 1)"), r
    assert last()["generationConfig"]["candidateCount"] == 2
    texts, finishes = {}, {}
    for c in client.chat.completions.create(model=g, n=2, stream=True,
                                            messages=[{"role": "user", "content": "two streamed"}]):
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert sorted(texts) == [0, 1] and texts[0].startswith("echo: two streamed"), texts
    assert texts[1].endswith("(candidate 1)"), texts
    assert finishes == {0: "stop", 1: "stop"}, finishes

    # n = 2 where the API answers one choice: a 400 that says so, nothing sent upstream.
    for kind in ["anthropic", "workers"]:
        before = sim_total(args.sim_url)
        try:
            client.chat.completions.create(model=models[kind], n=2, messages=[{"role": "user", "content": "x"}])
            raise AssertionError(f"{kind}: n=2 was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "n > 1" in str(e) and "one choice" in str(e), (kind, e)
        assert sim_total(args.sim_url) == before, kind


def responses_drop(args, client):
    kinds, failed = [], None
    with client.responses.stream(model=args.model, input="one two three four five six seven") as s:
        for ev in s:
            kinds.append(ev.type)
            if ev.type == "response.failed":
                failed = ev.response
    assert kinds[0] == "response.created", kinds
    assert "response.output_text.delta" in kinds, kinds
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds, kinds
    assert failed.status == "failed" and failed.error is not None, failed
    assert failed.error.code == "server_error" and "failed" in failed.error.message, failed.error
    assert failed.output and failed.output[0].content[0].text.startswith("echo:"), failed.output


def demo(args, client):
    for model in ["echo", "auto"]:
        where = f"[demo {model}]"
        msgs = [{"role": "user", "content": "Oslo"}]
        r = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER])
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", (where, r)
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}, (where, call)
        sent = sim_last_body(args.sim_url)
        assert sent["tools"][0]["function"]["name"] == "get_weather", sent
        msgs += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "3C and clear"}]
        r = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER])
        assert r.choices[0].finish_reason == "stop", (where, r)
        assert "3C and clear" in r.choices[0].message.content, (where, r)
        # Streamed: the call's deltas assemble into one call.
        name, arguments, finish = "", "", None
        for c in client.chat.completions.create(model=model, messages=msgs[:1], tools=[WEATHER], stream=True):
            for ch in c.choices:
                for tc in ch.delta.tool_calls or []:
                    name += tc.function.name or ""
                    arguments += tc.function.arguments or ""
                finish = ch.finish_reason or finish
        assert name == "get_weather" and json.loads(arguments) == {"city": "Oslo"} and finish == "tool_calls", (where, name, arguments)
        # Structured outputs with a nested model, JSON and streamed.
        parse_both_ways(client, model, where)
        r = client.chat.completions.create(model=model, response_format={"type": "json_object"},
                                           messages=[{"role": "user", "content": "as json"}])
        assert json.loads(r.choices[0].message.content)["echo"].startswith("echo: as json"), (where, r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--mode", required=True, choices=["native", "responses-drop", "demo"])
    ap.add_argument("--sim-url")
    ap.add_argument("--models")
    ap.add_argument("--model")
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="no-key-needed", max_retries=0)
    {"native": native, "responses-drop": responses_drop, "demo": demo}[args.mode](args, client)
    print(f"CONFORMANCE OK: {args.mode}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"CONFORMANCE FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
