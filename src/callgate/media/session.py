"""MediaSession: one call's media as a sans-IO state machine.

Datagrams come in with their source address and ``now``; ``on_tick(now)`` runs once per shared
20 ms tick; whatever must go on the wire leaves through the ``transmit(data, addr, rtcp)``
callable given at construction (no sockets here, and no list built per tick).

Receive: SRTP unprotect → parse → strict-RTP source check (``SourceLatch``) → telephone-events
to the DTMF receiver, audio to the jitter buffer. Each tick: jitter buffer pop → decode /
conceal → resample to the consumer's ``AudioFormat`` (neither where it takes the codec's own
audio) → one 20 ms frame to ``on_audio``; then one packet out from the PacedSender (queued
audio, a telephone-event, or encoded silence that keeps NAT bindings open and the far end's
jitter buffer fed), nothing while our direction does not send (RFC 3264 §5.1,
hold); RTCP SR/RR about every 5 s (RFC 3550 §6.2).

Where media goes is guarded, so that an INVITE cannot aim our stream at a third party: the
address the SDP names gets nothing until :meth:`MediaSession.answered` says the call is
established (the ACK came, or early media was asked for); a source that proved itself by
sending the call's media may get it before. And sending pauses while nothing (no RTP, no RTCP)
has come back for ``media_timeout`` seconds, in the spirit of RFC 7675 consent freshness: a
silent caller still sends RTP, an absent one or a victim sends none.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from callgate.log import event
from callgate.media.codecs import Codec, CodecError, create_codec
from callgate.media.dtmf import DtmfDigit, DtmfReceiver
from callgate.media.formats import AudioFormat
from callgate.media.jitter import LOST, JitterBuffer
from callgate.media.latch import SourceLatch
from callgate.media.offer_answer import CodecSpec, CryptoSuite, NegotiatedMedia
from callgate.media.pacer import PacedSender
from callgate.media.resample import Resampler
from callgate.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    SenderReport,
    SourceDescription,
    build_rtcp,
    looks_like_rtcp,
    ntp_timestamp,
    parse_rtcp,
    rtcp_interval,
)
from callgate.media.rtp import RtpError, parse_rtp
from callgate.media.srtp import SrtpContext, SrtpError

logger = logging.getLogger(__name__)

_COMFORT_NOISE_PT = 13  # RFC 3389; its sequence numbers are skipped, its frames are silence
_STALE_SOURCE_S = 1.0

Address = tuple[str, int]
Transmit = Callable[[bytes, Address, bool], None]  # (datagram, destination, is_rtcp)


class MediaSession:
    """The media of one call, sans-IO. Configure with :meth:`configure` (again on re-INVITE)."""

    on_audio: Callable[[bytes], None] | None
    on_dtmf: Callable[[str], None] | None

    def __init__(self, transmit: Transmit, *, ipv6_socket: bool = False,
                 symmetric_rtp: bool = True, jitter_min_ms: int = 40, jitter_max_ms: int = 200,
                 media_timeout: float = 0.0, call_id: str | None = None) -> None:
        self.call_id = call_id
        self.on_audio = None
        self.on_dtmf = None
        self._transmit_to = transmit
        self._ipv6 = ipv6_socket
        self._symmetric = symmetric_rtp
        self._jitter_min, self._jitter_max = jitter_min_ms, jitter_max_ms
        self.negotiated: NegotiatedMedia | None = None
        self._spec: CodecSpec | None = None
        self._codec: Codec | None = None
        self._jitter: JitterBuffer | None = None
        self._srtp: SrtpContext | None = None
        self._keys: tuple[CryptoSuite, CryptoSuite] | None = None
        self._rx_stats: ReceptionStats | None = None
        self._dtmf_rx = DtmfReceiver()
        self._sender = PacedSender()
        self._cname = f"{secrets.token_hex(6)}@callgate"
        self._audio: AudioFormat | None = None
        self._inline = False
        self._codec_pt = self._dtmf_pt = -1
        self._sending = self._receiving = False
        self._remote: Address | None = None      # where RTP goes now (see _route)
        self._remote_rtcp: Address | None = None
        self._sdp_remote: Address | None = None  # what the SDP names, as our socket reaches it
        self._sdp_rtcp: Address | None = None
        self._rtcp_source: Address | None = None
        self._latch = SourceLatch()
        self._answered = False
        self._media_timeout = media_timeout
        self._heard: float | None = None         # when the peer's RTP or RTCP last came
        self._peer_silent = False
        self._rtcp_mux = False
        # Caller audio is reframed to exact 20 ms frames at the session rate.
        self._rx_resampler: Resampler | None = None
        self._rx_fifo = bytearray()
        self._rx_frame = 0
        self._rx_silence = b""
        self._next_rtcp = 0.0
        self._sent_since_report = False
        self._last_tick = 0.0
        # RTCP wants wall-clock NTP time (RFC 3550 §4); it is derived from the monotonic
        # ``now`` handed in, so the core reads no clock itself.
        self._wall_offset = time.time() - time.monotonic()
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.foreign_packets = self.malformed = self.unknown_pt = self.decode_errors = 0
        self.srtp_failures = self.dtmf_in = self.rtcp_in = self.rtcp_out = 0
        self.learning_packets = self.silent_ticks = 0
        self.rtt_ms: float | None = None
        self.remote_report: ReportBlock | None = None

    # -- configuration ------------------------------------------------------------------------

    def configure(self, negotiated: NegotiatedMedia, *, audio: AudioFormat, now: float,
                  inline: bool = False) -> bool:
        """Apply a negotiation: codec, direction, keys, DTMF, remote; ``audio`` is what
        ``on_audio`` gets and ``send_audio`` takes (G.711 bytes of the call's own law: passed
        through). ``inline``: ``on_audio`` answers at once through ``send_audio`` (an echo),
        so the frame is played out in the send phase and its answer leaves in this tick's
        packet instead of the next one's. What changed is rebuilt; SSRC, sequence numbers and
        queued audio stay. Returns True when the remote address changed and is a host name
        the caller must resolve (then call :meth:`set_remote`)."""
        self._inline = inline
        if negotiated.codec != self._spec or audio != self._audio:
            self._codec = create_codec(negotiated.codec,
                                       audio=None if audio.encoding == "pcm16" else audio)
            if negotiated.codec != self._spec:
                self._jitter = JitterBuffer(self._codec.clock_rate, 20, self._jitter_min,
                                            self._jitter_max)
                self._rx_stats = None
            self._spec = negotiated.codec
            self._codec_pt = negotiated.codec.payload_type
            self._audio = audio
            self._rx_resampler = Resampler(self._codec.sample_rate, audio.rate)
            self._rx_fifo.clear()
            self._rx_frame = audio.byte_rate * 20 // 1000
            # Passed through, the frame is the codec's own (same rate, same 20 ms).
            self._rx_silence = (bytes(self._rx_frame) if audio.encoding == "pcm16"
                                else self._codec.silence)
        codec = self._codec
        assert codec is not None
        self._sender.configure(codec, negotiated.codec.payload_type,
                               negotiated.dtmf_payload_type, audio.rate)
        dtmf_pt = negotiated.dtmf_payload_type
        self._dtmf_pt = -1 if dtmf_pt is None else dtmf_pt
        receiving = negotiated.direction in ("sendrecv", "recvonly")
        if receiving and not self._receiving and self._jitter is not None:
            self._jitter.reset()  # resuming after hold: start playout afresh
        self._sending = negotiated.direction in ("sendrecv", "sendonly")
        self._receiving = receiving
        local, remote = negotiated.local_crypto, negotiated.remote_crypto
        if local is None or remote is None:
            self._srtp, self._keys = None, None
        elif self._keys != (local, remote):
            self._srtp, self._keys = SrtpContext(local, remote), (local, remote)
        old, self.negotiated = self.negotiated, negotiated
        if old is None:
            self._next_rtcp = now + rtcp_interval(initial=True)
        if old is not None and (old.remote_addr, old.remote_rtcp_addr, old.rtcp_mux) == (
                negotiated.remote_addr, negotiated.remote_rtcp_addr, negotiated.rtcp_mux):
            return False
        self._rtcp_mux = negotiated.rtcp_mux
        # A new remote: learn its source afresh; the old peer's packets still in flight are
        # refused for a moment so they cannot win the new latch.
        self._latch.expect(None, now, stale_for=_STALE_SOURCE_S)
        self._rtcp_source = None
        host = negotiated.remote_addr[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            self._sdp_remote = self._sdp_rtcp = None  # a host name (RFC 8866 §5.7 allows it)
            self._route()
            return True
        self.set_remote(host)
        return False

    def set_remote(self, ip: str) -> None:
        """The SDP's address is ``ip`` (as written, or what its host name resolved to)."""
        negotiated = self.negotiated
        assert negotiated is not None
        port = negotiated.remote_addr[1]
        rtcp = negotiated.remote_rtcp_addr
        self._sdp_remote = self._sendable(ip, port)
        if negotiated.rtcp_mux:
            self._sdp_rtcp = self._sdp_remote
        elif rtcp is None:  # RFC 3605 a=rtcp may name another host; else RTP's port + 1
            self._sdp_rtcp = self._sendable(ip, port + 1)
        else:
            same_host = rtcp[0] == negotiated.remote_addr[0]
            self._sdp_rtcp = self._sendable(ip if same_host else rtcp[0], rtcp[1])
        self._latch.resolve(self._sdp_remote)
        self._route()

    def answered(self, now: float) -> None:
        """The call is established (the ACK came, or early media was asked for): the SDP's
        address may now get our media even before it sent any."""
        if not self._answered:
            self._answered = True
            self._heard = now if self._heard is None else max(self._heard, now)
            self._route()

    def _route(self) -> None:
        """Where RTP and RTCP go: a source that proved itself (symmetric RTP: what the peer's
        packets taught us beats what its SDP says), else the SDP's address once answered."""
        source = self._latch.source
        proven = source is not None and source == self._sdp_remote
        if self._symmetric and source is not None:
            self._remote = source
        else:
            self._remote = self._sdp_remote if self._answered or proven else None
        if self._rtcp_mux:
            self._remote_rtcp = self._remote
        elif self._symmetric and self._rtcp_source is not None:
            self._remote_rtcp = self._rtcp_source
        else:
            self._remote_rtcp = self._sdp_rtcp if self._remote is not None else None

    def _sendable(self, host: str, port: int) -> Address | None:
        """The address as our socket can reach it; None for the hold address or port 0."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.is_unspecified or port == 0:
            return None  # RFC 3264 §8.4: c=0.0.0.0 is hold, never a destination
        if self._ipv6 and ip.version == 4:
            return (f"::ffff:{ip}", port)  # a dual-stack socket reaches IPv4 as mapped
        if not self._ipv6 and ip.version == 6:
            event(logger, "media.family_mismatch", level=logging.WARNING, call_id=self.call_id,
                  remote=host)
            return None
        return (str(ip), port)

    # -- receive ------------------------------------------------------------------------------

    def receive_rtp(self, data: bytes, addr: Any, now: float) -> None:
        """A datagram on the RTP port (``addr`` as the socket reports it)."""
        if self._rtcp_mux and looks_like_rtcp(data):
            self.receive_rtcp(data, addr, now)  # RFC 5761 §4: RTCP on the RTP port
            return
        jitter = self._jitter
        if jitter is None or not self._receiving:
            return
        latch = self._latch
        source = latch.source
        known = source is not None and addr[1] == source[1] and addr[0] == source[0]
        if not known and source is not None and self._srtp is None \
                and not latch.is_expected(addr):
            self.foreign_packets += 1  # not our peer (RTP bleed, a stale call's, an intruder)
            return
        srtp = self._srtp
        if srtp is not None:
            try:
                data = srtp.unprotect(data)
            except SrtpError:
                self.srtp_failures += 1  # tampered, replayed or keyed wrongly: never latched
                return
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.malformed += 1
            return
        pt = packet.payload_type
        if pt != self._codec_pt and pt != self._dtmf_pt and pt != _COMFORT_NOISE_PT:
            self.unknown_pt += 1
            return
        if not known:
            verdict = latch.admit(addr, packet.ssrc, packet.sequence, now,
                                  authenticated=srtp is not None)
            if verdict != "peer":
                if verdict == "learning":
                    self.learning_packets += 1
                else:
                    self.foreign_packets += 1
                return
            self._on_latched()
        self._heard_from_peer(now)
        self.packets_in += 1
        self.bytes_in += len(data)
        stats = self._rx_stats
        if stats is None or stats.ssrc != packet.ssrc:
            stats = self._rx_stats = ReceptionStats(packet.ssrc, jitter.clock_rate)
        # Every packet of the source counts for RFC 3550 loss, telephone-events included;
        # their fixed start timestamps do feed the A.8 jitter estimate a little, briefly.
        stats.update(packet.sequence, packet.timestamp, now)
        if pt == self._codec_pt:
            jitter.put(packet, now)
            return
        # Telephone-events and comfort noise use sequence numbers but never reach playout.
        jitter.skip(packet)
        if pt == self._dtmf_pt:
            self._deliver_dtmf(self._dtmf_rx.feed(packet, now))

    def _on_latched(self) -> None:
        source = self._latch.source
        assert source is not None
        self._route()
        event(logger, "media.latched", call_id=self.call_id, remote=f"{source[0]}:{source[1]}",
              learned=self._latch.learned)

    def _heard_from_peer(self, now: float) -> None:
        self._heard = now
        if self._peer_silent:
            self._peer_silent = False
            event(logger, "media.peer_back", call_id=self.call_id)

    def _deliver_dtmf(self, digits: list[DtmfDigit]) -> None:
        for digit in digits:
            self.dtmf_in += 1
            event(logger, "media.dtmf_received", call_id=self.call_id, digit=digit.digit,
                  duration_ms=digit.duration_ms)
            if self.on_dtmf is not None:
                try:
                    self.on_dtmf(digit.digit)
                except Exception:
                    logger.exception("media.on_dtmf_failed")

    def receive_rtcp(self, data: bytes, addr: Any, now: float) -> None:
        if self.negotiated is None:
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect_rtcp(data)
            except SrtpError:
                self.srtp_failures += 1
                return
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.malformed += 1
            return
        if not self._latch.admit_rtcp(addr, authenticated=self._srtp is not None):
            self.foreign_packets += 1  # reports from a stranger neither steer nor keep us
            return
        self.rtcp_in += 1
        self._heard_from_peer(now)
        if self._symmetric and self._rtcp_source is None and not self._rtcp_mux:
            self._rtcp_source = (addr[0], addr[1])
            self._route()
        for packet in packets:
            if isinstance(packet, SenderReport | ReceiverReport):
                if isinstance(packet, SenderReport) and self._rx_stats is not None:
                    self._rx_stats.on_sender_report(packet.ntp_timestamp, now)
                for block in packet.reports:
                    if block.ssrc == self._sender.rtp.ssrc:
                        self._on_report_block(block, now)

    def _on_report_block(self, block: ReportBlock, now: float) -> None:
        self.remote_report = block
        if block.last_sr:
            # RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR, in 1/65536 s (middle NTP bits).
            arrival = (ntp_timestamp(now + self._wall_offset) >> 16) & 0xFFFFFFFF
            rtt = (arrival - block.last_sr - block.delay_since_last_sr) & 0xFFFFFFFF
            if rtt < 0x80000000:
                self.rtt_ms = rtt * 1000 / 65536

    # -- the tick -----------------------------------------------------------------------------

    def on_tick(self, now: float) -> None:
        """Once per 20 ms outside the shared tick (tests, a lone stream): both phases."""
        self.send_due(now)
        self.receive_due(now)

    def send_due(self, now: float) -> None:
        """The send phase of a tick: one packet out (before any call's receive work; an
        inline consumer's answer is this packet's making, not receive work)."""
        codec = self._codec
        if codec is None:
            return
        if self._inline and self._receiving:
            self._play(codec, now)
        last, self._last_tick = self._last_tick, now
        if last and now - last > 0.030:
            # Ticks were skipped (a stalled loop): the RTP clock must still say how much time
            # passed, so the far end sees a gap rather than audio arriving ever later.
            self._sender.skip(min(round((now - last) / 0.020) - 1, 500))
        remote = self._remote
        if remote is not None and self._media_timeout and self._heard is not None \
                and now - self._heard > self._media_timeout:
            remote = None
            self.silent_ticks += 1
            if not self._peer_silent:
                self._peer_silent = True
                event(logger, "media.peer_silent", level=logging.WARNING, call_id=self.call_id,
                      seconds=self._media_timeout)
        if self._sending and remote is not None:
            data = self._sender.packet()
            if self._srtp is not None:
                data = self._srtp.protect(data)
            self._transmit_to(data, remote, False)
            self.packets_out += 1
            self.bytes_out += len(data)
            self._sent_since_report = True
        else:
            self._sender.skip()  # hold, or nowhere to send yet: media time runs on
        if now >= self._next_rtcp:
            self.send_rtcp(now, quiet=self._peer_silent)

    def receive_due(self, now: float) -> None:
        """The receive phase: one frame to ``on_audio`` (concealed on loss), DTMF timeouts."""
        codec = self._codec
        if codec is None or not self._receiving:
            return
        if not self._inline:
            self._play(codec, now)
        deadline = self._dtmf_rx.deadline()
        if deadline is not None and now >= deadline:
            self._deliver_dtmf(self._dtmf_rx.poll(now))

    def _play(self, codec: Codec, now: float) -> None:
        jitter = self._jitter
        assert jitter is not None
        item = jitter.pop(now)
        if item is None:
            pcm = None
        elif item is LOST:
            following = jitter.recovery
            pcm = codec.conceal(following.payload if following is not None else None)
        else:
            try:
                pcm = codec.decode(item.payload)
            except CodecError:
                self.decode_errors += 1
                pcm = codec.conceal()
        on_audio = self.on_audio
        if on_audio is None:
            return
        resampler = self._rx_resampler
        assert resampler is not None
        n = self._rx_frame
        if pcm is None:
            frame = self._rx_silence  # nothing to play: silence keeps the consumer's clock
            resampler.reset()
            self._rx_fifo.clear()
        elif resampler.passthrough and len(pcm) == n and not self._rx_fifo:
            frame = pcm
        else:
            fifo = self._rx_fifo
            fifo += resampler.process(pcm)
            if len(fifo) >= n:
                frame = bytes(fifo[:n])
                del fifo[:n]
                if len(fifo) > 2 * n:
                    del fifo[:-n]  # never let the reframing add latency
            else:  # the resampler is still filling its filter: pad the first frame
                frame = bytes(fifo) + self._rx_silence[len(fifo):]
                fifo.clear()
        try:
            on_audio(frame)
        except Exception:
            logger.exception("media.on_audio_failed")

    # -- send ---------------------------------------------------------------------------------

    def send_audio(self, pcm: bytes, *, flush: bool = False) -> None:
        if self._codec is not None:
            self._sender.queue_audio(pcm, flush=flush)

    def clear_output(self) -> int:
        return self._sender.clear()

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        self._sender.queue_dtmf(digit, duration_ms)

    @property
    def queued_ms(self) -> int:
        return self._sender.queued_ms

    def send_rtcp(self, now: float, *, bye: bool = False, quiet: bool = False) -> None:
        """A compound SR or RR (RFC 3550 §6.4.1: SR when we sent since the last report) with
        our CNAME, and a BYE when leaving. ``quiet``: the peer fell silent, send nothing."""
        self._next_rtcp = now + rtcp_interval()
        dest = self._remote_rtcp
        if dest is None or self.negotiated is None or quiet:
            return
        rtp = self._sender.rtp
        blocks: tuple[ReportBlock, ...] = ()
        if self._rx_stats is not None and self._rx_stats.received:
            blocks = (self._rx_stats.report_block(now),)
        report: SenderReport | ReceiverReport
        if self._sent_since_report:
            report = SenderReport(rtp.ssrc, ntp_timestamp(now + self._wall_offset), rtp.timestamp,
                                  rtp.packets_sent, rtp.octets_sent, blocks)
        else:
            report = ReceiverReport(rtp.ssrc, blocks)
        parts: list[SenderReport | ReceiverReport | SourceDescription | Bye] = [
            report, SourceDescription(((rtp.ssrc, self._cname),))]
        if bye:
            parts.append(Bye((rtp.ssrc,)))
        data = build_rtcp(parts)
        if self._srtp is not None:
            data = self._srtp.protect_rtcp(data)
        self._transmit_to(data, dest, not self._rtcp_mux)
        self.rtcp_out += 1
        self._sent_since_report = False

    # -- state --------------------------------------------------------------------------------

    @property
    def audio_format(self) -> AudioFormat | None:
        """What ``on_audio`` gets and ``send_audio`` takes (None before :meth:`configure`)."""
        return self._audio

    @property
    def latched_addr(self) -> Address | None:
        """The peer's source address, once its packets proved it (strict RTP)."""
        return self._latch.source

    @property
    def last_heard(self) -> float | None:
        """``now`` of the peer's last RTP or RTCP packet (silence in RTP counts; its absence
        does not), or of the answer if nothing came since; None before either."""
        return self._heard

    @property
    def stats(self) -> dict[str, Any]:
        jb, rx, remote, srtp = self._jitter, self._rx_stats, self.remote_report, self._srtp
        sender, latched = self._sender, self._latch.source
        return {
            "codec": self._spec.name if self._spec else None,
            "packets_in": self.packets_in, "bytes_in": self.bytes_in,
            "packets_out": self.packets_out, "bytes_out": self.bytes_out,
            "lost": jb.lost if jb else 0, "late": jb.late if jb else 0,
            "duplicate": jb.duplicate if jb else 0, "concealed": jb.concealed if jb else 0,
            "jitter_delay_ms": round(jb.delay_ms, 1) if jb else 0.0,
            "jitter_target_ms": round(jb.target_ms, 1) if jb else 0.0,
            "jitter_ms": round(rx.jitter_ms, 2) if rx else 0.0,  # RFC 3550 A.8 estimate
            "rtp_lost": rx.lost if rx else 0,                       # RFC 3550 A.3
            "srtp_auth_failures": srtp.auth_failures if srtp else 0,
            "srtp_failures": self.srtp_failures,
            "foreign_packets": self.foreign_packets, "malformed": self.malformed,
            "unknown_pt": self.unknown_pt, "decode_errors": self.decode_errors,
            "comfort_frames": sender.comfort_frames,
            "dtmf_in": self.dtmf_in, "dtmf_out": sender.dtmf_sent,
            "rtcp_in": self.rtcp_in, "rtcp_out": self.rtcp_out,
            "remote_fraction_lost": remote.fraction_lost / 256 if remote else None,
            "remote_jitter_ms": (remote.jitter * 1000 / jb.clock_rate
                                 if remote and jb else None),
            "rtt_ms": round(self.rtt_ms, 1) if self.rtt_ms is not None else None,
            "queued_ms": sender.queued_ms, "tx_overflow": sender.overflows,
            "learning_packets": self.learning_packets, "silent_ticks": self.silent_ticks,
            "latched": f"{latched[0]}:{latched[1]}" if latched else None,
        }
