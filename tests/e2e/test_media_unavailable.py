"""A call that cannot get RTP sockets (the process is out of file descriptors) is refused at
once with 503 + Retry-After, like one past max_calls, not left ringing until the timeout."""

from __future__ import annotations

import asyncio
import errno

import pytest

from callgate.media import ports
from callgate.sip.message import Response
from tests.e2e.harness import PROJECT_ID, SDP, ScriptedUac, in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]


def _no_descriptors(*_: object) -> None:
    raise OSError(errno.EMFILE, "Too many open files")


async def _invite() -> tuple[Response, int]:
    async with in_process(rtp_ports=10, accept_timeout=20) as gw:
        uac = ScriptedUac(gw.sip_addresses["udp"])
        uri = f"sip:{PROJECT_ID}@127.0.0.1:{uac.gateway[1]}"
        try:
            await uac.send(uac.request("INVITE", uri, 1, "inv1", to=f"<{uri}>",
                                       body=SDP.format(port=uac.rtp_port)))
            final = await uac.receive(" 503 ", timeout=5.0)
            assert isinstance(final, Response)
            await uac.send(uac.request("ACK", uri, 1, "inv1", to=final.headers.get("To") or ""))
            await asyncio.sleep(0.2)
            assert gw.calls is not None
            return final, gw.calls.active_count
        finally:
            uac.sock.close()


def test_no_file_descriptors_for_rtp_gets_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_bind_udp", _no_descriptors)
    final, active = asyncio.run(_invite())
    assert final.status == 503 and final.headers.get("Retry-After") == "10"
    assert active == 0
