"""client.responses.create through freeway, JSON and streamed, for one model.

Usage: responses_check.py --base-url URL --model MODEL [--tools]
With --tools, also runs a tool round trip (call → function_call_output → answer); the
simulated native providers call the first declared tool until they get its result.
"""
import argparse
import json
import sys

from openai import OpenAI


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tools", action="store_true")
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="sk-gw-test", max_retries=0)

    r = client.responses.create(model=args.model, instructions="be brief", input="hello responses")
    assert r.status == "completed", r
    assert "hello responses" in r.output_text, r.output_text
    assert r.usage.output_tokens > 0, r.usage

    text, kinds = "", []
    with client.responses.create(model=args.model, input="stream responses", stream=True) as events:
        for ev in events:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
            if ev.type == "response.completed":
                final = ev.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "stream responses" in text, text
    assert final.output_text == text, (final.output_text, text)

    if args.tools:
        tools = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}]
        first = client.responses.create(model=args.model, input="weather in Paris?", tools=tools)
        calls = [o for o in first.output if o.type == "function_call"]
        assert calls and calls[0].name == "get_weather", first.output
        json.loads(calls[0].arguments)
        follow = [{"role": "user", "content": "weather in Paris?"}]
        follow += [{"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments}
                   for c in calls]
        follow += [{"type": "function_call_output", "call_id": c.call_id, "output": "12C and sunny"}
                   for c in calls]
        second = client.responses.create(model=args.model, input=follow, tools=tools)
        assert "12C and sunny" in second.output_text, second.output_text

        # Streamed tool call: argument deltas assemble into the final arguments.
        args_text, done_args = "", None
        with client.responses.create(model=args.model, input="weather in Oslo?", tools=tools, stream=True) as events:
            for ev in events:
                if ev.type == "response.function_call_arguments.delta":
                    args_text += ev.delta
                if ev.type == "response.function_call_arguments.done":
                    done_args = ev.arguments
        assert done_args is not None and args_text == done_args, (args_text, done_args)
        json.loads(done_args)

    print(f"RESPONSES CHECK OK: {args.model}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"RESPONSES CHECK FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
