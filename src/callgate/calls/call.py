"""One phone call as the calls core sees it: SIP identity, state, SDP and deadlines.

Plain data with no I/O: the media stream, engine and realtime session a call uses belong to
the shell (:mod:`callgate.calls.shell`), keyed by the same id.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from callgate.calls.session_timer import SessionTimer
from callgate.calls.state import CallState, Trigger, transition
from callgate.log import event
from callgate.media.offer_answer import NegotiatedMedia
from callgate.observe.events import CallObserver, CallStateChanged
from callgate.sip.dialog import Dialog
from callgate.sip.events import Addr, TxKey
from callgate.sip.message import Request
from callgate.sip.sdp import SessionDescription

logger = logging.getLogger("callgate.calls")

Direction = Literal["inbound", "outbound"]


def new_call_id() -> str:
    # Unguessable: the call id is the only handle the REST API and WebSocket need.
    return "rtc_" + secrets.token_hex(16)


@dataclass(eq=False)
class Call:
    """``addr``/``transport`` are where the dialog was established: the INVITE's source
    (received/rport) inbound, the next hop we sent it to outbound. In-dialog requests go there
    unless the route names the same host or a trusted one."""

    id: str
    direction: Direction
    invite: Request
    tx_key: TxKey
    addr: Addr
    transport: str
    local_tag: str
    local_contact: str
    local_ip: str
    offer: SessionDescription | None = None     # the peer's offer, when it made one
    state: CallState = CallState.RINGING
    dialog: Dialog | None = None
    timer: SessionTimer | None = None
    local_sdp: SessionDescription | None = None
    sdp_version: int = 0
    negotiated: NegotiatedMedia | None = None
    local_port: int = 0
    config: dict[str, Any] | None = None        # the accepted (or dialled) session config
    offering: bool = False                      # our offer is out, its answer not yet in
    refer_target: str | None = None
    end_reason: str | None = None
    media_seen: int = -1                        # RTP packets counted at the last check
    deadlines: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # direction-specific facts
    observer: CallObserver | None = None  # metrics, records, console (callgate.observe)

    @property
    def sip_call_id(self) -> str:
        return self.invite.call_id

    @property
    def sdp_session_id(self) -> int:
        """o= sess-id (RFC 4566 §5.2): stable for the call, derived from its random id."""
        return int(self.id[-8:], 16)

    def move(self, trigger: Trigger, reason: str) -> CallState:
        """The only place a call's state changes: checked against the table, logged."""
        old = self.state
        self.state = transition(old, trigger)
        if self.state.is_final:
            self.end_reason = reason
            self.deadlines.clear()
        event(logger, "call.state", call_id=self.id, sip_call_id=self.sip_call_id,
              direction=self.direction, old=old.value, trigger=trigger.value,
              new=self.state.value, reason=reason)
        if self.observer is not None:
            self.observer.call_event(CallStateChanged(self.id, old.value, self.state.value,
                                                      reason, time.time(),
                                                      self.state.is_final))
        return self.state
