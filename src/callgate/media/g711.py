"""G.711 μ-law (PCMU) and A-law (PCMA), bit-exact with the ITU-T G.711 segment algorithm.

The coders are lookup tables built once at import: encoding indexes a 65536-entry table with the
int16 sample (read as uint16), decoding indexes a 256-entry table. A 20 ms frame is then one
``numpy.take`` with no Python loop; the tables are derived here from the G.711 segment rules
(as specified by ITU-T G.711 and the G.191 reference software), not typed in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "alaw_decode",
    "alaw_encode",
    "from_pcm16",
    "to_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]

_U8 = npt.NDArray[np.uint8]
_I16 = npt.NDArray[np.int16]


def _all_samples() -> npt.NDArray[np.int32]:
    # Index i of an encode table holds the code for the int16 whose bit pattern is i, so that a
    # frame read as uint16 indexes the table directly.
    return np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)


def _segment(value: npt.NDArray[np.int32], first_limit: int) -> npt.NDArray[np.int32]:
    """Segment number 0..7: how many times ``value`` doubles past ``first_limit``."""
    seg = np.zeros(value.shape, dtype=np.int32)
    for k in range(7):
        seg += (value >= (first_limit << k)).astype(np.int32)
    return seg


def _build_ulaw_encode() -> _U8:
    x = _all_samples()
    # G.711 μ-law works on 14-bit magnitudes with a bias of 33 (the offset that makes segment
    # edges powers of two); negative samples use the one's complement, so -1 maps like 0.
    mag = np.where(x < 0, ~x, x) >> 2
    biased = np.minimum(mag + 33, 0x1FFF)
    seg = _segment(biased, 64)
    mantissa = (biased >> (seg + 1)) & 0x0F
    code = ((7 - seg) << 4) | (0x0F - mantissa)  # μ-law transmits the inverted magnitude
    code |= np.where(x >= 0, 0x80, 0)
    table: _U8 = code.astype(np.uint8)
    return table


def _build_ulaw_decode() -> _I16:
    code = np.arange(256, dtype=np.int32)
    inv = ~code & 0xFF
    seg = (inv >> 4) & 0x07
    mantissa = inv & 0x0F
    # Reconstruct at the middle of the quantisation interval, then remove the bias.
    magnitude = (((mantissa << 1) | 0x21) << (seg + 2)) - 132
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _build_alaw_encode() -> _U8:
    x = _all_samples()
    # A-law works on 12-bit magnitudes (one's complement for negatives); segment 0 and 1 share
    # the same step, so only values of 32 and above carry an exponent.
    mag = np.where(x < 0, ~x, x) >> 4
    seg = _segment(mag, 32)
    seg = np.where(mag >= 16, seg + 1, 0)
    mantissa = np.where(seg > 1, mag >> np.maximum(seg - 1, 0), mag) & 0x0F
    code = (seg << 4) | mantissa
    code |= np.where(x >= 0, 0x80, 0)
    return (code ^ 0x55).astype(np.uint8)  # even bits are inverted on the line


def _build_alaw_decode() -> _I16:
    code = np.arange(256, dtype=np.int32)
    raw = code ^ 0x55
    seg = (raw >> 4) & 0x07
    mantissa = raw & 0x0F
    mantissa = np.where(seg > 0, mantissa | 0x10, mantissa)
    magnitude = (mantissa << 4) | 0x08
    magnitude = np.where(seg > 1, magnitude << np.maximum(seg - 1, 0), magnitude)
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_ENCODE: _U8 = _build_ulaw_encode()
ULAW_DECODE: _I16 = _build_ulaw_decode().astype("<i2")
ALAW_ENCODE: _U8 = _build_alaw_encode()
ALAW_DECODE: _I16 = _build_alaw_decode().astype("<i2")
for _table in (ULAW_ENCODE, ULAW_DECODE, ALAW_ENCODE, ALAW_DECODE):
    _table.flags.writeable = False


def _encode(table: _U8, pcm: bytes) -> bytes:
    if len(pcm) % 2:
        raise ValueError("PCM16 input must have an even number of bytes")
    out: bytes = table[np.frombuffer(pcm, dtype="<u2")].tobytes()
    return out


def _decode(table: _I16, payload: bytes) -> bytes:
    out: bytes = table[np.frombuffer(payload, dtype=np.uint8)].tobytes()
    return out


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian → μ-law bytes (one byte per sample)."""
    return _encode(ULAW_ENCODE, pcm)


def ulaw_decode(payload: bytes) -> bytes:
    """μ-law bytes → PCM16 little-endian."""
    return _decode(ULAW_DECODE, payload)


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian → A-law bytes (one byte per sample)."""
    return _encode(ALAW_ENCODE, pcm)


def alaw_decode(payload: bytes) -> bytes:
    """A-law bytes → PCM16 little-endian."""
    return _decode(ALAW_DECODE, payload)


def to_pcm16(encoding: str, data: bytes) -> bytes:
    """Audio in an ``AudioFormat`` encoding (``pcm16``, ``pcmu``, ``pcma``) as PCM16."""
    if encoding == "pcmu":
        return ulaw_decode(data)
    if encoding == "pcma":
        return alaw_decode(data)
    return data


def from_pcm16(encoding: str, pcm: bytes) -> bytes:
    """PCM16 as audio in an ``AudioFormat`` encoding (the inverse of :func:`to_pcm16`)."""
    if encoding == "pcmu":
        return ulaw_encode(pcm)
    if encoding == "pcma":
        return alaw_encode(pcm)
    return pcm
