"""A live phone call for the end-to-end tests: a headless baresip caller and what it heard.

baresip (Debian ``baresip-core``) places a real SIP call to the gateway with PCMU. What it says
comes from a WAV file (the ``aufile`` source: 8 kHz mono PCM16; the source can be switched to
another file mid-call, which is how a test makes the caller speak at a moment of its choosing);
what it sends and receives is dumped by the ``sndfile`` filter to ``dump-…-enc.wav`` (sent)
and ``dump-…-dec.wav`` (received), both starting when the call's audio starts, so the two
files share one clock to within a few tens of milliseconds (through the echo engine the round
trip measures the same before and after source switches). The ``ctrl_tcp`` module takes
commands (``ausrc``, ``hangup``, ``quit``) as netstring-framed JSON.

Note: when an ``aufile`` source reaches the end of its file, baresip hangs the call up; pad
the last file with silence for as long as the call should stay up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.e2e.harness import PROJECT_ID, Gateway, free_port
from tests.engines.audio import espeak

RATE = 8000  # PCMU: what the caller sends and receives
FRAME_MS = 20


# --- audio files ------------------------------------------------------------------------------

def speech(text: str, *, lead: float = 0.0, tail: float = 0.0) -> np.ndarray[Any, Any]:
    """espeak-ng saying ``text`` at 8 kHz, with ``lead``/``tail`` seconds of silence."""
    pcm = np.frombuffer(espeak(text, RATE), dtype="<i2")
    return np.concatenate([silence(lead), pcm, silence(tail)]).astype("<i2")


def silence(seconds: float) -> np.ndarray[Any, Any]:
    return np.zeros(int(seconds * RATE), dtype="<i2")


def write_wav(path: Path, samples: np.ndarray[Any, Any], rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray[Any, Any], int]:
    with wave.open(str(path)) as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return data, wav.getframerate()


# --- audio analysis ---------------------------------------------------------------------------

def frame_rms(samples: np.ndarray[Any, Any], rate: int = RATE) -> np.ndarray[Any, Any]:
    """RMS of each 20 ms frame."""
    size = rate * FRAME_MS // 1000
    count = len(samples) // size
    frames = samples[:count * size].astype(np.float64).reshape(count, size)
    return np.sqrt((frames**2).mean(axis=1)) if count else np.zeros(0)


def voiced_spans(samples: np.ndarray[Any, Any], rate: int = RATE, *, threshold: float = 300.0,
                 gap: float = 0.4, min_length: float = 0.1) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches louder than ``threshold`` RMS; pauses shorter
    than ``gap`` (between words) do not split a stretch."""
    loud = frame_rms(samples, rate) > threshold
    spans: list[tuple[float, float]] = []
    step = FRAME_MS / 1000
    for index in np.flatnonzero(loud):
        start, end = index * step, (index + 1) * step
        if spans and start - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return [(round(float(a), 2), round(float(b), 2)) for a, b in spans if b - a >= min_length]


def transcribe(samples: np.ndarray[Any, Any], rate: int = RATE) -> str:
    """What Whisper tiny (callgate's own STT stage) hears in ``samples``."""
    from callgate.engines.stt import FAST_OPTIONS, transcribe_job

    # The worker's job, run here in the test process: the test is the listener, not the gateway.
    args = {"model": "tiny", "threads": 2, "language": "en", "options": FAST_OPTIONS,
            "pcm": samples.astype("<i2").tobytes(), "sample_rate": rate}
    return "".join(transcribe_job(args, threading.Event())).strip()


# --- the gateway's log ------------------------------------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def log_events(gateway: Gateway, name: str) -> list[dict[str, str]]:
    """The fields of each ``event=name`` line the gateway logged (text format)."""
    found = []
    for line in gateway.events(name):
        fields = {}
        for key, value in _FIELD.findall(line):
            fields[key] = json.loads(value) if value.startswith('"') else value
        found.append(fields)
    return found


def wait_logged(gateway: Gateway, name: str, timeout: float) -> dict[str, str]:
    """The fields of the first ``event=name`` line, once the gateway has logged it."""
    deadline = time.monotonic() + timeout
    while not (found := log_events(gateway, name)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway never logged {name} within {timeout:g}s:\n"
                                 + "\n".join(gateway.log_lines()[-40:]))
        time.sleep(0.05)
    return found[0]


# --- the caller -------------------------------------------------------------------------------

_CONFIG = """\
poll_method\t\tpoll
sip_listen\t\t127.0.0.1:0
net_interface\t\t127.0.0.1
module_path\t\t{module_path}
module\t\t\tg711.so
module\t\t\taufile.so
module\t\t\tsndfile.so
module\t\t\taubridge.so
module_app\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
audio_source\t\taufile,{source}
audio_player\t\taubridge,callgate-test
audio_alert\t\taubridge,callgate-test
snd_path\t\t{dumps}
rtp_ports\t\t{rtp_low}-{rtp_high}
"""


@dataclass
class Caller:
    """A running baresip with one outgoing call (see :func:`baresip_call`)."""

    folder: Path
    process: subprocess.Popen[bytes]
    ctrl_port: int

    @property
    def log(self) -> str:
        return (self.folder / "baresip.log").read_text(errors="replace")

    def command(self, name: str, params: str = "") -> dict[str, Any]:
        """Run one baresip command over ctrl_tcp; its response (events are skipped)."""
        body = json.dumps({"command": name, "params": params, "token": name}).encode()
        with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=5) as conn:
            conn.sendall(b"%d:%s," % (len(body), body))
            data = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                for message in _netstrings(data):
                    if message.get("response"):
                        return message
        raise AssertionError(f"baresip did not answer {name!r}: {data!r}")

    def say(self, wav: Path) -> None:
        """Switch the caller's audio source to ``wav`` (it starts playing at once)."""
        answer = self.command("ausrc", f"aufile,{wav}")
        assert answer.get("ok"), answer

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                raise AssertionError(f"baresip never logged {text!r}:\n{self.log[-3000:]}")
            if self.process.poll() is not None and text not in self.log:
                raise AssertionError(f"baresip exited before {text!r}:\n{self.log[-3000:]}")
            time.sleep(0.05)

    def wait_ended(self, timeout: float) -> None:
        self.wait_for("terminated (duration", timeout)

    def dump(self, kind: str) -> tuple[np.ndarray[Any, Any], int]:
        """``"enc"``: what the caller sent; ``"dec"``: what it received."""
        files = sorted((self.folder / "dumps").glob(f"dump-*-{kind}.wav"))
        assert files, f"baresip wrote no {kind} dump:\n{self.log[-3000:]}"
        return read_wav(files[-1])

    def sent(self) -> np.ndarray[Any, Any]:
        samples, rate = self.dump("enc")
        assert rate == RATE, rate
        return samples

    def received(self) -> np.ndarray[Any, Any]:
        samples, rate = self.dump("dec")
        assert rate == RATE, rate
        return samples


@functools.cache
def _module_path() -> str:
    """Where this baresip build keeps its modules: the ``module_path`` of the template
    config it writes into an empty config folder on start."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config"
        process = subprocess.Popen(["baresip", "-f", folder], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while not (match := re.search(r"^module_path\s+(\S+)", _read(config), re.M)):
                assert time.monotonic() < deadline, "baresip wrote no template config"
                time.sleep(0.02)
        finally:
            process.kill()
            process.wait(timeout=5)
    return match.group(1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _netstrings(data: bytes) -> Iterator[dict[str, Any]]:
    while data:
        length, sep, rest = data.partition(b":")
        if not sep or not length.isdigit() or len(rest) < int(length) + 1:
            return
        yield json.loads(rest[:int(length)])
        data = rest[int(length) + 1:]


@contextlib.contextmanager
def baresip_call(gateway: Gateway, folder: Path, source: Path, *,
                 user: str = PROJECT_ID, answer_timeout: float = 30.0,
                 sip_port: int | None = None) -> Iterator[Caller]:
    """Dial ``sip:user@gateway`` from a fresh baresip saying ``source``; yields once the call
    is established. The call ends when the source file ends, on ``hangup``, or on leaving.
    ``sip_port``: dial that loopback port instead (something in front of the gateway)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dumps").mkdir(exist_ok=True)
    ctrl_port = free_port(socket.SOCK_STREAM, both=False)
    rtp_low = 40000 + (os.getpid() * 97 + ctrl_port) % 9000 // 2 * 2
    (folder / "config").write_text(_CONFIG.format(
        module_path=_module_path(), ctrl_port=ctrl_port, source=source, dumps=folder / "dumps",
        rtp_low=rtp_low, rtp_high=rtp_low + 40))
    (folder / "accounts").write_text("<sip:caller@127.0.0.1>;regint=0\n")
    target = f"sip:{user}@127.0.0.1:{sip_port or gateway.sip_port}"
    with (folder / "baresip.log").open("wb") as log:
        process = subprocess.Popen(["baresip", "-v", "-f", str(folder), "-e", f"/dial {target}"],
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=folder,
                                   start_new_session=True)
    caller = Caller(folder, process, ctrl_port)
    try:
        caller.wait_for("Call established", answer_timeout)
        yield caller
    finally:
        _stop(caller)


def _stop(caller: Caller) -> None:
    process = caller.process
    if process.poll() is None:
        with contextlib.suppress(OSError, AssertionError):
            caller.command("quit")
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
