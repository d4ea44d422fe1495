"""RTCP (RFC 3550 §6): SR, RR, SDES (CNAME), BYE in compound packets, and receiver statistics.

:class:`ReceptionStats` is the receiver side of RFC 3550 Appendix A: source validation and
extended sequence numbers (A.1), expected/lost/fraction lost (A.3) and interarrival jitter
(A.8); :meth:`ReceptionStats.report_block` turns it into the report block an SR/RR carries.
The report interval is the simplified fixed 5 s minimum of §6.2, randomised per §6.3.1.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "RTCP_INTERVAL",
    "Bye",
    "ReceiverReport",
    "ReceptionStats",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "SenderReport",
    "SourceDescription",
    "UnknownRtcp",
    "build_rtcp",
    "looks_like_rtcp",
    "ntp_timestamp",
    "parse_rtcp",
    "rtcp_interval",
]

RTCP_INTERVAL = 5.0  # seconds, RFC 3550 §6.2 minimum
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
SR, RR, SDES, BYE = 200, 201, 202, 203
_CNAME = 1
_HEADER = struct.Struct("!BBH")
_BLOCK = struct.Struct("!IIIIII")
_SENDER_INFO = struct.Struct("!IQIII")


class RtcpError(ValueError):
    """The datagram is not a valid (compound) RTCP packet."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # 0..255, fixed point /256
    cumulative_lost: int  # signed 24-bit
    highest_sequence: int  # extended: cycles << 16 | max seq
    jitter: int  # RTP timestamp units
    last_sr: int  # middle 32 bits of the last SR's NTP timestamp, 0 if none
    delay_since_last_sr: int  # 1/65536 s

    def to_bytes(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF  # two's complement in 24 bits
        return _BLOCK.pack(self.ssrc, (self.fraction_lost & 0xFF) << 24 | lost,
                           self.highest_sequence & 0xFFFFFFFF, self.jitter & 0xFFFFFFFF,
                           self.last_sr & 0xFFFFFFFF, self.delay_since_last_sr & 0xFFFFFFFF)

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format, see ntp_timestamp()
    rtp_timestamp: int  # the same instant on the RTP media clock
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def to_bytes(self) -> bytes:
        body = _SENDER_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp & 0xFFFFFFFF,
                                 self.packet_count & 0xFFFFFFFF, self.octet_count & 0xFFFFFFFF)
        return _packet(SR, len(self.reports), body + _blocks(self.reports))


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def to_bytes(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + _blocks(self.reports)
        return _packet(RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES with one CNAME per source; other item types are skipped when parsing."""

    chunks: tuple[tuple[int, str], ...]  # (ssrc, cname)

    def to_bytes(self) -> bytes:
        body = bytearray()
        for ssrc, cname in self.chunks:
            text = cname.encode()[:255]
            chunk = struct.pack("!IBB", ssrc, _CNAME, len(text)) + text
            # §6.5: the item list ends with a null octet, then pads to a 32-bit boundary.
            chunk += bytes(4 - len(chunk) % 4)
            body += chunk
        return _packet(SDES, len(self.chunks), bytes(body))


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str | None = None

    def to_bytes(self) -> bytes:
        body = struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        if self.reason:
            text = self.reason.encode()[:255]
            reason = bytes([len(text)]) + text
            body += reason + bytes(-len(reason) % 4)
        return _packet(BYE, len(self.ssrcs), body)


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """Any other packet type (APP, feedback, XR ...), kept as its body."""

    packet_type: int
    count: int
    body: bytes

    def to_bytes(self) -> bytes:
        return _packet(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    if count > 31:
        raise RtcpError("at most 31 items in one RTCP packet")
    if len(body) % 4:
        raise RtcpError("RTCP body must be a multiple of 4 octets")
    return _HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


def _blocks(reports: Iterable[ReportBlock]) -> bytes:
    return b"".join(block.to_bytes() for block in reports)


def build_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound packet (§6.1): the first should be an SR or RR, with an SDES CNAME."""
    return b"".join(packet.to_bytes() for packet in packets)


def looks_like_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: with rtcp-mux, packet types 192..223 in the second octet are RTCP."""
    return len(data) >= 8 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet; raises RtcpError (checks per RFC 3550 §A.2)."""
    packets: list[RtcpPacket] = []
    offset = 0
    size = len(data)
    if size < 4:
        raise RtcpError("too short for RTCP")
    while offset < size:
        if offset + 4 > size:
            raise RtcpError("truncated RTCP header")
        first, packet_type, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 + 4 * words
        if end > size:
            raise RtcpError("RTCP length runs past the end of the datagram")
        body_end = end
        if first & 0x20:
            # Only the last packet of a compound may be padded (A.2).
            if end != size:
                raise RtcpError("padding on a packet that is not the last")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtcpError("invalid RTCP padding")
            body_end = end - pad
        packets.append(_parse_one(packet_type, first & 0x1F, data[offset + 4 : body_end]))
        offset = end
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    try:
        if packet_type == SR:
            ssrc, ntp, rtp_ts, pkts, octets = _SENDER_INFO.unpack_from(body)
            return SenderReport(ssrc, ntp, rtp_ts, pkts, octets, _parse_blocks(body, 24, count))
        if packet_type == RR:
            (ssrc,) = struct.unpack_from("!I", body)
            return ReceiverReport(ssrc, _parse_blocks(body, 4, count))
        if packet_type == SDES:
            return _parse_sdes(body, count)
        if packet_type == BYE:
            ssrcs = struct.unpack_from(f"!{count}I", body)
            reason = None
            at = 4 * count
            if at < len(body):
                length = body[at]
                if at + 1 + length > len(body):
                    raise RtcpError("BYE reason runs past the packet")
                reason = body[at + 1 : at + 1 + length].decode("utf-8", "replace")
            return Bye(tuple(ssrcs), reason)
    except struct.error as exc:
        raise RtcpError(f"RTCP packet type {packet_type} too short") from exc
    return UnknownRtcp(packet_type, count, body)


def _parse_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    if offset + 24 * count > len(body):
        raise RtcpError("report blocks run past the packet")
    return tuple(ReportBlock.parse(body, offset + 24 * i) for i in range(count))


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks: list[tuple[int, str]] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(body):
            raise RtcpError("SDES chunk runs past the packet")
        (ssrc,) = struct.unpack_from("!I", body, at)
        at += 4
        cname = None
        while True:
            if at >= len(body):
                raise RtcpError("SDES item list not terminated")
            item = body[at]
            if item == 0:  # end of list; skip to the next 32-bit boundary
                at += 4 - at % 4
                break
            if at + 2 > len(body) or at + 2 + body[at + 1] > len(body):
                raise RtcpError("SDES item runs past the packet")
            length = body[at + 1]
            if item == _CNAME:
                cname = body[at + 2 : at + 2 + length].decode("utf-8", "replace")
            at += 2 + length
        if cname is not None:
            chunks.append((ssrc, cname))
    return SourceDescription(tuple(chunks))


def ntp_timestamp(unix_time: float) -> int:
    """Wall-clock time as a 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    return int((unix_time + _NTP_EPOCH_OFFSET) * 2**32) & 0xFFFFFFFFFFFFFFFF


def rtcp_interval(*, initial: bool = False, rng: random.Random | None = None) -> float:
    """Seconds to the next report: 5 s (half for the first, §6.2) times a random factor in
    [0.5, 1.5] so that participants do not synchronise (§6.3.1)."""
    base = RTCP_INTERVAL / 2 if initial else RTCP_INTERVAL
    return base * (rng or random).uniform(0.5, 1.5)


_SEQ_MOD = 1 << 16
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_MIN_SEQUENTIAL = 2


class ReceptionStats:
    """Statistics for one received source (one SSRC), per RFC 3550 A.1, A.3 and A.8.

    ``update`` returns False while the source is on probation (its first packet) and for
    packets judged invalid by A.1 (a sequence jump, until confirmed by the next packet); the
    caller may still play those, they are just not counted.
    """

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = _SEQ_MOD + 1
        self.probation = _MIN_SEQUENTIAL
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0  # A.8, in timestamp units
        self._transit: int | None = None
        self._last_sr = 0
        self._last_sr_time: float | None = None
        self.fraction_lost = 0  # from the last report_block()
        self._started = False

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0

    def update(self, seq: int, timestamp: int, arrival_time: float) -> bool:
        """Account for one received packet; ``arrival_time`` in seconds (any epoch)."""
        if not self._started:
            self._started = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
        if not self._update_seq(seq):
            return False
        # A.8: transit time difference in timestamp units, smoothed with gain 1/16.
        transit = int(arrival_time * self.clock_rate) - timestamp
        if self._transit is not None:
            d = (transit - self._transit + 2**31) % 2**32 - 2**31  # timestamp wrap
            self._jitter += (abs(d) - self._jitter) / 16
        self._transit = transit
        return True

    def _update_seq(self, seq: int) -> bool:
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            # A.1: a new source counts once MIN_SEQUENTIAL packets arrived in sequence.
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = _MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < _MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD  # sequence number wrapped
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - _MAX_MISORDER:
            # A very large jump: the source restarted, or garbage. Accept after two in a row.
            if seq == self.bad_seq:
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted as received (A.3 allows lost < 0)
        self.received += 1
        return True

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost, clamped to the 24-bit signed field (A.3)."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    @property
    def jitter(self) -> int:
        return int(self._jitter)

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000.0 / self.clock_rate

    def on_sender_report(self, ntp: int, now: float) -> None:
        """Note an SR from this source, for LSR/DLSR in our next report (§6.4.1)."""
        self._last_sr = (ntp >> 16) & 0xFFFFFFFF
        self._last_sr_time = now

    def report_block(self, now: float) -> ReportBlock:
        """The report for this interval; resets the interval counters (A.3)."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            self.fraction_lost = 0
        else:
            self.fraction_lost = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._last_sr_time is not None:
            dlsr = int(max(0.0, now - self._last_sr_time) * 65536)
        return ReportBlock(self.ssrc, self.fraction_lost, self.lost, self.extended_max,
                           self.jitter, self._last_sr, dlsr)
