"""SendTick on a real loop (precision, skipping, registration) and PacedSender sans-IO."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from callgate.media.codecs import G711Codec, create_codec
from callgate.media.offer_answer import CodecSpec
from callgate.media.pacer import PacedSender, SendTick
from callgate.media.rtp import parse_rtp

# Wall-clock precision is measured here: `make test` runs these first, in a process of their
# own, before other suites have loaded models whose worker threads compete for the 2 cores.
pytestmark = pytest.mark.timing


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is importable (the production loop), else stock asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


class Client:
    def __init__(self, work: Callable[[], None] | None = None) -> None:
        self.times: list[float] = []
        self._work = work
        self.sends = 0

    def send_due(self, now: float) -> None:
        self.sends += 1

    def on_tick(self, now: float) -> None:
        self.times.append(now)
        if self._work is not None:
            self._work()


def test_fifty_streams_share_one_precise_tick() -> None:
    """50 registered streams for 3 s: |actual - ideal| p99 under 2 ms, no drift.

    The figure is about the tick, but on a shared VM a neighbour's CPU burst stalls every
    process for milliseconds; such a window is measured again, at most three windows in all.
    """

    async def window() -> tuple[SendTick, list[Client]]:
        tick = SendTick()
        clients = [Client() for _ in range(50)]
        for c in clients:
            tick.register(c)
        await asyncio.sleep(3.0)
        for c in clients:
            tick.unregister(c)
        return tick, clients

    for _ in range(3):
        tick, clients = run(window())
        s = tick.stats
        print(f"\nSendTick ({s['timer']}, 50 streams, 3 s): error p50={s['error_p50_ms']:.3f} ms "
              f"p99={s['error_p99_ms']:.3f} ms max={s['error_max_ms']:.3f} ms "
              f"ticks={s['ticks']} skipped={s['skipped']}")
        if s["error_p99_ms"] < 2.0:
            break
    assert s["error_p99_ms"] < 2.0
    assert s["error_p50_ms"] < 0.5
    assert 145 <= s["ticks"] + s["skipped"] <= 151
    # Every client saw the same ticks, and the schedule did not drift: tick n is n*20 ms on.
    times = clients[0].times
    assert all(c.times == times for c in clients)
    n = len(times) - 1
    assert abs((times[-1] - times[0]) - n * 0.020) < 0.003
    assert not tick.running


def test_call_at_fallback_keeps_an_absolute_schedule() -> None:
    async def main() -> tuple[SendTick, Client]:
        tick = SendTick(use_timerfd=False)
        client = Client()
        tick.register(client)
        assert tick.timer_kind == "call_at"
        await asyncio.sleep(1.0)
        tick.unregister(client)
        return tick, client

    tick, client = run(main())
    assert 45 <= tick.ticks <= 51
    assert tick.error_percentile(0.5) < 0.002
    # A late wake-up does not push the rest back: ticks stay on the 20 ms grid.
    start = client.times[0]
    offsets = [(t - start) / 0.020 for t in client.times]
    assert max(abs(o - round(o)) for o in offsets) < 0.25


def stalled(block_s: float) -> tuple[SendTick, Client]:
    """Tick for 0.1 s, block the loop for ``block_s``, tick for another 0.1 s."""

    async def main() -> tuple[SendTick, Client]:
        tick = SendTick(max_lag_ticks=3)
        client = Client()
        tick.register(client)
        await asyncio.sleep(0.1)
        time.sleep(block_s)
        await asyncio.sleep(0.1)
        tick.unregister(client)
        return tick, client

    result: tuple[SendTick, Client] = run(main())
    return result


def test_a_stalled_loop_skips_ticks_instead_of_bursting() -> None:
    tick, client = stalled(0.2)  # 10 ticks
    assert tick.skipped >= 7
    gaps = [b - a for a, b in itertools.pairwise(client.times)]
    # No back-to-back burst after the stall: at most one extra catch-up tick.
    assert sum(1 for g in gaps if g < 0.005) <= 1


def test_small_lag_is_caught_up_tick_by_tick() -> None:
    tick, _ = stalled(0.045)  # two ticks late: both still fire
    assert tick.skipped == 0
    assert 9 <= tick.ticks <= 13


def test_register_and_unregister_from_inside_a_tick() -> None:
    async def main() -> tuple[SendTick, Client, Client]:
        tick = SendTick()
        late = Client()

        def join() -> None:
            if late not in tick._clients:
                tick.register(late)

        first = Client(join)
        tick.register(first)
        await asyncio.sleep(0.1)
        tick.unregister(first)  # late keeps the tick running
        assert tick.running
        await asyncio.sleep(0.1)
        tick.unregister(late)
        assert not tick.running
        tick.register(first)  # re-arms
        await asyncio.sleep(0.05)
        tick.unregister(first)
        return tick, first, late

    _tick, first, late = run(main())
    assert len(late.times) >= 8
    assert len(first.times) >= 5


def test_an_idle_tick_keeps_its_timerfd_for_the_next_call() -> None:
    async def main() -> list[object]:
        tick = SendTick(use_timerfd=True)
        client = Client()
        timers: list[object] = []
        for _ in range(3):  # a call comes, the gateway goes idle, the next call comes
            tick.register(client)
            await asyncio.sleep(0.05)
            assert tick.running and tick._timerfd is not None
            timers.append(tick._timerfd)  # (fd numbers are reused, the objects are not)
            tick.unregister(client)
            assert not tick.running
            ticks = len(client.times)
            await asyncio.sleep(0.05)  # disarmed: no tick fires while idle
            assert len(client.times) == ticks
        tick.stop()
        assert tick._timerfd is None
        return timers

    timers = run(main())
    assert all(timer is timers[0] for timer in timers)


def test_a_failing_client_does_not_stop_the_others() -> None:
    def boom() -> None:
        raise RuntimeError("broken stream")

    async def main() -> tuple[SendTick, Client]:
        tick = SendTick()
        good = Client()
        tick.register(Client(boom))
        tick.register(good)
        await asyncio.sleep(0.1)
        tick.stop()
        return tick, good

    tick, good = run(main())
    assert tick.client_errors >= 3
    assert len(good.times) == tick.ticks


# -- PacedSender ------------------------------------------------------------------------------

PCMU = CodecSpec("PCMU", 0, 8000, 1)


def sender(pcm_rate: int = 8000, codec: str = "PCMU") -> PacedSender:
    s = PacedSender()
    spec = PCMU if codec == "PCMU" else CodecSpec(codec, 9 if codec == "G722" else 8, 8000, 1)
    s.configure(create_codec(spec), spec.payload_type, 101, pcm_rate)
    return s


def tone(ms: int, rate: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (8000 * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def test_comfort_silence_when_the_queue_is_empty_and_marker_on_talkspurts() -> None:
    s = sender()
    silence = G711Codec("PCMU").encode(bytes(320))
    first = parse_rtp(s.packet())
    assert first.marker and first.payload == silence  # the very first packet starts a spurt
    quiet = parse_rtp(s.packet())
    assert not quiet.marker and quiet.payload == silence
    s.queue_audio(tone(60))
    spurt = [parse_rtp(s.packet()) for _ in range(3)]
    assert [p.marker for p in spurt] == [True, False, False]
    assert all(p.payload != silence for p in spurt)
    after = parse_rtp(s.packet())
    assert after.payload == silence and not after.marker
    # Sequence numbers and timestamps advance by one frame per tick throughout.
    seqs = [first.sequence, quiet.sequence, *(p.sequence for p in spurt), after.sequence]
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)] == [1] * 5
    assert (after.timestamp - first.timestamp) & 0xFFFFFFFF == 5 * 160
    assert s.comfort_frames == 3


def test_partial_frame_waits_then_is_padded_or_flushed() -> None:
    s = sender()
    s.queue_audio(tone(30))  # one and a half frames
    assert parse_rtp(s.packet()).marker
    silence = G711Codec("PCMU").encode(bytes(320))
    # The half frame waits for more (a real-time producer's next chunk) ...
    assert [parse_rtp(s.packet()).payload == silence for _ in range(2)] == [True, True]
    # ... and goes out padded once it has waited long enough.
    assert parse_rtp(s.packet()).payload != silence
    assert s.queued_ms == 0
    s.queue_audio(tone(10), flush=True)  # an utterance's end: no waiting
    assert parse_rtp(s.packet()).payload != silence


def test_clear_returns_the_dropped_milliseconds() -> None:
    s = sender()
    s.queue_audio(tone(1000))
    s.packet()
    assert s.queued_ms == 980
    assert s.clear() == 980
    assert s.queued_ms == 0
    silence = G711Codec("PCMU").encode(bytes(320))
    assert parse_rtp(s.packet()).payload == silence


def test_resamples_from_the_session_rate() -> None:
    s = sender(pcm_rate=24000)
    s.queue_audio(tone(1000, rate=24000))
    packets = [parse_rtp(s.packet()) for _ in range(60)]
    audio = b"".join(G711Codec("PCMU").decode(p.payload) for p in packets)
    pcm = np.frombuffer(audio, "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak = np.fft.rfftfreq(len(pcm), 1 / 8000)[int(np.argmax(spectrum))]
    assert abs(peak - 440) < 5
    assert all(len(p.payload) == 160 for p in packets)


def test_dtmf_is_interleaved_with_its_own_timestamp() -> None:
    s = sender()
    s.queue_audio(tone(200))
    s.queue_dtmf("5", 100)
    s.queue_dtmf("#", 60)
    packets = [parse_rtp(s.packet()) for _ in range(30)]
    kinds = "".join("D" if p.payload_type == 101 else "A" for p in packets)
    # "5": 4 updates + 3 ends; gap of 2 audio frames; "#": 2 + 3; then the rest of the audio.
    assert kinds.startswith("DDDDDDDAADDDDDA")
    first = [p for p in packets[:7]]
    assert all(p.timestamp == first[0].timestamp for p in first)
    assert [p.marker for p in first] == [True] + [False] * 6
    assert first[-1].payload[1] & 0x80  # E bit on the end packets
    second = packets[9:14]
    assert all(p.timestamp == second[0].timestamp for p in second)
    assert second[0].timestamp == (first[0].timestamp + 9 * 160) & 0xFFFFFFFF
    assert packets[14].marker  # the audio after an event starts a talkspurt
    assert s.dtmf_sent == 2
    with pytest.raises(ValueError):
        s.queue_dtmf("x")


def test_skip_lets_media_time_run_on() -> None:
    s = sender()
    a = parse_rtp(s.packet())
    for _ in range(50):
        s.skip()
    b = parse_rtp(s.packet())
    assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 51 * 160
    assert (b.sequence - a.sequence) & 0xFFFF == 1
    assert b.marker


def test_stateful_codec_encodes_silence_every_frame() -> None:
    s = sender(pcm_rate=16000, codec="G722")
    packets = [parse_rtp(s.packet()) for _ in range(3)]
    assert all(len(p.payload) == 160 for p in packets)
    assert all(p.payload_type == 9 for p in packets)


def test_skip_several_frames_at_once() -> None:
    s = sender()
    a = parse_rtp(s.packet())
    s.skip(10)
    b = parse_rtp(s.packet())
    assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 11 * 160


def test_every_packet_leaves_before_any_receive_work() -> None:
    order: list[str] = []

    class Phased:
        def __init__(self, name: str) -> None:
            self.name = name

        def send_due(self, now: float) -> None:
            order.append(f"send {self.name}")

        def on_tick(self, now: float) -> None:
            order.append(f"tick {self.name}")

    async def main() -> None:
        tick = SendTick()
        for name in ("a", "b", "c"):
            tick.register(Phased(name))
        await asyncio.sleep(0.03)
        tick.stop()

    run(main())
    assert order[:6] == ["send a", "send b", "send c", "tick a", "tick b", "tick c"]


def test_audio_streamed_in_real_time_plays_without_holes() -> None:
    # Found with baresip: a bursty outbound resampler let the queue run dry between bursts,
    # and the sender slipped a comfort-silence frame into the middle of speech.
    import numpy as np

    from callgate.media.codecs import G711Codec
    from callgate.media.pacer import PacedSender
    from callgate.media.rtp import parse_rtp

    codec = G711Codec("PCMU")
    sender = PacedSender()
    sender.configure(codec, 0, None, 24000)
    t = np.arange(480) / 24000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()  # 20 ms at 24 kHz
    loud = []
    for _ in range(100):
        sender.queue_audio(tone)
        pcm = np.frombuffer(codec.decode(parse_rtp(sender.packet()).payload), dtype="<i2")
        loud.append(float(np.abs(pcm.astype(float)).mean()) > 1000)
    first = loud.index(True)
    assert first <= 3 and all(loud[first:]), loud
