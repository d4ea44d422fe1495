"""Recordings and the record API on real calls (issue 15: recordings, REST extensions).

A webhook receiver (the ``openai`` SDK) accepts two SIPp calls with the ``echo`` model, the
first with the callgate extension ``"recording": true`` in the accept body. The first call's
recording must be a stereo WAV as long as the call, the caller's tone on the left and its
echo, a little later, on the right; it is served with HTTP Range support. The second call
has none. The list pages like OpenAI's lists, and the API key guards all of it.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.harness import callgate, sipp
from tests.e2e.receiver import SECRET, Receiver
from tests.e2e.test_dtmf_pcap import can_send_raw
from tests.e2e.test_observe_metrics import write_pcap
from tests.e2e.test_observe_records import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

API_KEY = "sk-callgate-recording-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CALLS = "/v1/realtime/calls"


def test_recording_and_record_api(tmp_path: Path) -> None:
    if not can_send_raw():
        pytest.skip("SIPp plays captures through a raw socket: needs CAP_NET_RAW")
    (tmp_path / "pcap").mkdir()
    write_pcap(tmp_path / "pcap" / "call.pcap")
    accepted: list[str] = []

    def accept(client: openai.OpenAI, call_id: str) -> None:
        extra = {"recording": True} if not accepted else {}
        accepted.append(call_id)
        client.realtime.calls.accept(call_id, type="realtime", model="echo", extra_body=extra)

    receiver = Receiver("http://unused/v1", accept, api_key=API_KEY)
    with receiver, callgate(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET,
                            api_key=API_KEY) as gw:
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        for _ in range(2):
            assert sipp(gw, "uac_pcap_audio", tmp_path, timeout=30).successful == 1
        api = httpx.Client(base_url=gw.http, headers=AUTH, timeout=10)

        def ended() -> bool:
            data = api.get(CALLS, params={"state": "ended"}).json()["data"]
            return len(data) == 2

        wait_until(ended)
        recorded, plain = accepted
        page: dict[str, Any] = api.get(CALLS, params={"limit": 1}).json()
        assert page["object"] == "list" and page["has_more"] is True
        assert [c["id"] for c in page["data"]] == [plain] == [page["first_id"]]
        rest = api.get(CALLS, params={"limit": 1, "after": page["last_id"]}).json()
        assert [c["id"] for c in rest["data"]] == [recorded] and rest["has_more"] is False

        record = api.get(f"{CALLS}/{recorded}").json()
        assert record["recording"] is True and record["state"] == "ended"
        assert record["sip_status"] == 200 and record["codec"] == "PCMU"
        duration = record["ended_at"] - record["answered_at"]
        assert api.get(f"{CALLS}/{plain}").json()["recording"] is False
        transcript = api.get(f"{CALLS}/{recorded}/transcript").json()
        assert transcript["object"] == "realtime.call.transcript"
        assert transcript["call_id"] == recorded and isinstance(transcript["data"], list)

        whole = api.get(f"{CALLS}/{recorded}/content")
        assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
        assert whole.headers["accept-ranges"] == "bytes"
        head = api.get(f"{CALLS}/{recorded}/content", headers={"Range": "bytes=0-43"})
        assert head.status_code == 206 and head.content == whole.content[:44]
        assert head.headers["content-range"] == f"bytes 0-43/{len(whole.content)}"
        missing = api.get(f"{CALLS}/{plain}/content")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "recording_not_found"

        # The API key guards the records; bad parameters get OpenAI-shaped 400s.
        assert httpx.get(f"{gw.http}/v1/realtime/calls").status_code == 401
        assert httpx.get(f"{gw.http}/v1/realtime/calls/{recorded}/content").status_code == 401
        bad = api.get(CALLS, params={"direction": "sideways"})
        assert bad.status_code == 400 and "direction" in bad.json()["error"]["message"]
        assert api.get(CALLS, params={"after": "rtc_nope"}).json()["error"]["code"] == \
            "invalid_cursor"
        assert api.get(f"{CALLS}/rtc_nope").json()["error"]["code"] == "call_not_found"

    with wave.open(io.BytesIO(whole.content)) as wav:
        # The echo engine takes a PCMU call's audio as it comes: recorded at the line's 8 kHz.
        rate = 8000
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, rate)
        frames = wav.readframes(wav.getnframes())
        seconds = wav.getnframes() / rate
    stereo = np.frombuffer(frames, dtype="<i2").reshape(-1, 2).astype(np.float64)
    left, right = stereo[:, 0], stereo[:, 1]
    print(f"recording {seconds:.2f} s for a call of {duration:.2f} s; "
          f"rms left={np.sqrt(np.mean(left ** 2)):.0f} right={np.sqrt(np.mean(right ** 2)):.0f}")
    assert abs(seconds - duration) < 0.5
    # The caller's 3 s tone on the left; its echo on the right, a little later.
    assert np.sqrt(np.mean(left[:rate * 2] ** 2)) > 1000
    assert np.sqrt(np.mean(right ** 2)) > 1000
    lag = _lag(left, right, rate)
    print(f"echo lag in the recording: {lag * 1000:.0f} ms")
    assert 0 <= lag < 0.5


def _lag(left: np.ndarray[Any, Any], right: np.ndarray[Any, Any], rate: int) -> float:
    """How much later the right channel's sound starts than the left's (seconds)."""
    def onset(x: np.ndarray[Any, Any]) -> int:
        frames = x[: len(x) // 480 * 480].reshape(-1, 480)
        loud = np.flatnonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > 1000)
        return int(loud[0]) * 480 if len(loud) else len(x)
    return (onset(right) - onset(left)) / rate
