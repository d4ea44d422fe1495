"""Paced sending: one shared 20 ms tick for every stream on a loop, and each stream's sender.

A timer per call costs a heap entry, a handle and a wake-up per call per 20 ms; one tick that walks
a list of streams costs one wake-up per 20 ms in total, which is what lets one core carry hundreds
of calls (DESIGN.md, "Capacity on one core").

The schedule is absolute: tick ``n`` is due at ``start + n * interval`` on the monotonic clock, so
a late wake-up never pushes the later ticks back (no drift accumulates). On Linux the wake-up comes
from a ``timerfd`` armed once with an absolute periodic expiry and watched by the loop: the kernel
hrtimer wakes the loop within tens of microseconds. Elsewhere, ``loop.call_at`` is re-armed each
tick for the next absolute deadline; that is coarser because uvloop's clock and timers count whole
milliseconds. When the loop falls more than ``max_lag_ticks`` behind (a blocked loop, a suspended
VM) the missed ticks are skipped and counted rather than fired in a burst: a burst would put
several RTP packets of every call on the wire back to back, which far-end jitter buffers see as
jitter. A smaller lag is caught up tick by tick.

:class:`PacedSender` is the sans-IO sending half of one stream: PCM waits in a queue of exact
codec frames, and each tick takes one RTP packet from it: the next frame, a telephone-event,
or encoded silence when the queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import sys
import time
from array import array
from collections import deque
from typing import Protocol

from callgate.log import event
from callgate.media.codecs import Codec
from callgate.media.dtmf import DtmfPayload, DtmfSender
from callgate.media.resample import Resampler
from callgate.media.rtp import RtpSequencer

logger = logging.getLogger(__name__)

# Interval errors kept for the percentiles: the last ~80 s of ticks at 20 ms.
_ERROR_WINDOW = 4096
_MAX_QUEUE_S = 60         # outbound audio held at most (a long reply handed over at once)
_PARTIAL_WAIT_TICKS = 3   # a partial last frame waits this long for more before being padded
_DTMF_GAP_TICKS = 2       # audio frames between two telephone-events


class TickClient(Protocol):
    """What the tick drives, in two phases: every client's ``send_due`` (put the packet
    prepared since the last tick on the wire) runs before any client's ``on_tick`` (pop,
    decode, hand audio up). Otherwise the last call's packet would leave only after every other
    call's receive work, and pacing error would grow with the number of calls."""

    def send_due(self, now: float) -> None: ...

    def on_tick(self, now: float) -> None: ...


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded once: the tick re-arms a timerfd whenever calls come back after an idle moment,
    # and dlopen on each re-arm showed in the call-setup profile.
    return ctypes.CDLL(None, use_errno=True)


class _TimerFd:
    """A periodic CLOCK_MONOTONIC timerfd(2) (the clock ``time.monotonic()`` reads)."""

    _CLOCK_MONOTONIC = 1
    _TFD_TIMER_ABSTIME = 1

    def __init__(self) -> None:
        libc = _libc()
        self._settime = libc.timerfd_settime
        self.fd: int = libc.timerfd_create(self._CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.armed = False

    def arm(self, first: float, interval: float) -> None:
        """Expire at monotonic time ``first``, then every ``interval`` seconds."""
        sec, frac = divmod(first, 1.0)
        self._set(_Itimerspec(_Timespec(int(interval), round((interval % 1.0) * 1e9)),
                              _Timespec(int(sec), round(frac * 1e9))))
        self.armed = True

    def disarm(self) -> None:
        self._set(_Itimerspec(_Timespec(0, 0), _Timespec(0, 0)))  # a zero value disarms
        self.armed = False
        self.drain()

    def _set(self, spec: _Itimerspec) -> None:
        if self._settime(self.fd, self._TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)  # the expiry count; the schedule arithmetic does the counting

    def close(self) -> None:
        os.close(self.fd)


class SendTick:
    """A single periodic tick that calls ``on_tick(now)`` on every registered client.

    ``now`` is ``time.monotonic()`` read once at the start of the tick. The tick arms itself when
    the first client registers and disarms when the last one leaves, so an idle gateway has no
    timer running. Register and unregister are safe from inside ``on_tick``: the client tuple is
    replaced rather than mutated, so the walk in progress is not disturbed (and the walk itself
    allocates nothing).
    """

    def __init__(self, interval: float = 0.020, *, max_lag_ticks: int = 3,
                 use_timerfd: bool | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_lag_ticks < 1:
            raise ValueError("max_lag_ticks must be at least 1")
        self.interval = interval
        self.max_lag_ticks = max_lag_ticks
        self._use_timerfd = sys.platform == "linux" if use_timerfd is None else use_timerfd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: tuple[TickClient, ...] = ()
        self._handle: asyncio.TimerHandle | None = None
        self._timerfd: _TimerFd | None = None
        self._generation = 0  # bumped on every (re)arm so a stale timer callback does nothing
        self._start = 0.0
        self._n = 0
        self.ticks = 0
        self.skipped = 0
        self.client_errors = 0
        self.busy_seconds = 0.0  # wall time spent inside on_tick callbacks
        self._errors = array("d", bytes(8 * _ERROR_WINDOW))
        self._error_count = 0

    # -- registration -------------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def running(self) -> bool:
        return self._handle is not None or (self._timerfd is not None and self._timerfd.armed)

    @property
    def timer_kind(self) -> str:
        """``timerfd`` or ``call_at``: what wakes the tick (the last one armed)."""
        return "timerfd" if self._use_timerfd else "call_at"

    def register(self, client: TickClient) -> None:
        if client in self._clients:
            return
        self._clients = (*self._clients, client)
        if not self.running:
            self._arm()

    def unregister(self, client: TickClient) -> None:
        if client not in self._clients:
            return
        self._clients = tuple(c for c in self._clients if c is not client)
        if not self._clients:
            self._idle()

    def stop(self) -> None:
        """Disarm the timer and release it (registering a client again re-arms it)."""
        self._idle()
        if self._timerfd is not None:
            self._timerfd.close()
            self._timerfd = None

    def _idle(self) -> None:
        # The timerfd stays open, disarmed, for the next call: calls come and go all day, and
        # a new one per re-arm (create, add a reader, close) showed in the call-setup profile.
        self._generation += 1
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._timerfd is not None and self._timerfd.armed:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._timerfd.fd)
            self._timerfd.disarm()

    # -- schedule -----------------------------------------------------------------------------

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._generation += 1
        self._start = time.monotonic() + self.interval
        self._n = 0
        if self._use_timerfd:
            try:
                if self._timerfd is None:
                    self._timerfd = _TimerFd()
                self._timerfd.arm(self._start, self.interval)
                loop.add_reader(self._timerfd.fd, self._on_timerfd)
                return
            except (OSError, AttributeError, NotImplementedError) as exc:
                if self._timerfd is not None:
                    self._timerfd.close()
                    self._timerfd = None
                self._use_timerfd = False
                event(logger, "media.tick.timerfd_unavailable", level=logging.WARNING,
                      error=str(exc))
        self._handle = loop.call_at(loop.time() + self.interval, self._on_call_at,
                                    self._generation)

    def _on_timerfd(self) -> None:
        if self._timerfd is None:
            return
        self._timerfd.drain()
        self._run_due(self._generation)

    def _on_call_at(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._run_due(generation)
        if generation == self._generation and self._loop is not None:
            # call_at with an absolute deadline, converted from the precise monotonic clock.
            delay = self._start + self._n * self.interval - time.monotonic()
            self._handle = self._loop.call_at(self._loop.time() + delay, self._on_call_at,
                                              generation)

    def _run_due(self, generation: int) -> None:
        """Fire every tick that is due now (at most ``max_lag_ticks``; older ones are skipped)."""
        interval = self.interval
        now = time.monotonic()
        lag = now - (self._start + self._n * interval)
        if lag > self.max_lag_ticks * interval:
            behind = int(lag / interval)
            self.skipped += behind
            self._n += behind
            event(logger, "media.tick.skipped", level=logging.WARNING, ticks=behind,
                  lag_ms=round(lag * 1000, 1))
        # Fire the due tick(s); 0.2 ms of slack absorbs a wake-up a hair before the deadline.
        while generation == self._generation:
            due = self._start + self._n * interval
            if now < due - 0.0002:
                break
            self._fire(now, due)
            now = time.monotonic()

    def _fire(self, now: float, due: float) -> None:
        self._errors[self._error_count % _ERROR_WINDOW] = abs(now - due)
        self._error_count += 1
        self.ticks += 1
        self._n += 1
        clients = self._clients
        for phase in ("send_due", "on_tick"):
            for client in clients:
                try:
                    getattr(client, phase)(now)
                except Exception:
                    # One broken stream must not stop the audio of every other call.
                    self.client_errors += 1
                    logger.exception("media.tick.client_error")
        self.busy_seconds += time.monotonic() - now

    # -- statistics ---------------------------------------------------------------------------

    def reset_stats(self) -> None:
        self._error_count = 0
        self.ticks = 0
        self.skipped = 0
        self.client_errors = 0
        self.busy_seconds = 0.0

    def error_percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of |actual - ideal| tick time over the recent window, in s."""
        n = min(self._error_count, _ERROR_WINDOW)
        if n == 0:
            return 0.0
        ordered = sorted(self._errors[:n])
        return ordered[min(n - 1, int(q * n))]

    @property
    def stats(self) -> dict[str, float | int | str]:
        n = min(self._error_count, _ERROR_WINDOW)
        return {
            "timer": self.timer_kind,
            "clients": len(self._clients),
            "ticks": self.ticks,
            "skipped": self.skipped,
            "client_errors": self.client_errors,
            "busy_seconds": self.busy_seconds,
            "error_p50_ms": self.error_percentile(0.50) * 1000,
            "error_p99_ms": self.error_percentile(0.99) * 1000,
            "error_max_ms": (max(self._errors[:n]) * 1000) if n else 0.0,
        }


class PacedSender:
    """The sending half of one stream, sans-IO: ``packet()`` once per tick gives the RTP
    packet to send (before SRTP); ``skip()`` instead lets media time pass unsent (hold)."""

    def __init__(self) -> None:
        self.rtp = RtpSequencer()  # random SSRC, sequence and timestamp (RFC 3550 §5.1)
        self._dtmf = DtmfSender()
        self._codec: Codec | None = None
        self._resampler: Resampler | None = None
        self._pt = self._dtmf_pt = -1
        self._frame = 0          # bytes of PCM per frame at the codec rate
        self._samples = 0        # RTP timestamp units per frame
        self._silence_pcm = b""
        self._silence_payload: bytes | None = None
        self._fifo = bytearray()
        self._talkspurt = False
        self._partial_ticks = 0
        self._flush = False
        self._dtmf_queue: deque[list[DtmfPayload]] = deque()
        self._dtmf_event: list[DtmfPayload] = []
        self._dtmf_index = self._dtmf_ts = self._dtmf_gap = 0
        self.comfort_frames = self.overflows = self.dtmf_sent = 0

    def configure(self, codec: Codec, payload_type: int, dtmf_payload_type: int | None,
                  pcm_rate: int) -> None:
        """(Re)configure; queued audio survives unless the codec or PCM rate changed."""
        if codec is not self._codec or self._resampler is None or (
                self._resampler.in_rate != pcm_rate):
            self._fifo.clear()
            # The steady mode, not the cheaper bursty one: audio that arrives in real time
            # (echo, an upstream Realtime server) would otherwise run dry in the bursts'
            # gaps and get a comfort-silence frame in the middle of speech (see resample.py).
            self._resampler = Resampler(pcm_rate, codec.sample_rate)
        if codec is not self._codec:
            self._codec = codec
            self._frame = codec.sample_width * codec.frame_samples
            self._samples = codec.clock_rate * codec.frame_samples // codec.sample_rate
            self._silence_pcm = codec.silence
            # G.711 is stateless: one encoded silence frame serves the whole call. Stateful
            # coders (G.722 ADPCM, Opus) encode every frame to stay in step with the decoder.
            self._silence_payload = (codec.encode(self._silence_pcm)
                                     if codec.name in ("PCMU", "PCMA") else None)
        self._pt = payload_type
        self._dtmf_pt = -1 if dtmf_payload_type is None else dtmf_payload_type

    # -- input --------------------------------------------------------------------------------

    def queue_audio(self, pcm: bytes, *, flush: bool = False) -> None:
        resampler = self._resampler
        if resampler is None:
            raise RuntimeError("sender not configured")
        data = resampler.process(pcm) if pcm else b""
        if flush:
            data += resampler.flush()
            self._flush = True
        room = _MAX_QUEUE_S * 50 * self._frame - len(self._fifo)
        if len(data) > room:
            self.overflows += 1
            data = data[:max(0, room)]
        self._fifo += data

    def clear(self) -> int:
        """Drop queued audio (barge-in); returns the milliseconds dropped."""
        dropped = self.queued_ms
        self._fifo.clear()
        self._partial_ticks = 0
        self._flush = False
        if self._resampler is not None:
            self._resampler.reset()
        return dropped

    @property
    def queued_ms(self) -> int:
        return len(self._fifo) * 20 // self._frame if self._frame else 0

    def queue_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        if self._dtmf_pt < 0:
            raise RuntimeError("telephone-event was not negotiated")
        self._dtmf_queue.append(self._dtmf.payloads(digit, duration_ms))

    # -- output, once per tick ----------------------------------------------------------------

    def skip(self, frames: int = 1) -> None:
        """Ticks without sending: media time runs on; the next packet starts a talkspurt."""
        self.rtp.skip(self._samples * frames)
        self._talkspurt = False

    def packet(self) -> bytes:
        """The RTP packet for this tick."""
        codec = self._codec
        if codec is None:
            raise RuntimeError("sender not configured")
        if self._dtmf_gap:
            self._dtmf_gap -= 1
        elif self._dtmf_event or self._dtmf_queue:
            return self._dtmf_packet()
        fifo, n = self._fifo, self._frame
        pcm: bytes | None = None
        if len(fifo) >= n:
            pcm = bytes(fifo[:n])
            del fifo[:n]
            self._partial_ticks = 0
        elif fifo:
            self._partial_ticks += 1
            if self._flush or self._partial_ticks >= _PARTIAL_WAIT_TICKS:
                pcm = bytes(fifo) + self._silence_pcm[len(fifo):]
                fifo.clear()
                self._partial_ticks = 0
        if not fifo:
            self._flush = False
        if pcm is not None:
            if not self._talkspurt:
                self.rtp.start_talkspurt()  # RFC 3551 §4.1: marker on the first after silence
                self._talkspurt = True
            payload = codec.encode(pcm)
        else:
            self._talkspurt = False
            self.comfort_frames += 1
            payload = self._silence_payload or codec.encode(self._silence_pcm)
        return self.rtp.frame(self._pt, payload, self._samples).to_bytes()

    def _dtmf_packet(self) -> bytes:
        rtp = self.rtp
        if not self._dtmf_event:
            self._dtmf_event = self._dtmf_queue.popleft()
            self._dtmf_index = 0
            self._dtmf_ts = rtp.timestamp  # RFC 4733 §2.5.1.1: all packets carry the start
        item = self._dtmf_event[self._dtmf_index]
        self._dtmf_index += 1
        packet = rtp.packet(self._dtmf_pt, item.payload, marker=item.marker,
                            timestamp=self._dtmf_ts)
        rtp.advance(self._samples)
        if self._dtmf_index == len(self._dtmf_event):
            self._dtmf_event = []
            self.dtmf_sent += 1
            self._dtmf_gap = _DTMF_GAP_TICKS
            self._talkspurt = False  # the audio after an event starts a talkspurt
        return packet.to_bytes()
