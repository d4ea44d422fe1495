"""G.711 through the ``echo`` model on the wire: a SIP call from bench/sipua.py, RTP from a plain
UDP socket. Every μ-law payload sent comes back byte for byte, in order, and the echo of each
packet leaves within the call's own jitter-buffer delay plus 10 ms (issue 16: G.711 passed
through, RTP in→out ≤ jitter buffer + 10 ms at p95), as the gateway's media stats report it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time

import pytest
from bench.sipua import SipCaller

from callgate.media.rtp import RtpPacket, parse_rtp
from tests.e2e.baresip import call_stats
from tests.e2e.harness import PROJECT_ID, Gateway, callgate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FRAMES = 150  # 3 s of audio


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with callgate(tmp_path_factory.mktemp("gw")) as gw:
        yield gw


async def _echo_call(gateway: Gateway) -> tuple[list[bytes], list[float], dict[bytes, float]]:
    """(payloads sent, their send times, arrival time of each payload that came back)."""
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setblocking(False)
    caller = SipCaller(("127.0.0.1", gateway.sip_port), PROJECT_ID,
                       media_port=rtp.getsockname()[1])
    await caller.open()
    loop = asyncio.get_running_loop()
    came_back: dict[bytes, float] = {}

    def readable() -> None:
        while True:
            try:
                data = rtp.recv(2048)
            except BlockingIOError:
                return
            came_back.setdefault(parse_rtp(data).payload, time.monotonic())

    loop.add_reader(rtp.fileno(), readable)
    try:
        dialog = await caller.call()
        payloads = [os.urandom(160) for _ in range(FRAMES)]
        sent_at: list[float] = []
        start = time.monotonic()
        for k, payload in enumerate(payloads):
            await asyncio.sleep(max(0.0, start + 0.02 * k - time.monotonic()))
            rtp.sendto(RtpPacket(0, 100 + k, 160 * k, 0xCA11, k == 0, payload).to_bytes(),
                       dialog.remote_rtp)
            sent_at.append(time.monotonic())
        await asyncio.sleep(0.5)
        await caller.hangup(dialog)
    finally:
        loop.remove_reader(rtp.fileno())
        rtp.close()
        caller.close()
    return payloads, sent_at, came_back


def test_g711_comes_back_byte_for_byte_within_the_jitter_buffer(gateway: Gateway) -> None:
    payloads, sent_at, came_back = asyncio.run(_echo_call(gateway))
    back = [k for k, payload in enumerate(payloads) if payload in came_back]
    # Loopback loses nothing; the jitter buffer may drop a frame to follow the sender's clock.
    assert len(back) >= FRAMES - 2, f"{FRAMES - len(back)} of {FRAMES} frames did not come back"
    arrivals = [came_back[payloads[k]] for k in back]
    assert arrivals == sorted(arrivals), "frames came back out of order"
    delays_ms = sorted((came_back[payloads[k]] - sent_at[k]) * 1000 for k in back)
    p95 = delays_ms[int(0.95 * len(delays_ms))]
    stats = call_stats(gateway)
    jitter_ms = float(stats["jitter_delay_ms"])
    print(f"echo RTP in->out p50 {statistics.median(delays_ms):.1f} ms, p95 {p95:.1f} ms; "
          f"jitter buffer {jitter_ms:.1f} ms")
    assert stats["codec"] == "PCMU" and stats["lost"] == "0", stats
    assert p95 <= jitter_ms + 10, (p95, jitter_ms)
