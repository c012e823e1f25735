"""A small STS service written with python-socketio, independent of this project's Rust code,
following the Socket.IO contract that the seeds' STS services implement (their spec 016, the
echo service of spec 017): the peer that tests/stsbridge_socketio.rs runs stsbridge against.

  stream:init -> stream:ready (max_inflight granted: min(asked, --grant))
  fragment:data -> fragment:ack {status: queued} at once -> fragment:processed, emitted
                   strictly in sequence_number order (a missing number blocks the rest)
  fragment:ack from the client ends a fragment's time in flight
  stream:end -> stream:complete {statistics}, disconnect 5 s later (or on the client's)

Answers: --answer same (the audio as it came: the echo), m4a (AAC-LC in MP4, as the seeds'
full service answers) or f32-22k (pcm_f32le, 22.05 kHz mono); the last two through ffmpeg.

Usage: python sio_sts.py [--answer same|m4a|f32-22k] [--delay-ms N] [--grant N]
Prints "LISTENING <port>" once it listens on 127.0.0.1 (an ephemeral port); runs until its
standard input closes, then prints one line "SUMMARY <json>" and exits.
"""

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import socketio
from aiohttp import web

parser = argparse.ArgumentParser()
parser.add_argument("--answer", default="same", choices=["same", "m4a", "f32-22k"])
parser.add_argument("--delay-ms", type=int, default=0)
parser.add_argument("--grant", type=int, default=10)
args = parser.parse_args()

sio = socketio.AsyncServer(
    async_mode="aiohttp",
    ping_interval=25,
    ping_timeout=10,
    max_http_buffer_size=50 * 1024 * 1024,
)
app = web.Application()
sio.attach(app)

sessions = {}
summary = {
    "connections": 0,
    "inits": [],
    "sequences": [],
    "max_inflight_seen": 0,
    "client_acks": 0,
    "ends": 0,
    "auth": [],
    "errors": [],
}


def ffmpeg_input(audio):
    """ffmpeg's input options for the fragment's audio."""
    fmt = audio["format"]
    if fmt == "wav":
        return []
    raw = {"pcm_s16le": "s16le", "pcm_f32le": "f32le"}[fmt]
    return ["-f", raw, "-ar", str(audio["sample_rate_hz"]), "-ac", str(audio["channels"])]


def transcode(audio, answer):
    """The fragment's audio as the answer format (through ffmpeg, as the seeds' service)."""
    data = base64.b64decode(audio["data_base64"])
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in." + ("wav" if audio["format"] == "wav" else "raw"))
        with open(src, "wb") as f:
            f.write(data)
        if answer == "m4a":
            out = os.path.join(d, "out.m4a")
            cmd = ["ffmpeg", "-v", "error", "-y", *ffmpeg_input(audio), "-i", src,
                   "-c:a", "aac", "-b:a", "128k", out]
            rate, channels, fmt = audio["sample_rate_hz"], audio["channels"], "m4a"
        else:
            out = os.path.join(d, "out.f32")
            cmd = ["ffmpeg", "-v", "error", "-y", *ffmpeg_input(audio), "-i", src,
                   "-ar", "22050", "-ac", "1", "-f", "f32le", out]
            rate, channels, fmt = 22050, 1, "pcm_f32le"
        subprocess.run(cmd, check=True)
        with open(out, "rb") as f:
            encoded = f.read()
    return {
        "format": fmt,
        "sample_rate_hz": rate,
        "channels": channels,
        "duration_ms": audio["duration_ms"],
        "data_base64": base64.b64encode(encoded).decode(),
    }


@sio.event
async def connect(sid, environ, auth=None):
    summary["connections"] += 1
    summary["auth"].append(auth.get("token") if isinstance(auth, dict) else None)
    return True


@sio.event
async def disconnect(sid, reason=None):
    sessions.pop(sid, None)


@sio.on("stream:init")
async def stream_init(sid, data):
    cfg = data.get("config", {})
    ok = (
        isinstance(data.get("stream_id"), str)
        and isinstance(data.get("worker_id"), str)
        and 1 <= data.get("max_inflight", 3) <= 10
        and 1000 <= data.get("timeout_ms", 8000) <= 30000
        and 100 <= cfg.get("chunk_duration_ms", 1000) <= 6000
        and 1 <= cfg.get("channels", 1) <= 2
    )
    if not ok:
        summary["errors"].append("INVALID_CONFIG")
        await sio.emit("error", {"code": "INVALID_CONFIG", "message": "bad stream:init",
                                 "severity": "error", "retryable": False,
                                 "stream_id": data.get("stream_id")}, to=sid)
        return
    summary["inits"].append(data)
    summary["sequences"].append([])
    sessions[sid] = {
        "stream_id": data["stream_id"],
        "pending": {},
        "next": 0,
        "inflight": 0,
        "index": len(summary["sequences"]) - 1,
        "count": 0,
        "started": time.monotonic(),
    }
    await sio.emit("stream:ready", {
        "stream_id": data["stream_id"],
        "session_id": str(uuid.uuid4()),
        "max_inflight": min(data.get("max_inflight", 3), args.grant),
        "capabilities": {"batch_processing": False, "async_delivery": True},
    }, to=sid)


@sio.on("fragment:data")
async def fragment_data(sid, data):
    s = sessions.get(sid)
    if s is None:
        await sio.emit("error", {"code": "STREAM_NOT_FOUND", "message": "no session",
                                 "severity": "error", "retryable": False,
                                 "fragment_id": data.get("fragment_id")}, to=sid)
        return
    seq = data["sequence_number"]
    summary["sequences"][s["index"]].append(seq)
    s["inflight"] += 1
    s["count"] += 1
    summary["max_inflight_seen"] = max(summary["max_inflight_seen"], s["inflight"])
    await sio.emit("fragment:ack", {"fragment_id": data["fragment_id"], "status": "queued",
                                    "queue_position": s["inflight"] - 1}, to=sid)
    start = time.monotonic()
    if args.delay_ms:
        # Uneven delays: later fragments often finish first; answers still go out in order.
        await asyncio.sleep(args.delay_ms / 1000.0 * (1 + (seq * 7) % 3) / 2)
    audio = data["audio"]
    if args.answer != "same":
        audio = await asyncio.get_running_loop().run_in_executor(None, transcode, audio, args.answer)
    s["pending"][seq] = {
        "fragment_id": data["fragment_id"],
        "stream_id": data["stream_id"],
        "sequence_number": seq,
        "status": "success",
        "dubbed_audio": audio,
        "transcript": f"[ECHO] seq={seq}",
        "translated_text": f"[ECO] seq={seq}",
        "processing_time_ms": int((time.monotonic() - start) * 1000),
        "stage_timings": {"asr_ms": 0, "translation_ms": 0, "tts_ms": 0},
        "error": None,
    }
    while s["next"] in s["pending"]:
        await sio.emit("fragment:processed", s["pending"].pop(s["next"]), to=sid)
        s["next"] += 1


@sio.on("fragment:ack")
async def fragment_ack(sid, data):
    summary["client_acks"] += 1
    s = sessions.get(sid)
    if s is not None:
        s["inflight"] = max(0, s["inflight"] - 1)


@sio.on("stream:end")
async def stream_end(sid, data):
    summary["ends"] += 1
    s = sessions.get(sid)
    if s is None:
        return
    await sio.emit("stream:complete", {
        "stream_id": s["stream_id"],
        "total_fragments": s["count"],
        "total_duration_ms": int((time.monotonic() - s["started"]) * 1000),
        "statistics": {"success_count": s["count"], "partial_count": 0, "failed_count": 0,
                       "avg_processing_time_ms": 0.0, "p95_processing_time_ms": 0.0},
    }, to=sid)

    async def later():
        await asyncio.sleep(5)
        await sio.disconnect(sid)

    asyncio.ensure_future(later())


async def main():
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    loop = asyncio.get_running_loop()
    # Runs until stdin closes (the test drops its handle, or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    print("SUMMARY " + json.dumps(summary), flush=True)
    await runner.cleanup()


asyncio.run(main())
