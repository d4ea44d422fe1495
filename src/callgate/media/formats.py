"""What a consumer of a call's audio takes and gives (kept apart from the codecs so that the
engine side can name a format without loading any codec library)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AudioFormat"]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How a consumer of a call's audio takes and gives it: PCM16 LE mono at ``rate``, or
    G.711 bytes (``pcmu``/``pcma``, the Realtime API's ``audio/pcmu`` and ``audio/pcma``)."""

    encoding: Literal["pcm16", "pcmu", "pcma"]
    rate: int

    @classmethod
    def pcm(cls, rate: int) -> AudioFormat:
        return cls("pcm16", rate)

    @classmethod
    def realtime(cls, fmt: dict[str, Any] | None) -> AudioFormat:
        """The audio a Realtime ``format`` object (validated) stands for: GA ``audio/pcm`` is
        PCM16 at 24 kHz (the only rate it allows), ``audio/pcmu``/``audio/pcma`` G.711 at
        8 kHz."""
        kind = (fmt or {}).get("type", "audio/pcm")
        return cls.pcm(24000) if kind == "audio/pcm" else cls(kind.removeprefix("audio/"), 8000)

    def realtime_format(self) -> dict[str, Any]:
        """The Realtime ``format`` object for this audio (the inverse of :meth:`realtime`)."""
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": f"audio/{self.encoding}"}

    @property
    def sample_width(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    @property
    def byte_rate(self) -> int:
        """Bytes per second."""
        return self.sample_width * self.rate

    def ms(self, size: int) -> int:
        """Milliseconds of audio in ``size`` bytes."""
        return size * 1000 // self.byte_rate
