"""The official OpenAI Python SDK's `client.images.generate` through freeway, against
simulated providers of every image format: OpenAI-compatible (`/images/generations`),
Workers AI FLUX (base64 in JSON), Workers AI Stable Diffusion XL (raw PNG bytes) and Gemini
(`inlineData`). Checks the images are PNGs of the asked size, `n`, `url` answers (served
without a key, then expired), failover, refusals and the cache. After each call the simulated
provider's request log shows what went upstream; guardrails read the prompt. Exits non-zero on the first failure.
Requires: pip install openai
"""
import argparse
import base64
import json
import struct
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)


def png_size(data):
    """(width, height) from a PNG's IHDR, after checking the signature and chunk order."""
    check(data[:8] == b"\x89PNG\r\n\x1a\n", f"PNG signature, got {data[:8]!r}")
    length, kind = struct.unpack(">I4s", data[8:16])
    check(kind == b"IHDR" and length == 13, f"IHDR first, got {kind!r}")
    return struct.unpack(">II", data[16:24])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--sim-url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--models", required=True, help="JSON {role: model}")
    ap.add_argument("--ttl", type=float, required=True, help="[images] url_ttl_seconds")
    args = ap.parse_args()
    m = json.loads(args.models)
    client = OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0)

    def sim_requests():
        with urllib.request.urlopen(args.sim_url + "/_sim/requests", timeout=30) as r:
            return json.load(r)["recent"]

    def last_request():
        return sim_requests()[-1]

    # ── every format: a PNG of the asked size, the native request upstream ──
    cases = [
        ("openai", "256x256"),
        ("flux", "1024x1024"),
        ("sdxl", "512x512"),
        ("gemini", "1344x768"),
    ]
    for role, size in cases:
        model = m[role]
        r = client.images.generate(model=model, prompt=f"a lighthouse for {role}", size=size,
                                   response_format="b64_json")
        check(len(r.data) == 1 and r.data[0].b64_json, f"{role}: one b64_json image: {r}")
        w, h = png_size(base64.b64decode(r.data[0].b64_json))
        check(f"{w}x{h}" == size, f"{role}: PNG is {w}x{h}, asked {size}")
        req = last_request()
        body = req.get("json", {})
        upstream_id = model.split("/", 1)[1]
        if role == "openai":
            check(req["path"].endswith("/images/generations"), f"openai path {req['path']}")
            check(body["model"] == upstream_id and body["size"] == size and body["n"] == 1,
                  f"openai body {body}")
            check("response_format" not in body, f"gpt-image gets no response_format: {body}")
        elif role == "flux":
            check(req["path"].endswith("/run/" + upstream_id), f"flux path {req['path']}")
            check(set(body) == {"prompt", "steps"} and body["steps"] <= 8, f"flux body {body}")
        elif role == "sdxl":
            check(req["path"].endswith("/run/" + upstream_id), f"sdxl path {req['path']}")
            check(body["width"] == 512 and body["height"] == 512 and body["num_steps"] <= 20,
                  f"sdxl body {body}")
        else:
            check(req["path"].endswith(f"/models/{upstream_id}:generateContent"), f"gemini path {req['path']}")
            cfg = body["generationConfig"]
            check("IMAGE" in cfg["responseModalities"], f"gemini modalities {cfg}")
            check(cfg["imageConfig"]["aspectRatio"] == "16:9", f"gemini aspect ratio {cfg}")
            check(body["contents"][0]["parts"][0]["text"] == "a lighthouse for gemini", f"gemini prompt {body}")

    # ── n = 2: one call where the format makes several, two calls where it makes one ──
    for role, calls in (("openai", 1), ("sdxl", 2)):
        before = len(sim_requests())
        r = client.images.generate(model=m[role], prompt="two foxes", n=2, size="512x512",
                                   response_format="b64_json")
        check(len(r.data) == 2, f"{role}: n=2 gave {len(r.data)}")
        imgs = [base64.b64decode(d.b64_json) for d in r.data]
        for img in imgs:
            check(png_size(img) == (512, 512), f"{role}: n=2 image size {png_size(img)}")
        check(len(sim_requests()) - before == calls, f"{role}: {calls} upstream call(s) for n=2")
        if role == "openai":
            check(imgs[0] != imgs[1], "openai: the two images differ")

    # ── url: a link to the image the gateway keeps, working without a key, then expired ──
    r = client.images.generate(model=m["openai"], prompt="a url image", size="256x256",
                               response_format="url")
    url = r.data[0].url
    check(url and url.startswith(args.base_url.rsplit("/v1", 1)[0] + "/v1/images/files/"),
          f"url points at the gateway: {url}")
    check(len(url.rsplit("/", 1)[1]) == 32, f"id is 128 bits of hex: {url}")
    with urllib.request.urlopen(url, timeout=30) as resp:  # no Authorization header
        check(resp.status == 200, f"file status {resp.status}")
        check(resp.headers["content-type"] == "image/png", f"file type {resp.headers['content-type']}")
        check(png_size(resp.read()) == (256, 256), "the served file is the PNG")
    gone = None
    deadline = time.monotonic() + args.ttl + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=30).read()
        except urllib.error.HTTPError as e:
            gone = e
            break
        time.sleep(0.1)
    check(gone is not None and gone.code == 404, f"the file expired with a 404: {gone}")
    err = json.loads(gone.read())
    check(err["error"]["type"] == "invalid_request_error" and "expired" in err["error"]["message"],
          f"404 envelope {err}")
    guessed = url.rsplit("/", 1)[0] + "/" + "0" * 32
    try:
        urllib.request.urlopen(guessed, timeout=30)
        check(False, "a made-up id is served")
    except urllib.error.HTTPError as e:
        check(e.code == 404, f"made-up id: {e.code}")
    # A provider that links its images: its link is passed on.
    r = client.images.generate(model=m["linker"], prompt="a linked image", response_format="url")
    check(r.data[0].url.startswith(args.sim_url + "/_sim/images/"), f"provider's own url: {r.data[0].url}")

    # ── failover: the first provider of the route answers 500 ──
    raw = client.images.with_raw_response.generate(model=m["failover"], prompt="fail over",
                                                   response_format="b64_json")
    check(raw.headers["x-gateway-provider"] == "img-up", f"served by {raw.headers['x-gateway-provider']}")
    check(raw.headers["x-gateway-attempts"] == "2", f"attempts {raw.headers['x-gateway-attempts']}")
    png_size(base64.b64decode(raw.parse().data[0].b64_json))

    # ── refusals: a size the model does not take, a chat model, a bad n ──
    try:
        client.images.generate(model=m["openai"], prompt="too wide", size="1792x1024")
        check(False, "unsupported size accepted")
    except openai.BadRequestError as e:
        msg = e.body["message"]
        check(e.status_code == 400 and "256x256, 512x512, 1024x1024" in msg and "1792x1024" in msg,
              f"size refusal names the sizes: {msg}")
    try:
        client.images.generate(model=m["chat"], prompt="not an image model")
        check(False, "a chat model drew")
    except openai.BadRequestError as e:
        check("is a chat model, not an image model" in e.body["message"],
              f"chat model refusal: {e.body}")
    try:
        client.images.generate(model=m["openai"], prompt="many", n=5)
        check(False, "n=5 accepted")
    except openai.BadRequestError as e:
        check(e.body["param"] == "n", f"n refusal {e.body}")

    # ── guardrails read the prompt: redacted upstream, or refused ──
    client.images.generate(model=m["openai"], prompt="a card for jo@example.com", size="256x256",
                           response_format="b64_json")
    sent = last_request()["json"]["prompt"]
    check(sent == "a card for [REDACTED:email]", f"redacted prompt upstream: {sent}")
    before = len(sim_requests())
    try:
        client.images.generate(model=m["openai"], prompt="draw the secret-plan")
        check(False, "a blocked prompt drew")
    except openai.BadRequestError as e:
        check(e.body["code"] == "content_blocked", f"blocked: {e.body}")
    check(len(sim_requests()) == before, "a blocked prompt went nowhere upstream")

    # ── cache: the second identical request is served from the cache ──
    hdr = {"x-gateway-cache-ttl": "60"}
    first = client.images.with_raw_response.generate(model=m["sdxl"], prompt="cache me", size="512x512",
                                                     response_format="b64_json", extra_headers=hdr)
    before = len(sim_requests())
    second = client.images.with_raw_response.generate(model=m["sdxl"], prompt="cache me", size="512x512",
                                                      response_format="b64_json", extra_headers=hdr)
    check(first.headers["x-gateway-cache-status"] == "MISS", f"first {first.headers['x-gateway-cache-status']}")
    check(second.headers["x-gateway-cache-status"] == "HIT", f"second {second.headers['x-gateway-cache-status']}")
    check(len(sim_requests()) == before, "the hit went nowhere upstream")
    check(second.parse().data[0].b64_json == first.parse().data[0].b64_json, "the same image")

    print("IMAGES CHECK OK")


if __name__ == "__main__":
    main()
