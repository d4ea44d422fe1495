"""Calls over a bad network: 10 % of the RTP lost and 50 ± 50 ms of delay each way
(``tests/e2e/impair.py``, the user-space equivalent of ``netem delay 50ms 50ms loss 10%``),
between a baresip caller and the gateway.

An echo call must still come back recognisable: the jitter buffer reorders what came out of
order and conceals what was lost, so the loudness envelope of the speech survives (the
waveform cannot: about one frame in five is lost on the round trip and replaced by
concealment). And the local agent must still hear the caller's words: Whisper's transcript
of a question asked over the same path keeps most of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.audio import phrase_wav, piecewise_match
from tests.e2e.baresip import baresip_call as echo_call
from tests.e2e.baresip import call_stats
from tests.e2e.harness import PROJECT_ID, callgate
from tests.e2e.impair import Direction, ImpairedPath, Impairment
from tests.e2e.livecall import baresip_call, silence, speech, wait_logged, write_wav
from tests.engines.audio import word_error_rate
from tests.engines.peer import PeerState, Reply, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

PHRASE = "Testing the callgate echo over a bad network, one two three four five six."
QUESTION = "can you tell me what time your office opens tomorrow"
NETEM = Impairment(loss=0.10, delay_ms=50.0, jitter_ms=50.0)


def _report(path: ImpairedPath) -> str:
    def one(name: str, d: Direction) -> str:
        return (f"{name}: {d.forwarded} forwarded, {d.dropped} dropped "
                f"({d.dropped / max(1, d.forwarded + d.dropped):.1%}), delay p50 "
                f"{np.percentile(d.delays_ms, 50):.0f} ms, "
                f"p95 {np.percentile(d.delays_ms, 95):.0f} ms")
    return f"{one('caller->gateway', path.upstream)}; {one('gateway->caller', path.downstream)}"


def test_echo_survives_loss_and_jitter(tmp_path: Path,
                                       record_property: Callable[[str, object], None]) -> None:
    source = phrase_wav(tmp_path / "phrase.wav", PHRASE, rate=8000)
    with callgate(tmp_path) as gw, \
            ImpairedPath(("127.0.0.1", gw.sip_port), NETEM) as path:
        with echo_call(tmp_path / "baresip", f"sip:{PROJECT_ID}@127.0.0.1:{path.sip_port}",
                       source) as phone:
            phone.wait_established(timeout=15)
            phone.wait_ended(timeout=30)
        stats = call_stats(gw)
        network = _report(path)

    sent, rate = phone.dump("enc")
    received, _ = phone.dump("dec")
    echo = piecewise_match(sent, received, rate)
    report = (f"{network}. Echo: waveform {echo.coefficient:.3f}, band envelope "
              f"{echo.envelope_coefficient:.3f}, lags {min(echo.lags_ms, default=0):.0f}-"
              f"{max(echo.lags_ms, default=0):.0f} ms. Gateway: lost {stats['lost']}, late "
              f"{stats['late']}, concealed {stats['concealed']}, jitter buffer delay "
              f"{stats['jitter_delay_ms']} ms")
    print(report)
    record_property("impaired_echo", report)
    assert 0.05 < path.upstream.dropped / (path.upstream.forwarded + path.upstream.dropped) < 0.2
    assert int(stats["lost"]) > 0 and int(stats["concealed"]) > 0, stats  # it was impaired
    assert len(echo.lags_ms) >= 6, report
    # Measured 0.92 and 0.79 (the same call without impairment: about 0.97 and 0.99).
    assert echo.envelope_coefficient >= 0.85, report
    assert echo.coefficient >= 0.6, report


def test_the_agent_still_hears_the_caller(tmp_path: Path,
                                          record_property: Callable[[str, object], None]) -> None:
    idle = write_wav(tmp_path / "idle.wav", silence(60.0))
    question = write_wav(tmp_path / "question.wav", speech(QUESTION, tail=6.0))
    state = PeerState(replies=[Reply(pieces=["It is sunny."])])
    session = {"type": "realtime", "model": "local", "instructions": "You are a weather bot."}
    with serve(state) as llm_url, \
            callgate(tmp_path, default_session=json.dumps(session), llm_base_url=llm_url,
                     llm_model="peer-model") as gw, \
            ImpairedPath(("127.0.0.1", gw.sip_port), NETEM) as path, \
            baresip_call(gw, tmp_path / "caller", idle, sip_port=path.sip_port) as caller:
        wait_logged(gw, "realtime_session_started", timeout=30)
        # As after a greeting: the jitter buffer has had a few seconds to learn the network
        # (it starts at 40 ms and grows to the ~110 ms this jitter needs).
        time.sleep(3.0)
        caller.say(question)
        wait_logged(gw, "response_done", timeout=60)
        network = _report(path)

    # Should the turn end early (the model judged a pause finished) and the caller speak on,
    # that first response is cancelled before its words reach the LLM: the log says so.
    turn = [line for line in gw.log_lines()
            if any(name in line for name in ("end_of_turn_checked", "speech_st", "response_"))]
    assert state.requests, "the LLM got no request:\n" + "\n".join(turn[-20:])
    heard = [m["content"] for m in state.requests[0]["messages"] if m["role"] == "user"][-1]
    report = (f"{network}. Transcript {heard!r} for {QUESTION!r}, WER "
              f"{word_error_rate([QUESTION], [heard]):.2f}")
    print(report)
    record_property("impaired_transcript", report)
    assert path.upstream.dropped > 0, report
    # Over a clean line Whisper tiny hears every word; over this one it did in most runs,
    # and at worst heard "what time you're off it open tomorrow" (WER 0.4). Unordered or
    # unconcealed audio would leave little of the question. (Espeak's "what is the weather
    # like in paris today" it mishears even over a clean line: no test.)
    assert word_error_rate([QUESTION], [heard]) <= 0.5, report
