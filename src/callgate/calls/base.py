"""The plumbing every part of the calls core shares: the calls and their indexes, the queue
of actions, the deadlines, sending (with the routing rule for in-dialog requests) and the end
of a call. :class:`callgate.calls.core.CallCore` is the whole; each mixin one concern.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping

from callgate.calls import actions as act
from callgate.calls.call import Call
from callgate.calls.control import CallNotFound, CallStateConflict
from callgate.calls.progress import ENDED, FAILED, progress_event
from callgate.calls.registration import Registration, TrunkTarget
from callgate.calls.state import CallState, Trigger
from callgate.config import Settings
from callgate.log import event
from callgate.observe.events import CallObserver, CallRefused, CallSetupFailed
from callgate.sip import events as ev
from callgate.sip.dialog import DialogId, DialogSet
from callgate.sip.events import Addr
from callgate.sip.message import Headers, Request, Response, make_response, new_branch
from callgate.sip.transaction import client_key

logger = logging.getLogger("callgate.calls")

ENDED_MEMORY = 10_000  # ended calls remembered for idempotent replays of the verbs


class CoreBase:
    """``sent_by`` is the SIP endpoint's Via address per transport (shared, filled once the
    listeners are bound); ``contact_ports`` our SIP ports; ``local_ip(remote)`` the address
    to advertise towards ``remote``. Besides a dialog's own peer, in-dialog requests may go to
    the configured trunks' hosts (``trusted_hosts``)."""

    def __init__(self, settings: Settings, *, sent_by: Mapping[str, Addr],
                 contact_ports: Mapping[str, int], local_ip: Callable[[str], str],
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.sent_by = sent_by
        self.contact_ports = contact_ports
        self.local_ip = local_ip
        self.trusted_hosts = {TrunkTarget.of(trunk).host.lower()
                              for trunk in settings.trunks.values()}
        self.registrations: dict[str, Registration] = {}
        self._trunk_pending: dict[ev.TxKey, tuple[Registration, str]] = {}
        self._nonces: OrderedDict[str, None] = OrderedDict()  # ours, for inbound challenges
        self._now = 0.0  # the latest input's time: stamps the events a release sends
        self._cancelled: dict[ev.TxKey, Call] = {}  # our cancelled INVITEs, until they end
        self.rng = rng or random.Random()
        # Metrics, records and the console (callgate.observe): told of every call's states.
        self.observer: CallObserver | None = None
        self.draining = False  # on SIGTERM in a cluster: calls go on, new ones are refused
        self.calls: dict[str, Call] = {}
        self.dialogs = DialogSet()
        self.ended: OrderedDict[str, CallState] = OrderedDict()
        self._by_dialog: dict[DialogId, Call] = {}
        self._by_invite: dict[ev.TxKey, Call] = {}
        self._pending: dict[ev.TxKey, tuple[Call, Request]] = {}
        self._actions: deque[act.Action] = deque()
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    # -- outputs ------------------------------------------------------------------------------

    def next_action(self) -> act.Action | None:
        return self._actions.popleft() if self._actions else None

    def _call_timer(self) -> float | None:
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _live(self, entry: tuple[float, int, str, str]) -> bool:
        call = self.calls.get(entry[2])
        return call is not None and call.deadlines.get(entry[3]) == entry[0]

    def _arm(self, call: Call, name: str, when: float) -> None:
        call.deadlines[name] = when
        heapq.heappush(self._heap, (when, next(self._seq), call.id, name))

    def _emit(self, action: act.Action) -> None:
        self._actions.append(action)

    # -- bookkeeping ----------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self.calls)

    def lookup(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            if call_id in self.ended:
                raise CallStateConflict(f"Call {call_id} has already "
                                        f"{self.ended[call_id].value.replace('_', ' ')}.")
            raise CallNotFound(f"No call found with id {call_id}.", param="call_id")
        return call

    def _release(self, call: Call) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        self.ended[call.id] = call.state
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)
        if call.dialog is not None:
            call.dialog.terminate()
            self.dialogs.remove(call.dialog)
            self._by_dialog.pop(call.dialog.id, None)
        self._by_invite.pop(call.tx_key, None)
        for key in [k for k, (c, _) in self._pending.items() if c is call]:
            del self._pending[key]
        if call.direction == "outbound":
            self._emit(act.Notify(call.id, progress_event(
                ENDED, call.id, self._now, reason=call.end_reason)
                if call.extra.get("answered") else progress_event(
                FAILED, call.id, self._now, sip_status=call.extra.get("sip_status"),
                reason=call.end_reason)))
        self._emit(act.Release(call.id, call.state, call.end_reason or "ended"))

    # -- the end of a call ----------------------------------------------------------------------

    def end(self, call: Call, reason: str, now: float, *, send_bye: bool,
            headers: list[tuple[str, str]] | None = None) -> None:
        """End an answered call (BYE unless the peer already said goodbye)."""
        if call.state.is_final or call.id not in self.calls:
            return
        if call.state.is_early:
            self._end_early(call, reason)
            return
        if send_bye and call.dialog is not None:
            self._send_in_dialog(call, "BYE", headers=headers)
        call.move(Trigger.END, reason)
        self._release(call)

    def _end_early(self, call: Call, reason: str) -> None:
        self._finish_early(call, 603, Trigger.REJECT, reason)

    def _finish_early(self, call: Call, status: int, trigger: Trigger, reason: str,
                      headers: list[tuple[str, str]] | None = None) -> None:
        """Answer our pending INVITE server transaction with ``status`` and forget the call."""
        response = make_response(call.invite, status, to_tag=call.local_tag,
                                 headers=headers or [])
        self._respond(call.tx_key, response)
        call.move(trigger, reason)
        if self.observer is not None:
            self.observer.call_event(CallSetupFailed(call.id, status, reason))
        self._release(call)

    def _refused(self, status: int, reason: str) -> None:
        """An INVITE turned away before it became a call; ``reason`` is a metric label."""
        if self.observer is not None:
            self.observer.call_event(CallRefused(status, reason))

    # -- sending --------------------------------------------------------------------------------

    def _stamp(self, message: Request | Response) -> None:
        header = "Server" if isinstance(message, Response) else "User-Agent"
        if header not in message.headers:
            message.headers.add(header, self.settings.user_agent)

    def _respond(self, tx_key: ev.TxKey, response: Response) -> None:
        self._stamp(response)
        self._emit(act.SendResponse(tx_key, response))

    def _reply(self, rx: ev.RequestReceived, response: Response) -> None:
        self._respond(rx.tx_key, response)

    def _send_in_dialog(self, call: Call, method: str, *, body: bytes = b"",
                        content_type: str | None = None,
                        headers: list[tuple[str, str]] | None = None) -> None:
        assert call.dialog is not None
        request = call.dialog.create_request(method, body=body, content_type=content_type,
                                             headers=headers)
        if body and method in ("INVITE", "UPDATE"):
            call.offering = True
        self._send(call, request, *self._next_hop(call))

    def _send(self, call: Call, request: Request, addr: Addr, transport: str) -> None:
        if request.method == "ACK":
            self._stamp(request)
            self._emit(act.SendAck(call.id, request, addr, transport))
            return
        self._pending[self._transmit(request, addr, transport, call.id)] = (call, request)

    def _transmit(self, request: Request, addr: Addr, transport: str, owner: str) -> ev.TxKey:
        """Send a request in a new client transaction; returns its key."""
        self._stamp(request)
        # The Via is ours to write so that the transaction key is known before it is sent.
        host, port = self.sent_by.get(transport) or next(iter(self.sent_by.values()),
                                                          ("0.0.0.0", 0))
        branch = new_branch()
        host = f"[{host}]" if ":" in host else host
        request.headers = Headers([("Via", f"SIP/2.0/{transport.upper()} {host}:{port}"
                                           f";branch={branch};rport"), *request.headers])
        key = client_key(branch, request.method)
        self._emit(act.SendRequest(owner, request, addr, transport, key))
        return key

    def _next_hop(self, call: Call) -> tuple[Addr, str]:
        """Where an in-dialog request goes. Over the transport and to the address the dialog
        was established on, unless its route names that same host or a trusted one (a
        trunk): a Contact or Record-Route must not make us connect to an arbitrary host."""
        assert call.dialog is not None
        try:
            host, port, transport = call.dialog.next_hop()
        except ValueError:
            return call.addr, call.transport
        if transport == call.transport != "udp":
            # Reuse the established connection rather than opening one towards a Contact,
            # which is often unreachable behind NAT (the reasoning of RFC 5923).
            return call.addr, transport
        bare = host.strip("[]").lower()
        if bare != call.addr[0].lower() and bare not in self.trusted_hosts:
            if (bare, port) != (call.addr[0], call.addr[1]):
                event(logger, "sip.next_hop_refused", logging.INFO, call_id=call.id,
                      host=host, used=f"{call.addr[0]}:{call.addr[1]}")
            return call.addr, call.transport
        return (bare, port or (5061 if transport == "tls" else 5060)), transport

    # -- answered calls -------------------------------------------------------------------------

    def _media_up(self, call: Call, now: float) -> None:
        """The call is confirmed both ways: media may flow, and its silence is watched."""
        if call.negotiated is not None:
            self._emit(act.ConfigureMedia(call.id, call.negotiated))
        if self.settings.media_timeout > 0:
            self._arm(call, "media", now + self.settings.media_timeout)

    def _answered(self, call: Call, now: float) -> None:
        self.arm_session_timer(call, now)
        if self.settings.max_call_seconds > 0:
            self._arm(call, "max", now + self.settings.max_call_seconds)

    def arm_session_timer(self, call: Call, now: float) -> None:
        if call.timer is not None:
            self._arm(call, "session", call.timer.next_deadline(now))
