"""RTP and RTCP wire formats, the sender's sequencer, RFC 3550 receiver statistics, and RTP
captured from real peers (the pcaps that ship with SIPp)."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.media.dtmf import DtmfReceiver
from callgate.media.g711 import alaw_decode, alaw_encode
from callgate.media.rtcp import (
    RTCP_INTERVAL,
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build_rtcp,
    looks_like_rtcp,
    ntp_timestamp,
    parse_rtcp,
    rtcp_interval,
)
from callgate.media.rtp import RtpError, RtpExtension, RtpPacket, RtpSequencer, parse_rtp

# --- RTP wire format ------------------------------------------------------------------------


def test_parse_known_header() -> None:
    # The first packet of SIPp's g711a.pcap: V=2, M=1, PT=8, seq 59133, ts 240.
    data = bytes.fromhex("8088e6fd000000f0dee0ee8f") + b"\xd5" * 240
    packet = parse_rtp(data)
    assert (packet.payload_type, packet.marker, packet.sequence) == (8, True, 59133)
    assert (packet.timestamp, packet.ssrc) == (240, 0xDEE0EE8F)
    assert packet.payload == b"\xd5" * 240 and packet.csrcs == () and packet.extension is None
    assert packet.to_bytes() == data


def test_round_trip_with_csrcs_extension_padding() -> None:
    packet = RtpPacket(
        payload_type=111,
        sequence=65535,
        timestamp=0xFFFFFFFF,
        ssrc=0x12345678,
        marker=True,
        payload=b"opus!",
        csrcs=(1, 2, 0xFFFFFFFF),
        extension=RtpExtension(0xBEDE, b"\x10\xff\x00\x00"),
        padding=3,
    )
    wire = packet.to_bytes()
    assert wire[0] == 0x80 | 0x20 | 0x10 | 3
    assert wire[-1] == 3 and len(wire) == 12 + 12 + 8 + 5 + 3
    assert parse_rtp(wire) == packet


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "short"),
        (bytes.fromhex("80000001000000000000"), "11 octets"),
        (bytes.fromhex("400000010000000000000001"), "version 1"),
        (bytes.fromhex("c00000010000000000000001"), "version 3"),
        (bytes.fromhex("820000010000000000000001") + b"\0\0\0\1", "CC=2 with one CSRC"),
        (bytes.fromhex("900000010000000000000001") + b"\xbe\xde", "cut extension header"),
        (bytes.fromhex("900000010000000000000001") + b"\xbe\xde\x00\x02" + b"\0" * 4,
         "extension longer than packet"),
        (bytes.fromhex("a00000010000000000000001") + b"ab\x00", "padding count 0"),
        (bytes.fromhex("a00000010000000000000001") + b"ab\x09", "padding beyond payload"),
    ],
)
def test_parse_rejects_garbage(data: bytes, why: str) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_build_rejects_out_of_range() -> None:
    with pytest.raises(RtpError):
        RtpPacket(128, 0, 0, 0).to_bytes()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, csrcs=tuple(range(16))).to_bytes()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, extension=RtpExtension(1, b"abc")).to_bytes()


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload=st.binary(max_size=200),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none() | st.builds(RtpExtension, st.integers(0, 0xFFFF),
                                    st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])),
    padding=st.integers(0, 255),
)


@given(packets)
def test_any_packet_round_trips(packet: RtpPacket) -> None:
    assert parse_rtp(packet.to_bytes()) == packet


@given(st.binary(max_size=80))
def test_random_bytes_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    # Equal up to the padding filler, which the RFC leaves unspecified (we write zeros).
    assert parse_rtp(packet.to_bytes()) == packet
    assert packet.to_bytes()[: len(data) - packet.padding] == data[: len(data) - packet.padding]


# --- RtpSequencer ---------------------------------------------------------------------------


def test_sequencer_starts_random() -> None:
    a, b = RtpSequencer(), RtpSequencer()
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)


def test_sequencer_frames_talkspurts_and_wrap() -> None:
    seq = RtpSequencer(ssrc=7, sequence=65534, timestamp=0xFFFFFF00)
    first = seq.frame(0, b"a" * 160, 160)
    second = seq.frame(0, b"b" * 160, 160)
    third = seq.frame(0, b"c" * 160, 160)
    assert [p.sequence for p in (first, second, third)] == [65534, 65535, 0]
    assert [p.timestamp for p in (first, second, third)] == [0xFFFFFF00, 0xFFFFFFA0, 0x40]
    assert [p.marker for p in (first, second, third)] == [True, False, False]
    seq.skip(800)  # 100 ms of silence not sent
    after = seq.frame(0, b"d" * 160, 160)
    assert after.marker and after.timestamp == 0x40 + 160 + 800 and after.sequence == 1
    assert (seq.packets_sent, seq.octets_sent) == (4, 640)


def test_sequencer_packet_keeps_timestamp() -> None:
    seq = RtpSequencer(ssrc=1, sequence=10, timestamp=1000)
    a = seq.packet(101, b"\x01\x0a\x00\xa0", marker=True)
    b = seq.packet(101, b"\x01\x0a\x01\x40")
    c = seq.packet(101, b"x", timestamp=5)
    assert (a.timestamp, b.timestamp, c.timestamp) == (1000, 1000, 5)
    assert (a.sequence, b.sequence, c.sequence) == (10, 11, 12)
    assert a.marker and not b.marker
    seq.start_talkspurt()
    assert seq.frame(0, b"", 160).marker


# --- RTCP wire format -----------------------------------------------------------------------


def test_ntp_timestamp() -> None:
    assert ntp_timestamp(0.0) == 2208988800 << 32
    assert ntp_timestamp(1.5) == ((2208988800 + 1) << 32) | (1 << 31)


def test_compound_sr_sdes_round_trip() -> None:
    block = ReportBlock(0xCAFE, 25, -3, 0x1_0005, 40, 0x12345678, 65536)
    sr = SenderReport(0xBEEF, ntp_timestamp(1_700_000_000.25), 123456, 50, 8000, (block,))
    sdes = SourceDescription(((0xBEEF, "callgate@example.org"),))
    wire = build_rtcp([sr, sdes])
    assert len(wire) % 4 == 0 and wire[1] == 200 and looks_like_rtcp(wire)
    assert parse_rtcp(wire) == [sr, sdes]


def test_rr_and_bye_round_trip() -> None:
    rr = ReceiverReport(1, (ReportBlock(2, 0, 0, 100, 0, 0, 0),))
    empty_rr = ReceiverReport(3)
    bye = Bye((1, 2), "call ended")
    wire = build_rtcp([rr, empty_rr, bye])
    assert parse_rtcp(wire) == [rr, empty_rr, bye]
    assert parse_rtcp(Bye((9,)).to_bytes()) == [Bye((9,), None)]


def test_sdes_with_several_items_and_chunks() -> None:
    # Hand-built SDES: chunk 1 has NAME then CNAME, chunk 2 only TOOL; we keep the CNAMEs.
    chunk1 = struct.pack("!I", 11) + b"\x02\x03bob" + b"\x01\x05alice" + b"\x00"
    chunk1 += bytes(-len(chunk1) % 4)
    chunk2 = struct.pack("!I", 22) + b"\x06\x01x\x00"
    body = chunk1 + chunk2
    wire = struct.pack("!BBH", 0x82, 202, len(body) // 4) + body
    assert parse_rtcp(wire) == [SourceDescription(((11, "alice"),))]


def test_unknown_type_and_padding_on_last() -> None:
    app = UnknownRtcp(204, 1, struct.pack("!I", 5) + b"NAME" + b"data")
    rr = ReceiverReport(5).to_bytes()
    padded = bytearray(app.to_bytes() + b"\x00\x00\x00\x04")
    padded[0] |= 0x20
    padded[2:4] = struct.pack("!H", 4)
    assert parse_rtcp(rr + bytes(padded)) == [ReceiverReport(5), app]
    bad = bytearray(rr)
    bad[0] |= 0x20  # padding is only allowed on the last packet of a compound
    with pytest.raises(RtcpError):
        parse_rtcp(bytes(bad) + app.to_bytes())


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\xc9",
        bytes.fromhex("40c90001") + b"\0" * 4,  # version 1
        bytes.fromhex("80c90005") + b"\0" * 4,  # length beyond the datagram
        bytes.fromhex("81c80006") + b"\0" * 24,  # SR claiming a block it lacks
        bytes.fromhex("81ca0001") + b"\0\0\0\1",  # SDES chunk without terminator
        bytes.fromhex("81cb0002") + b"\0\0\0\1" + b"\x09abc",  # BYE reason overruns
    ],
)
def test_parse_rtcp_rejects_garbage(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp(data)


def test_looks_like_rtcp_demux() -> None:
    assert not looks_like_rtcp(RtpPacket(0, 1, 2, 3, payload=b"x" * 20).to_bytes())
    assert not looks_like_rtcp(RtpPacket(111, 1, 2, 3, True, payload=b"x" * 20).to_bytes())
    assert looks_like_rtcp(ReceiverReport(1).to_bytes())


def test_rtcp_interval_randomised_around_5s() -> None:
    rng = random.Random(1)
    values = [rtcp_interval(rng=rng) for _ in range(500)]
    assert min(values) >= 0.5 * RTCP_INTERVAL and max(values) <= 1.5 * RTCP_INTERVAL
    assert abs(sum(values) / len(values) - RTCP_INTERVAL) < 0.2
    assert max(rtcp_interval(initial=True, rng=rng) for _ in range(100)) <= 0.75 * RTCP_INTERVAL


# --- ReceptionStats (RFC 3550 A.1, A.3, A.8) ------------------------------------------------


def feed(stats: ReceptionStats, seqs: list[int], start: float = 0.0) -> list[bool]:
    return [stats.update(s & 0xFFFF, 160 * i, start + 0.02 * i) for i, s in enumerate(seqs)]


def test_stats_probation_then_counts() -> None:
    stats = ReceptionStats(1, 8000)
    assert feed(stats, [100, 101, 102]) == [False, True, True]
    assert (stats.received, stats.expected, stats.lost) == (2, 2, 0)


def test_stats_loss_and_fraction() -> None:
    stats = ReceptionStats(1, 8000)
    seqs = [s for s in range(0, 101) if s % 10 != 5]  # 10 of 100 lost after probation
    feed(stats, seqs)
    block = stats.report_block(now=10.0)
    assert stats.expected == 100 and stats.received == 90 and stats.lost == 10
    assert block.fraction_lost == 10 * 256 // 100 and block.cumulative_lost == 10
    feed(stats, list(range(101, 151)), start=3.0)  # next interval: no loss
    block = stats.report_block(now=20.0)
    assert block.fraction_lost == 0 and block.cumulative_lost == 10


def test_stats_sequence_wrap_extends_highest() -> None:
    stats = ReceptionStats(1, 8000)
    feed(stats, list(range(65530, 65536 + 10)))
    assert stats.cycles == 1 << 16 and stats.max_seq == 9
    assert stats.extended_max == (1 << 16) + 9 and stats.lost == 0


def test_stats_duplicates_and_reordering() -> None:
    stats = ReceptionStats(1, 8000)
    feed(stats, [1, 2, 3, 5, 4, 6, 6])
    # A.3: duplicates count as received, so "lost" can go negative; reordering is not loss.
    assert stats.expected == 5 and stats.received == 6 and stats.lost == -1
    assert stats.report_block(1.0).fraction_lost == 0


def test_stats_source_restart_needs_two_packets() -> None:
    stats = ReceptionStats(1, 8000)
    feed(stats, [10, 11, 12])
    assert stats.update(40000, 0, 1.0) is False  # a wild jump is held back ...
    assert stats.update(40001, 160, 1.02) is True  # ... until the next one confirms it
    assert stats.base_seq == 40001 and stats.received == 1


def test_jitter_constant_delay_is_zero_and_variable_delay_is_measured() -> None:
    steady = ReceptionStats(1, 8000)
    feed(steady, list(range(200)))
    assert steady.jitter == 0
    bumpy = ReceptionStats(1, 8000)
    for i in range(2000):  # every other packet 10 ms late: |D| = 80 units each time
        bumpy.update(i, 160 * i, 0.02 * i + (0.01 if i % 2 else 0.0))
    assert bumpy.jitter == pytest.approx(80, abs=1)
    assert bumpy.jitter_ms == pytest.approx(10.0, abs=0.2)


def test_jitter_survives_timestamp_wrap() -> None:
    stats = ReceptionStats(1, 8000)
    for i in range(100):
        stats.update(i, (0xFFFFF000 + 160 * i) & 0xFFFFFFFF, 0.02 * i)
    assert stats.jitter == 0


def test_lsr_dlsr() -> None:
    stats = ReceptionStats(1, 8000)
    feed(stats, [1, 2, 3])
    ntp = ntp_timestamp(1000.0)
    stats.on_sender_report(ntp, now=50.0)
    block = stats.report_block(now=51.5)
    assert block.last_sr == (ntp >> 16) & 0xFFFFFFFF
    assert block.delay_since_last_sr == int(1.5 * 65536)


# --- captures from SIPp ---------------------------------------------------------------------


def sipp_pcaps() -> Path:
    """SIPp's bundled captures: <prefix>/share/sip-tester beside <prefix>/bin/sipp."""
    override = os.environ.get("CALLGATE_SIPP_PCAPS")
    if override:
        return Path(override)
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp (Debian sip-tester) is not installed")
    folder = Path(sipp).resolve().parents[1] / "share" / "sip-tester"
    if not (folder / "g711a.pcap").exists():
        pytest.skip(f"no SIPp captures in {folder}")
    return folder


def read_pcap_udp(path: Path) -> Iterator[tuple[float, bytes]]:
    """(capture time, UDP payload) for each Ethernet/IPv4/UDP frame of a libpcap file."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    endian = {0xA1B2C3D4: "<", 0xD4C3B2A1: ">"}[magic]  # microsecond libpcap, either order
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1, "Ethernet captures only"
    offset = 24
    while offset < len(data):
        sec, usec, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800 or frame[23] != 17:
            continue  # not IPv4, or not UDP
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        length = struct.unpack_from("!H", frame, udp + 4)[0]
        yield sec + usec / 1e6, frame[udp + 8 : udp + length]


def test_sipp_g711a_capture() -> None:
    datagrams = list(read_pcap_udp(sipp_pcaps() / "g711a.pcap"))
    parsed = [parse_rtp(d) for _, d in datagrams]
    assert len(parsed) == 236
    assert {p.payload_type for p in parsed} == {8} and {p.ssrc for p in parsed} == {0xDEE0EE8F}
    assert [p.marker for p in parsed[:2]] == [True, False] and not any(p.marker for p in parsed[1:])
    assert all(len(p.payload) == 240 for p in parsed)  # 30 ms packets
    assert all(b.timestamp - a.timestamp == 240 for a, b in itertools.pairwise(parsed))
    assert [p.to_bytes() for p in parsed] == [d for _, d in datagrams]
    stats = ReceptionStats(parsed[0].ssrc, 8000)
    for (arrival, _), p in zip(datagrams, parsed, strict=True):
        stats.update(p.sequence, p.timestamp, arrival)
    assert stats.lost == 0 and stats.expected == 235  # first packet was on probation
    assert stats.jitter_ms < 5.0
    audio = b"".join(p.payload for p in parsed)
    samples = np.frombuffer(alaw_decode(audio), dtype="<i2")
    assert np.sqrt(np.mean(samples.astype(float) ** 2)) > 100  # there is real audio in it
    assert alaw_encode(alaw_decode(audio)) == audio


DTMF_FILES = {"0": "0", "1": "1", "2": "2", "3": "3", "4": "4", "5": "5", "6": "6", "7": "7",
              "8": "8", "9": "9", "*": "star", "#": "pound"}


@pytest.mark.parametrize(("digit", "name"), sorted(DTMF_FILES.items()))
def test_sipp_dtmf_capture_yields_its_digit(digit: str, name: str) -> None:
    receiver = DtmfReceiver()
    got = []
    packets = [(t, parse_rtp(d)) for t, d in read_pcap_udp(sipp_pcaps() / f"dtmf_2833_{name}.pcap")]
    assert len(packets) == 10 and {p.payload_type for _, p in packets} == {101}
    assert packets[0][1].marker
    for t, packet in packets:
        got += receiver.feed(packet, t)
    assert [(d.digit, d.duration_ms) for d in got] == [(digit, 280)]  # 2240 units at 8 kHz
    assert receiver.poll(packets[-1][0] + 10) == []


def test_sipp_dtmf_captures_as_one_stream() -> None:
    # dtmf_2833_1 … 9, star, pound were cut from one session (one SSRC, rising timestamps);
    # replayed in capture order they must give the key presses in order, each once.
    folder = sipp_pcaps()
    merged = []
    for digit, name in DTMF_FILES.items():
        if digit != "0":  # the "0" capture was edited separately (it overlaps "1" in time)
            merged += list(read_pcap_udp(folder / f"dtmf_2833_{name}.pcap"))
    merged.sort(key=lambda item: item[0])
    receiver = DtmfReceiver()
    digits = []
    for t, data in merged:
        digits += [d.digit for d in receiver.feed(parse_rtp(data), t)]
    assert "".join(digits) == "123456789*#"
