"""JitterBuffer: simulated networks on a simulated clock (no sleeps, no sockets)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.media.jitter import LOST, JitterBuffer
from callgate.media.rtp import RtpPacket

FRAME = 0.020
TS_STEP = 160  # 20 ms at 8000 Hz


def packet(k: int, *, seq0: int = 1000, ts0: int = 50_000, ssrc: int = 0x1234,
           marker: bool = False, ts_offset: int = 0) -> RtpPacket:
    """The k-th packet of a stream; its payload carries k so the tests can follow it."""
    return RtpPacket(0, (seq0 + k) & 0xFFFF, (ts0 + ts_offset + k * TS_STEP) & 0xFFFFFFFF,
                     ssrc, marker, k.to_bytes(4, "big"))


def index(p: RtpPacket) -> int:
    return int.from_bytes(p.payload, "big")


@dataclass
class Run:
    jb: JitterBuffer
    played: list[int] = field(default_factory=list)     # k of each packet played, in order
    outcomes: list[str] = field(default_factory=list)   # "P", "L" (LOST) or "-" (None) per tick
    sent: int = 0


def simulate(seconds: float, *, skew: float = 0.0, jitter_ms: float = 0.0, loss: float = 0.0,
             dup: float = 0.0, seed: int = 1, min_ms: int = 40, max_ms: int = 200,
             seq0: int = 1000, ts0: int = 50_000, phase: float = 0.0037) -> Run:
    """A sender whose clock runs ``skew`` fast (0.005 = 0.5 %) sends 20 ms packets through a
    network adding 5 ms + U(0, jitter_ms) delay, dropping ``loss`` and duplicating ``dup`` of
    them; the receiver pops every 20 ms of its own clock."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    n = int(seconds * (1 + skew) / FRAME)
    for k in range(n):
        sent_at = k * FRAME / (1 + skew)
        if rng.random() < loss:
            continue
        arrivals.append((sent_at + 0.005 + rng.uniform(0, jitter_ms / 1000), k))
        if rng.random() < dup:
            arrivals.append((sent_at + 0.005 + rng.uniform(0, jitter_ms / 1000), k))
    arrivals.sort()
    run = Run(JitterBuffer(8000, 20, min_ms, max_ms), sent=n)
    i = 0
    tick = 0
    while True:
        now = phase + tick * FRAME
        if now > seconds + 0.5:
            break
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, k = arrivals[i]
            run.jb.put(packet(k, seq0=seq0, ts0=ts0, marker=k == 0), at)
            i += 1
        item = run.jb.pop(now)
        if item is LOST:
            run.outcomes.append("L")
        elif item is None:
            run.outcomes.append("-")
        else:
            run.played.append(index(item))
            run.outcomes.append("P")
        tick += 1
    return run


def during(run: Run) -> list[str]:
    """The tick outcomes while the stream is flowing: after the end, the buffer runs dry and
    conceals ``max_conceal_frames`` before falling silent, which is right but not loss."""
    last = len(run.outcomes) - 1 - run.outcomes[::-1].index("P")
    tail = run.outcomes[last + 1:]
    assert tail[:5] == ["L"] * 5 and set(tail[5:]) <= {"-"}
    return run.outcomes[:last + 1]


def test_in_order_stream_plays_every_packet_after_min_delay() -> None:
    run = simulate(2.0)
    assert run.played == list(range(run.sent))
    assert "L" not in during(run)
    jb = run.jb
    assert (jb.lost, jb.late, jb.duplicate, jb.dropped) == (0, 0, 0, 0)
    # Playout starts once the first packet is ~min_ms old (within half a frame).
    first = run.outcomes.index("P")
    assert 1 <= first <= 3
    assert 25 <= jb.delay_ms <= 65


def test_before_first_packet_pop_returns_none() -> None:
    jb = JitterBuffer(8000)
    assert jb.pop(0.0) is None
    jb.put(packet(0), 1.0)
    assert jb.pop(1.0) is None  # not yet min_ms old
    assert not jb.playing
    got = jb.pop(1.040)
    assert got is not None and got is not LOST and index(got) == 0
    assert jb.playing


def test_reordering_is_undone() -> None:
    # Pairs swapped on the wire: 1, 0, 3, 2, ... each 20 ms apart.
    jb = JitterBuffer(8000, 20, 40, 200)
    order = [k ^ 1 for k in range(200)]
    played = []
    for tick in range(220):
        now = tick * FRAME
        if tick < len(order):
            jb.put(packet(order[tick]), now)
        item = jb.pop(now + 0.001)
        if item is not None and item is not LOST:
            played.append(index(item))
    assert played == list(range(200))
    assert jb.lost == jb.late == 0
    assert jb.concealed == 5  # after the end only


def test_random_jitter_reordering_plays_in_order_without_loss() -> None:
    run = simulate(20.0, jitter_ms=60, seed=7)
    assert run.played == sorted(run.played)
    assert len(run.played) >= run.sent - 3
    jb = run.jb
    assert jb.late <= 3, jb.stats  # the target grows to cover the jitter
    assert 60 <= jb.target_ms <= 80, jb.stats


def test_five_percent_random_loss_is_concealed_and_counted() -> None:
    run = simulate(30.0, loss=0.05, jitter_ms=20, seed=3)
    jb = run.jb
    missing = run.sent - len(set(run.played))
    assert 0.04 * run.sent < missing < 0.06 * run.sent
    assert jb.lost == missing
    assert jb.late == 0
    # Each lost packet got one concealment frame, in its own slot.
    assert during(run).count("L") == jb.lost
    assert jb.concealed == jb.lost + 5
    assert run.played == sorted(run.played)


def test_duplicates_are_dropped_and_counted() -> None:
    run = simulate(10.0, dup=0.1, jitter_ms=30, seed=5)
    jb = run.jb
    assert run.played == list(range(run.sent))  # each exactly once
    assert jb.duplicate > 0.07 * run.sent
    assert jb.received == run.sent + jb.duplicate


def test_duplicate_of_an_already_played_packet_is_a_duplicate_not_late() -> None:
    jb = JitterBuffer(8000)
    for k in range(5):
        jb.put(packet(k), k * FRAME)
    got = [jb.pop(0.05 + t * FRAME) for t in range(3)]
    assert [index(p) for p in got if p is not None and p is not LOST] == [0, 1, 2]
    jb.put(packet(0), 0.2)
    assert (jb.duplicate, jb.late) == (1, 0)


def test_late_packet_is_dropped_and_counted() -> None:
    jb = JitterBuffer(8000, 20, 40, 200)
    for k in (0, 1, 3, 4):
        jb.put(packet(k), k * FRAME)
    out = [jb.pop(0.04 + t * FRAME) for t in range(3)]
    assert out[0] is not None and out[0] is not LOST and index(out[0]) == 0
    assert out[2] is LOST  # packet 2's turn
    jb.put(packet(2), 0.095)  # arrives after its slot was concealed
    assert jb.late == 1
    # Its lateness raised the target delay, so playout may hold back a frame first.
    assert jb.target_ms > 50
    rest = [jb.pop(0.04 + t * FRAME) for t in range(3, 6)]
    assert [index(p) for p in rest if p is not None and p is not LOST] == [3, 4]
    assert jb.lost == 1


@pytest.mark.parametrize("skew", [0.005, -0.005])
def test_clock_skew_is_followed_for_a_minute(skew: float) -> None:
    """Sender clock 0.5 % fast / slow over 60 s: 15 frames too many / too few to absorb."""
    run = simulate(60.0, skew=skew, jitter_ms=20, seed=11)
    jb = run.jb
    if skew > 0:
        assert 12 <= jb.dropped <= 18, jb.stats
        assert jb.inserted <= 2, jb.stats
    else:
        assert 12 <= jb.inserted <= 18, jb.stats
        assert jb.dropped <= 2, jb.stats
    assert jb.late == 0 and jb.lost == 0, jb.stats
    # The delay stays near the target the whole time rather than drifting by 300 ms.
    assert jb.delay_ms < jb.target_ms + 25, jb.stats
    assert jb.buffered <= 4
    assert run.played == sorted(run.played)


def test_skew_drops_are_spread_out() -> None:
    run = simulate(60.0, skew=0.005, seed=2)
    played = run.played
    skipped = [i for i, (a, b) in enumerate(itertools.pairwise(played)) if b - a > 1]
    assert all(b - a >= 10 for a, b in itertools.pairwise(skipped))


def test_sequence_and_timestamp_wrap() -> None:
    run = simulate(5.0, jitter_ms=30, seq0=65_500, ts0=0xFFFF_FFFF - 30 * TS_STEP, seed=4)
    assert run.played == list(range(run.sent))
    assert run.jb.late == run.jb.lost == run.jb.resets == 0


def test_ssrc_change_resets_and_plays_the_new_source() -> None:
    jb = JitterBuffer(8000)
    for k in range(10):
        jb.put(packet(k), k * FRAME)
        jb.pop(0.041 + k * FRAME)
    for k in range(10):
        jb.put(packet(k, seq0=7, ts0=999, ssrc=0x9999), 0.2 + k * FRAME)
    assert jb.resets == 1
    out = [jb.pop(0.241 + t * FRAME) for t in range(8)]
    played = [index(p) for p in out if p is not None and p is not LOST]
    assert played[:3] == [0, 1, 2]


def test_timestamp_jump_resets_after_confirmation() -> None:
    jb = JitterBuffer(8000)
    for k in range(10):
        jb.put(packet(k), k * FRAME)
        jb.pop(0.041 + k * FRAME)
    # Same SSRC, but the timestamps leap 1 hour ahead (a media switch behind an SBC).
    jb.put(packet(10, ts_offset=8000 * 3600), 10 * FRAME)
    assert (jb.resets, jb.stray) == (0, 1)  # one stray packet is not believed...
    jb.put(packet(11, ts_offset=8000 * 3600), 11 * FRAME)
    assert jb.resets == 1  # ...two in sequence are
    out = [jb.pop(0.25 + t * FRAME) for t in range(4)]
    assert [index(p) for p in out if p is not None and p is not LOST][:1] == [11]


def test_silence_gap_between_talkspurts_is_not_loss() -> None:
    """DTX: the sender stops for 1 s; timestamps jump, sequence numbers do not."""
    jb = JitterBuffer(8000)
    outcomes = []
    gap = 50  # frames
    for tick in range(150):
        now = tick * FRAME
        if tick < 40:
            jb.put(packet(tick), now)
        elif tick >= 40 + gap:
            k = tick - gap
            jb.put(RtpPacket(0, 1000 + k, 50_000 + tick * TS_STEP, 0x1234, tick == 40 + gap,
                             k.to_bytes(4, "big")), now)
        item = jb.pop(now + 0.001)
        outcomes.append("L" if item is LOST else "-" if item is None else "P")
    # When the first talkspurt ends nobody can tell silence from loss until the next packet:
    # the buffer conceals (the codec PLC fades out) for 100 ms, then plays silence.
    first_end = outcomes.index("P") + 40
    assert outcomes[first_end:first_end + 5] == ["L"] * 5
    assert set(outcomes[first_end + 5:first_end + gap - 2]) == {"-"}
    assert "L" not in outcomes[first_end + 5:]
    assert jb.lost == 0 and jb.concealed == 5
    assert outcomes.count("P") == 40 + (150 - 40 - gap) - jb.buffered


def test_talkspurt_after_silence_starts_at_the_new_target_delay() -> None:
    """A jittery talkspurt raises the target; after 12 s of silence the next, calm talkspurt
    starts at the lower delay: the change is made in the silence, not by dropping speech."""
    jb = JitterBuffer(8000, 20, 40, 200)
    rng = random.Random(9)
    seq = 0
    spurt2 = range(850, 1000)
    for tick in range(1000):
        now = tick * FRAME
        if tick < 250 or tick in spurt2:
            delay = 0.005 + (rng.uniform(0, 0.08) if tick < 250 else 0.0)
            jb.put(RtpPacket(0, seq, tick * TS_STEP, 1, tick in (0, 850), b"x"), now + delay)
            seq += 1
        if tick == 249:
            assert jb.target_ms > 75
            dropped, inserted = jb.dropped, jb.inserted
        jb.pop(now + 0.0101)
    assert jb.target_ms == 40
    assert (jb.dropped, jb.inserted) == (dropped, inserted)
    assert jb.late <= 3 and jb.lost == 0, jb.stats
    assert 25 <= jb.delay_ms <= 55


def test_lost_end_of_talkspurt_is_not_concealed_before_the_next_one() -> None:
    """The last two packets of a talkspurt are lost; the next talkspurt (marker bit) is far
    ahead: silence until it is due, no concealment frames just before it."""
    jb = JitterBuffer(8000)
    outcomes = []
    for tick in range(120):
        now = tick * FRAME
        if tick < 38:
            jb.put(packet(tick), now)
        elif tick >= 90:
            k = tick - 50  # sequence numbers continue (38, 39 were lost); timestamps jumped
            jb.put(RtpPacket(0, 1000 + k, 50_000 + tick * TS_STEP, 0x1234, tick == 90,
                             k.to_bytes(4, "big")), now)
        item = jb.pop(now + 0.001)
        outcomes.append("L" if item is LOST else "-" if item is None else "P")
    start2 = outcomes.index("P", 45)
    assert outcomes[start2 - 20:start2] == ["-"] * 20
    assert jb.lost == 2 and jb.concealed == 5


def test_memory_is_bounded_when_nobody_pops() -> None:
    jb = JitterBuffer(8000, 20, 40, 200)
    for k in range(10_000):
        jb.put(packet(k), k * FRAME)
    assert jb.buffered <= 64
    assert jb.dropped >= 10_000 - 64
    # Playout then resumes at the newest audio rather than replaying a backlog.
    item = jb.pop(10_000 * FRAME + 0.02)
    assert item is not None and item is not LOST and index(item) > 10_000 - 5


def test_stalled_tick_resynchronises() -> None:
    jb = JitterBuffer(8000, 20, 40, 200)
    now = 0.0
    for k in range(100):
        now = k * FRAME
        jb.put(packet(k), now)
        if not 40 <= k < 60:  # the loop stalls for 400 ms: no pops
            jb.pop(now + 0.001)
    assert jb.dropped >= 15  # the stale backlog is skipped, not played late
    assert jb.delay_ms < 80


def test_a_stalled_loop_does_not_leave_the_buffer_deaf() -> None:
    # Found on a live baresip call: the loop blocked ~150 ms (a model loading); at its end
    # the tick fired its catch-up ticks before the datagrams queued meanwhile were read.
    # The playout point then ran ahead of every later packet: all "late", never played.
    jb = JitterBuffer(8000, 20, 40, 200)
    stall_from, stall_to = 3.0, 3.15
    events = []
    for k in range(400):
        for kind, at in ((0, k * FRAME), (1, k * FRAME + 0.001)):  # 0: a tick, 1: a packet
            if stall_from < at < stall_to:
                if kind == 0 and at < stall_to - 3 * FRAME:
                    continue  # the pacer skips ticks more than three behind
                at = stall_to  # what fell due in the stall happens at its end, ticks first
            events.append((at, kind, k))
    played: list[int] = []
    for at, kind, k in sorted(events):
        if kind == 1:
            jb.put(packet(k), at)
        elif (item := jb.pop(at)) is not None and item is not LOST:
            played.append(index(item))
    assert jb.late <= 12, jb.stats
    # Within a second the stream plays again, every packet in order.
    assert played[-100:] == list(range(played[-1] - 99, played[-1] + 1)), jb.stats
    assert played[-1] >= 390


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(0)
    with pytest.raises(ValueError):
        JitterBuffer(8000, 20, 100, 50)


def test_telephone_events_take_sequence_numbers_without_counting_as_loss() -> None:
    """RFC 4733 packets interleaved in the sequence space are skipped, not concealed."""
    jb = JitterBuffer(8000)
    outcomes = []
    for tick in range(60):  # one packet per tick: sequence number 1000 + tick
        now = tick * FRAME
        if 20 <= tick < 27:  # a key press: 7 event packets, all with the event's start ts
            jb.skip(RtpPacket(101, 1000 + tick, 50_000 + 20 * TS_STEP, 0x1234, tick == 20, b"e"))
        else:
            jb.put(RtpPacket(0, 1000 + tick, 50_000 + tick * TS_STEP, 0x1234, tick == 27,
                             tick.to_bytes(4, "big")), now)
        item = jb.pop(now + 0.001)
        outcomes.append("L" if item is LOST else "-" if item is None else "P")
    assert jb.lost == 0 and jb.concealed == 0 and jb.late == 0, jb.stats
    assert outcomes.count("-") == 2 + 7  # before playout starts, and the event's frames
    assert outcomes.count("P") == 60 - 7 - jb.buffered


def test_recovery_offers_the_packet_after_a_loss_for_fec() -> None:
    jb = JitterBuffer(8000)
    for k in (0, 1, 3, 4, 5):
        jb.put(packet(k), k * FRAME)
    got = [jb.pop(0.041 + t * FRAME) for t in range(3)]
    assert got[2] is LOST
    assert jb.recovery is not None and index(jb.recovery) == 3
    nxt = jb.pop(0.041 + 3 * FRAME)
    assert nxt is not None and nxt is not LOST and index(nxt) == 3
    assert jb.recovery is None


@settings(max_examples=60, deadline=None)
@given(seq0=st.integers(0, 0xFFFF), ts0=st.integers(0, 0xFFFFFFFF),
       jitter_ms=st.floats(0, 300), loss=st.floats(0, 0.3), dup=st.floats(0, 0.3),
       skew=st.floats(-0.01, 0.01), seed=st.integers(0, 2**16))
def test_accounting_and_order_hold_for_any_network(seq0: int, ts0: int, jitter_ms: float,
                                                   loss: float, dup: float, skew: float,
                                                   seed: int) -> None:
    run = simulate(4.0, skew=skew, jitter_ms=jitter_ms, loss=loss, dup=dup, seed=seed,
                   seq0=seq0, ts0=ts0)
    jb = run.jb
    assert run.played == sorted(set(run.played))  # in order, each at most once
    assert jb.resets == 0
    assert jb.received == (jb.played + jb.late + jb.duplicate + jb.stray + jb.dropped
                           + jb.buffered)
    assert jb.played + jb.lost + jb.dropped <= run.sent
    assert jb.min_ms <= jb.target_ms <= jb.max_ms
