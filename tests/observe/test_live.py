"""CallWatch from call events and a session's server events to metrics, records and viewers,
with a stand-in session and media stream (the real ones are exercised end to end)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from callgate.media.formats import AudioFormat
from callgate.observe.events import (
    CallAnswered,
    CallRefused,
    CallSetupFailed,
    CallStarted,
    CallStateChanged,
    CallTransfer,
    Observers,
    WebhookAttempt,
    WorkerRestarted,
)
from callgate.observe.live import CallWatch
from callgate.observe.metrics import GatewayMetrics, turn_stages
from callgate.realtime.subscribers import Subscription


class FakeSession:
    def __init__(self) -> None:
        self.timelines: deque[dict[str, Any]] = deque()
        self.subscribers: list[Subscription] = []

    def subscribe(self) -> Subscription:
        sub = Subscription(self.subscribers.remove)
        self.subscribers.append(sub)
        return sub

    def emit(self, ev: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            sub.put(ev)


class FakeMedia:
    def __init__(self) -> None:
        self.stats: dict[str, Any] = {"codec": "PCMU", "packets_in": 0, "packets_out": 0,
                                      "lost": 0, "late": 0, "jitter_ms": 0.0, "rtt_ms": None}
        self.on_audio: Callable[[bytes], None] | None = lambda pcm: None
        self.audio_format = AudioFormat.pcm(24000)
        self.sent: list[bytes] = []

    def send_audio(self, pcm: bytes, *, flush: bool = False) -> None:
        self.sent.append(pcm)

    def clear_output(self) -> int:
        return 0


class Saved:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def save(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples}


def test_turn_stages_from_time_points() -> None:
    points = {"committed": 520, "response_created": 521, "transcript_ready": 900,
              "llm_first_token": 1100, "tts_first_audio": 1400, "first_audio_out": 1420}
    assert turn_stages(points) == {"turn_detection": 520, "stt": 380, "llm_first_token": 200,
                                   "tts_first_audio": 300, "voice_to_voice": 1420}
    # A response asked for over the socket, with no speech and no audio: only the LLM.
    assert turn_stages({"response_created": 0, "llm_first_token": 150}) == {
        "llm_first_token": 150}


def test_a_call_seen_from_start_to_end(tmp_path: Path) -> None:
    async def run() -> tuple[GatewayMetrics, Saved, list[dict[str, Any]], Any]:
        metrics, saved = GatewayMetrics(), Saved()
        watch = CallWatch(metrics=metrics, records=saved, recordings=tmp_path,
                          model_label=lambda m: m if m == "local" else "other")
        observers = Observers(watch)
        viewer = watch.watch()
        session, media = FakeSession(), FakeMedia()
        observers.call_event(CallStarted("rtc_1", "abc@peer", "inbound", "sip:+1555@t",
                                         "sip:proj@gw", 100.0, "ringing"))
        observers.call_event(WebhookAttempt(True, 0.012))
        watch.want_recording("rtc_1", True)
        observers.call_event(CallStateChanged("rtc_1", "ringing", "accepted", "accepted",
                                              100.05, False))
        observers.call_event(CallAnswered("rtc_1", "local", "PCMU", 100.05, media, session,
                                                  AudioFormat.pcm(24000)))
        observers.call_event(CallStateChanged("rtc_1", "accepted", "active", "ACK", 100.06,
                                              False))
        live = samples(metrics)
        assert live[("callgate_calls_in_progress",
                     (("direction", "inbound"), ("state", "active")))] == 1
        assert live[("callgate_sessions_active", (("model", "local"),))] == 1

        assert media.on_audio is not None
        media.on_audio(b"\x10\x00" * 480)  # the tee sees the caller's frame on its way
        media.send_audio(b"\x20\x00" * 960)
        assert media.sent == [b"\x20\x00" * 960]
        await asyncio.sleep(0)  # the watcher subscribes
        session.emit({"type": "conversation.item.input_audio_transcription.completed",
                      "item_id": "item_1", "transcript": "what's the weather"})
        session.emit({"type": "response.output_audio_transcript.delta", "item_id": "item_2",
                      "delta": "Sun"})
        session.emit({"type": "response.function_call_arguments.done", "item_id": "item_3",
                      "name": "weather", "call_id": "fc_1", "arguments": '{"city":"Oslo"}'})
        session.emit({"type": "conversation.item.added", "item": {
            "id": "item_4", "type": "function_call_output", "call_id": "fc_1",
            "output": "sunny"}})
        session.emit({"type": "response.output_audio_transcript.done", "item_id": "item_2",
                      "transcript": "Sunny."})
        session.timelines.append({"response_id": "resp_1", "status": "completed",
                                  "committed": 300, "transcript_ready": 600,
                                  "llm_first_token": 800, "tts_first_audio": 1000,
                                  "first_audio_out": 1010})
        session.emit({"type": "response.done", "response": {"id": "resp_1",
                                                            "status": "completed"}})
        session.emit({"type": "response.done", "response": {
            "id": "resp_2", "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "turn_detected"}}})
        for _ in range(5):
            await asyncio.sleep(0)
        observers.call_event(CallTransfer("rtc_1", "realtime.call.transfer_progress",
                                          "tel:+1555", 180, "Ringing", 108.0))
        observers.call_event(CallTransfer("rtc_1", "realtime.call.transfer_failed",
                                          "tel:+1555", 486, "Busy Here", 108.5))
        media.stats.update(packets_in=480, packets_out=500, lost=20, jitter_ms=2.0)
        observers.call_event(CallStateChanged("rtc_1", "active", "ended", "caller hung up",
                                              110.0, True))
        updates = []
        while not viewer.empty():
            updates.append(viewer.get_nowait())
        await watch.close()
        return metrics, saved, updates, watch

    metrics, saved, updates, watch = asyncio.run(run())
    final = saved.records[-1]
    assert final["state"] == "ended" and final["end_reason"] == "caller hung up"
    assert final["sip_status"] == 200 and final["model"] == "local"
    assert [(t["role"], t["text"]) for t in final["transcript"]] == [
        ("caller", "what's the weather"), ("tool_call", '{"city":"Oslo"}'),
        ("tool_result", "sunny"), ("agent", "Sunny.")]
    assert final["turns"][0]["stages"]["voice_to_voice"] == 1010
    assert final["quality"]["lost"] == 20 and final["quality"]["mos"] < 4.3  # 4 % lost
    assert [(t["type"], t["sip_status"]) for t in final["transfers"]] == [
        ("realtime.call.transfer_progress", 180), ("realtime.call.transfer_failed", 486)]
    assert final["recording_path"] == str(tmp_path / "rtc_1.wav")
    assert (tmp_path / "rtc_1.wav").stat().st_size > 44
    assert watch.find("rtc_1") is not None and not watch.calls

    after = samples(metrics)
    assert after[("callgate_calls_ended_total",
                  (("direction", "inbound"), ("state", "ended")))] == 1
    assert after[("callgate_calls_in_progress",
                  (("direction", "inbound"), ("state", "active")))] == 0
    assert after[("callgate_sessions_active", (("model", "local"),))] == 0
    assert after[("callgate_call_setup_total", (("status", "200"),))] == 1
    assert after[("callgate_tool_calls_total", ())] == 1
    assert after[("callgate_transfers_total", (("outcome", "transfer_failed"),))] == 1
    assert after[("callgate_barge_ins_total", ())] == 1
    assert after[("callgate_turn_stage_seconds_count", (("stage", "stt"),))] == 1
    assert after[("callgate_turn_stage_seconds_sum", (("stage", "stt"),))] == 0.3
    assert after[("callgate_rtp_lost_total", ())] == 20
    assert after[("callgate_webhook_seconds_count", (("outcome", "delivered"),))] == 1
    kinds = [u["type"] for u in updates]
    assert kinds[0] == "call" and {"transcript", "turn", "transfer"} <= set(kinds)
    assert "partial" in kinds


def test_refusals_setup_failures_and_restarts_are_counted() -> None:
    async def run() -> GatewayMetrics:
        metrics = GatewayMetrics()
        observers = Observers(CallWatch(metrics=metrics))
        observers.call_event(CallRefused(503, "max_calls"))
        observers.call_event(CallRefused(503, "max_calls"))
        observers.call_event(CallStarted("rtc_2", "x@y", "inbound", "a", "b", 1.0, "ringing"))
        observers.call_event(CallSetupFailed("rtc_2", 486, "rejected 486"))
        observers.call_event(CallStateChanged("rtc_2", "ringing", "rejected", "rejected 486",
                                              2.0, True))
        observers.call_event(WebhookAttempt(False, 5.0, "deadline"))
        observers.call_event(WorkerRestarted("stt"))
        return metrics

    m = samples(asyncio.run(run()))
    assert m[("callgate_calls_refused_total", (("reason", "max_calls"), ("status", "503")))] == 2
    assert m[("callgate_call_setup_total", (("status", "486"),))] == 1
    assert m[("callgate_calls_ended_total",
              (("direction", "inbound"), ("state", "rejected")))] == 1
    assert m[("callgate_webhook_failures_total", (("reason", "deadline"),))] == 1
    assert m[("callgate_engine_worker_restarts_total", (("worker", "stt"),))] == 1


def test_a_failing_observer_never_reaches_the_caller() -> None:
    class Broken:
        def call_event(self, ev: object) -> None:
            raise RuntimeError("boom")

    seen: list[object] = []

    class Good:
        def call_event(self, ev: object) -> None:
            seen.append(ev)

    Observers(Broken(), Good()).call_event(CallRefused(503, "max_calls"))  # type: ignore[arg-type]
    assert seen == [CallRefused(503, "max_calls")]


def test_an_ended_call_kept_among_the_recent_holds_no_session_or_media() -> None:
    # The console keeps the last calls' records; a session or stream held through them (the
    # follower task's traceback, the audio tap) would keep each call's resamplers and buffers.
    async def run() -> tuple[weakref.ref[FakeSession], weakref.ref[FakeMedia], CallWatch]:
        watch = CallWatch(metrics=GatewayMetrics())
        viewer = watch.watch()  # with a viewer the call's audio is tapped too
        session, media = FakeSession(), FakeMedia()
        watch.call_event(CallStarted("rtc_9", "x@y", "inbound", "a", "b", 1.0, "ringing"))
        watch.call_event(CallAnswered("rtc_9", "echo", "PCMU", 1.0, media, session,
                                             AudioFormat.pcm(24000)))
        await asyncio.sleep(0)  # the follower subscribes
        watch.call_event(CallStateChanged("rtc_9", "active", "ended", "bye", 2.0, True))
        for _ in range(3):
            await asyncio.sleep(0)  # the follower sees its cancellation
        watch.unwatch(viewer)
        return weakref.ref(session), weakref.ref(media), watch

    session, media, watch = asyncio.run(run())
    gc.collect()
    assert watch.find("rtc_9") is not None
    assert session() is None and media() is None


def test_live_calls_are_sampled_a_slice_at_a_time() -> None:
    # Sampling every call in one go held the event loop long enough to upset the media tick's
    # pacing at a few hundred calls: each slice takes its share, and together they take all.
    async def run() -> None:
        metrics = GatewayMetrics()
        watch = CallWatch(metrics=metrics, model_label=lambda m: m)
        observers = Observers(watch)
        media = {f"rtc_{n}": FakeMedia() for n in range(7)}
        for call_id, stream in media.items():
            observers.call_event(CallStarted(call_id, f"{call_id}@peer", "inbound", "sip:a@t",
                                             "sip:proj@gw", 100.0, "ringing"))
            observers.call_event(CallAnswered(call_id, "local", "PCMU", 100.05, stream,
                                              FakeSession(), AudioFormat.pcm(24000)))
            stream.stats["packets_in"] = 50
        packets_in = ("callgate_rtp_packets_total", (("direction", "in"),))
        seen = []
        for part in range(3):
            watch.sample_all(part, 3)
            seen.append(samples(metrics)[packets_in])
        assert seen == [3 * 50, 5 * 50, 7 * 50]  # calls 0, 3, 6; then 1, 4; then 2, 5
        assert all(watch.calls[call_id].quality["packets_in"] == 50 for call_id in media)
        watch.sample_all()  # no new packets: a second sample adds nothing
        assert samples(metrics)[packets_in] == 7 * 50
        await watch.close()

    asyncio.run(run())
