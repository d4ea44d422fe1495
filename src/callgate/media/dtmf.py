"""DTMF: RFC 4733 telephone-events over RTP, and SIP INFO bodies.

Receiving: one key press reaches us as many packets sharing one RTP timestamp (the event
start, RFC 4733 §2.5.1.1): a first one (marker set), updates with a growing duration, and the
final one with the E bit, usually sent three times (§2.5.1.4). :class:`DtmfReceiver` reports
each press exactly once, when it ends, and in the order the presses started. A press also ends
when the next event starts or, if all its end packets were lost, after ``timeout`` seconds
without a packet for it (``poll``/``deadline``).

Sending: :class:`DtmfSender` turns a key press into the payloads to send, one per packet
interval: the first with the marker bit, updates every ``interval_ms``, then the end packet
three times. All of them carry the event's start timestamp; each gets its own sequence number.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from callgate.media.rtp import RtpPacket

__all__ = [
    "DIGITS",
    "DtmfDigit",
    "DtmfPayload",
    "DtmfReceiver",
    "DtmfSender",
    "parse_dtmf_relay",
]

DIGITS = "0123456789*#ABCD"  # RFC 4733 §3.2: events 0..15; 16 (flash) is not a digit
_EVENT = struct.Struct("!BBH")
_MAX_DURATION = 0xFFFF


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str  # one of DIGITS
    duration_ms: int


@dataclass(frozen=True, slots=True)
class DtmfPayload:
    """One telephone-event packet to send: RTP marker bit, payload, and whether it ends it."""

    marker: bool
    payload: bytes
    end: bool


@dataclass(slots=True)
class _Event:
    timestamp: int
    code: int
    duration: int  # timestamp units, the largest seen
    last_seen: float


class DtmfReceiver:
    def __init__(self, clock_rate: int = 8000, *, timeout: float = 0.5) -> None:
        self.clock_rate = clock_rate
        self.timeout = timeout
        self._ssrc: int | None = None
        self._current: _Event | None = None
        # Start timestamps of events already reported, so that their late retransmissions
        # (the extra end packets, delayed updates) are not reported again.
        self._done: deque[int] = deque(maxlen=16)

    def feed(self, packet: RtpPacket, now: float) -> list[DtmfDigit]:
        """Process one telephone-event packet (already matched on payload type)."""
        if len(packet.payload) < 4:
            return []  # §2.3: an event payload is 4 octets; anything shorter is not one
        code, flags, duration = _EVENT.unpack_from(packet.payload)
        out: list[DtmfDigit] = []
        if packet.ssrc != self._ssrc:
            out += self._finish()
            self._ssrc = packet.ssrc
            self._done.clear()
        ts = packet.timestamp
        if ts in self._done:
            return out
        current = self._current
        if current is not None and current.timestamp != ts:
            if (ts - current.timestamp) & 0x80000000:
                return out  # older than the event in progress: a stray late packet
            out += self._finish()  # a new event starts: the previous one ended (§2.5.2.2)
            current = None
        if current is None:
            current = self._current = _Event(ts, code, duration, now)
        else:
            current.duration = max(current.duration, duration)
            current.last_seen = now
        if flags & 0x80:  # E bit
            out += self._finish()
        return out

    def poll(self, now: float) -> list[DtmfDigit]:
        """Report an event whose end packets never came, once ``timeout`` has passed."""
        current = self._current
        if current is not None and now - current.last_seen >= self.timeout:
            return self._finish()
        return []

    def deadline(self) -> float | None:
        """When ``poll`` next has something to do, or None."""
        return None if self._current is None else self._current.last_seen + self.timeout

    def _finish(self) -> list[DtmfDigit]:
        event, self._current = self._current, None
        if event is None:
            return []
        self._done.append(event.timestamp)
        if event.code >= len(DIGITS):
            return []  # flash and other non-digit events are ignored
        return [DtmfDigit(DIGITS[event.code], event.duration * 1000 // self.clock_rate)]


class DtmfSender:
    def __init__(
        self, clock_rate: int = 8000, *, interval_ms: int = 20, volume: int = 10
    ) -> None:
        if not 0 <= volume <= 63:
            raise ValueError("volume is 0..63 (dBm0 below zero)")
        self.clock_rate = clock_rate
        self.interval_ms = interval_ms
        self.volume = volume

    def payloads(self, digit: str, duration_ms: int = 100) -> list[DtmfPayload]:
        """The packets for one key press, in order, one per ``interval_ms``."""
        code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
        if code < 0:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        step = self.clock_rate * self.interval_ms // 1000
        total = min(self.clock_rate * duration_ms // 1000, _MAX_DURATION)
        if total < step:
            raise ValueError(f"duration must be at least {self.interval_ms} ms")
        out: list[DtmfPayload] = []
        elapsed = step
        while elapsed < total:
            out.append(DtmfPayload(not out, _EVENT.pack(code, self.volume, elapsed), False))
            elapsed += step
        final = _EVENT.pack(code, 0x80 | self.volume, total)
        out += [DtmfPayload(not out, final, True)] + [DtmfPayload(False, final, True)] * 2
        return out

    def duration_samples(self, duration_ms: int) -> int:
        """RTP timestamp units the event occupies (advance the media clock by this after)."""
        return min(self.clock_rate * duration_ms // 1000, _MAX_DURATION)


_SIGNALS = {str(i): d for i, d in enumerate(DIGITS)}  # "Signal=10" is '*', 11 is '#' ...


def parse_dtmf_relay(body: bytes) -> DtmfDigit | None:
    """A digit from a SIP INFO body: ``application/dtmf-relay`` (``Signal=5`` and
    ``Duration=160`` lines, duration in ms) or ``application/dtmf`` (just the digit).
    Returns None for flash, unknown signals and malformed bodies."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if not fields:  # application/dtmf: the body is the key itself (or its event number)
        signal = text
        duration = 0
    else:
        signal = fields.get("signal", "")
        raw = fields.get("duration", "")
        duration = int(raw) if raw.isdigit() else 0
    digit = _SIGNALS.get(signal) or (signal.upper() if len(signal) == 1 else "")
    if not digit or digit not in DIGITS:
        return None
    return DtmfDigit(digit, duration)
