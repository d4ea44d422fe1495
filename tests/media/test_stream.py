"""MediaStream end to end on 127.0.0.1 (and ::1): real sockets, the real shared tick."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import time
from dataclasses import replace
from typing import Any, cast

import numpy as np
import pytest

from callgate.media.codecs import AudioFormat, G711Codec
from callgate.media.latch import behind_nat
from callgate.media.offer_answer import CodecSpec, CryptoSuite, NegotiatedMedia
from callgate.media.pacer import SendTick
from callgate.media.ports import PortPool
from callgate.media.rtcp import ReceiverReport, SenderReport, build_rtcp, parse_rtcp
from callgate.media.rtp import RtpPacket, parse_rtp
from callgate.media.session import MediaSession
from callgate.media.srtp import SrtpContext, new_crypto
from callgate.media.stream import MediaStream
from tests.media.test_pacer import run

PCM8K = AudioFormat.pcm(8000)
PCMU = CodecSpec("PCMU", 0, 8000, 1)
PCMA = CodecSpec("PCMA", 8, 8000, 1)


def media(port: int, *, host: str = "127.0.0.1", codec: CodecSpec = PCMU,
          direction: str = "sendrecv", local: CryptoSuite | None = None,
          remote: CryptoSuite | None = None, rtcp_mux: bool = False) -> NegotiatedMedia:
    return NegotiatedMedia(
        remote_addr=(host, port), codec=codec, dtmf_payload_type=101, direction=direction,
        ptime=20, proto="RTP/SAVP" if local else "RTP/AVP", rtcp_mux=rtcp_mux,
        remote_crypto=remote, local_crypto=local)


def sine(freq: float, seconds: float, rate: int) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def dominant(frames: list[bytes], rate: int) -> tuple[float, float]:
    """(peak frequency, seconds of audible signal) of the received frames."""
    pcm = np.frombuffer(b"".join(frames), "<i2").astype(float)
    loud = np.nonzero(np.abs(pcm) > 2000)[0]
    if len(loud) == 0:
        return 0.0, 0.0
    seg = pcm[loud[0]:loud[-1]]
    freqs = np.fft.rfftfreq(len(seg), 1 / rate)
    return float(freqs[int(np.argmax(np.abs(np.fft.rfft(seg))))]), len(seg) / rate


class Peer(asyncio.DatagramProtocol):
    """A raw UDP endpoint standing in for a phone."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append(data)

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> tuple[Peer, int]:
        loop = asyncio.get_running_loop()
        peer = cls()
        transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=(host, 0))
        return peer, transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        assert self.transport is not None
        self.transport.sendto(data, (host, port))


async def pair(pool: PortPool, tick: SendTick, *, host: str = "127.0.0.1",
               pcm_rate: int = 8000, **kw: Any) -> tuple[MediaStream, MediaStream]:
    a = await MediaStream.open(bind_host=host, port_pool=pool, tick=tick)
    b = await MediaStream.open(bind_host=host, port_pool=pool, tick=tick)
    a.start(media(b.local_port, host=host, **kw), audio=AudioFormat.pcm(pcm_rate))
    b.start(media(a.local_port, host=host, **kw), audio=AudioFormat.pcm(pcm_rate))
    a.answered()
    b.answered()
    return a, b


async def stream_and_phone(low: int, *, bind_host: str = "127.0.0.1",
                           **kw: Any) -> tuple[MediaStream, Peer, int]:
    """A stream on ports from ``low`` up, with a raw UDP phone on 127.0.0.1."""
    stream = await MediaStream.open(bind_host=bind_host, port_pool=PortPool(low, low + 100),
                                    tick=SendTick(), **kw)
    phone, port = await Peer.open()
    return stream, phone, port


@pytest.mark.parametrize(("host", "pcm_rate"), [("127.0.0.1", 8000), ("127.0.0.1", 24000),
                                                 ("::1", 16000)])
def test_sine_crosses_both_ways_with_the_right_frequency(host: str, pcm_rate: int) -> None:
    async def main() -> None:
        pool, tick = PortPool(41000, 41100), SendTick()
        a, b = await pair(pool, tick, host=host, pcm_rate=pcm_rate)
        at_a: list[bytes] = []
        at_b: list[bytes] = []
        a.on_audio, b.on_audio = at_a.append, at_b.append
        a.send_audio(sine(440, 1.0, pcm_rate), flush=True)
        b.send_audio(sine(1000, 1.0, pcm_rate), flush=True)
        await asyncio.sleep(1.5)
        f_b, dur_b = dominant(at_b, pcm_rate)
        f_a, dur_a = dominant(at_a, pcm_rate)
        assert abs(f_b - 440) < 3 and abs(f_a - 1000) < 3
        assert 0.95 < dur_b < 1.2 and 0.95 < dur_a < 1.2
        # Every frame delivered is exactly 20 ms at the session rate.
        assert {len(f) for f in at_b} == {2 * pcm_rate // 50}
        for s in (a, b):
            st = s.stats
            assert st["lost"] == 0 and st["late"] == 0 and st["rtp_lost"] == 0, st
            assert st["packets_out"] >= 70  # silence keeps flowing after the tone
        await a.close()
        await b.close()

    run(main())


def test_latching_follows_the_real_source_and_ignores_others() -> None:
    async def main() -> None:
        stream, phone, phone_port = await stream_and_phone(41100)
        intruder, _ = await Peer.open()
        # The SDP names a port nobody listens on (a phone behind NAT advertising its LAN port).
        stream.start(media(9), audio=PCM8K)
        await asyncio.sleep(0.1)
        assert phone.packets == []
        codec = G711Codec("PCMU")
        tone = sine(440, 0.2, 8000)
        for k in range(10):
            payload = codec.encode(tone[320 * k:320 * (k + 1)])
            phone.send(RtpPacket(0, 100 + k, 1600 * k // 10, 0xABC, k == 0, payload).to_bytes(),
                       stream.local_port)
        await asyncio.sleep(0.05)
        # Learned from a run of four in sequence (strict RTP): the first three are held back.
        assert stream.latched_addr == ("127.0.0.1", phone_port)
        for k in range(5):
            intruder.send(RtpPacket(0, 7 + k, 0, 0xBAD, False, bytes(160)).to_bytes(),
                          stream.local_port)
        await asyncio.sleep(0.1)
        assert len(phone.packets) >= 3  # our media now goes to where the phone really is
        st = stream.stats
        assert st["foreign_packets"] == 5
        assert st["learning_packets"] == 3 and st["packets_in"] == 7
        assert st["latched"] == f"127.0.0.1:{phone_port}"
        await stream.close()
        phone.close()
        intruder.close()

    run(main())


def test_srtp_both_ways_and_a_tampered_packet_is_dropped() -> None:
    async def main() -> None:
        ours, theirs = new_crypto(1, "AES_CM_128_HMAC_SHA1_80"), new_crypto(1,
                                                                           "AES_CM_128_HMAC_SHA1_80")
        stream, phone, phone_port = await stream_and_phone(41200)
        phone_srtp = SrtpContext(theirs, ours)
        stream.start(media(phone_port, local=ours, remote=theirs, rtcp_mux=True), audio=PCM8K)
        heard: list[bytes] = []
        stream.on_audio = heard.append
        stream.send_audio(sine(1000, 0.3, 8000), flush=True)
        codec = G711Codec("PCMU")
        tone = sine(440, 0.6, 8000)
        for k in range(30):
            packet = RtpPacket(0, 500 + k, 160 * k, 0x5151, k == 0,
                               codec.encode(tone[320 * k:320 * (k + 1)])).to_bytes()
            protected = bytearray(phone_srtp.protect(packet))
            if k == 12:
                protected[20] ^= 0x01  # tampered on the way
            phone.send(bytes(protected), stream.local_port)
            await asyncio.sleep(0.02)
        stream.session.send_rtcp(time.monotonic())  # an SRTCP report now, not in 1.25-3.75 s
        await asyncio.sleep(0.3)
        st = stream.stats
        assert st["srtp_auth_failures"] == 1 and st["srtp_failures"] == 1
        assert st["packets_in"] == 29
        assert abs(dominant(heard, 8000)[0] - 440) < 5
        # What we sent decrypts with the key we announced; plain RTP parsing alone fails.
        decoded = [parse_rtp(phone_srtp.unprotect(p)) for p in phone.packets
                   if not 192 <= p[1] <= 223]
        reports = [parse_rtcp(phone_srtp.unprotect_rtcp(p)) for p in phone.packets
                   if 192 <= p[1] <= 223]
        assert reports and isinstance(reports[0][0], SenderReport)
        assert reports[0][0].reports[0].ssrc == 0x5151
        assert len(decoded) >= 20
        pcm = b"".join(codec.decode(p.payload) for p in decoded)
        assert abs(dominant([pcm], 8000)[0] - 1000) < 5
        await stream.close()
        phone.close()

    run(main())


def test_dtmf_digits_arrive_in_order_and_do_not_count_as_loss() -> None:
    async def main() -> None:
        pool, tick = PortPool(41300, 41400), SendTick()
        a, b = await pair(pool, tick)
        digits: list[str] = []
        b.on_dtmf = digits.append
        a.send_audio(sine(440, 0.2, 8000))
        for d in "19#*A":
            a.send_dtmf(d, 80)
        await asyncio.sleep(1.2)
        assert digits == list("19#*A")
        st = b.stats
        assert st["dtmf_in"] == 5 and a.stats["dtmf_out"] == 5
        assert st["lost"] == 0 and st["rtp_lost"] == 0, st
        await a.close()
        await b.close()

    run(main())


def test_hold_sends_nothing_and_restart_changes_codec_and_remote_in_place() -> None:
    async def main() -> None:
        stream, phone, phone_port = await stream_and_phone(41400)
        other, other_port = await Peer.open()
        port = stream.local_port
        stream.start(media(phone_port, direction="recvonly"), audio=PCM8K)  # we are held
        stream.answered()
        await asyncio.sleep(0.2)
        assert phone.packets == [] and stream.stats["packets_out"] == 0
        # re-INVITE: resume, switch to PCMA and to another address; same socket.
        stream.start(media(other_port, codec=PCMA), audio=PCM8K)
        stream.send_audio(sine(440, 0.1, 8000))
        await asyncio.sleep(0.2)
        assert stream.local_port == port
        rtp = [parse_rtp(p) for p in other.packets if not 192 <= p[1] <= 223]
        assert len(rtp) >= 5 and {p.payload_type for p in rtp} == {8}
        assert rtp[0].marker
        assert phone.packets == []
        await stream.close()
        phone.close()
        other.close()

    run(main())


def test_clear_output_drops_queued_audio_for_barge_in() -> None:
    async def main() -> None:
        stream, _phone, phone_port = await stream_and_phone(41500)
        stream.start(media(phone_port), audio=AudioFormat.pcm(24000))
        stream.answered()
        stream.send_audio(sine(440, 2.0, 24000))
        await asyncio.sleep(0.2)
        dropped = stream.clear_output()
        assert 1600 <= dropped <= 1900
        assert stream.stats["queued_ms"] == stream.queued_ms == 0
        await stream.close()
        _phone.close()

    run(main())


def test_rtcp_reports_flow_and_rtt_is_measured() -> None:
    async def main() -> None:
        pool, tick = PortPool(41600, 41700), SendTick()
        a, b = await pair(pool, tick, rtcp_mux=True)
        await asyncio.sleep(0.1)
        a.session.send_rtcp(time.monotonic())  # now, rather than in 1.25-3.75 s
        await asyncio.sleep(0.05)
        b.session.send_rtcp(time.monotonic())  # b answers having seen a's SR: LSR/DLSR set
        await asyncio.sleep(0.05)
        assert a.stats["rtcp_in"] >= 1 and b.stats["rtcp_in"] >= 1
        assert a.stats["remote_fraction_lost"] == 0.0
        assert a.stats["rtt_ms"] is not None and a.stats["rtt_ms"] < 50
        await a.close()
        await b.close()

    run(main())


def test_close_releases_everything() -> None:
    async def main() -> None:
        pool, tick = PortPool(41700, 41800), SendTick()
        a, b = await pair(pool, tick)
        socks = [a._bound.rtp, a._bound.rtcp, b._bound.rtp, b._bound.rtcp]
        await asyncio.sleep(0.1)
        assert tick.running and pool.in_use == 2
        await a.close()
        await b.close()
        await a.close()  # idempotent
        assert not tick.running and tick.clients == 0
        assert pool.in_use == 0
        assert all(s is not None and s.fileno() == -1 for s in socks)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(RuntimeError):
            a.start(media(9), audio=PCM8K)
        # The ports can be bound again at once.
        again = await MediaStream.open(bind_host="127.0.0.1", port_pool=pool, tick=tick)
        await again.close()

    run(main())


def test_ports_in_use_by_others_are_skipped_and_exhaustion_is_an_error() -> None:
    from callgate.media.ports import PortsExhausted

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 41801))  # the RTCP port of the first pair
    try:
        pool = PortPool(41800, 41805)  # pairs 41800/1, 41802/3, 41804/5
        assert pool.size == 3
        first = pool.bind("127.0.0.1")
        second = pool.bind("127.0.0.1")
        assert {first.port, second.port} == {41802, 41804}
        with pytest.raises(PortsExhausted):
            pool.bind("127.0.0.1")
        first.close()
        pool.release(first.port)
        third = pool.bind("127.0.0.1")  # 41800 is tried in vain at most once
        assert third.port == first.port
        # 41800 (skipped before) binds when RTCP is not wanted.
        solo = pool.bind("127.0.0.1", rtcp=False)
        assert solo.port == 41800 and solo.rtcp is None
        for bound in (second, solo, third):
            bound.close()
    finally:
        blocker.close()
    with pytest.raises(ValueError):
        PortPool(41800, 41800)
    pool = PortPool(41901, 41906)  # odd low: starts at 41902
    assert sorted(pool.allocate() for _ in range(2)) == [41902, 41904]
    with pytest.raises(PortsExhausted):
        pool.allocate()
    pool.release(41902)
    assert pool.allocate() == 41902


def test_ports_are_unpredictable_and_a_released_port_rests() -> None:
    pool = PortPool(20000, 29999)  # 5,000 pairs
    ports = [pool.allocate() for _ in range(200)]
    steps = {b - a for a, b in itertools.pairwise(ports)}
    assert len(steps) > 150  # no stride to extrapolate from one port to the next
    assert ports != sorted(ports)
    small = PortPool(30000, 30039)  # 20 pairs: five released ports rest
    taken = [small.allocate() for _ in range(10)]
    for port in taken:
        small.release(port)
    after = [small.allocate() for _ in range(15)]
    assert not set(after) & set(taken[-5:])  # the most recently released are not reused
    assert small.allocate() in taken[-5:]    # ...until nothing else is left


def test_cpu_cost_per_call_benchmark() -> None:
    """100 streams looped back in pairs for 5 s, each echoing what it hears: bidirectional
    G.711 media. Prints the CPU cost per call and the calls per core it projects."""
    calls, seconds = 100, 5.0

    async def main() -> tuple[float, dict[str, Any], int]:
        pool, tick = PortPool(42000, 42400), SendTick()
        streams = []
        for _ in range(calls // 2):
            a, b = await pair(pool, tick)
            for s in (a, b):
                s.on_audio = s.send_audio
            a.send_audio(sine(440, 1.0, 8000))
            streams += [a, b]
        await asyncio.sleep(1.0)
        tick.reset_stats()
        lost0 = sum(s.stats["lost"] + s.stats["late"] for s in streams)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        lost = sum(s.stats["lost"] + s.stats["late"] for s in streams) - lost0
        stats = tick.stats
        for s in streams:
            await s.close()
        return cpu / wall / calls, stats, lost

    per_call, stats, lost = run(main())
    print(f"\n{calls} G.711 calls looped back: {per_call * 1000:.2f} ms CPU per call-second "
          f"-> {1 / per_call:.0f} calls per core; tick error p50={stats['error_p50_ms']:.2f} "
          f"p99={stats['error_p99_ms']:.2f} ms; lost+late={lost}")
    assert per_call < 0.010  # a regression guard far above the measured cost


def test_re_start_with_a_new_remote_relatches() -> None:
    async def main() -> None:
        stream, phone, phone_port = await stream_and_phone(42400)
        moved, moved_port = await Peer.open()
        negotiated = media(phone_port)
        stream.start(negotiated, audio=PCM8K)
        phone.send(RtpPacket(0, 1, 0, 1, True, bytes(160)).to_bytes(), stream.local_port)
        await asyncio.sleep(0.05)
        assert stream.latched_addr == ("127.0.0.1", phone_port)
        stream.start(replace(negotiated, remote_addr=("127.0.0.1", moved_port)), audio=PCM8K)
        assert stream.latched_addr is None
        # The old peer's packets still in flight do not capture the new latch...
        phone.send(RtpPacket(0, 2, 160, 1, False, bytes(160)).to_bytes(), stream.local_port)
        await asyncio.sleep(0.05)
        assert stream.latched_addr is None
        assert stream.stats["foreign_packets"] == 1
        # ...the new one's do.
        moved.send(RtpPacket(0, 3, 320, 1, False, bytes(160)).to_bytes(), stream.local_port)
        await asyncio.sleep(0.05)
        assert stream.latched_addr == ("127.0.0.1", moved_port)
        await stream.close()
        phone.close()
        moved.close()

    run(main())


def test_a_host_name_in_the_sdp_is_resolved_without_blocking() -> None:
    async def main() -> None:
        stream, phone, phone_port = await stream_and_phone(42500, symmetric_rtp=False)
        stream.start(media(phone_port, host="localhost"), audio=PCM8K)
        stream.answered()
        await asyncio.sleep(0.2)
        assert len(phone.packets) >= 5
        await stream.close()
        phone.close()

    run(main())


def test_dual_stack_socket_reaches_an_ipv4_phone() -> None:
    async def main() -> None:
        stream, phone, phone_port = await stream_and_phone(42600, bind_host="::")
        stream.start(media(phone_port), audio=PCM8K)
        phone.send(RtpPacket(0, 1, 0, 7, True, bytes(160)).to_bytes(), stream.local_port)
        await asyncio.sleep(0.15)
        assert len(phone.packets) >= 4
        assert stream.latched_addr == ("::ffff:127.0.0.1", phone_port)
        await stream.close()
        phone.close()

    run(main())


# -- the sans-IO core, without sockets --------------------------------------------------------


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int], bool]] = []

    def __call__(self, data: bytes, addr: tuple[str, int], rtcp: bool) -> None:
        self.sent.append((data, addr, rtcp))

    def rtp(self) -> list[RtpPacket]:
        return [parse_rtp(d) for d, _, rtcp in self.sent if not rtcp and not 192 <= d[1] <= 223]


def test_session_keeps_the_rtp_clock_across_skipped_ticks() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000), audio=PCM8K, now=100.0)
    session.answered(100.0)
    for t in (100.0, 100.02, 100.04, 100.24, 100.26):  # the loop stalled for 180 ms
        session.on_tick(t)
    rtp = wire.rtp()
    assert [(p.timestamp - rtp[0].timestamp) & 0xFFFFFFFF for p in rtp] == [
        0, 160, 320, 320 + 10 * 160, 320 + 11 * 160]
    assert [p.marker for p in rtp] == [True, False, False, True, False]
    assert {addr for _, addr, _ in wire.sent} == {("127.0.0.1", 5000)}


def test_session_hold_address_and_ipv6_mapping() -> None:
    wire = Wire()
    held = MediaSession(wire)
    held.configure(media(5000, host="0.0.0.0"), audio=PCM8K, now=0.0)  # RFC 2543 hold
    held.answered(0.0)
    held.on_tick(0.0)
    assert wire.sent == []
    dual = MediaSession(wire, ipv6_socket=True)
    dual.configure(media(5000), audio=PCM8K, now=0.0)
    dual.answered(0.0)
    dual.on_tick(0.0)
    assert wire.sent[0][1] == ("::ffff:127.0.0.1", 5000)
    v4_only = MediaSession(wire)
    v4_only.configure(media(5000, host="2001:db8::1"), audio=PCM8K, now=0.0)
    v4_only.answered(0.0)
    assert v4_only.stats["packets_out"] == 0
    v4_only.on_tick(0.0)
    assert len(wire.sent) == 1  # nothing for an address this socket cannot reach


def test_session_rtcp_goes_to_port_plus_one_or_a_rtcp_attribute() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000), audio=PCM8K, now=0.0)
    session.answered(0.0)
    session.send_rtcp(0.0)
    assert wire.sent[-1][1:] == (("127.0.0.1", 5001), True)
    other = replace(media(5000), remote_rtcp_addr=("127.0.0.2", 6001))
    session.configure(other, audio=PCM8K, now=1.0)
    session.send_rtcp(1.0)
    assert wire.sent[-1][1:] == (("127.0.0.2", 6001), True)
    session.configure(media(5000, rtcp_mux=True), audio=PCM8K, now=2.0)
    session.send_rtcp(2.0)
    assert wire.sent[-1][1:] == (("127.0.0.1", 5000), False)
    packets = parse_rtcp(wire.sent[-1][0])
    assert isinstance(packets[0], ReceiverReport)  # nothing sent yet: RR, not SR


# -- strict RTP, the answer gate and consent (sans-IO) ----------------------------------------


def rtp(seq: int, ssrc: int = 0x1234) -> bytes:
    return RtpPacket(0, seq, 160 * seq, ssrc, False, bytes(160)).to_bytes()


def dests(wire: Wire) -> set[tuple[str, int]]:
    return {addr for _, addr, rtcp in wire.sent if not rtcp}


def test_nothing_goes_to_the_sdp_address_before_the_answer() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000, host="192.0.2.7"), audio=PCM8K, now=0.0)
    for k in range(300):  # six seconds, RTCP due twice over
        session.on_tick(k * 0.02)
    assert wire.sent == []  # an INVITE alone aims nothing at its SDP's victim
    session.answered(6.0)
    session.on_tick(6.0)
    assert dests(wire) == {("192.0.2.7", 5000)}


def test_a_peer_that_sent_the_calls_media_gets_ours_before_the_answer() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000), audio=PCM8K, now=0.0)
    session.receive_rtp(rtp(1), ("127.0.0.1", 5000), 0.01)  # from the SDP's address: believed
    session.on_tick(0.02)
    assert dests(wire) == {("127.0.0.1", 5000)}


def test_an_intruder_racing_the_caller_never_takes_the_call() -> None:
    wire = Wire()
    session = MediaSession(wire)
    heard: list[bytes] = []
    session.on_audio = heard.append
    session.configure(media(5000, host="10.0.0.8"), audio=PCM8K, now=0.0)  # NATed caller
    session.answered(0.0)
    intruder, caller = ("203.0.113.9", 40000), ("198.51.100.2", 31000)
    # The intruder sprays packets with random SSRCs and sequence numbers first...
    for k in range(20):
        session.receive_rtp(rtp(k * 977 % 65536, ssrc=k), intruder, 0.001 * k)
    assert session.latched_addr is None
    # ...the caller's run of four in sequence is learned...
    for k in range(4):
        session.receive_rtp(rtp(100 + k), caller, 0.1 + 0.02 * k)
    assert session.latched_addr == caller
    # ...and from then on even a well-formed run from the intruder is foreign.
    for k in range(10):
        session.receive_rtp(rtp(500 + k, ssrc=0x99), intruder, 0.2 + 0.01 * k)
    assert session.latched_addr == caller
    assert session.stats["foreign_packets"] == 10
    session.on_tick(0.4)
    assert dests(wire) == {caller}


def test_the_sdp_address_wins_back_a_learned_source_and_learning_closes() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000), audio=PCM8K, now=0.0)
    squatter = ("127.0.0.1", 6666)
    for k in range(4):
        session.receive_rtp(rtp(k, ssrc=7), squatter, 0.01 * k)
    assert session.latched_addr == squatter
    session.receive_rtp(rtp(50), ("127.0.0.1", 5000), 0.1)
    assert session.latched_addr == ("127.0.0.1", 5000)
    late = MediaSession(wire)
    late.configure(media(5000, host="10.0.0.8"), audio=PCM8K, now=0.0)
    for k in range(8):  # past the learning window: nothing is learned any more
        late.receive_rtp(rtp(k), ("198.51.100.2", 31000), 6.0 + 0.02 * k)
    assert late.latched_addr is None and late.stats["foreign_packets"] == 8


def test_rtcp_from_a_stranger_neither_steers_nor_keeps_the_stream() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000), audio=PCM8K, now=0.0)
    session.answered(0.0)
    report = build_rtcp([ReceiverReport(0x42, ())])
    session.receive_rtcp(report, ("203.0.113.9", 5001), 0.5)
    session.send_rtcp(0.5)
    assert wire.sent[-1][1] == ("127.0.0.1", 5001)
    assert session.stats["rtcp_in"] == 0 and session.stats["foreign_packets"] == 1
    session.receive_rtcp(report, ("127.0.0.1", 7001), 0.6)  # the peer's host, another port
    session.send_rtcp(0.6)
    assert wire.sent[-1][1] == ("127.0.0.1", 7001) and session.last_heard == 0.6


def test_sending_pauses_while_the_peer_is_silent_and_silent_rtp_keeps_it_alive() -> None:
    wire = Wire()
    session = MediaSession(wire, media_timeout=2.0)
    session.configure(media(5000), audio=PCM8K, now=0.0)
    session.answered(0.0)
    t = 0.0
    for k in range(150):  # three seconds of nothing back: sending stops after two
        t = k * 0.02
        session.on_tick(t)
    sent = session.packets_out
    assert 99 <= sent <= 102 and session.stats["silent_ticks"] > 40
    for k in range(100):  # the peer comes back with silence (all-zero payloads still count)
        t = 3.0 + k * 0.02
        session.receive_rtp(rtp(k), ("127.0.0.1", 5000), t)
        session.on_tick(t)
    assert session.packets_out - sent >= 99


def test_a_public_sdp_address_lets_only_its_own_host_be_learned() -> None:
    wire = Wire()
    session = MediaSession(wire)
    session.configure(media(5000, host="198.51.100.20"), audio=PCM8K, now=0.0)
    for k in range(6):  # another host, however well-formed its run: never learned
        session.receive_rtp(rtp(k, ssrc=5), ("203.0.113.9", 5000), 0.01 * k)
    assert session.latched_addr is None and session.stats["foreign_packets"] == 6
    for k in range(4):  # the SDP's host, its NAT having moved the port: learned
        session.receive_rtp(rtp(100 + k), ("198.51.100.20", 6200), 0.2 + 0.02 * k)
    assert session.latched_addr == ("198.51.100.20", 6200)
    assert [behind_nat(h) for h in ("10.1.2.3", "192.168.0.9", "100.64.1.1", "fe80::1",
                                    "::ffff:172.16.0.1", "127.0.0.1", "198.51.100.20",
                                    "2001:db8::1", "8.8.8.8")] == [True] * 5 + [False] * 4


# -- the codec's own audio, passed through (sans-IO) ------------------------------------------


def test_g711_passes_through_bit_exact_and_an_inline_answer_rides_the_same_tick() -> None:
    wire = Wire()
    session = MediaSession(wire, jitter_min_ms=40)
    session.configure(media(5000), audio=AudioFormat("pcmu", 8000), inline=True, now=0.0)
    session.answered(0.0)
    session.on_audio = session.send_audio  # an echo, answering within on_audio
    rng = np.random.default_rng(7)
    sent = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(60)]
    lost = 30
    for k in range(100):
        now = k * 0.02
        if k < len(sent) and k != lost:
            packet = RtpPacket(0, 1000 + k, 160 * k, 0x1234, k == 0, sent[k]).to_bytes()
            session.receive_rtp(packet, ("127.0.0.1", 5000), now - 0.001)
        session.on_tick(now)
    out = [p.payload for p in wire.rtp()]
    first = out.index(sent[0])
    # 40 ms of jitter buffer and no tick more: the frame that plays at a tick leaves in it.
    assert first == 2
    echoed = out[first:first + len(sent)]
    assert [i for i, (a, b) in enumerate(zip(echoed, sent, strict=True)) if a != b] == [lost]
    concealer = G711Codec("PCMU")
    concealer.decode(sent[lost - 1])
    assert echoed[lost] == concealer.encode(concealer.conceal())  # the codec's own PLC
    assert out[-20:] == [b"\xff" * 160] * 20  # μ-law silence once the caller stopped
    assert session.stats["decode_errors"] == 0


def test_a_format_the_call_codec_cannot_pass_is_refused() -> None:
    session = MediaSession(Wire())
    with pytest.raises(ValueError, match="pcma audio cannot pass through a PCMU call"):
        session.configure(media(5000), audio=AudioFormat("pcma", 8000), now=0.0)
