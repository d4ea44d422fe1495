"""One phone call: its SIP identity, state, media and realtime session."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callgate.calls.session_timer import SessionTimer
from callgate.calls.state import CallState, transition
from callgate.log import event
from callgate.observe.events import CallObserver, CallStateChanged
from callgate.sip.dialog import Dialog
from callgate.sip.events import Addr, TxKey
from callgate.sip.message import Request
from callgate.sip.offer_answer import NegotiatedMedia
from callgate.sip.sdp import SessionDescription

if TYPE_CHECKING:
    from callgate.engines.base import Engine
    from callgate.media.stream import MediaStream
    from callgate.realtime.session import RealtimeSession

logger = logging.getLogger("callgate.calls")


def new_call_id() -> str:
    # Unguessable: the call id is the only handle the REST API and WebSocket need.
    return "rtc_" + secrets.token_hex(16)


@dataclass(eq=False)
class Call:
    id: str
    invite: Request
    tx_key: TxKey
    addr: Addr
    transport: str
    local_tag: str
    local_contact: str
    local_ip: str
    offer: SessionDescription | None
    state: CallState = CallState.INCOMING
    dialog: Dialog | None = None
    timer: SessionTimer | None = None
    local_sdp: SessionDescription | None = None
    sdp_version: int = 0
    negotiated: NegotiatedMedia | None = None
    media: MediaStream | None = None
    engine: Engine | None = None
    session: RealtimeSession | None = None
    accepted_config: dict[str, Any] | None = None
    refer_target: str | None = None
    refer_status: int | None = None
    end_reason: str | None = None
    handles: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    observer: CallObserver | None = None

    @property
    def sip_call_id(self) -> str:
        return self.invite.call_id

    @property
    def sdp_session_id(self) -> int:
        """o= sess-id (RFC 4566 §5.2): stable for the call, derived from its random id."""
        return int(self.id[-8:], 16)

    def move(self, new: CallState, reason: str) -> None:
        """The only place a call's state changes: checked against the table, logged."""
        old = self.state
        self.state = transition(old, new)
        if new.is_final:
            self.end_reason = reason
        event(logger, "call.state", call_id=self.id, sip_call_id=self.sip_call_id,
              old=old.value, new=new.value, reason=reason)
        if self.observer is not None:
            self.observer.call_event(CallStateChanged(self.id, old.value, new.value, reason,
                                                      time.time(), new.is_final))

    def arm(self, name: str, delay: float, callback: Any, *args: Any) -> None:
        self.disarm(name)
        self.handles[name] = asyncio.get_running_loop().call_later(delay, callback, *args)

    def disarm(self, name: str | None = None) -> None:
        names = list(self.handles) if name is None else [name]
        for key in names:
            handle = self.handles.pop(key, None)
            if handle is not None:
                handle.cancel()
