"""Audio codecs behind one small interface: PCM16 frames in, RTP payloads out, and back.

Every codec speaks little-endian mono PCM16 at its own ``sample_rate`` (8 kHz for G.711,
16 kHz for G.722, 48 kHz for Opus) in frames of ``frame_samples`` (20 ms unless another
ptime was negotiated); the caller resamples. ``clock_rate`` is the RTP timestamp rate, which
differs from the PCM rate for G.722 (RFC 3551 §4.5.2 keeps it at 8000 for historical reasons).

Loss concealment (``conceal``):
- G.711 and G.722 repeat the last good frame with a gain that halves over each lost frame
  (a linear ramp inside the frame, so no steps) and reach silence after 100 ms. That hides a
  single lost packet well and fades out long gaps rather than buzzing.
- Opus runs its own PLC (decode of no data). When the packet after the gap has already
  arrived, ``conceal(next_payload)`` decodes the in-band FEC copy of the lost frame that
  the sender embedded in it (RFC 6716 §2.1.7, LBRR), which is much closer to the original.

The hot path avoids per-frame Python objects: G.711 is one table lookup on a zero-copy numpy
view, and Opus calls libopus through ctypes with buffers allocated once per codec.

A consumer that speaks G.711 itself (the ``echo`` engine, an upstream Realtime server set to
``audio/pcmu`` or ``audio/pcma``) takes the payloads as they are: ``AudioFormat`` says what a
consumer takes, and ``create_codec(..., audio=...)`` then gives a :class:`G711Passthrough`,
whose "PCM" side is the payload itself (one byte per sample). It decodes only to conceal a
lost packet, so the audio comes back bit for bit apart from the jitter buffer's concealment.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import G722  # type: ignore[import-not-found]
import numpy as np
import numpy.typing as npt
import opuslib_next  # type: ignore[import-untyped]
import opuslib_next.api.ctl  # type: ignore[import-untyped]
import opuslib_next.api.decoder  # type: ignore[import-untyped]
import opuslib_next.api.encoder  # type: ignore[import-untyped]

from callgate.media.formats import AudioFormat
from callgate.media.g711 import ALAW_DECODE, ALAW_ENCODE, ULAW_DECODE, ULAW_ENCODE

if TYPE_CHECKING:
    from callgate.media.offer_answer import CodecSpec

__all__ = [
    "Codec",
    "CodecError",
    "G711Codec",
    "G711Passthrough",
    "G722Codec",
    "OpusCodec",
    "codec_format",
    "create_codec",
]

_I16 = npt.NDArray[np.int16]


class CodecError(ValueError):
    """Unknown codec, bad parameters, or a payload the decoder rejects."""


def codec_format(spec: CodecSpec) -> AudioFormat:
    """The codec's own audio: G.711 payload bytes, else PCM16 at the codec's PCM rate."""
    name = spec.name.upper()
    if name in ("PCMU", "PCMA"):
        return AudioFormat("pcmu" if name == "PCMU" else "pcma", 8000)
    return AudioFormat.pcm(16000 if name == "G722" else spec.clock_rate)


class Codec(Protocol):
    name: str
    clock_rate: int  # RTP timestamp units per second
    sample_rate: int  # PCM samples per second
    frame_samples: int  # PCM samples per frame (ptime) at sample_rate
    sample_width: int  # bytes per sample of the PCM side (1 for a pass-through)
    silence: bytes  # one frame of silence as the PCM side has it

    def encode(self, pcm: bytes) -> bytes:
        """One frame of PCM16 LE mono at ``sample_rate`` → one RTP payload."""
        ...

    def decode(self, payload: bytes) -> bytes:
        """One RTP payload → PCM16 LE mono at ``sample_rate``; raises CodecError."""
        ...

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        """One frame standing in for a lost packet; ``next_payload`` is the packet after it,
        if already received (only Opus uses it, for FEC)."""
        ...


@cache
def _fade_ramps(frame_samples: int, losses: int) -> tuple[npt.NDArray[np.float32], ...]:
    """Gain ramps for the 1st..nth consecutive lost frame: 1 → ½ → ¼ … → 0 at the end.
    Shared and read-only: building them per call was ~5 % of the CPU of a call set-up."""
    ramps = []
    for k in range(losses):
        start = 0.5**k
        end = 0.0 if k == losses - 1 else start / 2
        ramp = np.linspace(start, end, frame_samples, endpoint=False, dtype=np.float32)
        ramp.flags.writeable = False
        ramps.append(ramp)
    return tuple(ramps)


class _FadeConcealer:
    """Repeat-and-fade PLC for codecs without their own (see the module docstring)."""

    _MAX_LOSSES = 5  # 5 x 20 ms: silent after 100 ms

    def __init__(self, frame_samples: int) -> None:
        self._n = frame_samples
        self._last: _I16 = np.zeros(frame_samples, dtype=np.int16)
        self._losses = 0
        self._silence = bytes(2 * frame_samples)
        self._ramps = _fade_ramps(frame_samples, self._MAX_LOSSES)

    def good(self, frame: _I16) -> None:
        self._last = frame
        self._losses = 0

    def conceal(self) -> bytes:
        k = self._losses
        self._losses = k + 1
        if k >= self._MAX_LOSSES:
            return self._silence
        last = self._last if self._last.size == self._n else np.resize(self._last, self._n)
        return (last * self._ramps[k]).astype("<i2").tobytes()


class G711Codec:
    """PCMU (μ-law) or PCMA (A-law), RFC 3551 §4.5.14: 8 kHz, one byte per sample."""

    clock_rate = 8000
    sample_rate = 8000
    sample_width = 2

    def __init__(self, name: str, *, ptime: int = 20) -> None:
        if name == "PCMU":
            self._enc, self._dec = ULAW_ENCODE, ULAW_DECODE
        elif name == "PCMA":
            self._enc, self._dec = ALAW_ENCODE, ALAW_DECODE
        else:
            raise CodecError(f"not a G.711 codec: {name}")
        self.name = name
        self.frame_samples = 8 * ptime
        self.silence = bytes(2 * self.frame_samples)
        self._plc = _FadeConcealer(self.frame_samples)

    def encode(self, pcm: bytes) -> bytes:
        if len(pcm) % 2:
            raise CodecError("PCM16 input must have an even number of bytes")
        out: bytes = self._enc[np.frombuffer(pcm, dtype="<u2")].tobytes()
        return out

    def decode(self, payload: bytes) -> bytes:
        frame = self._dec[np.frombuffer(payload, dtype=np.uint8)]
        self._plc.good(frame)
        return frame.tobytes()

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        return self._plc.conceal()


class G711Passthrough:
    """G.711 for a consumer that takes the payload bytes themselves: nothing is decoded or
    encoded, except that a lost frame is concealed as :class:`G711Codec` conceals it (the
    last good payload is decoded only then)."""

    clock_rate = 8000
    sample_rate = 8000
    sample_width = 1

    def __init__(self, name: str, *, ptime: int = 20) -> None:
        self._pcm = G711Codec(name, ptime=ptime)
        self.name = name
        self.frame_samples = self._pcm.frame_samples
        self._encoded_zero = self._pcm.encode(bytes(2))
        self.silence = self._encoded_zero * self.frame_samples
        self._last: bytes | None = None  # the last good payload, until a loss decodes it

    def encode(self, pcm: bytes) -> bytes:
        return pcm

    def decode(self, payload: bytes) -> bytes:
        self._last = payload
        return payload

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        if self._last is not None:
            self._pcm.decode(self._last)  # primes the concealer with the last good frame
            self._last = None
        return self._pcm.encode(self._pcm.conceal())


class G722Codec:
    """G.722 at 64 kbit/s (RFC 3551 §4.5.2): 16 kHz PCM, RTP clock 8000, 2 samples per byte."""

    name = "G722"
    clock_rate = 8000
    sample_rate = 16000
    sample_width = 2

    def __init__(self, *, ptime: int = 20) -> None:
        self.frame_samples = 16 * ptime
        self.silence = bytes(2 * self.frame_samples)
        # Separate states: encoder and decoder are independent ADPCM predictors.
        self._encoder: Any = G722.G722(16000, 64000)
        self._decoder: Any = G722.G722(16000, 64000)
        self._plc = _FadeConcealer(self.frame_samples)

    def encode(self, pcm: bytes) -> bytes:
        if len(pcm) % 4:
            raise CodecError("G.722 needs an even number of 16 kHz samples")
        out: bytes = self._encoder.encode(np.frombuffer(pcm, dtype="<i2"))
        return out

    def decode(self, payload: bytes) -> bytes:
        samples = self._decoder.decode(payload)  # array.array('h'), native order
        frame = np.frombuffer(samples, dtype=np.int16)
        self._plc.good(frame)
        return frame.astype("<i2", copy=False).tobytes()

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        return self._plc.conceal()


class OpusCodec:
    """Opus (RFC 7587): 48 kHz mono PCM here; SDP always says ``opus/48000/2``.

    The encoder is set for voice with in-band FEC on and a packet-loss hint, so each packet
    carries a low-rate copy of the previous frame that ``conceal(next_payload)`` can recover.
    """

    name = "opus"
    clock_rate = 48000
    sample_rate = 48000
    sample_width = 2
    _MAX_PACKET = 1275  # RFC 6716 §3.2.1: largest single-frame packet
    _MAX_SAMPLES = 5760  # 120 ms at 48 kHz, the longest packet a decoder can meet

    def __init__(
        self,
        *,
        ptime: int = 20,
        bitrate: int | None = None,
        packet_loss_percent: int = 10,
        complexity: int = 5,
    ) -> None:
        if ptime not in (10, 20, 40, 60):
            raise CodecError(f"unsupported Opus ptime: {ptime}")
        self.frame_samples = 48 * ptime
        self.silence = bytes(2 * self.frame_samples)
        api = opuslib_next.api
        self._enc_state: Any = api.encoder.create_state(48000, 1, opuslib_next.APPLICATION_VOIP)
        self._dec_state: Any = api.decoder.create_state(48000, 1)
        ctl = api.ctl
        api.encoder.encoder_ctl(self._enc_state, ctl.set_inband_fec, 1)
        api.encoder.encoder_ctl(self._enc_state, ctl.set_packet_loss_perc, packet_loss_percent)
        api.encoder.encoder_ctl(self._enc_state, ctl.set_complexity, complexity)
        api.encoder.encoder_ctl(self._enc_state, ctl.set_signal, opuslib_next.SIGNAL_VOICE)
        if bitrate is not None:
            api.encoder.encoder_ctl(self._enc_state, ctl.set_bitrate, bitrate)
        self._opus_encode: Any = api.encoder.libopus_encode
        self._opus_decode: Any = api.decoder.libopus_decode
        self._pcm_in = (ctypes.c_int16 * self.frame_samples)()
        self._packet_out = ctypes.create_string_buffer(self._MAX_PACKET)
        self._pcm_out = (ctypes.c_int16 * self._MAX_SAMPLES)()

    def __del__(self) -> None:
        # libopus states are C allocations; free them with the codec.
        api = opuslib_next.api
        if getattr(self, "_enc_state", None) is not None:
            api.encoder.destroy(self._enc_state)
            self._enc_state = None
        if getattr(self, "_dec_state", None) is not None:
            api.decoder.destroy(self._dec_state)
            self._dec_state = None

    def encode(self, pcm: bytes) -> bytes:
        if len(pcm) != 2 * self.frame_samples:
            raise CodecError(f"Opus encodes whole frames of {self.frame_samples} samples")
        ctypes.memmove(self._pcm_in, pcm, len(pcm))
        n = self._opus_encode(
            self._enc_state, self._pcm_in, self.frame_samples, self._packet_out, self._MAX_PACKET
        )
        if n < 0:
            raise CodecError(f"opus_encode failed: {n}")
        return ctypes.string_at(self._packet_out, n)

    def decode(self, payload: bytes) -> bytes:
        if not payload:
            return self.conceal()
        return self._decode(payload, len(payload), self._MAX_SAMPLES, 0)

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        if next_payload:
            # FEC: the next packet's LBRR data describes the frame we lost (RFC 6716 §4.2.7.3).
            return self._decode(next_payload, len(next_payload), self.frame_samples, 1)
        return self._decode(None, 0, self.frame_samples, 0)

    def _decode(self, data: bytes | None, length: int, max_samples: int, fec: int) -> bytes:
        n = self._opus_decode(self._dec_state, data, length, self._pcm_out, max_samples, fec)
        if n < 0:
            raise CodecError(f"opus_decode failed: {n}")
        return ctypes.string_at(self._pcm_out, 2 * n)


def _fmtp_params(fmtp: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in (fmtp or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            params[key.strip().lower()] = value.strip()
    return params


def create_codec(spec: CodecSpec, *, ptime: int = 20, audio: AudioFormat | None = None
                 ) -> Codec:
    """The codec for a negotiated ``CodecSpec``; raises CodecError for anything else.
    ``audio``: what the consumer takes; G.711 bytes of the negotiated law mean pass-through."""
    name = spec.name.upper()
    if audio is not None and audio.encoding != "pcm16":
        if audio != codec_format(spec):
            raise CodecError(f"{audio.encoding} audio cannot pass through a {spec.name} call")
        return G711Passthrough(name, ptime=ptime)
    if name in ("PCMU", "PCMA"):
        return G711Codec(name, ptime=ptime)
    if name == "G722":
        return G722Codec(ptime=ptime)
    if name == "OPUS":
        # RFC 7587 §6.1: maxaveragebitrate is what the receiver (the remote) wants us to send.
        rate = _fmtp_params(spec.fmtp).get("maxaveragebitrate", "")
        bitrate = min(max(int(rate), 6000), 510000) if rate.isdigit() else None
        # Opus frames are 10/20/40/60 ms; any other ptime is only a wish (RFC 8866 §6.4).
        return OpusCodec(ptime=ptime if ptime in (10, 20, 40, 60) else 20, bitrate=bitrate)
    raise CodecError(f"unsupported codec: {spec.name}")
