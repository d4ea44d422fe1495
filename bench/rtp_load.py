"""G.711 media for many calls from one socket, and what comes back, measured on arrival.

Why one Python process rather than SIPp's rtp_stream or baresip instances: on a 2-core box the
load generator gets one core, and what it must do there is measure. SIPp can send a pcap per
call but does not time what it receives; a baresip per call costs a process (and its audio
threads) per call. Here one socket sends 20 ms PCMU packets for every call from one paced
loop, and every packet the gateway sends back is stamped by the kernel on arrival
(SO_TIMESTAMPNS). On loopback that stamp is taken inside the gateway's own ``sendto``, so the
intervals measured are the gateway's pacing, untouched by this process's scheduling: the
generator may be late to read a packet, but never changes the time written on it.

Between those, each call sends line noise (about -55 dBFS), not digital silence: a real line
is never all zeros, and zeros would take the gateway's cheaper silence path (callgate skips
resampling digital silence); ``digital_silence=True`` measures that case instead. Once a second
(calls spread over the second) a call sends one 20 ms burst of a loud 1 kHz tone instead; the
``echo`` model returns it, and the first loud packet back gives the RTP-in -> RTP-out delay
through the gateway (jitter buffer included).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from bench.common import summarize
from callgate.media.g711 import ULAW_DECODE, ulaw_encode

_SO_TIMESTAMPNS = 35
_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32
FRAME_S = 0.020
SAMPLES = 160
SILENCE = b"\xff" * SAMPLES
_NOISE_FRAMES = 50
# A second of Gaussian noise at sigma 60 (about -55 dBFS), μ-law encoded, cycled per tick;
# seeded, so every run sends the same.
_RNG = random.Random(0)
NOISE = [ulaw_encode(array("h", (round(_RNG.gauss(0.0, 60.0)) for _ in range(SAMPLES))).tobytes())
         for _ in range(_NOISE_FRAMES)]
BURST = ulaw_encode(b"".join(
    struct.pack("<h", round(16000 * math.sin(2 * math.pi * 1000 * i / 8000)))
    for i in range(SAMPLES)))
# 1 for a μ-law byte whose sample is loud (|x| >= 4000), else 0: bytes.translate finds loud
# frames at C speed.
_LOUD = bytes(1 if abs(int(v)) >= 4000 else 0 for v in ULAW_DECODE)
_LOUD_SAMPLES = 20
_BURST_EVERY = 50  # ticks: one burst a second


@dataclass
class _Stream:
    remote: tuple[str, int]
    phase: int
    ssrc: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    seq: int = field(default_factory=lambda: int.from_bytes(os.urandom(2), "big"))
    ts: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    last_seq: int = -1
    last_at: float = 0.0
    received: int = 0      # in the current window
    lost: int = 0          # sequence gaps in the current window
    burst_sent_at: float = 0.0


class RtpLoad:
    """Sends for every added call and measures every packet that comes back."""

    def __init__(self, *, digital_silence: bool = False) -> None:
        self._filler = [SILENCE] if digital_silence else NOISE
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        for option, size in ((_SO_RCVBUFFORCE, 32 << 20), (_SO_SNDBUFFORCE, 8 << 20)):
            with contextlib.suppress(OSError):  # as root only; the default is still usable
                self.sock.setsockopt(socket.SOL_SOCKET, option, size)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._start = 0.0
        self._n = 0
        self._measuring = False
        self._errors = array("d")       # |interval - 20 ms * seq step|, seconds
        self._echo = array("d")         # burst sent -> loud packet back, seconds
        self._lateness = array("d")     # this sender's own tick lateness, seconds
        self.sent = self.send_errors = self.stray = self.reordered = 0
        self._window_start = 0.0

    # -- calls -------------------------------------------------------------------------------

    def add(self, remote: tuple[str, int]) -> None:
        self._streams[remote] = _Stream(remote, phase=len(self._streams) % _BURST_EVERY)

    def remove(self, remote: tuple[str, int]) -> None:
        self._streams.pop(remote, None)

    @property
    def calls(self) -> int:
        return len(self._streams)

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._drain)
        self._start = time.monotonic()
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._n += 1
        delay = self._start + self._n * FRAME_S - time.monotonic()
        self._timer = self._loop.call_later(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._measuring:
            self._lateness.append(now - (self._start + self._n * FRAME_S))
        burst_slot = self._n % _BURST_EVERY
        filler = self._filler[self._n % len(self._filler)]
        sendto, pack = self.sock.sendto, struct.Struct("!BBHII").pack
        for stream in self._streams.values():
            burst = stream.phase == burst_slot
            packet = pack(0x80, 0, stream.seq, stream.ts, stream.ssrc) + (
                BURST if burst else filler)
            stream.seq = (stream.seq + 1) & 0xFFFF
            stream.ts = (stream.ts + SAMPLES) & 0xFFFFFFFF
            try:
                sendto(packet, stream.remote)
            except (BlockingIOError, OSError):
                self.send_errors += 1
                continue
            self.sent += 1
            if burst:
                stream.burst_sent_at = time.time()  # the clock the kernel stamps with
        self._schedule()

    def _drain(self) -> None:
        anc = socket.CMSG_SPACE(16)
        recvmsg, streams = self.sock.recvmsg, self._streams
        measuring = self._measuring
        while True:
            try:
                data, ancdata, _, addr = recvmsg(2048, anc)
            except (BlockingIOError, InterruptedError):
                return
            stamp = time.time()
            if ancdata:
                sec, nsec = struct.unpack("qq", ancdata[0][2][:16])
                stamp = sec + nsec * 1e-9
            stream = streams.get(addr)
            if stream is None or len(data) < 12:
                self.stray += 1
                continue
            seq = (data[2] << 8) | data[3]
            if stream.last_seq >= 0:
                step = (seq - stream.last_seq) & 0xFFFF
                if step == 0 or step > 0x8000:
                    self.reordered += 1
                    continue
                if measuring:
                    self._errors.append(abs(stamp - stream.last_at - FRAME_S * step))
                    stream.lost += step - 1
            stream.last_seq, stream.last_at = seq, stamp
            if measuring:
                stream.received += 1
            if stream.burst_sent_at and data[12:].translate(_LOUD).count(1) >= _LOUD_SAMPLES:
                delay = stamp - stream.burst_sent_at
                stream.burst_sent_at = 0.0
                if measuring and 0 < delay < 1.0:
                    self._echo.append(delay)

    # -- windows -----------------------------------------------------------------------------

    def begin_window(self) -> None:
        for stream in self._streams.values():
            stream.received = stream.lost = 0
        for series in (self._errors, self._echo, self._lateness):
            del series[:]
        self.sent = self.send_errors = self.stray = self.reordered = 0
        self._window_start = time.monotonic()
        self._measuring = True

    def end_window(self) -> dict[str, Any]:
        self._measuring = False
        seconds = time.monotonic() - self._window_start
        received = sum(s.received for s in self._streams.values())
        lost = sum(s.lost for s in self._streams.values())
        expected = len(self._streams) * seconds / FRAME_S
        return {
            "window_s": round(seconds, 2),
            "packets_received": received,
            "packets_expected_by_time": round(expected),
            "delivery_ratio": round(received / expected, 5) if expected else None,
            "lost_seq_gaps": lost,
            "loss_ratio": round(lost / (received + lost), 6) if received + lost else 0.0,
            "reordered": self.reordered,
            "stray_packets": self.stray,
            "interval_error_ms": summarize([e * 1000 for e in self._errors]),
            "echo_delay_ms": summarize([e * 1000 for e in self._echo], digits=1),
            "generator_sent": self.sent,
            "generator_send_errors": self.send_errors,
            "generator_tick_lateness_ms": summarize([e * 1000 for e in self._lateness]),
        }
