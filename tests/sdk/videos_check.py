"""The official OpenAI Python SDK's video jobs (`client.videos.create`, `retrieve`,
`download_content`) through freeway, against simulated providers of each video format:
OpenAI-compatible (`/videos`) and Gemini Veo (`:predictLongRunning` operations). Checks the
job object, polling until completed (with a deadline), that the bytes are an MP4 (`ftyp`
box first), what went upstream, failover from a 500 at creation, and the refusals: a chat
model (400), an unknown job id (404), both in OpenAI's error envelope.
Exits non-zero on the first failure.
Requires: pip install openai
"""
import argparse
import json
import sys
import time
import urllib.request
import warnings

import openai
from openai import OpenAI

# `client.videos` is marked deprecated (Sora's shutdown date); it still is the API shape.
warnings.simplefilter("ignore", DeprecationWarning)


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--sim-url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--models", required=True, help="JSON {role: model}")
    args = ap.parse_args()
    m = json.loads(args.models)
    client = OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0)

    def sim_requests():
        with urllib.request.urlopen(args.sim_url + "/_sim/requests", timeout=30) as r:
            return json.load(r)["recent"]

    def finish(video, what):
        """Polls the job until it is completed (deadline 20 s); returns the last object."""
        deadline = time.monotonic() + 20
        seen = set()
        while video.status in ("queued", "in_progress"):
            seen.add(video.status)
            check(0 <= video.progress <= 100, f"{what}: progress {video.progress}")
            check(time.monotonic() < deadline, f"{what}: still {video.status} after 20 s")
            time.sleep(0.1)
            video = client.videos.retrieve(video.id)
        check(video.status == "completed", f"{what}: ended {video.status}: {video.error}")
        check(video.progress == 100 and video.completed_at, f"{what}: completed {video}")
        return video

    def download(video, what):
        content = client.videos.download_content(video.id)
        data = content.read()
        check(data[4:8] == b"ftyp", f"{what}: not an MP4 (ftyp first): {data[:16]!r}")
        return data

    # ── each format: create, poll, download ──
    for role, size, seconds in [("openai", "1280x720", "8"), ("gemini", "720x1280", "4")]:
        model = m[role]
        video = client.videos.create(model=model, prompt=f"waves at dusk for {role}",
                                     seconds=seconds, size=size)
        check(video.object == "video" and video.id.startswith("video_")
              and len(video.id) == len("video_") + 32, f"{role}: gateway job id {video.id}")
        check(video.status == "queued" and video.progress == 0, f"{role}: queued {video}")
        check(video.model == model and video.size == size and video.seconds == seconds,
              f"{role}: job fields {video}")
        up = [r for r in sim_requests() if r["method"] == "POST"][-1]
        fields = up.get("fields", {})
        upstream_id = model.split("/", 1)[1]
        if role == "openai":
            check(up["path"].endswith("/videos"), f"openai path {up['path']}")
            check(up["content_type"].startswith("multipart/form-data"), f"openai form {up}")
        else:
            check(up["path"].endswith(f"/models/{upstream_id}:predictLongRunning"),
                  f"gemini path {up['path']}")
            check(up["x_goog_api_key"], f"gemini key header {up}")
        check(fields.get("model") == upstream_id and fields.get("prompt", "").endswith(role)
              and str(fields.get("seconds")) == seconds and fields.get("size") == size,
              f"{role}: upstream fields {fields}")
        # The upstream job id is not the gateway's.
        check(video.id not in json.dumps(sim_requests()), f"{role}: gateway id went upstream")
        video = finish(video, role)
        download(video, role)
        if role == "gemini":
            got = [r for r in sim_requests() if ":download" in r["path"]]
            check(got and got[-1]["x_goog_api_key"], f"gemini download with the key: {got}")
            # It redirects to storage on another host: the key does not follow.
            stored = [r for r in sim_requests() if "/_sim/video-files/" in r["path"]]
            check(stored and not stored[-1]["x_goog_api_key"]
                  and not stored[-1]["authorization"], f"storage fetched without a key: {stored}")

    # ── failover: the first candidate answers 500 at creation ──
    video = client.videos.create(model=m["failover"], prompt="a failover clip", seconds="4",
                                 size="720x1280")
    raw = client.videos.with_raw_response.retrieve(video.id)
    check(raw.headers.get("x-gateway-provider") == m["up_provider"],
          f"failover: the job is at {raw.headers.get('x-gateway-provider')}")
    download(finish(video, "failover"), "failover")

    # ── refusals in OpenAI's envelope ──
    try:
        client.videos.create(model=m["chat"], prompt="not a video model")
        check(False, "a chat model made a video")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and isinstance(e.body, dict) and e.body.get("message"),
              f"chat model: {e.status_code} {e.body}")
    for unknown in ["video_" + "0" * 32, "video_nope"]:
        try:
            client.videos.retrieve(unknown)
            check(False, f"{unknown} found")
        except openai.NotFoundError as e:
            check(e.status_code == 404 and e.body.get("type") == "invalid_request_error"
                  and unknown in e.body.get("message", ""), f"unknown job: {e.body}")
    try:
        client.videos.download_content("video_" + "f" * 32)
        check(False, "content of an unknown job")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"unknown job content: {e}")

    print("VIDEOS CHECK OK")


if __name__ == "__main__":
    main()
