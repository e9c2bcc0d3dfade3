#!/usr/bin/env python3
"""Extracts the part of OpenAI's published OpenAPI description that freeway's tests
validate against: the named schemas and every schema they reference, transitively.

    python3 scripts/openapi-subset.py PATH/TO/openapi.json > tests/openapi/openapi.json

The tests read only the subset in the repository (a clone has nothing beside it).
"""
import json
import sys

ROOTS = [
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "ErrorResponse",
    "ListModelsResponse", "CreateEmbeddingResponse", "Response",
    "ResponseCompletedEvent", "ResponseContentPartAddedEvent", "ResponseContentPartDoneEvent",
    "ResponseCreatedEvent", "ResponseErrorEvent", "ResponseFailedEvent",
    "ResponseFunctionCallArgumentsDeltaEvent", "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseInProgressEvent", "ResponseOutputItemAddedEvent", "ResponseOutputItemDoneEvent",
    "ResponseTextDeltaEvent", "ResponseTextDoneEvent",
]


def refs(node, out):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/schemas/"):
            out.add(r.rsplit("/", 1)[1])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main():
    spec = json.load(open(sys.argv[1]))
    schemas = spec["components"]["schemas"]
    keep, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found = set()
        refs(schemas[name], found)
        todo.extend(found - keep)
    subset = {
        "openapi": spec.get("openapi"),
        "info": {**spec.get("info", {}), "x-freeway-subset": "schemas reachable from " + ", ".join(ROOTS)},
        "components": {"schemas": {k: schemas[k] for k in sorted(keep)}},
    }
    json.dump(subset, sys.stdout, indent=None, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


main()
