"""The official OpenAI Python SDK through freeway: embeddings, transcriptions, translations
and speech against simulated providers of every kind (OpenAI-compatible, Gemini, Workers AI,
Voyage). After each call the simulated provider's request log is read to check that the
upstream received its native format. Exits non-zero on the first failure.
Requires: pip install openai
"""
import argparse
import hashlib
import json
import struct
import sys
import urllib.request

import openai
from openai import OpenAI


def sim_vector(model, text, dims=16):
    """The simulator's deterministic vector (see src/sim/media.rs)."""
    space = model.rsplit("/", 1)[-1].lower().encode()
    out, counter = [], 0
    while len(out) < dims:
        h = hashlib.sha256(space + b"\0" + text.encode() + struct.pack("<I", counter)).digest()
        for i in range(0, 32, 4):
            if len(out) < dims:
                u = struct.unpack("<I", h[i:i + 4])[0]
                out.append(struct.unpack("<f", struct.pack("<f", u / 0xFFFFFFFF * 2.0 - 1.0))[0])
        counter += 1
    norm = sum(v * v for v in out) ** 0.5
    return [v / norm for v in out]


def close(a, b):
    return len(a) == len(b) and all(abs(x - y) < 1e-5 for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--sim-url", required=True)
    ap.add_argument("--audio", required=True, help="a WAV file to upload")
    ap.add_argument("--models", required=True, help="JSON {role: model}")
    args = ap.parse_args()
    m = json.loads(args.models)
    client = OpenAI(base_url=args.base_url, api_key="no-key-needed", max_retries=0)
    audio = open(args.audio, "rb").read()
    audio_sha = hashlib.sha256(audio).hexdigest()

    def last_request():
        with urllib.request.urlopen(args.sim_url + "/_sim/requests", timeout=30) as r:
            return json.load(r)["recent"][-1]

    def check(cond, what):
        if not cond:
            print("FAIL:", what)
            sys.exit(1)

    # ── embeddings ──
    for kind in ("openai", "gemini", "workers", "voyage"):
        model = m["embed_" + kind]
        upstream_id = model.split("/", 1)[1]
        for encoding in (None, "float"):
            kwargs = {"encoding_format": encoding} if encoding else {}
            r = client.embeddings.create(model=model, input=["hello", "world"], **kwargs)
            check(len(r.data) == 2 and r.data[1].index == 1, f"{kind}: two vectors")
            check(close(r.data[0].embedding, sim_vector(upstream_id, "hello")),
                  f"{kind} ({encoding or 'base64'}): vector is the provider's: {r.data[0].embedding[:3]}")
            check(r.model == upstream_id, f"{kind}: model {r.model}")
            req = last_request()
            body = req.get("json", {})
            if kind == "openai":
                check(req["path"].endswith("/embeddings") and body["model"] == upstream_id, f"openai body {req}")
                check(body.get("encoding_format") == (encoding or "base64"), f"openai encoding {body}")
            elif kind == "gemini":
                check(req["path"].endswith(f"/models/{upstream_id}:batchEmbedContents"), f"gemini path {req}")
                check(body["requests"][1]["content"]["parts"][0]["text"] == "world", f"gemini body {body}")
            elif kind == "workers":
                check(req["path"].endswith("/run/" + upstream_id) and body == {"text": ["hello", "world"]},
                      f"workers body {req}")
            else:
                check(req["path"].endswith("/embeddings") and body["input"] == ["hello", "world"]
                      and "encoding_format" not in body, f"voyage body {req}")
        print(f"[embeddings {kind}] ok")
    # One string; dimensions mapped to each native name.
    r = client.embeddings.create(model=m["embed_gemini"], input="solo", dimensions=8)
    check(len(r.data[0].embedding) == 8, "gemini dimensions")
    req = last_request()
    check(req["path"].endswith(":embedContent") and req["json"]["outputDimensionality"] == 8, f"gemini single {req}")
    r = client.embeddings.create(model=m["embed_voyage"], input="q", dimensions=8, extra_body={"input_type": "query"})
    check(len(r.data[0].embedding) == 8, "voyage dimensions")
    body = last_request()["json"]
    check(body["output_dimension"] == 8 and body["input_type"] == "query", f"voyage fields {body}")
    try:
        client.embeddings.create(model=m["embed_workers"], input="x", dimensions=8)
        check(False, "workers dimensions must be refused")
    except openai.BadRequestError as e:
        check("dimensions" in str(e), f"workers dimensions error: {e}")
    print("[embeddings options] ok")

    # ── transcriptions ──
    def transcribe(model, fmt=None, translate=False):
        api = client.audio.translations if translate else client.audio.transcriptions
        kwargs = {"response_format": fmt} if fmt else {}
        with open(args.audio, "rb") as f:
            return api.create(model=model, file=("speech.wav", f, "audio/wav"), **kwargs)

    expected = f"{len(audio)} bytes, sha256 {audio_sha}"
    for kind in ("openai", "workers_turbo", "workers_whisper", "gemini"):
        model = m["stt_" + kind]
        r = transcribe(model)
        check(expected in r.text, f"{kind}: transcript {r.text!r}")
        req = last_request()
        check(req.get("file_sha256") == audio_sha and req.get("file_bytes") == len(audio) or kind == "gemini",
              f"{kind}: upstream audio {req}")
        if kind == "openai":
            check(req["content_type"].startswith("multipart/form-data; boundary="), f"openai ctype {req}")
            check(req["fields"]["model"] == model.split("/", 1)[1], f"openai model field {req['fields']}")
        elif kind == "workers_turbo":
            check(req["content_type"] == "application/json" and req["json"]["audio"] == "(base64)"
                  and req["json"]["task"] == "transcribe", f"turbo body {req}")
        elif kind == "workers_whisper":
            check(req["content_type"] == "application/octet-stream", f"whisper ctype {req}")
        else:
            check(req["path"].endswith(":generateContent"), f"gemini path {req}")
        for fmt in ("text", "srt", "vtt", "verbose_json"):
            if kind == "gemini" and fmt != "text":
                try:
                    transcribe(model, fmt)
                    check(False, f"gemini {fmt} must be refused")
                except openai.BadRequestError as e:
                    check(fmt in str(e), f"gemini {fmt} error names the format: {e}")
                continue
            out = transcribe(model, fmt)
            if fmt == "verbose_json":
                check(expected in out.text and len(out.segments) >= 1 and out.duration > 0, f"{kind} verbose {out}")
            else:
                text = out if isinstance(out, str) else str(out)
                check(expected.split(",")[0] in text, f"{kind} {fmt}: {text!r}")
                if fmt == "vtt":
                    check(text.startswith("WEBVTT"), f"{kind} vtt: {text!r}")
                if fmt == "srt":
                    check(text.startswith("1\n00:00:00,000 --> "), f"{kind} srt: {text!r}")
        print(f"[transcriptions {kind}] ok")
    for kind in ("openai", "workers_turbo"):
        r = transcribe(m["stt_" + kind], translate=True)
        check(r.text.startswith("sim translation") and expected in r.text, f"{kind} translation {r.text!r}")
    req = last_request()
    check(req["json"]["task"] == "translate", f"turbo translate {req}")
    print("[translations] ok")

    # ── speech ──
    for kind in ("openai", "workers"):
        with client.audio.speech.with_streaming_response.create(
                model=m["tts_" + kind], voice="alloy", input="Hello from freeway",
                **({"response_format": "wav"} if kind == "openai" else {})) as resp:
            check(resp.headers["content-type"] == "audio/wav", f"{kind} content type {resp.headers}")
            check(resp.headers["x-gateway-provider"] == m["tts_" + kind].split("/")[0], f"{kind} provider")
            data = b"".join(resp.iter_bytes())
        check(data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 1000, f"{kind} audio {data[:16]!r}")
        req = last_request()
        body = req["json"]
        if kind == "openai":
            check(req["path"].endswith("/audio/speech") and body["input"] == "Hello from freeway"
                  and body["model"] == m["tts_openai"].split("/", 1)[1], f"openai speech {req}")
        else:
            check(body == {"prompt": "Hello from freeway", "lang": "en"}, f"melotts body {body}")
        print(f"[speech {kind}] ok")

    print("MEDIA CHECK OK")


if __name__ == "__main__":
    main()
