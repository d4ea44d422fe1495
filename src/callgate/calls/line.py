"""What the shell needs around a call's phone line: the session's audio output on the media
stream, the engine factory's shape, the set-up failure, and the local address to advertise."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from callgate.calls.control import CallError
from callgate.config import Settings
from callgate.engines.base import Engine
from callgate.media.formats import AudioFormat
from callgate.media.stream import MediaStream


class EngineFactory(Protocol):
    def __call__(self, model: str) -> Awaitable[Engine]: ...


class CallFailed(CallError):
    http_status = 500
    error_type = "server_error"
    code = "call_setup_failed"


class LineOutput:
    """The phone line as the realtime session's audio output (paced by the media stream)."""

    def __init__(self, media: MediaStream, line_audio: Callable[[], AudioFormat]):
        self._media = media
        self._line_audio = line_audio

    @property
    def audio_format(self) -> AudioFormat:
        # A response may start between the 200 OK and the ACK, before the stream has it.
        return self._media.audio_format or self._line_audio()

    def play(self, pcm: bytes) -> None:
        self._media.send_audio(pcm)

    def clear(self) -> int:
        return self._media.clear_output()

    def queued_ms(self) -> int:
        return self._media.queued_ms


def local_ip_toward(remote: str, settings: Settings) -> str:
    """The address to advertise in Contact and SDP: the configured public one, else the
    address this host uses to reach ``remote`` (no packet is sent by a UDP connect)."""
    if settings.public_ip:
        return str(settings.public_ip)
    if settings.sip_host not in ("0.0.0.0", "::", ""):
        return str(settings.sip_host)
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"
