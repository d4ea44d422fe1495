"""An upstream Realtime server as the engine: callgate is then only the SIP front.

The route's ``url`` is a GA Realtime WebSocket (OpenAI's ``wss://api.openai.com/v1/realtime``,
Azure's, or another callgate's ``/v1/realtime``); ``model`` goes in its ``?model=`` query and
``api_key`` in ``Authorization: Bearer`` (openai-wire.md §3). The conversation, turn detection
and responses all live upstream; this engine is a pipe with a little translation:

* caller audio (``push_audio``, 20 ms frames) goes up as ``input_audio_buffer.append`` in
  batches of :data:`BATCH_MS` (fewer events; each batch adds at most that much delay before
  the upstream hears the end of a word). A G.711 call speaks G.711 to the upstream
  (``audio/pcmu``/``audio/pcma``, :meth:`line_audio`): the payloads pass through both ways
  without being decoded; any other codec is carried as ``audio/pcm`` at 24 kHz;
* every upstream server event comes back out of :meth:`events` as a :class:`RelayedEvent`, in
  order and unchanged; each ``response.output_audio.delta`` is followed by an
  :class:`AudioDelta` holding its decoded PCM. What the application sees of them is the
  session's choice (``realtime/relay.py``: a call's sideband gets no audio, as OpenAI's carries
  none; a standalone socket gets the deltas as they came);
* the application's client events go up through :meth:`forward_client_event`. The phone line
  is this side's, so the upstream's audio format stays the one the call started with whatever
  a ``session.update`` asks; the upstream model is the route's and is not changed either.

Connecting happens before a call is answered (:meth:`connect`, from the engine registry): an
unreachable or refusing upstream fails the ``accept`` with a clear message instead of
answering the caller with silence. Once running, a lost upstream is one :class:`EngineError`
out of :meth:`events`; the call stays up (the caller hears silence) and the application gets
an ``error`` event. Queues are bounded: caller audio older than :data:`MAX_PENDING_AUDIO_MS`
is dropped when the upstream does not read, and an upstream that leaves
:data:`MAX_PENDING_EVENTS` client events unread is given up on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from callgate.config import ModelRoute
from callgate.engines.base import (
    AudioDelta,
    Engine,
    EngineError,
    EngineEvent,
    RelayedEvent,
    ResponseRequest,
    Stage,
    TranscriptDelta,
    TranscriptDone,
)
from callgate.log import event
from callgate.media.convert import FormatConverter
from callgate.media.formats import AudioFormat

logger = logging.getLogger(__name__)

PCM_AUDIO = AudioFormat.pcm(24000)  # GA audio/pcm: PCM16 at 24 kHz only
BATCH_MS = 40
MAX_PENDING_AUDIO_MS = 2000  # older caller audio is worthless to a live conversation
MAX_PENDING_EVENTS = 256
MAX_EVENT_BYTES = 16 * 1024 * 1024  # OpenAI allows 15 MiB per event (openai-wire.md §4)
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0

# What of a session object is sent upstream: the session's settings, not its identity
# (id, object, expires_at) and not the model, which the route fixes.
_SESSION_FIELDS = ("instructions", "tools", "tool_choice", "output_modalities",
                   "max_output_tokens", "tracing", "prompt", "include", "truncation")
_INPUT_FIELDS = ("transcription", "noise_reduction", "turn_detection")
_OUTPUT_FIELDS = ("voice", "speed")


class UpstreamUnavailable(RuntimeError):
    """The upstream Realtime server could not be reached, refused us, or has gone away."""


def upstream_url(url: str, model: str | None) -> str:
    """``url`` as a WebSocket URL with ``model`` in its query (unless already there)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if model and not any(key == "model" for key, _ in query):
        query.append(("model", model))
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def upstream_session(session: dict[str, Any], wire: AudioFormat = PCM_AUDIO
                     ) -> dict[str, Any]:
    """The ``session`` of a ``session.update`` that gives the upstream ``session``'s settings,
    with ``wire`` audio both ways (what the engine sends and takes)."""
    out: dict[str, Any] = {"type": "realtime"}
    for key in _SESSION_FIELDS:
        if session.get(key) is not None:
            out[key] = copy.deepcopy(session[key])
    audio = session.get("audio") or {}
    given_in, given_out = audio.get("input") or {}, audio.get("output") or {}
    out["audio"] = {
        "input": {"format": wire.realtime_format(),
                  **{k: copy.deepcopy(given_in[k]) for k in _INPUT_FIELDS if k in given_in}},
        "output": {"format": wire.realtime_format(),
                   **{k: given_out[k] for k in _OUTPUT_FIELDS if given_out.get(k) is not None}},
    }
    return out


class UpstreamRealtimeEngine(Engine):
    """One upstream Realtime session per callgate session (see the module docstring)."""

    duplex = True

    def __init__(self, route: ModelRoute, *, batch_ms: int = BATCH_MS,
                 connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        if not route.url:
            raise ValueError("a 'realtime' model route needs the upstream WebSocket 'url'")
        self.url = upstream_url(route.url, route.model)
        parts = urlsplit(self.url)
        # For messages and logs: the query may hold credentials (Azure's api-key).
        self.where = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.upstream_session_id: str | None = None
        self.dropped_audio_ms = 0
        self._api_key = route.api_key
        self._batch_ms = batch_ms
        self._wire: AudioFormat | None = None  # the upstream's audio, fixed by the first codec
        self._up: FormatConverter | None = None  # line -> upstream, where they differ
        self._down: FormatConverter | None = None
        self._connect_timeout = connect_timeout
        self._ws: ClientConnection | None = None
        self._first: dict[str, Any] | None = None  # the upstream's session.created
        self._audio = bytearray()
        self._outbox: deque[tuple[int, str]] = deque()  # (audio bytes or 0, JSON text)
        self._pending_audio = 0  # bytes of caller audio in the outbox
        self._pending_events = 0  # other events in the outbox
        self._closing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self._closed = False

    # --- connection ----------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the WebSocket and read the upstream's ``session.created``; raises
        :class:`UpstreamUnavailable` with a message that says what went wrong."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await connect(self.url, additional_headers=headers, compression=None,
                                   max_size=MAX_EVENT_BYTES, open_timeout=None,
                                   close_timeout=CLOSE_TIMEOUT_S)
                try:
                    first = json.loads(await ws.recv())
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise self._unavailable(f"no answer within {self._connect_timeout:g} s") from None
        except InvalidStatus as exc:
            raise self._unavailable(_refusal(exc)) from None
        except (OSError, WebSocketException, ValueError) as exc:
            raise self._unavailable(str(exc) or type(exc).__name__) from None
        if not isinstance(first, dict) or first.get("type") != "session.created":
            await ws.close()
            error = first.get("error") if isinstance(first, dict) else None
            if isinstance(error, dict) and error.get("message"):
                raise self._unavailable(f"error: {error['message']}")
            raise self._unavailable(f"its first event was not session.created but "
                                    f"{_describe(first)}")
        self._ws, self._first = ws, first
        session = first.get("session")
        self.upstream_session_id = session.get("id") if isinstance(session, dict) else None
        event(logger, "upstream_connected", upstream=self.where,
              upstream_session_id=self.upstream_session_id)

    def line_audio(self, codec: AudioFormat) -> AudioFormat:
        # The first codec decides the upstream's format for the call (a Realtime session's
        # format is not changed under audio already sent): G.711 as it is, anything else as
        # PCM at 24 kHz. A later codec that differs is taken as PCM at the upstream's rate and
        # converted here.
        if self._wire is None:
            self._wire = codec if codec.encoding != "pcm16" else PCM_AUDIO
        line = codec if codec == self._wire else AudioFormat.pcm(self._wire.rate)
        if self._up is None or self._up.source != line:
            self._up, self._down = FormatConverter(line, self._wire), \
                FormatConverter(self._wire, line)
        return line

    @property
    def wire(self) -> AudioFormat:
        """The audio exchanged with the upstream."""
        return self._wire or PCM_AUDIO

    def _unavailable(self, why: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"upstream realtime server {self.where}: {why}")

    async def start(self, session: dict[str, Any]) -> None:
        if self._ws is None:
            await self.connect()
        # The session's settings go first, before any caller audio that came in meanwhile.
        if self._wire is None:
            self.line_audio(PCM_AUDIO)
        update = {"type": "session.update", "session": upstream_session(session, self.wire)}
        self._outbox.appendleft((0, json.dumps(update, separators=(",", ":"))))
        self._pending_events += 1
        self._wake.set()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def update(self, session: dict[str, Any]) -> None:
        self._send({"type": "session.update", "session": upstream_session(session, self.wire)})

    # --- up: caller audio and client events ------------------------------------------------
    def push_audio(self, pcm: bytes) -> None:
        if self._closed or self._failure is not None or not pcm:
            return
        self._audio += self._up.process(pcm) if self._up is not None else pcm
        if len(self._audio) >= self.wire.byte_rate * self._batch_ms // 1000:
            self._flush_audio()

    def _flush_audio(self) -> None:
        if not self._audio:
            return
        chunk = bytes(self._audio)
        self._audio.clear()
        text = ('{"type":"input_audio_buffer.append","audio":"'
                + base64.b64encode(chunk).decode() + '"}')
        self._outbox.append((len(chunk), text))
        self._pending_audio += len(chunk)
        limit = self.wire.byte_rate * MAX_PENDING_AUDIO_MS // 1000
        while self._pending_audio > limit:
            self._drop_oldest_audio()
        self._wake.set()

    def _drop_oldest_audio(self) -> None:
        for index, (size, _) in enumerate(self._outbox):
            if size:
                del self._outbox[index]
                self._pending_audio -= size
                self.dropped_audio_ms += self.wire.ms(size)
                return

    def forward_client_event(self, ev: dict[str, Any]) -> None:
        """Send the application's client event upstream (after the audio pushed so far);
        raises :class:`UpstreamUnavailable` once the upstream is gone."""
        if self._closed or self._failure is not None:
            raise UpstreamUnavailable(self._failure or f"upstream realtime server "
                                      f"{self.where}: the connection is closed")
        if ev.get("type") == "session.update" and isinstance(ev.get("session"), dict):
            session = copy.deepcopy(ev["session"])
            session.pop("model", None)
            audio = session.setdefault("audio", {})
            for direction in ("input", "output"):
                audio.setdefault(direction, {})["format"] = self.wire.realtime_format()
            ev = {**ev, "session": session}
        self._send(ev)

    def _send(self, ev: dict[str, Any]) -> None:
        self._flush_audio()  # keep the order: the audio pushed before the event goes first
        self._outbox.append((0, json.dumps(ev, separators=(",", ":"))))
        self._pending_events += 1
        if self._pending_events > MAX_PENDING_EVENTS:
            self._fail(f"upstream realtime server {self.where} is not reading: more than "
                       f"{MAX_PENDING_EVENTS} events are waiting")
        self._wake.set()

    async def _write(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    size, text = self._outbox.popleft()
                    if size:
                        self._pending_audio -= size
                    else:
                        self._pending_events -= 1
                    await ws.send(text)
        except ConnectionClosed:
            return  # events() reports it

    def _fail(self, why: str) -> None:
        """Give up on the upstream: events() reports ``why`` once the socket has closed."""
        if self._failure is not None:
            return
        self._failure = why
        self._outbox.clear()
        self._pending_audio = self._pending_events = 0
        if self._ws is not None:
            self._closing = asyncio.get_running_loop().create_task(
                self._ws.close(1011, "not reading"))

    # --- down: server events -------------------------------------------------------------
    async def events(self) -> AsyncIterator[EngineEvent]:
        ws = self._ws
        if ws is None:
            yield EngineError(self._failure or f"upstream realtime server {self.where}: not "
                              "connected", "upstream_unavailable")
            return
        if self._first is not None:
            first, self._first = self._first, None
            yield RelayedEvent(first)
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                if not self._closed:
                    yield self._lost(exc)
                return
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = None
            if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
                event(logger, "upstream_bad_event", logging.WARNING, upstream=self.where,
                      data=_describe(raw))
                continue
            yield RelayedEvent(ev)
            if ev["type"] == "response.output_audio.delta":
                try:
                    pcm = base64.b64decode(ev.get("delta") or "", validate=True)
                except (binascii.Error, ValueError):
                    event(logger, "upstream_bad_audio", logging.WARNING, upstream=self.where)
                    continue
                if self._down is not None:
                    pcm = self._down.process(pcm[: len(pcm) - len(pcm) % self.wire.sample_width])
                if pcm:
                    yield AudioDelta(pcm)

    def _lost(self, exc: ConnectionClosed) -> EngineError:
        if self._failure is None:
            close = exc.rcvd or exc.sent
            detail = "no close frame"
            if close is not None:
                detail = f"code {close.code}" + (f": {close.reason}" if close.reason else "")
            self._failure = (f"upstream realtime server {self.where} closed the connection "
                             f"({detail})")
        event(logger, "upstream_lost", logging.WARNING, upstream=self.where,
              upstream_session_id=self.upstream_session_id, why=self._failure)
        return EngineError(self._failure, "upstream_closed")

    # --- the cascade half of the interface -----------------------------------------------
    async def transcribe(self, pcm: bytes) -> AsyncIterator[TranscriptDelta | TranscriptDone
                                                            | Stage | EngineError]:
        yield EngineError("the upstream realtime server transcribes the audio it hears itself; "
                          "there is no committed turn to transcribe here", "not_supported")

    async def respond(self, request: ResponseRequest) -> AsyncIterator[EngineEvent]:
        """Ask the upstream for a response (``response.create``) on its own conversation; its
        events arrive through :meth:`events`, so this yields nothing."""
        response: dict[str, Any] = {
            "instructions": request.instructions,
            "tools": request.tools,
            "tool_choice": request.tool_choice,
            "output_modalities": list(request.output_modalities),
            "max_output_tokens": request.max_output_tokens or "inf",
        }
        if request.voice:
            response["audio"] = {"output": {"voice": request.voice}}
        try:
            self.forward_client_event({"type": "response.create", "response": response})
        except UpstreamUnavailable as exc:
            yield EngineError(str(exc), "upstream_unavailable")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._ws is not None:
            await self._ws.close()
            event(logger, "upstream_closed", upstream=self.where,
                  upstream_session_id=self.upstream_session_id,
                  dropped_audio_ms=self.dropped_audio_ms or None)


def _refusal(exc: InvalidStatus) -> str:
    """What an HTTP refusal of the upgrade said: the status and OpenAI's error message."""
    response = exc.response
    message = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        message = str(json.loads(response.body or b"")["error"]["message"])
    return f"refused the connection with HTTP {response.status_code}" + (
        f": {message}" if message else "")


def _describe(value: object) -> str:
    """A short, printable form of an unexpected upstream message (for errors and logs)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:200]
