"""A Realtime session: the conversation, turn-taking and responses of one call (or socket).

Caller audio comes in through :meth:`RealtimeSession.feed_audio` (the phone line, 20 ms frames
in the engine's ``line_audio``) or :meth:`RealtimeSession.feed_socket_audio`
(``input_audio_buffer.append`` on a standalone socket, in the session's input format, converted
to the engine's only where the two differ). For cascade engines
the session detects turns itself, commits each one as a user item, has the engine transcribe
it and, when turn detection says so, answer it. Duplex engines hear every frame and speak on
their own; the session relays what they say. Server events fan out to every subscriber; the
session never waits for one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from callgate.engines import denoise
from callgate.engines.base import (
    Engine,
    EngineError,
    EngineEvent,
    RelayedEvent,
    ResponseDone,
    Stage,
    TranscriptDelta,
    TranscriptDone,
)
from callgate.engines.vad import VoiceActivity
from callgate.log import event
from callgate.media.convert import FormatConverter
from callgate.media.formats import AudioFormat
from callgate.realtime import client_events
from callgate.realtime.items import Conversation
from callgate.realtime.mcp import McpTools, as_function_items
from callgate.realtime.noise import NoiseReduction
from callgate.realtime.playback import LinePlayback
from callgate.realtime.protocol import ProtocolError, new_id, parse_client_event, validate_session
from callgate.realtime.relay import Relay, RelayEngine
from callgate.realtime.responses import (
    AudioOutput,
    ResponseParams,
    ResponseRun,
    Timeline,
    engine_request,
)
from callgate.realtime.session_config import (
    SameEngine,
    apply_update,
    check_engine,
    default_session,
    shown,
    to_engine_config,
)
from callgate.realtime.subscribers import Subscription
from callgate.realtime.transcription import EarlyTranscription, ItemTranscript, Transcript
from callgate.realtime.truncation import REPLY_TOKENS, ContextWindow
from callgate.realtime.turns import (
    EndOfTurnModel,
    IdleTimeout,
    InputAudioBuffer,
    Pause,
    SpeechStarted,
    SpeechStopped,
    TurnConfig,
    TurnDetector,
    default_end_of_turn,
    default_vad,
)

logger = logging.getLogger(__name__)


DTMF_KEYS = frozenset("0123456789*#ABCD")
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio


class RealtimeSession:
    def __init__(self, *, config: dict[str, Any], engine: Engine, call_id: str | None = None,
                 output: AudioOutput | None = None, vad: VoiceActivity | None = None,
                 end_of_turn: EndOfTurnModel | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 same_engine: SameEngine | None = None) -> None:
        """``config``: a GA session object (the ``/accept`` body); raises ProtocolError, also
        for a setting that ``engine`` cannot carry out."""
        given = validate_session({"type": "realtime", **config})
        self.session_id = new_id("sess")
        self.call_id = call_id
        self.engine = engine
        self.output = output
        self.closed = False
        self.timelines: deque[dict[str, Any]] = deque(maxlen=64)
        self._clock = clock
        self._vad = vad
        self._end_of_turn = end_of_turn
        self.noise = NoiseReduction(self.spawn, self.log_fields)
        self._from_socket: FormatConverter | None = None  # standalone sessions only
        self.config = apply_update(
            default_session(self.session_id, str(config.get("model") or "local"), time.time()),
            given)
        self.config["model"] = str(config.get("model") or self.config["model"])
        # The gateway's own turn detection, while the client has not chosen one: see turns.py.
        chosen = "turn_detection" in (given.get("audio") or {}).get("input", {})
        self._default_turns = (None if chosen else
                               copy.deepcopy(self.config["audio"]["input"]["turn_detection"]))
        check_engine(self.config, engine)
        self.same_engine = same_engine
        self.conversation = Conversation()
        self.window = ContextWindow()
        self.mcp = McpTools(self.conversation, self.emit, self.spawn)
        self.buffer = InputAudioBuffer()
        self.detector: TurnDetector | None = None
        self.active: ResponseRun | None = None
        self.line = (LinePlayback(output, self.conversation, self.emit, self.spawn,
                                  self._quiet) if output is not None else None)
        # An engine speaking the protocol itself (an upstream Realtime server) gets the
        # client events and its server events pass through: see realtime/relay.py.
        self.relay = Relay(self, engine) if isinstance(engine, RelayEngine) else None
        self._subscribers: list[Subscription] = []
        self._speech_item: str | None = None
        self._next_timeline: Timeline | None = None
        self._active_task: asyncio.Task[None] | None = None
        self._transcriptions: dict[str, asyncio.Task[None]] = {}
        self._early = EarlyTranscription(engine, self.emit, self._transcription_shown)
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_response_id: str | None = None
        self.reconfigure_turns()

    @property
    def log_fields(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "session_id": self.session_id}

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.engine.start(to_engine_config(self.config))
        if not self.engine.duplex:
            self.mcp.configure(self.config["tools"])
        if self.engine.inline:
            self.engine.attach(self._duplex_event)
        elif self.engine.duplex:
            self.spawn(self._pump_duplex())
        elif self._end_of_turn is not None:
            # Load the end-of-turn model now, not at the caller's first pause.
            self.spawn(self._warm_end_of_turn(self._end_of_turn))
        event(logger, "realtime_session_started", **self.log_fields, model=self.config["model"],
              duplex=self.engine.duplex)

    async def close(self, reason: str) -> None:
        """The call ended (or the standalone socket went away): stop everything."""
        if self.closed:
            return
        self.closed = True
        if self.active is not None:
            self.active.finish("cancelled")
        self._early.discard()
        tasks = [t for t in (*self._tasks, self._active_task) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in list(self._subscribers):
            sub.close()
        self.noise.close()
        try:
            await self.engine.aclose()
        finally:
            event(logger, "realtime_session_closed", **self.log_fields, reason=reason)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- events out --------------------------------------------------------------------------
    def subscribe(self) -> Subscription:
        """A new observer; its first event is ``session.created``."""
        sub = Subscription(self._unsubscribe)
        sub.put({"type": "session.created", "event_id": new_id("event"),
                 "session": shown(self.config)})
        if self.closed:
            sub.close()
        else:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def emit(self, ev: dict[str, Any]) -> None:
        # DTMF events have no event_id in the GA schema (openai-wire.md §4).
        if ev["type"] != "input_audio_buffer.dtmf_event_received":
            ev = {"event_id": new_id("event"), **ev}
        for sub in list(self._subscribers):
            sub.put(ev)

    # --- events in ---------------------------------------------------------------------------
    async def handle_client_event(self, raw: str | bytes,
                                  subscriber: Subscription | None = None) -> None:
        """Apply one client event; a bad one is answered with ``error`` to ``subscriber``."""
        try:
            if self.closed:
                raise ProtocolError("The session has ended.", code="session_closed")
            ev = parse_client_event(raw)
            if self.relay is not None:
                self.relay.client_event(ev)
            else:
                await client_events.dispatch(self, ev)
        except ProtocolError as err:
            if subscriber is not None:
                subscriber.put(err.to_event())
            else:
                self.emit(err.to_event())

    def dtmf(self, digit: str) -> None:
        if self.closed or digit not in DTMF_KEYS:
            return
        self.emit({"type": "input_audio_buffer.dtmf_event_received", "event": digit,
                   "received_at": int(time.time())})

    def transfer_failed(self, target_uri: str, detail: str) -> None:
        """A transfer (``/refer``) did not happen and the call goes on: an ``error`` with code
        ``transfer_failed`` lets the application have the agent tell the caller."""
        if self.closed:
            return
        self.emit(ProtocolError(f"The transfer to {target_uri} failed ({detail}); the call is "
                                "still connected.", code="transfer_failed",
                                error_type="server_error").to_event())

    # --- caller audio ------------------------------------------------------------------------
    def feed_audio(self, pcm: bytes) -> None:
        """One frame of caller audio, in the line's format (the engine's ``line_audio``)."""
        if self.closed or not pcm:
            return
        if self.engine.duplex:
            self.engine.push_audio(pcm)
            return
        pcm = self.noise.process(pcm)
        self.buffer.append(pcm)
        detector = self.detector
        if detector is None:
            return
        for turn in detector.feed(pcm):
            if isinstance(turn, SpeechStarted):
                self._speech_started(turn)
            elif isinstance(turn, SpeechStopped):
                self._speech_stopped(turn)
            elif isinstance(turn, IdleTimeout):
                self._idle_timeout(turn)
            elif isinstance(turn, Pause):
                self._caller_paused(detector, turn)
        if not detector.speaking:
            self.buffer.keep_last(detector.config.prefix_padding_ms)

    def feed_socket_audio(self, data: bytes) -> None:
        """Caller audio of a standalone session (``input_audio_buffer.append``), in the
        session's input format; raises ProtocolError for a partial PCM16 sample."""
        converter = self._from_socket
        if converter is None:
            raise ProtocolError("input_audio_buffer.append carries audio only on a session "
                                "without a phone call: a call's audio comes from the line.",
                                code="unsupported_for_session")
        if converter.source.sample_width == 2 and len(data) % 2:
            raise ProtocolError("'audio' must hold whole PCM16 samples (an even byte count).",
                                param="audio")
        self.feed_audio(converter.process(data))

    @property
    def engine_audio(self) -> AudioFormat:
        """What the engine takes and gives on this session's socket (standalone sessions)."""
        return self._from_socket.target if self._from_socket is not None else \
            AudioFormat.pcm(self.engine.sample_rate)

    def reconfigure_turns(self) -> None:
        """Set up the caller-audio path from the session: the socket's format, noise
        reduction, turn detection."""
        self._reconfigure_socket_audio()
        self._reconfigure_noise()
        if self.engine.duplex:  # the engine hears the caller and takes turns itself
            self.detector = None
            return
        turn_detection = self.config["audio"]["input"].get("turn_detection")
        default_profile = (turn_detection is not None
                           and turn_detection == self._default_turns)
        if (self._end_of_turn is None and turn_detection is not None
                and (default_profile or turn_detection.get("type") == "semantic_vad")):
            self._end_of_turn = default_end_of_turn()
        config = TurnConfig.from_session(turn_detection, model=self._end_of_turn is not None,
                                         default_profile=default_profile)
        if config is None:
            self.detector = None
            return
        if self._vad is None:
            self._vad = default_vad()
        if self._vad is None:
            event(logger, "turn_detection_unavailable", logging.WARNING, **self.log_fields,
                  why="no voice activity model; the client must commit turns")
            return
        if self.detector is None:
            self.detector = TurnDetector(config, self._vad)
        else:
            self.detector.reconfigure(config)

    def _speech_started(self, turn: SpeechStarted) -> None:
        assert self.detector is not None
        self._speech_item = new_id("item")
        self.buffer.keep_last(self.detector.position_ms - turn.audio_start_ms)
        self.emit({"type": "input_audio_buffer.speech_started",
                   "audio_start_ms": turn.audio_start_ms, "item_id": self._speech_item})
        if self.detector.config.interrupt_response:
            self.interrupt("turn_detected")

    def _reconfigure_socket_audio(self) -> None:
        if self.output is not None:
            return
        given = AudioFormat.realtime(self.config["audio"]["input"].get("format"))
        current = self._from_socket
        if current is None or current.source != given:
            self._from_socket = FormatConverter(given, self.engine.line_audio(given))

    def _reconfigure_noise(self) -> None:
        # Duplex engines get the raw audio: an upstream model applies its own noise_reduction.
        self.noise.configure(None if self.engine.duplex else denoise.mode_of(
            self.config["audio"]["input"].get("noise_reduction")))

    def _caller_paused(self, detector: TurnDetector, pause: Pause) -> None:
        """Start transcribing what the caller said so far; with semantic_vad, ask the model
        whether that was all."""
        if detector.config.complete_at is not None and self._end_of_turn is not None:
            self.spawn(self._judge_turn(detector, pause))
        if self._speech_item is not None and not pause.second:
            self._early.paused(self._speech_item, pause.pause_id, self.buffer.peek())

    async def _warm_end_of_turn(self, model: EndOfTurnModel) -> None:
        try:
            await model(bytes(2 * 1600), 16000)  # 100 ms of silence at the model's rate
        except Exception as exc:
            event(logger, "end_of_turn_failed", logging.WARNING, **self.log_fields,
                  error=str(exc))

    async def _judge_turn(self, detector: TurnDetector, check: Pause) -> None:
        """Ask the end-of-turn model; the turn ends if it says so and nobody spoke since."""
        assert self._end_of_turn is not None
        try:
            probability = await self._end_of_turn(check.pcm, check.sample_rate)
        except Exception as exc:  # the longest wait still ends the turn
            event(logger, "end_of_turn_failed", logging.WARNING, **self.log_fields,
                  error=str(exc))
            return
        if self.closed or detector is not self.detector:
            return
        verdict = detector.verdict(check, probability)
        event(logger, "end_of_turn_checked", **self.log_fields, second=check.second,
              probability=round(probability, 3), ended=isinstance(verdict, SpeechStopped))
        if isinstance(verdict, SpeechStopped):
            self._speech_stopped(verdict)
        elif isinstance(verdict, Pause):
            self._caller_paused(detector, verdict)

    def _speech_stopped(self, turn: SpeechStopped) -> None:
        assert self.detector is not None
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        now = self._clock()
        timeline = Timeline(speech_end=now - (turn.audio_end_ms - turn.speech_end_ms) / 1000)
        self.emit({"type": "input_audio_buffer.speech_stopped",
                   "audio_end_ms": turn.audio_end_ms, "item_id": item_id})
        self.commit(item_id, timeline=timeline, pause_id=turn.pause_id)
        if self.detector.config.create_response and self.active is None:
            self.create_response(None, timeline=timeline)

    def _idle_timeout(self, turn: IdleTimeout) -> None:
        if self.active is not None or self.line:
            return
        item_id = new_id("item")
        self.emit({"type": "input_audio_buffer.timeout_triggered",
                   "audio_start_ms": turn.audio_start_ms, "audio_end_ms": turn.audio_end_ms,
                   "item_id": item_id})
        self.commit(item_id, transcript="")
        self.create_response(None)

    def commit(self, item_id: str | None = None, *, event_id: str | None = None,
               timeline: Timeline | None = None, transcript: str | None = None,
               pause_id: int | None = None) -> None:
        """Make the buffered caller audio a user item (and transcribe it); ``pause_id``: the
        turn ended in that pause, so a transcription started there heard all of it."""
        if item_id is None and self.buffer.duration_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{self.buffer.duration_ms}ms of audio.",
                code="input_audio_buffer_commit_empty", event_id=event_id)
        item_id = item_id or self._speech_item or new_id("item")
        self._speech_item = None
        if self.detector is not None and self.detector.speaking:
            self.detector.reset()
        pcm = self.buffer.take()
        timeline = timeline or Timeline()
        timeline.committed = self._clock()
        item = {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": transcript}]}
        previous = self.conversation.add(item)
        self.conversation.store_audio(item_id, pcm)
        self.emit({"type": "input_audio_buffer.committed", "item_id": item_id,
                   "previous_item_id": previous})
        self.item_added(item, previous)
        self._next_timeline = timeline
        if transcript is None:
            self._transcribe(*self._early.committed(item_id, pause_id, pcm), timeline)
        else:
            self._early.discard()

    def item_added(self, item: dict[str, Any], previous: str | None) -> None:
        self.emit({"type": "conversation.item.added", "previous_item_id": previous,
                   "item": copy.deepcopy(item)})
        self.emit({"type": "conversation.item.done", "previous_item_id": previous,
                   "item": copy.deepcopy(item)})

    def _transcription_shown(self) -> bool:
        """``transcription: null`` turns the transcription events off (the words are still
        taken: the language model reads them)."""
        return self.config["audio"]["input"].get("transcription") is not None

    def transcribe(self, item_id: str, pcm: bytes, timeline: Timeline | None = None) -> None:
        transcript = self._early.item(item_id)
        self._transcribe(transcript, transcript.run(pcm), timeline)

    def _transcribe(self, transcript: ItemTranscript, run: Awaitable[Transcript],
                    timeline: Timeline | None) -> None:
        async def finish() -> None:
            transcript.finish(self.conversation, await run, timeline)

        item_id = transcript.item_id
        task = self.spawn(finish())
        self._transcriptions[item_id] = task
        task.add_done_callback(lambda _: self._transcriptions.pop(item_id, None))

    # --- responses ---------------------------------------------------------------------------
    def create_response(self, params: ResponseParams | None, *, event_id: str | None = None,
                        timeline: Timeline | None = None, drive: bool = True) -> ResponseRun:
        """Start a response; ``drive=False``: a duplex engine feeds it through ``events``."""
        if self.active is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response", event_id=event_id)
        if self.line is not None:
            self.line.stop_watching()
        if self.detector is not None:
            self.detector.disarm_idle()
        timeline = timeline or self._next_timeline or Timeline()
        self._next_timeline = None
        run = ResponseRun(params=params or client_events.response_params(self, None),
                          conversation=self.conversation, emit=self.emit, output=self.output,
                          socket_audio=self.engine_audio, clock=self._clock,
                          timeline=timeline, on_done=self._response_done,
                          log_fields=self.log_fields)
        self.active = run
        self.last_response_id = run.id
        run.start()
        self.emit({"type": "rate_limits.updated", "rate_limits": []})
        if drive:
            self._active_task = asyncio.get_running_loop().create_task(self._drive(run))
        return run

    async def _drive(self, run: ResponseRun) -> None:
        try:
            pending = list(self._transcriptions.values())
            if pending:  # the model reads the caller's words: wait for them
                await asyncio.wait(pending)
            await self.mcp.ready()
            run.mcp_tools, mcp_functions = self.mcp.for_model()
            for call in self.mcp.approved_calls():
                run.add_mcp_call(call)
            # the model answers, runs the MCP calls it made, and reads their results
            while not run.finished:
                await self.mcp.run_calls(run)
                if run.finished:
                    return
                await self._engine_round(run, mcp_functions)
                if not run.mcp_pending:
                    break
            run.finish_from_engine()
        except asyncio.CancelledError:
            run.finish("cancelled")
        except Exception as exc:
            logger.exception("response failed")
            run.finish("failed", error={"type": "server_error", "code": "engine_error",
                                        "message": str(exc) or type(exc).__name__})

    async def _engine_round(self, run: ResponseRun, tools: list[dict[str, Any]]) -> None:
        items = run.params.input
        if items is None:
            reply = run.params.max_output_tokens
            items = self.window.fit(
                as_function_items(self.conversation.items()),
                instructions=run.params.instructions,
                truncation=self.config.get("truncation") or "auto",
                context_tokens=self.engine.context_tokens,
                reply_tokens=reply if isinstance(reply, int) else REPLY_TOKENS)
        stream = self.engine.respond(engine_request(run.params, items, tools))
        try:
            async for ev in stream:
                run.handle(ev)
                if run.finished or isinstance(ev, ResponseDone):
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _response_done(self, run: ResponseRun) -> None:
        if self.active is run:
            self.active = None
        self.timelines.append({"response_id": run.id, "status": run.status,
                               **run.timeline.as_ms()})
        if self.closed:
            return
        if self.line is not None:
            self.line.adopt(run.playbacks)
            self.line.watch_drain()
        else:
            self._quiet()

    def _quiet(self) -> None:
        """The assistant has finished talking: the idle timeout starts counting."""
        if self.detector is not None and not self.detector.speaking:
            self.detector.arm_idle()

    def cancel_response(self, reason: str) -> None:
        run, task = self.active, self._active_task
        if run is None:
            return
        run.finish("cancelled", reason=reason)
        if task is not None and not task.done():
            task.cancel()

    def interrupt(self, reason: str) -> None:
        """Barge-in (``turn_detected``) or ``output_audio_buffer.clear``: stop talking now."""
        if self.line is not None:
            if self.active is not None:
                self.line.adopt(self.active.playbacks)
            self.line.clear()
        self.cancel_response(reason)

    # --- duplex engines ----------------------------------------------------------------------
    async def _pump_duplex(self) -> None:
        """Relay what a duplex engine says on its own, as responses of this session."""
        try:
            async for ev in self.engine.events():
                self._duplex_event(ev)
        except Exception:
            logger.exception("duplex engine stopped")

    def _duplex_event(self, ev: EngineEvent) -> None:
        if self.relay is not None:
            self.relay.engine_event(ev)
            return
        if isinstance(ev, RelayedEvent):
            self.emit(dict(ev.event))
            return
        if isinstance(ev, TranscriptDelta | TranscriptDone | Stage):
            return
        run = self.active
        if run is None:
            if isinstance(ev, ResponseDone | EngineError):
                return
            run = self.create_response(None, drive=False)
        run.handle(ev)
        if isinstance(ev, ResponseDone):
            run.finish_from_engine()

