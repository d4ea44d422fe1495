"""Codecs: framing, round trips through the real libraries, loss concealment, resampling."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from callgate.media.codecs import (
    CodecError,
    G711Codec,
    G722Codec,
    OpusCodec,
    create_codec,
)
from callgate.media.g711 import alaw_encode, ulaw_decode, ulaw_encode
from callgate.media.offer_answer import CodecSpec
from callgate.media.resample import Resampler


def tone(rate: int, samples: int, freq: float = 1000.0, amp: float = 8000.0) -> bytes:
    t = np.arange(samples) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def voice_like(rate: int, samples: int) -> npt.NDArray[np.int16]:
    """A voiced, vibrato, amplitude-modulated harmonic series: speech-shaped enough for Opus
    to pick its SILK (voice) layer, which carries the in-band FEC."""
    t = np.arange(samples) / rate
    phase = 2 * np.pi * np.cumsum(150 + 20 * np.sin(2 * np.pi * 3 * t)) / rate
    x = sum((3000 / k) * np.sin(k * phase) for k in range(1, 15))
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))).astype("<i2")


def pcm(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def peak_hz(data: bytes, rate: int) -> float:
    x = pcm(data)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x**2)))


# --- create_codec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls", "clock", "rate", "frame"),
    [
        (CodecSpec("PCMU", 0, 8000, 1), G711Codec, 8000, 8000, 160),
        (CodecSpec("PCMA", 8, 8000, 1), G711Codec, 8000, 8000, 160),
        (CodecSpec("G722", 9, 8000, 1), G722Codec, 8000, 16000, 320),
        (CodecSpec("opus", 111, 48000, 2, "useinbandfec=1"), OpusCodec, 48000, 48000, 960),
    ],
)
def test_create_codec_parameters(
    spec: CodecSpec, cls: type, clock: int, rate: int, frame: int
) -> None:
    codec = create_codec(spec)
    assert isinstance(codec, cls)
    assert (codec.clock_rate, codec.sample_rate, codec.frame_samples) == (clock, rate, frame)
    assert codec.name.lower() == spec.name.lower()


def test_create_codec_ptime() -> None:
    assert create_codec(CodecSpec("PCMA", 8, 8000, 1), ptime=30).frame_samples == 240
    assert create_codec(CodecSpec("G722", 9, 8000, 1), ptime=10).frame_samples == 160
    opus = CodecSpec("opus", 111, 48000, 2)
    assert create_codec(opus, ptime=40).frame_samples == 1920
    assert create_codec(opus, ptime=30).frame_samples == 960  # not an Opus frame size
    with pytest.raises(CodecError):
        OpusCodec(ptime=30)


@pytest.mark.parametrize("name", ["telephone-event", "GSM", "G729", "speex"])
def test_create_codec_rejects_unknown(name: str) -> None:
    with pytest.raises(CodecError):
        create_codec(CodecSpec(name, 101, 8000, 1))


def test_opus_fmtp_bitrate_is_applied() -> None:
    frames = [voice_like(48000, 960 * 50)[i * 960 : (i + 1) * 960].tobytes() for i in range(50)]
    low = create_codec(CodecSpec("opus", 111, 48000, 2, "maxaveragebitrate=8000"))
    high = create_codec(CodecSpec("opus", 111, 48000, 2, "maxaveragebitrate=64000"))
    low_bytes = sum(len(low.encode(f)) for f in frames)
    high_bytes = sum(len(high.encode(f)) for f in frames)
    assert low_bytes * 3 < high_bytes
    assert low_bytes / 50 * 50 * 8 < 12000  # roughly the 8 kbit/s asked for


# --- G.711 ----------------------------------------------------------------------------------


def test_g711_codec_uses_the_tables() -> None:
    frame = tone(8000, 160)
    mu, a = G711Codec("PCMU"), G711Codec("PCMA")
    assert mu.encode(frame) == ulaw_encode(frame)
    assert a.encode(frame) == alaw_encode(frame)
    assert mu.decode(mu.encode(frame)) == ulaw_decode(ulaw_encode(frame))
    assert len(mu.decode(bytes(160))) == 320


def test_g711_round_trip_quality() -> None:
    codec = G711Codec("PCMU")
    x = tone(8000, 160)
    y = codec.decode(codec.encode(x))
    snr = 10 * np.log10(np.sum(pcm(x) ** 2) / np.sum((pcm(x) - pcm(y)) ** 2))
    assert snr > 30  # G.711 gives ~38 dB on a loud tone


def test_g711_rejects_odd_pcm() -> None:
    with pytest.raises(CodecError):
        G711Codec("PCMU").encode(b"\x00")


def test_fade_concealment_repeats_then_fades_to_silence() -> None:
    codec = G711Codec("PCMA")
    frame = codec.decode(codec.encode(tone(8000, 160, amp=10000)))
    last = pcm(frame)
    concealed = [pcm(codec.conceal()) for _ in range(7)]
    assert all(c.size == 160 for c in concealed)
    # The first concealed frame starts as the last good frame (gain ramps down from 1).
    assert np.allclose(concealed[0][:4], last[:4], rtol=0.02, atol=2)
    levels = [rms(c) for c in concealed]
    assert levels[0] > 0.5 * rms(last)
    assert all(b < a for a, b in itertools.pairwise(levels[:5]))
    assert levels[5] == levels[6] == 0.0  # silent after 100 ms
    # A good packet ends the loss run.
    codec.decode(codec.encode(tone(8000, 160, amp=10000)))
    assert rms(pcm(codec.conceal())) > 0.5 * rms(last)


def test_conceal_before_any_packet_is_silence() -> None:
    assert G711Codec("PCMU").conceal() == bytes(320)
    assert G722Codec().conceal() == bytes(640)


# --- G.722 ----------------------------------------------------------------------------------


def test_g722_frame_sizes_and_tone() -> None:
    enc, dec = G722Codec(), G722Codec()
    source = tone(16000, 320 * 20, freq=1000.0)
    payloads = [enc.encode(source[i * 640 : (i + 1) * 640]) for i in range(20)]
    assert all(len(p) == 160 for p in payloads)  # 64 kbit/s: 20 ms = 160 octets
    out = b"".join(dec.decode(p) for p in payloads)
    assert len(out) == len(source)
    tail = out[len(out) // 2 :]
    assert abs(peak_hz(tail, 16000) - 1000) < 30
    assert 0.7 < rms(pcm(tail)) / rms(pcm(source[len(source) // 2 :])) < 1.3


def test_g722_carries_wideband() -> None:
    # 6 kHz is above what 8 kHz telephony can carry; G.722 keeps it.
    enc, dec = G722Codec(), G722Codec()
    source = tone(16000, 320 * 20, freq=6000.0)
    out = b"".join(dec.decode(enc.encode(source[i * 640 : (i + 1) * 640])) for i in range(20))
    assert abs(peak_hz(out[len(out) // 2 :], 16000) - 6000) < 50


# --- Opus -----------------------------------------------------------------------------------


def test_opus_round_trip() -> None:
    enc, dec = OpusCodec(), OpusCodec()
    source = tone(48000, 960 * 25, freq=440.0)
    out = b"".join(dec.decode(enc.encode(source[i * 1920 : (i + 1) * 1920])) for i in range(25))
    assert len(out) == len(source)
    tail = out[len(out) // 2 :]
    assert abs(peak_hz(tail, 48000) - 440) < 10
    assert 0.7 < rms(pcm(tail)) / rms(pcm(source[len(source) // 2 :])) < 1.3


def test_opus_encode_needs_whole_frames() -> None:
    with pytest.raises(CodecError):
        OpusCodec().encode(bytes(100))


def test_opus_decode_garbage_raises() -> None:
    with pytest.raises(CodecError):
        OpusCodec().decode(b"\xff\xff\xff")


def test_opus_plc_and_fec() -> None:
    n = 960
    voice = voice_like(48000, n * 40)
    enc = OpusCodec()
    packets = [enc.encode(voice[i * n : (i + 1) * n].tobytes()) for i in range(40)]

    def decode_losing_25(recover: bool) -> npt.NDArray[np.float64]:
        dec = OpusCodec()
        out = []
        for i, packet in enumerate(packets):
            if i == 25:
                out.append(dec.conceal(packets[26] if recover else None))
            else:
                out.append(dec.decode(packet))
        assert all(len(frame) == 2 * n for frame in out)
        return pcm(b"".join(out))

    reference = OpusCodec()
    clean = pcm(b"".join(reference.decode(p) for p in packets))
    lost = slice(25 * n, 26 * n)

    def error(x: npt.NDArray[np.float64]) -> float:
        return float(np.sum((x[lost] - clean[lost]) ** 2) / np.sum(clean[lost] ** 2))

    with_plc, with_fec = decode_losing_25(False), decode_losing_25(True)
    assert rms(with_plc[lost]) > 0.1 * rms(clean[lost])  # PLC continues rather than mutes
    plc, fec = error(with_plc), error(with_fec)
    assert fec < 0.05 and fec < plc / 4  # the FEC copy is far closer to what was lost
    assert OpusCodec().decode(b"") == bytes(2 * n)  # empty payload: PLC with nothing to go on


# --- resampling -----------------------------------------------------------------------------


def test_resampler_passthrough() -> None:
    r = Resampler(8000, 8000)
    data = tone(8000, 160)
    assert r.passthrough and r.process(data) is data and r.flush() == b""


@pytest.mark.parametrize(("src", "dst"), [(8000, 24000), (24000, 8000), (16000, 24000),
                                          (48000, 24000), (24000, 48000), (24000, 16000)])
def test_resampler_steady_cadence_and_content(src: int, dst: int) -> None:
    r = Resampler(src, dst)
    n_in, n_out = src // 50, dst // 50
    source = tone(src, n_in * 50, freq=440.0)
    sizes = []
    chunks = []
    for i in range(50):
        chunk = r.process(source[i * 2 * n_in : (i + 1) * 2 * n_in])
        sizes.append(len(chunk) // 2)
        chunks.append(chunk)
    assert sizes[3:] == [n_out] * 47  # after filling up: exactly 20 ms out per 20 ms in
    chunks.append(r.flush())
    out = b"".join(chunks)
    assert len(out) // 2 == pytest.approx(n_out * 50, abs=2)  # nothing lost or invented
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert abs(peak_hz(middle, dst) - 440) < 5


def test_resampler_state_makes_chunks_seamless() -> None:
    # Resampling in 20 ms pieces equals resampling in one go: state carries across calls.
    source = tone(8000, 8000, freq=700.0)
    whole = Resampler(8000, 16000)
    one = whole.process(source) + whole.flush()
    pieces = Resampler(8000, 16000)
    many = b"".join(pieces.process(source[i : i + 320]) for i in range(0, len(source), 320))
    many += pieces.flush()
    a, b = pcm(one), pcm(many)
    assert a.size == b.size
    assert np.max(np.abs(a - b)) <= 2


def test_resampler_batch_mode_bursts_but_keeps_content() -> None:
    r = Resampler(8000, 24000, steady=False)
    source = tone(8000, 160 * 30, freq=440.0)
    out = b"".join(r.process(source[i * 320 : (i + 1) * 320]) for i in range(30)) + r.flush()
    assert len(out) // 2 == pytest.approx(480 * 30, abs=2)
    assert abs(peak_hz(out[len(out) // 4 :], 24000) - 440) < 5


@pytest.mark.parametrize("steady", [True, False])
@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (16000, 8000), (24000, 8000),
                                          (8000, 24000), (48000, 16000), (22050, 8000)])
def test_resampler_silence_path_matches_libsoxr(src: int, dst: int, steady: bool) -> None:
    # Speech, a long pause, speech again, in 20 ms chunks: the silence path hands out what
    # libsoxr itself would have, save its +-1 LSB dither (two draws: 2 apart at most): the
    # same number of samples (chunk by chunk where the cadence is steady), the speech at the
    # same sample positions.
    n = src // 50
    speech = tone(src, n * 20, freq=440.0)
    pause = bytes(2 * n * 40)
    source = speech + pause + speech + pause
    fast = Resampler(src, dst, steady=steady)
    reference = Resampler(src, dst, steady=steady)
    reference._settle = 1 << 62  # never takes the silence path
    got, want = [], []
    for i in range(0, len(source), 2 * n):
        got.append(fast.process(source[i : i + 2 * n]))
        want.append(reference.process(source[i : i + 2 * n]))
        if steady:
            assert len(got[-1]) == len(want[-1]), i
    a = pcm(b"".join(got) + fast.flush())
    b = pcm(b"".join(want) + reference.flush())
    assert a.size == b.size
    assert np.max(np.abs(a - b)) <= 2
    assert np.max(np.abs(b)) > 5000  # the speech came through both


def test_resampler_silence_path_skips_libsoxr() -> None:
    r = Resampler(16000, 8000)
    for _ in range(20):
        r.process(bytes(640))
    r._stream = _Unusable()  # type: ignore[assignment]
    assert r.process(bytes(640)) == bytes(320)
    with pytest.raises(AssertionError):
        r.process(tone(16000, 320))


class _Unusable:
    def resample_chunk(self, *_: object, **__: object) -> None:
        raise AssertionError("libsoxr was called")
