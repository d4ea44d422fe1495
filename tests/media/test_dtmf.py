"""RFC 4733 telephone-events (receive and send) and SIP INFO DTMF bodies."""

from __future__ import annotations

import struct

import pytest

from callgate.media.dtmf import (
    DIGITS,
    DtmfDigit,
    DtmfReceiver,
    DtmfSender,
    parse_dtmf_relay,
)
from callgate.media.rtp import RtpPacket, RtpSequencer, parse_rtp


def event(code: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def pkt(seq: int, ts: int, payload: bytes, marker: bool = False, ssrc: int = 9) -> RtpPacket:
    return RtpPacket(101, seq, ts, ssrc, marker, payload)


def press(code: int, ts: int, seq: int, updates: int = 4, ends: int = 3) -> list[RtpPacket]:
    """A key press as a typical sender emits it: start, updates, three end packets."""
    out = [pkt(seq, ts, event(code, 160), marker=True)]
    out += [pkt(seq + i, ts, event(code, 160 * (i + 1))) for i in range(1, updates)]
    out += [pkt(seq + updates + i, ts, event(code, 160 * updates + 80, end=True))
            for i in range(ends)]
    return out


def run(receiver: DtmfReceiver, packets: list[RtpPacket], t0: float = 0.0) -> list[DtmfDigit]:
    got: list[DtmfDigit] = []
    for i, packet in enumerate(packets):
        got += receiver.feed(packet, t0 + 0.02 * i)
    return got


def test_one_press_reported_once_at_its_end() -> None:
    receiver = DtmfReceiver()
    packets = press(5, ts=1000, seq=1)
    seen = [receiver.feed(p, 0.02 * i) for i, p in enumerate(packets)]
    assert seen[:4] == [[], [], [], []]  # nothing while the key is held
    assert seen[4] == [DtmfDigit("5", 90)]  # 720 units = 90 ms, on the first end packet
    assert seen[5:] == [[], []]  # the two retransmitted end packets are duplicates


def test_all_sixteen_digits_and_flash_ignored() -> None:
    receiver = DtmfReceiver()
    packets = []
    for code in range(17):
        packets += press(code, ts=10_000 + 2000 * code, seq=100 + 10 * code)
    assert "".join(d.digit for d in run(receiver, packets)) == DIGITS == "0123456789*#ABCD"


def test_retransmitted_start_and_reordered_updates() -> None:
    receiver = DtmfReceiver()
    p = press(1, ts=500, seq=1)
    packets = [p[0], p[0], p[2], p[1], p[3], p[4], p[1], p[5], p[6]]
    assert run(receiver, packets) == [DtmfDigit("1", 90)]


def test_lost_end_packets_reported_on_timeout() -> None:
    receiver = DtmfReceiver(timeout=0.5)
    packets = press(7, ts=100, seq=1)[:4]  # all three end packets lost
    assert run(receiver, packets) == []
    last = 0.02 * 3
    assert receiver.deadline() == pytest.approx(last + 0.5)
    assert receiver.poll(last + 0.4) == []
    assert receiver.poll(last + 0.5) == [DtmfDigit("7", 80)]  # longest duration seen: 640
    assert receiver.deadline() is None and receiver.poll(10.0) == []
    # A straggling end packet of that event arriving later is not a second press.
    assert receiver.feed(pkt(8, 100, event(7, 800, end=True)), 11.0) == []


def test_lost_end_packets_reported_when_next_event_starts() -> None:
    receiver = DtmfReceiver()
    first = press(1, ts=100, seq=1)[:3]
    second = press(2, ts=2000, seq=10)
    digits = run(receiver, first + second)
    assert [d.digit for d in digits] == ["1", "2"]  # in start order


def test_only_end_packets_received() -> None:
    receiver = DtmfReceiver()
    packets = press(9, ts=300, seq=1)[4:]
    assert run(receiver, packets) == [DtmfDigit("9", 90)]


def test_same_digit_twice_is_two_presses() -> None:
    receiver = DtmfReceiver()
    digits = run(receiver, press(4, ts=0, seq=1) + press(4, ts=1600, seq=20))
    assert [d.digit for d in digits] == ["4", "4"]


def test_late_packet_of_old_event_ignored() -> None:
    receiver = DtmfReceiver()
    first, second = press(3, ts=100, seq=1), press(6, ts=5000, seq=20)
    digits = run(receiver, first[:2] + second[:2] + [first[2]] + second[2:])
    assert [d.digit for d in digits] == ["3", "6"]


def test_timestamp_wrap_between_events() -> None:
    receiver = DtmfReceiver()
    digits = run(receiver, press(1, ts=0xFFFFFF00, seq=1)[:2] + press(2, ts=0x100, seq=10))
    assert [d.digit for d in digits] == ["1", "2"]


def test_new_ssrc_resets() -> None:
    receiver = DtmfReceiver()
    a = press(1, ts=100, seq=1)
    b = [pkt(p.sequence, p.timestamp, p.payload, p.marker, ssrc=77) for p in press(1, 100, 1)]
    assert [d.digit for d in run(receiver, a + b)] == ["1", "1"]


def test_short_payload_ignored() -> None:
    assert DtmfReceiver().feed(pkt(1, 1, b"\x01\x8a"), 0.0) == []


# --- sender -------------------------------------------------------------------------------


def test_sender_sequence_for_100ms() -> None:
    sent = DtmfSender().payloads("5", duration_ms=100)
    assert len(sent) == 4 + 3
    assert [p.marker for p in sent] == [True] + [False] * 6
    assert [p.end for p in sent] == [False] * 4 + [True] * 3
    fields = [struct.unpack("!BBH", p.payload) for p in sent]
    assert [f[0] for f in fields] == [5] * 7
    assert [f[2] for f in fields] == [160, 320, 480, 640, 800, 800, 800]
    assert [f[1] & 0x80 for f in fields] == [0] * 4 + [0x80] * 3
    assert {f[1] & 0x3F for f in fields} == {10}


def test_sender_short_and_long() -> None:
    only = DtmfSender().payloads("#", duration_ms=20)
    assert [(p.marker, p.end) for p in only] == [(True, True), (False, True), (False, True)]
    assert DtmfSender().payloads("a", duration_ms=9000)[-1].payload[2:] == b"\xff\xff"
    assert DtmfSender().duration_samples(100) == 800
    for bad in ("", "E", "55", "!"):
        with pytest.raises(ValueError):
            DtmfSender().payloads(bad)
    with pytest.raises(ValueError):
        DtmfSender().payloads("1", duration_ms=10)


def test_sender_to_receiver_through_rtp() -> None:
    sender, seq, receiver = DtmfSender(), RtpSequencer(ssrc=5), DtmfReceiver()
    got: list[DtmfDigit] = []
    now = 0.0
    for digit in "0123456789*#ABCD":
        start = seq.timestamp
        for planned in sender.payloads(digit, duration_ms=120):
            wire = seq.packet(101, planned.payload, marker=planned.marker, timestamp=start)
            got += receiver.feed(parse_rtp(wire.to_bytes()), now)
            now += 0.02
        seq.advance(sender.duration_samples(120) + 400)  # and a 50 ms gap
    assert [(d.digit, d.duration_ms) for d in got] == [(c, 120) for c in "0123456789*#ABCD"]


# --- SIP INFO -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Signal=5\r\nDuration=160\r\n", DtmfDigit("5", 160)),
        (b"Signal=*\r\nDuration=250", DtmfDigit("*", 250)),
        (b"signal = #\nduration = 100\n", DtmfDigit("#", 100)),
        (b"Signal=10\r\nDuration=100", DtmfDigit("*", 100)),
        (b"Signal=11\r\nDuration=100", DtmfDigit("#", 100)),
        (b"Signal=d\r\n", DtmfDigit("D", 0)),
        (b"Signal=0\r\nDuration=abc", DtmfDigit("0", 0)),
        (b"7", DtmfDigit("7", 0)),  # application/dtmf
        (b"#\r\n", DtmfDigit("#", 0)),
        (b"11", DtmfDigit("#", 0)),
        (b"Signal=!\r\nDuration=100", None),  # hook flash
        (b"Signal=16\r\nDuration=100", None),
        (b"Signal=E", None),
        (b"Duration=160", None),
        (b"", None),
        (b"hello", None),
    ],
)
def test_parse_dtmf_relay(body: bytes, expected: DtmfDigit | None) -> None:
    assert parse_dtmf_relay(body) == expected
