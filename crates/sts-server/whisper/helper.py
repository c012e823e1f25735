"""Whisper recognition helper of the reference STS server (crates/sts-server/src/speech/whisper.rs).

The server starts this script with the Python of the venv that scripts/install-deps.sh makes
(faster-whisper, CTranslate2), one process per recogniser, and talks to it over stdin/stdout in
frames: a little-endian u32 length and that many bytes of JSON, then a little-endian u32 length
and that many bytes of binary payload (empty for everything but audio).

  server -> helper  {"op": "transcribe", "id": N, "language": "en", "prompt": "...",
                     "deadline_ms": 3000}   payload: 16 kHz mono S16LE samples
                    {"op": "ping", "id": N}
  helper -> server  {"ready": true, "model": "...", "load_ms": ..., "versions": {...}} once,
                    or {"fatal": "..."} and exit 1;
                    {"id": N, "text": "...", "ms": ..., "cpu_ms": ..., "language": "en"}
  A transcribe's "context_s" (optional) says how much of the audio's start is context: the
  end of the stream's previous fragment, there so that the words cut at the fragment's edge
  are heard whole; only the words whose middle lies after it are returned (word timestamps).
                    {"id": N, "error": "...", "expired": true|false}
                    {"id": N, "pong": true}

Short audio is encoded in a 10 s window, not Whisper's 30 s: faster-whisper pads every segment's
features to 3000 frames, which makes the encoder cost the same for a 1 s fragment as for 30 s.
Padding a segment of at most WINDOW frames to WINDOW instead (faster_whisper.transcribe's
pad_or_trim, patched below for the pinned 1.2.1) cut the encoder's CPU time by 4 for the same
word error rate on the fixture's sentences (base: 10.7 % vs 11.9 %, 0.40 s vs 1.52 s of CPU per
sentence; a 5 s window doubled the errors). Longer segments keep the full window.

A job whose deadline (milliseconds from its arrival here) has passed is not started; one that
runs past it stops between segments. The helper dies with the server: it asks the kernel for
SIGKILL when its parent dies (PR_SET_PDEATHSIG), exits when that parent is already gone, and
exits at once when stdin closes (even in the middle of a transcription).
"""

import ctypes
import json
import os
import queue
import signal
import struct
import sys
import threading
import time

MAX_FRAME = 64 << 20


def die_with_parent():
    parent = os.environ.get("DUBBING_WHISPER_PARENT")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    # The parent may have died before the prctl: then we were re-parented already.
    if parent is not None and str(os.getppid()) != parent:
        os._exit(0)


die_with_parent()

out = sys.stdout.buffer
out_lock = threading.Lock()


def send(obj):
    data = json.dumps(obj).encode()
    with out_lock:
        out.write(struct.pack("<I", len(data)) + data + struct.pack("<I", 0))
        out.flush()


def read_exact(stream, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(stream):
    head = read_exact(stream, 4)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    msg = json.loads(read_exact(stream, n) or b"null")
    head = read_exact(stream, 4)
    if head is None:
        return None
    (m,) = struct.unpack("<I", head)
    if m > MAX_FRAME:
        raise ValueError(f"payload of {m} bytes")
    payload = read_exact(stream, m) if m else b""
    if payload is None:
        return None
    return msg, payload


jobs = queue.Queue()


def reader():
    """Reads frames from stdin; answers pings at once; exits the process on EOF."""
    stdin = sys.stdin.buffer
    try:
        while True:
            frame = read_frame(stdin)
            if frame is None:
                break
            msg, payload = frame
            if not isinstance(msg, dict):
                continue
            if msg.get("op") == "ping":
                send({"id": msg.get("id"), "pong": True, "queued": jobs.qsize()})
            else:
                msg["_arrived"] = time.monotonic()
                jobs.put((msg, payload))
    except Exception as e:  # a broken frame: the server restarts us
        print(f"whisper helper: bad input: {e}", file=sys.stderr, flush=True)
    os._exit(0)


FULL_WINDOW = 3000  # frames of 10 ms: Whisper's 30 s


def use_short_window(transcribe_module, window):
    """Pads segments of at most `window` frames to `window` instead of 3000."""
    original = transcribe_module.pad_or_trim

    def pad_or_trim(array, length=FULL_WINDOW, *, axis=-1):
        if length == FULL_WINDOW and array.shape[axis] <= window:
            length = window
        return original(array, length, axis=axis)

    transcribe_module.pad_or_trim = pad_or_trim


def main():
    model_dir = sys.argv[1]
    name = sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    window_frames = int(float(sys.argv[4]) * 100) if len(sys.argv) > 4 else 1000
    t0 = time.monotonic()
    try:
        import ctranslate2
        import faster_whisper
        import faster_whisper.transcribe
        import numpy as np
        from faster_whisper import WhisperModel

        if 0 < window_frames < FULL_WINDOW:
            use_short_window(faster_whisper.transcribe, window_frames)

        model = WhisperModel(
            model_dir,
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
        # The first transcription is slower (allocations, caches): make it before "ready".
        list(model.transcribe(np.zeros(16000, dtype=np.float32), beam_size=1,
                              without_timestamps=True, language="en" if model.model.is_multilingual else None)[0])
    except Exception as e:
        send({"fatal": f"cannot load the Whisper model {name} from {model_dir}: {e}"})
        sys.exit(1)
    threading.Thread(target=reader, name="stdin", daemon=True).start()
    send(
        {
            "ready": True,
            "model": name,
            "multilingual": model.model.is_multilingual,
            "load_ms": round((time.monotonic() - t0) * 1000.0, 1),
            "window_s": window_frames / 100.0,
            "versions": {
                "faster_whisper": faster_whisper.__version__,
                "ctranslate2": ctranslate2.__version__,
            },
        }
    )
    while True:
        msg, payload = jobs.get()
        job_id = msg.get("id")
        deadline = msg["_arrived"] + float(msg.get("deadline_ms", 30000)) / 1000.0
        if time.monotonic() >= deadline:
            send({"id": job_id, "error": "deadline passed before recognition started", "expired": True})
            continue
        t = time.monotonic()
        c = time.process_time()
        try:
            audio = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
            language = msg.get("language") or None
            if not model.model.is_multilingual:
                language = None
            context_s = max(0.0, float(msg.get("context_s", 0.0)))
            segments, info = model.transcribe(
                audio,
                language=language,
                task="transcribe",
                beam_size=int(msg.get("beam_size", 5)),
                initial_prompt=msg.get("prompt") or None,
                condition_on_previous_text=False,
                without_timestamps=context_s == 0.0,
                word_timestamps=context_s > 0.0,
                vad_filter=False,
            )
            texts = []
            expired = False
            for s in segments:
                if context_s > 0.0:
                    new = [w.word for w in (s.words or []) if (w.start + w.end) / 2.0 >= context_s]
                    texts.append("".join(new).strip())
                else:
                    texts.append(s.text.strip())
                if time.monotonic() >= deadline:
                    expired = True
                    break
            if expired:
                send({"id": job_id, "error": "deadline passed during recognition", "expired": True})
                continue
            send(
                {
                    "id": job_id,
                    "text": " ".join(x for x in texts if x),
                    "language": info.language,
                    "ms": round((time.monotonic() - t) * 1000.0, 1),
                    "cpu_ms": round((time.process_time() - c) * 1000.0, 1),
                }
            )
        except Exception as e:
            send({"id": job_id, "error": f"recognition failed: {e}", "expired": False})


if __name__ == "__main__":
    main()
