"""Audio from one :class:`AudioFormat` to another, as a stream: G.711 decoded, the rate
converted, G.711 encoded, each step only where the two formats differ.

Where a consumer's format is not the one the audio arrives in (a WebSocket client speaking
``audio/pcmu`` to an engine that takes PCM, an upstream Realtime server kept on the law a call
started with after a re-INVITE changed the codec), one converter per direction does it.
"""

from __future__ import annotations

from callgate.media.formats import AudioFormat
from callgate.media.g711 import from_pcm16, to_pcm16
from callgate.media.resample import Resampler

__all__ = ["FormatConverter"]


class FormatConverter:
    def __init__(self, source: AudioFormat, target: AudioFormat) -> None:
        self.source = source
        self.target = target
        self._resampler = Resampler(source.rate, target.rate)

    @property
    def passthrough(self) -> bool:
        return self.source == self.target

    def process(self, data: bytes) -> bytes:
        """The next chunk of the stream in ``target``; may be shorter while the resampler's
        filter fills. Raises ValueError for PCM16 with an odd byte count."""
        if self.passthrough:
            return data
        pcm = self._resampler.process(to_pcm16(self.source.encoding, data))
        return from_pcm16(self.target.encoding, pcm)
