"""A call's recording: one stereo WAV file, the caller on the left, the agent on the right.

Both channels run on the call's clock. The caller's channel advances one frame every 20 ms
tick (the media stream delivers silence when nothing arrives), so it is the clock. The
agent's audio arrives in bursts, faster than real time, and the line plays it out paced:
each burst is placed where the paced line would start it (now, or where the queued audio
ends), and a barge-in that clears the line drops whatever had not been played yet. The file
is written as the call runs, in half-second blocks, and finished (its sizes filled in) at
hang-up; a write error stops the recording, never the call.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from callgate.log import event

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
_HEADER = 44


class StereoRecorder:
    def __init__(self, path: Path, rate: int, *, call_id: str,
                 on_error: Callable[[], None] | None = None) -> None:
        self.path = path
        self.rate = rate
        self.call_id = call_id
        self._on_error = on_error
        self._caller = bytearray()   # caller samples not yet written
        self._agent = bytearray()    # agent samples from the file's end on
        self._written = 0            # stereo frames in the file
        self._flush_bytes = int(rate * FLUSH_SECONDS) * 2
        self.failed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("wb")
        self._file.write(_wav_header(rate, 0))

    @property
    def seconds(self) -> float:
        return (self._written + len(self._caller) // 2) / self.rate

    def caller(self, pcm: bytes) -> None:
        """One frame of what the caller said (PCM16 mono at ``rate``), every tick."""
        if self.failed:
            return
        self._caller += pcm
        if len(self._caller) >= self._flush_bytes:
            self._flush()

    def agent(self, pcm: bytes) -> None:
        """Agent audio queued for the line: it plays after what is queued already."""
        if self.failed:
            return
        now = len(self._caller)
        if len(self._agent) < now:
            self._agent += bytes(now - len(self._agent))
        self._agent += pcm

    def cleared(self) -> None:
        """The line dropped its queued audio (barge-in): what had not played never will."""
        del self._agent[len(self._caller):]

    def close(self) -> None:
        """Write what is left and fill in the sizes; the file is complete after this."""
        if self._file.closed:
            return
        try:
            if not self.failed:
                self._flush()
            self._file.seek(0)
            self._file.write(_wav_header(self.rate, self._written))
            self._file.close()
        except OSError as exc:
            self._fail(exc)
            with contextlib.suppress(OSError):  # the buffer that failed is dropped with it
                self._file.close()
        event(logger, "recording.finished", call_id=self.call_id, path=str(self.path),
              seconds=round(self._written / self.rate, 2), failed=self.failed)

    def _flush(self) -> None:
        n = len(self._caller) // 2
        if n == 0:
            return
        agent = bytes(self._agent[:n * 2])
        del self._agent[:n * 2]
        stereo = np.zeros(2 * n, dtype="<i2")
        stereo[0::2] = np.frombuffer(bytes(self._caller[:n * 2]), dtype="<i2")
        played = len(agent) // 2  # agent audio may end before this block does
        if played:
            stereo[1:2 * played:2] = np.frombuffer(agent, dtype="<i2")
        self._caller.clear()
        try:
            self._file.write(stereo.tobytes())
            self._written += n
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self.failed:
            self.failed = True
            self._agent.clear()
            event(logger, "recording.write_failed", logging.ERROR, call_id=self.call_id,
                  path=str(self.path), error=str(exc))
            if self._on_error is not None:
                self._on_error()


def _wav_header(rate: int, frames: int) -> bytes:
    data = frames * 4  # two channels of 16-bit samples
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 2,
                       rate, rate * 4, 4, 16, b"data", data)


def prune(folder: Path, max_age_days: float, now: float | None = None) -> int:
    """Delete recordings older than ``max_age_days``; the number deleted."""
    if max_age_days <= 0 or not folder.is_dir():
        return 0
    cutoff = (now if now is not None else time.time()) - max_age_days * 86400
    removed = 0
    for path in folder.glob("*.wav"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError as exc:
            event(logger, "recording.prune_failed", logging.WARNING, path=str(path),
                  error=str(exc))
    return removed
