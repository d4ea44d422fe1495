"""RTP packets (RFC 3550 §5.1) and the sending side's sequence/timestamp state.

Parsing validates what a receiver must (§A.1: version 2, header lengths, padding count) and
raises :class:`RtpError` on anything else, so garbage never reaches the jitter buffer.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

__all__ = ["RtpError", "RtpExtension", "RtpPacket", "RtpSequencer", "parse_rtp"]

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")


class RtpError(ValueError):
    """The datagram is not a valid RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """Header extension (RFC 3550 §5.3.1): a profile-defined 16-bit id and 32-bit words."""

    profile: int
    data: bytes  # length must be a multiple of 4


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. Treat it as a value: it is not frozen only because a frozen dataclass
    costs about three times as much to construct, and one is built per packet each way."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload: bytes = b""
    csrcs: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0  # pad octets (including the count octet) on the wire; 0 = none

    def to_bytes(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type out of range: {self.payload_type}")
        if len(self.csrcs) > 15:
            raise RtpError("at most 15 CSRCs")
        if not 0 <= self.padding <= 255:
            raise RtpError("padding must be 0..255 octets")
        first = 0x80 | len(self.csrcs)
        if self.padding:
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        second = self.payload_type | (0x80 if self.marker else 0)
        head = _HEADER.pack(
            first,
            second,
            self.sequence & 0xFFFF,
            self.timestamp & 0xFFFFFFFF,
            self.ssrc & 0xFFFFFFFF,
        )
        if not self.csrcs and self.extension is None and not self.padding:
            return head + self.payload
        parts = [head]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension is not None:
            data = self.extension.data
            if len(data) % 4:
                raise RtpError("extension data must be a multiple of 4 octets")
            parts.append(_EXT_HEADER.pack(self.extension.profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            # §5.1: the last padding octet counts the padding octets, itself included.
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP datagram; raises RtpError if it is not valid RTP."""
    size = len(data)
    if size < 12:
        raise RtpError(f"too short for an RTP header: {size} octets")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    offset = 12
    cc = first & 0x0F
    csrcs: tuple[int, ...] = ()
    if cc:
        end = offset + 4 * cc
        if end > size:
            raise RtpError("CSRC list runs past the end of the packet")
        csrcs = struct.unpack_from(f"!{cc}I", data, offset)
        offset = end
    extension = None
    if first & 0x10:
        if offset + 4 > size:
            raise RtpError("extension header runs past the end of the packet")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        end = offset + 4 + 4 * words
        if end > size:
            raise RtpError("extension runs past the end of the packet")
        extension = RtpExtension(profile, data[offset + 4 : end])
        offset = end
    end = size
    padding = 0
    if first & 0x20:
        padding = data[-1]
        # The count includes itself, so 0 is invalid, and it cannot eat into the header.
        if padding == 0 or offset + padding > size:
            raise RtpError(f"invalid padding count {padding}")
        end = size - padding
    return RtpPacket(
        second & 0x7F,
        sequence,
        timestamp,
        ssrc,
        bool(second & 0x80),
        data[offset:end],
        csrcs,
        extension,
        padding,
    )


class RtpSequencer:
    """Sender state for one outgoing RTP stream (one SSRC).

    Sequence number, timestamp and SSRC start random (RFC 3550 §5.1, and RFC 3711 §9.1 needs
    that for SRTP keystream uniqueness). The timestamp counts media time, not packets: it
    advances by the samples each frame covers, and also over silence that is not sent, so that
    the receiver's playout stays aligned. The marker bit goes on the first packet of each
    talkspurt (RFC 3551 §4.1), i.e. the very first packet and the first one after a gap.
    """

    def __init__(
        self,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self.sequence = secrets.randbits(16) if sequence is None else sequence & 0xFFFF
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp & 0xFFFFFFFF
        self.packets_sent = 0  # for RTCP SR sender info (RFC 3550 §6.4.1)
        self.octets_sent = 0  # payload octets only, as §6.4.1 defines
        self._talkspurt = True

    def frame(self, payload_type: int, payload: bytes, samples: int) -> RtpPacket:
        """The packet for the next media frame, then advance the clock by ``samples``."""
        packet = self.packet(payload_type, payload, marker=self._talkspurt)
        self._talkspurt = False
        self.advance(samples)
        return packet

    def packet(
        self,
        payload_type: int,
        payload: bytes,
        *,
        marker: bool = False,
        timestamp: int | None = None,
    ) -> RtpPacket:
        """A packet at the current timestamp (or ``timestamp``) with the next sequence number;
        the timestamp is not advanced (several telephone-event packets share one)."""
        packet = RtpPacket(
            payload_type,
            self.sequence,
            self.timestamp if timestamp is None else timestamp & 0xFFFFFFFF,
            self.ssrc,
            marker,
            payload,
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return packet

    def advance(self, samples: int) -> None:
        """Move the media clock on by ``samples`` RTP timestamp units."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF

    def skip(self, samples: int) -> None:
        """Media time passed without sending (silence); the next frame starts a talkspurt."""
        self.advance(samples)
        self._talkspurt = True

    def start_talkspurt(self) -> None:
        """Mark the next frame as the start of a talkspurt (e.g. after a DTMF event)."""
        self._talkspurt = True
