"""G.711 tables against a plain scalar rendering of the ITU-T segment algorithm, all inputs."""

from __future__ import annotations

import numpy as np
import pytest

from callgate.media.g711 import (
    ALAW_DECODE,
    ALAW_ENCODE,
    ULAW_DECODE,
    ULAW_ENCODE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

# --- scalar reference: one sample at a time, loops as the G.711 segment tables read ---------


def ref_ulaw_encode(x: int) -> int:
    magnitude = (~x if x < 0 else x) >> 2  # 14-bit magnitude, one's complement for negatives
    magnitude = min(magnitude + 33, 8191)
    segment = 1
    rest = magnitude >> 6
    while rest:
        segment += 1
        rest >>= 1
    high = 8 - segment
    low = 15 - ((magnitude >> segment) & 15)
    code = (high << 4) | low
    if x >= 0:
        code |= 0x80
    return code


def ref_ulaw_decode(code: int) -> int:
    sign = 1 if code >= 0x80 else -1
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 7
    mantissa = inverted & 15
    step = 4 << (exponent + 1)
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


def ref_alaw_encode(x: int) -> int:
    value = (~x if x < 0 else x) >> 4  # 12-bit magnitude
    if value > 15:
        exponent = 1
        while value > 31:
            value >>= 1
            exponent += 1
        value = (value - 16) + (exponent << 4)
    if x >= 0:
        value |= 0x80
    return value ^ 0x55


def ref_alaw_decode(code: int) -> int:
    value = (code ^ 0x55) & 0x7F
    exponent = value >> 4
    mantissa = value & 15
    if exponent > 0:
        mantissa += 16
    mantissa = (mantissa << 4) + 8
    if exponent > 1:
        mantissa <<= exponent - 1
    return mantissa if code > 127 else -mantissa


ALL_SAMPLES = range(-32768, 32768)


def _as_pcm(samples: range) -> bytes:
    return np.array(list(samples), dtype="<i2").tobytes()


def test_ulaw_encode_every_input_matches_reference() -> None:
    got = np.frombuffer(ulaw_encode(_as_pcm(ALL_SAMPLES)), dtype=np.uint8)
    expected = np.array([ref_ulaw_encode(x) for x in ALL_SAMPLES], dtype=np.uint8)
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"first mismatch at sample {mismatches[0] - 32768}"


def test_alaw_encode_every_input_matches_reference() -> None:
    got = np.frombuffer(alaw_encode(_as_pcm(ALL_SAMPLES)), dtype=np.uint8)
    expected = np.array([ref_alaw_encode(x) for x in ALL_SAMPLES], dtype=np.uint8)
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"first mismatch at sample {mismatches[0] - 32768}"


def test_decode_tables_match_reference() -> None:
    assert [int(v) for v in ULAW_DECODE] == [ref_ulaw_decode(c) for c in range(256)]
    assert [int(v) for v in ALAW_DECODE] == [ref_alaw_decode(c) for c in range(256)]
    codes = bytes(range(256))
    assert np.frombuffer(ulaw_decode(codes), "<i2").tolist() == ULAW_DECODE.tolist()
    assert np.frombuffer(alaw_decode(codes), "<i2").tolist() == ALAW_DECODE.tolist()


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),
        (-1, 0x7F, 0x55),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
        (1000, 0xCE, 0xFA),
        (-1000, 0x4E, 0x7A),
    ],
)
def test_known_vectors(sample: int, ulaw: int, alaw: int) -> None:
    pcm = np.array([sample], dtype="<i2").tobytes()
    assert ulaw_encode(pcm) == bytes([ulaw])
    assert alaw_encode(pcm) == bytes([alaw])


def test_known_decoded_values() -> None:
    assert ULAW_DECODE[0xFF] == 0 and ULAW_DECODE[0x7F] == 0
    assert ULAW_DECODE[0x80] == 32124 and ULAW_DECODE[0x00] == -32124
    assert ALAW_DECODE[0xD5] == 8 and ALAW_DECODE[0x55] == -8
    assert ALAW_DECODE[0xAA] == 32256 and ALAW_DECODE[0x2A] == -32256


def test_decode_then_encode_is_identity() -> None:
    codes = bytes(range(256))
    assert alaw_encode(alaw_decode(codes)) == codes
    # μ-law has two zeros (0x7F "-0" and 0xFF "+0"); every other code survives the round trip.
    again = ulaw_encode(ulaw_decode(codes))
    assert [c for c in range(256) if again[c] != c] == [0x7F]


def test_tables_are_read_only_and_sized() -> None:
    assert ULAW_ENCODE.shape == (65536,) and ALAW_ENCODE.shape == (65536,)
    assert ULAW_DECODE.shape == (256,) and ALAW_DECODE.shape == (256,)
    with pytest.raises(ValueError):
        ULAW_ENCODE[0] = 1


def test_odd_length_pcm_rejected() -> None:
    with pytest.raises(ValueError):
        ulaw_encode(b"\x00\x00\x00")
