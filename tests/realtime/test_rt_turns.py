"""Turn detection (sans-IO) and the caller-speech flows of a session, with an energy VAD."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from callgate.engines.base import AudioDelta, ResponseDone, TextDelta
from callgate.realtime.session import RealtimeSession
from callgate.realtime.turns import (
    IdleTimeout,
    InputAudioBuffer,
    Pause,
    SpeechStarted,
    SpeechStopped,
    TurnConfig,
    TurnDetector,
)

from .doubles import EnergyVad, ScriptedEngine, Watcher, frames, silence, tone

VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
       "silence_duration_ms": 500}


def feed_all(detector: TurnDetector, pcm: bytes) -> list[Any]:
    events: list[Any] = []
    for frame in frames(pcm):
        events += detector.feed(frame)
    return events


def test_server_vad_start_and_stop_positions() -> None:
    config = TurnConfig.from_session(VAD)
    assert config is not None
    detector = TurnDetector(config, EnergyVad())
    events = feed_all(detector, silence(1000) + tone(800) + silence(1000))
    assert [type(e) for e in events] == [SpeechStarted, Pause, SpeechStopped]
    start, pause, stop = events
    # The pause is reported 160 ms into the silence, and the stop says it ended that pause.
    assert stop.pause_id == pause.pause_id
    # Speech begins at 1000 ms; the first VAD frame (32 ms) holding it reports it, minus the
    # 300 ms prefix padding.
    assert 1000 - 300 - 32 <= start.audio_start_ms <= 1000 - 300 + 32
    assert 1800 <= stop.speech_end_ms <= 1800 + 64
    assert stop.audio_end_ms - stop.speech_end_ms >= 500
    assert stop.audio_end_ms <= 1800 + 500 + 64
    assert detector.position_ms == 2800


def test_short_pauses_do_not_end_the_turn() -> None:
    config = TurnConfig.from_session({**VAD, "silence_duration_ms": 500})
    assert config is not None
    detector = TurnDetector(config, EnergyVad())
    pcm = tone(400) + silence(300) + tone(400) + silence(600)
    events = feed_all(detector, pcm)
    assert [type(e) for e in events] == [SpeechStarted, Pause, Pause, SpeechStopped]
    first, second, stop = events[1:]
    assert first.pause_id != second.pause_id == stop.pause_id


def test_threshold_decides() -> None:
    quiet = tone(600, amplitude=1200)  # rms ≈ 850 -> probability ≈ 0.42
    for threshold, expected in ((0.5, []), (0.3, [SpeechStarted])):
        config = TurnConfig.from_session({**VAD, "threshold": threshold})
        assert config is not None
        detector = TurnDetector(config, EnergyVad())
        assert [type(e) for e in feed_all(detector, quiet)] == expected


def test_semantic_vad_eagerness_sets_the_silence() -> None:
    for eagerness, silence_ms in (("high", 300), ("auto", 700), ("medium", 700), ("low", 1200)):
        config = TurnConfig.from_session({"type": "semantic_vad", "eagerness": eagerness})
        assert config is not None and config.silence_duration_ms == silence_ms
        detector = TurnDetector(config, EnergyVad())
        events = feed_all(detector, tone(500) + silence(silence_ms - 100))
        assert [type(e) for e in events] == [SpeechStarted, Pause]
        events = feed_all(detector, silence(200))
        assert [type(e) for e in events] == [SpeechStopped]
    assert TurnConfig.from_session(None) is None


def semantic(eagerness: str = "auto") -> TurnDetector:
    config = TurnConfig.from_session({"type": "semantic_vad", "eagerness": eagerness},
                                     model=True)
    assert config is not None
    return TurnDetector(config, EnergyVad())


def test_semantic_vad_asks_the_model_after_a_short_silence() -> None:
    detector = semantic()
    events = feed_all(detector, silence(3000) + tone(1000) + silence(200))
    assert [type(e) for e in events] == [SpeechStarted, Pause]
    check = events[1]
    assert not check.second
    # The model hears what the VAD heard, at its rate: this turn from half a second before
    # its speech, and the silence after it; not the three seconds of silence before.
    assert check.sample_rate == 16000
    assert 500 + 1000 + 32 <= len(check.pcm) * 1000 // (2 * 16000) <= 500 + 1000 + 160
    assert detector.verdict(check, 0.2) is None  # not finished: keep listening
    assert detector.speaking
    stopped = detector.verdict(check, 0.95)  # auto: one answer this sure is enough
    assert isinstance(stopped, SpeechStopped) and not detector.speaking
    assert 4000 <= stopped.speech_end_ms <= 4000 + 64
    assert stopped.audio_end_ms == detector.position_ms
    assert detector.verdict(check, 0.95) is None  # answered once


def next_event(detector: TurnDetector) -> Any:
    """Silence, 10 ms at a time, up to the detector's next event."""
    for _ in range(100):
        if events := detector.feed(silence(10)):
            assert len(events) == 1
            return events[0]
    raise AssertionError("no event")


def test_semantic_vad_checks_a_less_sure_answer_again() -> None:
    for second_answer, ends in ((0.6, True), (0.4, False)):
        detector = semantic()
        feed_all(detector, tone(1000))
        first = next_event(detector)
        assert isinstance(first, Pause)
        # 0.8: not sure enough alone (0.9), so a second look one VAD frame later decides.
        assert detector.verdict(first, 0.8) is None
        second = next_event(detector)
        assert isinstance(second, Pause) and second.second
        assert second.pause_id == first.pause_id
        assert len(second.pcm) > len(first.pcm)
        verdict = detector.verdict(second, second_answer)  # mean 0.7 ends it, 0.6 does not
        assert isinstance(verdict, SpeechStopped) if ends else verdict is None
        assert detector.speaking is not ends
        assert feed_all(detector, silence(200)) == []  # no third look


def test_semantic_vad_second_look_when_the_first_answer_comes_late() -> None:
    detector = semantic()
    feed_all(detector, tone(1000))
    first = next_event(detector)
    assert isinstance(first, Pause)
    assert feed_all(detector, silence(100)) == []  # the model is slow to answer
    second = detector.verdict(first, 0.75)
    assert isinstance(second, Pause) and second.second  # due already: asked at once
    assert len(second.pcm) == len(first.pcm) + 2 * 512  # on the audio of one frame later
    # A first answer that no second one could lift to the mean asks for none.
    detector = semantic()
    feed_all(detector, tone(1000))
    first = next_event(detector)
    assert detector.verdict(first, 0.35) is None
    assert feed_all(detector, silence(200)) == []


def test_semantic_vad_ignores_an_answer_that_speech_overtook() -> None:
    detector = semantic("high")
    check = feed_all(detector, tone(600) + silence(150))[-1]
    assert isinstance(check, Pause)
    feed_all(detector, tone(300))
    assert detector.verdict(check, 1.0) is None
    # The next silence is judged afresh.
    again = feed_all(detector, silence(150))[-1]
    assert isinstance(again, Pause) and again.pause_id != check.pause_id
    assert isinstance(detector.verdict(again, 0.85), SpeechStopped)  # high: 0.8 at once


def test_semantic_vad_longest_wait_ends_an_unfinished_turn() -> None:
    for eagerness, longest in (("high", 2000), ("medium", 4000), ("low", 8000)):
        detector = semantic(eagerness)
        events = feed_all(detector, tone(500) + silence(longest - 100))
        assert [type(e) for e in events] == [SpeechStarted, Pause]
        assert [type(e) for e in feed_all(detector, silence(200))] == [SpeechStopped]


def test_idle_timeout_fires_once_after_arming() -> None:
    config = TurnConfig.from_session({**VAD, "idle_timeout_ms": 1000})
    assert config is not None
    detector = TurnDetector(config, EnergyVad())
    assert feed_all(detector, silence(2000)) == []  # not armed yet
    detector.arm_idle()
    events = feed_all(detector, silence(1500))
    assert events == [IdleTimeout(audio_start_ms=2000, audio_end_ms=3000)]
    detector.arm_idle()
    events = feed_all(detector, silence(500) + tone(600) + silence(1000))
    assert [type(e) for e in events] == [SpeechStarted, Pause, SpeechStopped]  # speech disarms


def test_input_buffer_positions() -> None:
    buffer = InputAudioBuffer(max_ms=1000)
    buffer.append(silence(700))
    buffer.keep_last(300)
    assert (buffer.start_ms, buffer.end_ms, buffer.duration_ms) == (400, 700, 300)
    buffer.append(silence(2000))
    assert (buffer.start_ms, buffer.duration_ms) == (1700, 1000)  # bounded: oldest dropped
    assert len(buffer.take()) == 48000
    assert (buffer.start_ms, buffer.duration_ms) == (2700, 0)


# --- session flows ------------------------------------------------------------------------
async def vad_session(turn: dict[str, Any] | None = None,
                      **kwargs: Any) -> tuple[RealtimeSession, Watcher, ScriptedEngine]:
    engine = kwargs.pop("engine", None) or ScriptedEngine(transcripts=["what time is it"])
    session = RealtimeSession(config={"audio": {"input": {"turn_detection": turn or VAD}}},
                              engine=engine, vad=EnergyVad(), **kwargs)
    await session.start()
    watcher = Watcher(session)
    await watcher.next()
    return session, watcher, engine


def feed(session: RealtimeSession, pcm: bytes) -> None:
    for frame in frames(pcm):
        session.feed_audio(frame)


@pytest.mark.anyio
async def test_speech_turn_commits_transcribes_and_answers() -> None:
    session, watcher, engine = await vad_session()
    feed(session, silence(500) + tone(1000) + silence(700))
    started, _ = await watcher.until("input_audio_buffer.speech_started")
    stopped, _ = await watcher.until("input_audio_buffer.speech_stopped")
    committed, _ = await watcher.until("input_audio_buffer.committed")
    item_id = started["item_id"]
    assert stopped["item_id"] == committed["item_id"] == item_id
    added, _ = await watcher.until("conversation.item.added")
    assert added["item"]["id"] == item_id and added["item"]["role"] == "user"
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    completed, events = await watcher.until(
        "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == "what time is it" and completed["item_id"] == item_id
    assert "conversation.item.input_audio_transcription.delta" in Watcher.types(events)
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"
    # Transcription started 160 ms into the silence, on the speech plus prefix padding, and
    # as the caller said nothing more, that run gave the turn its words: one run in all.
    assert len(engine.heard) == 1
    heard_ms = len(engine.heard[0]) * 1000 // 48000
    assert 1000 + 160 <= heard_ms <= 1000 + 300 + 160 + 64
    user = engine.requests[0].conversation[0]
    assert user["content"][0]["transcript"] == "what time is it"
    timeline = session.timelines[-1]
    assert timeline["response_created"] >= 0 and "first_audio_out" in timeline
    assert "transcript_ready" in timeline


@pytest.mark.anyio
async def test_create_response_false_only_commits() -> None:
    session, watcher, engine = await vad_session({**VAD, "create_response": False})
    feed(session, tone(600) + silence(700))
    await watcher.until("conversation.item.input_audio_transcription.completed")
    await asyncio.sleep(0.05)
    assert "response.created" not in Watcher.types(watcher.seen + watcher.pending())
    assert engine.requests == []


@pytest.mark.anyio
async def test_transcription_failure_is_reported_and_turn_still_answered() -> None:
    engine = ScriptedEngine(transcripts=["!whisper crashed"])
    session, watcher, _ = await vad_session(engine=engine)
    feed(session, tone(600) + silence(700))
    failed, _ = await watcher.until("conversation.item.input_audio_transcription.failed")
    assert failed["error"]["message"] == "whisper crashed"
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"


@pytest.mark.anyio
async def test_idle_timeout_prompts_a_response() -> None:
    engine = ScriptedEngine(replies=[[TextDelta("Hello?"), ResponseDone()]])
    session, watcher, _ = await vad_session({**VAD, "idle_timeout_ms": 600}, engine=engine)
    session.config["output_modalities"] = ["text"]
    await session.handle_client_event(json.dumps({"type": "response.create"}))
    await watcher.until("response.done")
    feed(session, silence(700))
    timeout, _ = await watcher.until("input_audio_buffer.timeout_triggered")
    assert timeout["audio_end_ms"] - timeout["audio_start_ms"] >= 600
    committed, _ = await watcher.until("input_audio_buffer.committed")
    assert committed["item_id"] == timeout["item_id"]
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"


@pytest.mark.anyio
async def test_manual_turns_when_detection_is_off() -> None:
    session, watcher, engine = await vad_session()
    await session.handle_client_event(json.dumps(
        {"type": "session.update",
         "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
    updated, _ = await watcher.until("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    await session.handle_client_event(json.dumps({"type": "input_audio_buffer.commit",
                                                  "event_id": "evt_c"}), watcher.sub)
    error, _ = await watcher.until("error")
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "evt_c"
    feed(session, tone(600) + silence(700))
    await asyncio.sleep(0.02)
    assert "input_audio_buffer.speech_started" not in Watcher.types(watcher.pending())
    await session.handle_client_event(json.dumps({"type": "input_audio_buffer.commit"}))
    _committed, _ = await watcher.until("input_audio_buffer.committed")
    await watcher.until("conversation.item.input_audio_transcription.completed")
    assert len(engine.heard[0]) == 2 * 24000 * 1300 // 1000
    await asyncio.sleep(0.02)
    assert engine.requests == []  # nobody asked for a response
    feed(session, tone(300))
    await session.handle_client_event(json.dumps({"type": "input_audio_buffer.clear"}))
    await watcher.until("input_audio_buffer.cleared")
    assert session.buffer.duration_ms == 0


@pytest.mark.anyio
async def test_semantic_vad_session_ends_the_turn_when_the_model_says_so() -> None:
    asked: list[int] = []

    async def model(pcm: bytes, rate: int) -> float:
        asked.append(len(pcm) * 1000 // (2 * rate))
        return 0.1 if asked[-1] < 1000 else 0.9  # unfinished after the first 500 ms

    session, watcher, _ = await vad_session({"type": "semantic_vad", "eagerness": "high"},
                                            end_of_turn=model)
    # A first pause the model calls unfinished, then the rest and a pause it calls finished:
    # one turn, ended long before the 2 s longest wait.
    feed(session, tone(500) + silence(300))
    await asyncio.sleep(0.05)
    assert "input_audio_buffer.speech_stopped" not in Watcher.types(watcher.pending())
    feed(session, tone(500) + silence(150))
    stopped, events = await watcher.until("input_audio_buffer.speech_stopped")
    assert Watcher.types(events).count("input_audio_buffer.speech_started") == 0
    assert stopped["audio_end_ms"] == 500 + 300 + 500 + 150  # no more silence was needed
    # Loaded (a 100 ms warm-up) when the session started, then asked at each pause; 0.1 at
    # "high" (a mean of 0.5 ends the turn) wants a second look, on the audio 32 ms later
    # although the whole pause had been fed before the first answer came.
    assert len(asked) == 4 and asked[0] == 100, asked
    assert asked[2] == asked[1] + 32 and asked[3] > asked[2] + 500, asked
    await watcher.until("response.done")


@pytest.mark.anyio
async def test_semantic_vad_without_a_model_falls_back_to_silence() -> None:
    async def broken(pcm: bytes, rate: int) -> float:
        raise RuntimeError("no model")

    session, watcher, _ = await vad_session({"type": "semantic_vad", "eagerness": "high"},
                                            end_of_turn=broken)
    feed(session, tone(500) + silence(2100))
    stopped, _ = await watcher.until("input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] >= 500 + 2000


@pytest.mark.anyio
async def test_standalone_append_drives_turns() -> None:
    import base64

    session, watcher, _ = await vad_session()
    pcm = silence(200) + tone(700) + silence(800)
    for start in range(0, len(pcm), 24000):  # 500 ms appends, as a client might send
        chunk = base64.b64encode(pcm[start:start + 24000]).decode()
        await session.handle_client_event(json.dumps(
            {"type": "input_audio_buffer.append", "audio": chunk}))
    await watcher.until("input_audio_buffer.speech_started")
    await watcher.until("input_audio_buffer.committed")
    _done, events = await watcher.until("response.done")
    assert any(e["type"] == "response.output_audio.delta" for e in events)


@pytest.mark.anyio
async def test_dtmf_event() -> None:
    session, watcher, _ = await vad_session(call_id="rtc_x", output=None)
    session.dtmf("5")
    session.dtmf("x")  # not a DTMF key: ignored
    session.dtmf("#")
    first = await watcher.next()
    second = await watcher.next()
    assert (first["event"], second["event"]) == ("5", "#")
    assert first["type"] == "input_audio_buffer.dtmf_event_received"
    assert "event_id" not in first and isinstance(first["received_at"], int)


@pytest.mark.anyio
async def test_audio_reaches_nothing_while_engine_speaks_for_text_only() -> None:
    engine = ScriptedEngine(replies=[[TextDelta("a"), AudioDelta(tone(100)), ResponseDone()]])
    session, watcher, _ = await vad_session(engine=engine)
    await session.handle_client_event(json.dumps(
        {"type": "response.create", "response": {"output_modalities": ["text"]}}))
    _, events = await watcher.until("response.done")
    assert "response.output_audio.delta" not in Watcher.types(events)


@pytest.mark.anyio
async def test_idle_timeout_counts_from_the_end_of_playback_on_a_call() -> None:
    from .doubles import FakeLine

    line = FakeLine()
    engine = ScriptedEngine(replies=[[TextDelta("Hi"), AudioDelta(tone(300)), ResponseDone()],
                                     [TextDelta("Still there?"), ResponseDone()]])
    session, watcher, _ = await vad_session({**VAD, "idle_timeout_ms": 400}, engine=engine,
                                            call_id="rtc_idle", output=line)
    await session.handle_client_event(json.dumps({"type": "response.create"}))
    await watcher.until("response.done")
    feed(session, silence(600))  # still playing: the timeout has not started yet
    assert "input_audio_buffer.timeout_triggered" not in Watcher.types(watcher.pending())
    await watcher.until("output_audio_buffer.stopped", timeout=2)
    feed(session, silence(300))
    assert "input_audio_buffer.timeout_triggered" not in Watcher.types(watcher.pending())
    feed(session, silence(200))
    timeout, _ = await watcher.until("input_audio_buffer.timeout_triggered")
    assert timeout["audio_end_ms"] - timeout["audio_start_ms"] == 400
    done, _ = await watcher.until("response.done")
    assert done["response"]["output"][0]["content"][0]["transcript"] == "Still there?"


@pytest.mark.anyio
async def test_noise_reduction_null_leaves_caller_audio_bit_for_bit() -> None:
    pcm = tone(400) + bytes(range(256)) * 30 + silence(100)
    pcm = pcm[: len(pcm) // 960 * 960]
    heard = {}
    for reduction in (None, {"type": "near_field"}, {"type": "far_field"}):
        session = RealtimeSession(
            config={"audio": {"input": {"turn_detection": None,
                                        "noise_reduction": reduction}}},
            engine=ScriptedEngine(), vad=EnergyVad())
        async with asyncio.timeout(10):  # the suppressor is created off the event loop
            while reduction is not None and not session.noise.active:
                await asyncio.sleep(0.01)
        feed(session, pcm)
        heard[None if reduction is None else reduction["type"]] = session.buffer.take()
        await session.close("test")
    assert heard[None] == pcm
    for mode in ("near_field", "far_field"):
        assert len(heard[mode]) == len(pcm) and heard[mode] != pcm


@pytest.mark.anyio
async def test_words_arrive_while_the_caller_speaks_and_are_ready_when_they_stop() -> None:
    async def model(pcm: bytes, rate: int) -> float:
        return 0.1 if len(pcm) < 2 * (2 * rate) else 0.9  # finished once 2 s were said

    engine = ScriptedEngine(transcripts=["I would like", "I would like a table"])
    session, watcher, _ = await vad_session({"type": "semantic_vad", "eagerness": "high"},
                                            engine=engine, end_of_turn=model)
    feed(session, tone(1000) + silence(150))
    delta, before = await watcher.until("conversation.item.input_audio_transcription.delta")
    assert "input_audio_buffer.speech_stopped" not in Watcher.types(before)
    assert "input_audio_buffer.committed" not in Watcher.types(before)
    item_id = delta["item_id"]
    feed(session, tone(1000) + silence(150))
    stopped, _ = await watcher.until("input_audio_buffer.speech_stopped")
    completed, _ = await watcher.until(
        "conversation.item.input_audio_transcription.completed")
    deltas = [e["delta"] for e in watcher.seen
              if e["type"] == "conversation.item.input_audio_transcription.delta"]
    # Each run extended what the client had already been sent; no words were sent twice.
    assert "".join(deltas).strip() == completed["transcript"] == "I would like a table"
    assert stopped["item_id"] == completed["item_id"] == item_id
    # Two runs, one per pause; the second heard the whole turn and gave it its words.
    assert [len(pcm) * 1000 // 48000 for pcm in engine.heard] == [
        pytest.approx(1000 + 64, abs=64), pytest.approx(2000 + 150 + 64, abs=64)]
    await watcher.until("response.done")


@pytest.mark.anyio
async def test_default_profile_answers_a_clearly_finished_turn_before_the_silence() -> None:
    asked: list[int] = []

    async def sure(pcm: bytes, rate: int) -> float:
        asked.append(len(pcm) * 1000 // (2 * rate))
        return 0.95

    for chosen in (False, True):
        asked.clear()
        audio: dict[str, Any] = {"turn_detection": dict(VAD)} if chosen else {}
        session = RealtimeSession(config={"audio": {"input": audio}},
                                  engine=ScriptedEngine(transcripts=["what time is it"]),
                                  vad=EnergyVad(), end_of_turn=sure)
        await session.start()
        watcher = Watcher(session)
        feed(session, tone(800) + silence(150))
        if chosen:  # the client's own server_vad: silence only, as configured
            await asyncio.sleep(0.05)
            assert "input_audio_buffer.speech_stopped" not in Watcher.types(watcher.pending())
            feed(session, silence(500))
        stopped, _ = await watcher.until("input_audio_buffer.speech_stopped")
        assert (stopped["audio_end_ms"] >= 800 + 500) == chosen, stopped
        assert asked[0] == 100  # the warm-up at the start of the session
        assert (len(asked) > 1) != chosen
        await session.close("test")
