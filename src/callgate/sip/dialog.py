"""SIP dialogs (RFC 3261 §12): identity, CSeq bookkeeping, remote target and route set.

A :class:`Dialog` is plain state: it builds in-dialog requests (§12.2.1.1) and checks incoming
ones (§12.2.2); it sends nothing. :class:`DialogSet` finds the dialog a message belongs to.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass, field

from callgate.log import event as log_event
from callgate.sip.message import (
    AbsoluteUri,
    Headers,
    Request,
    Response,
    SipParseError,
    SipUri,
    parse_uri,
)

logger = logging.getLogger(__name__)

#: Requests that replace the remote target (§12.2: "target refresh requests"; RFC 3311 UPDATE).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})
#: Requests that carry our Contact (§8.1.1.8; RFC 3515 REFER, RFC 6665 NOTIFY/SUBSCRIBE).
WITH_CONTACT = frozenset({"INVITE", "UPDATE", "REFER", "NOTIFY", "SUBSCRIBE"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID + local tag + remote tag."""

    call_id: str
    local_tag: str
    remote_tag: str


@dataclass
class Dialog:
    """One dialog. ``local_party``/``remote_party`` are the From/To header values (tags included)
    we send; ``route_set`` holds Route values in the order they go on requests."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str
    remote_party: str
    remote_target: SipUri | AbsoluteUri
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    secure: bool = False
    local_contact: str | None = None
    state: DialogState = DialogState.CONFIRMED

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def from_uas(cls, request: Request, response: Response, *, transport: str,
                 local_contact: str | None = None, local_seq: int = 0) -> Dialog:
        """The dialog a UAS forms by answering ``request`` with ``response`` (§12.1.1).

        The route set is the request's Record-Route in order; the remote target is its Contact
        (the From URI if it has none). ``transport`` is the one the request arrived on.
        ``response`` (1xx with a To tag → early, 2xx → confirmed) supplies our tag.
        """
        local_tag = response.to.tag
        if not local_tag:
            raise ValueError("a dialog-forming response needs a To tag (§12.1.1)")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_party=response.headers.get("To") or "",
            remote_party=request.headers.get("From") or "",
            remote_target=_contact_uri(request, request.from_.uri),
            route_set=request.headers.get_all("Record-Route"),
            local_seq=local_seq,
            remote_seq=request.cseq.seq,
            secure=transport.lower() == "tls" and request.uri.scheme == "sips",
            local_contact=local_contact,
            state=_state_for(response.status),
        )

    @classmethod
    def from_uac(cls, request: Request, response: Response, *, transport: str,
                 local_contact: str | None = None) -> Dialog:
        """The dialog a UAC forms from a 1xx-with-tag or 2xx response (§12.1.2).

        The route set is the response's Record-Route reversed; the remote target its Contact.
        """
        remote_tag = response.to.tag
        if not remote_tag:
            raise ValueError("a dialog-forming response needs a To tag (§12.1.2)")
        return cls(
            call_id=request.call_id,
            local_tag=request.from_.tag or "",
            remote_tag=remote_tag,
            local_party=request.headers.get("From") or "",
            remote_party=response.headers.get("To") or "",
            remote_target=_contact_uri(response, response.to.uri),
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=request.cseq.seq,
            secure=transport.lower() == "tls" and request.uri.scheme == "sips",
            local_contact=local_contact,
            state=_state_for(response.status),
        )

    # -- sending -------------------------------------------------------------------------------

    def create_request(self, method: str, *, body: bytes = b"", content_type: str | None = None,
                       headers: list[tuple[str, str]] | None = None) -> Request:
        """A new in-dialog request (§12.2.1.1): CSeq incremented, routed by the route set.

        With a loose first route (``;lr``) the Request-URI is the remote target and Route the
        whole set; with a strict one (§12.2.1.1, §16.12 "strict routing") the Request-URI is that
        route's URI and the remote target goes last in Route. No Via: the endpoint adds it.
        """
        if self.state is DialogState.TERMINATED:
            raise ValueError("dialog is terminated")
        if method in ("ACK", "CANCEL"):
            raise ValueError("ACK/CANCEL reuse a CSeq; use create_ack (CANCEL: §9.1)")
        self.local_seq += 1
        return self._build(method, self.local_seq, body, content_type, headers or [])

    def create_ack(self, invite_cseq: int, *, body: bytes = b"",
                   content_type: str | None = None) -> Request:
        """The ACK for a 2xx to our INVITE with CSeq ``invite_cseq`` (§13.2.2.4)."""
        return self._build("ACK", invite_cseq, body, content_type, [])

    def next_hop(self) -> tuple[str, int | None, str]:
        """Where to send in-dialog requests: ``(host, port or None, transport)`` (RFC 3263
        resolution of a host name, and the default port, are left to the caller)."""
        target = self.remote_target
        if self.route_set:
            target = parse_uri(_strip_name_addr(self.route_set[0]))
        if not isinstance(target, SipUri):
            raise ValueError(f"cannot route to {target}")
        param = target.params.get("transport")
        if target.scheme == "sips" or self.secure:
            transport = "tls"
        elif param:
            transport = param.lower()
        else:
            transport = "udp"
        host = target.params.get("maddr") or target.host
        return host, target.port, transport

    def _build(self, method: str, seq: int, body: bytes, content_type: str | None,
               extra: list[tuple[str, str]]) -> Request:
        uri = self.remote_target
        routes = list(self.route_set)
        first = parse_uri(_strip_name_addr(routes[0])) if routes else None
        if isinstance(first, SipUri) and "lr" not in first.params:
            # Strict routing (§12.2.1.1): the first route becomes the Request-URI (minus what
            # a Request-URI may not carry, §19.1.1) and the remote target goes last in Route.
            routes.pop(0)
            first.headers.clear()
            first.params.pop("method", None)
            uri = first
            routes.append(f"<{self.remote_target}>")
        items: list[tuple[str, str]] = [("Route", route) for route in routes]
        items += [
            ("Max-Forwards", "70"),
            ("From", self.local_party),
            ("To", self.remote_party),
            ("Call-ID", self.call_id),
            ("CSeq", f"{seq} {method}"),
        ]
        if self.local_contact and method in WITH_CONTACT:
            items.append(("Contact", self.local_contact))
        items += extra
        if body and content_type:
            items.append(("Content-Type", content_type))
        return Request(method, uri, Headers(items), body)

    # -- receiving -----------------------------------------------------------------------------

    def receive_request(self, request: Request) -> int | None:
        """Check an in-dialog request (§12.2.2); returns the error status to send, else None.

        A CSeq lower than the last one seen is out of order: 500. A target refresh request
        replaces the remote target with its Contact.
        """
        if request.method not in ("ACK", "CANCEL"):
            seq = request.cseq.seq
            if self.remote_seq is not None and seq < self.remote_seq:
                log_event(logger, "sip.dialog_cseq_out_of_order", logging.INFO,
                          call_id=self.call_id, cseq=seq, last=self.remote_seq)
                return 500
            self.remote_seq = seq
        if request.method in TARGET_REFRESH:
            self._refresh_target(request)
        return None

    def receive_response(self, request: Request, response: Response) -> None:
        """Update the dialog from a response to our in-dialog ``request`` (§12.2.1.2)."""
        if 200 <= response.status < 300 and request.method in TARGET_REFRESH:
            self._refresh_target(response)

    def confirm(self, response: Response | None = None) -> None:
        """Early → confirmed; as UAC the 2xx recomputes the route set (§13.2.2.4)."""
        if self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED
            if response is not None:
                self.route_set = list(reversed(response.headers.get_all("Record-Route")))
                self._refresh_target(response)

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    def _refresh_target(self, message: Request | Response) -> None:
        # A refresh without a usable Contact keeps the old target.
        with contextlib.suppress(ValueError):
            self.remote_target = _contact_uri(message)


class DialogSet:
    """Dialogs by (Call-ID, local tag, remote tag), with lookups for either direction."""

    def __init__(self) -> None:
        self._dialogs: dict[DialogId, Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def add(self, dialog: Dialog) -> None:
        self._dialogs[dialog.id] = dialog

    def remove(self, dialog: Dialog) -> None:
        if self._dialogs.get(dialog.id) is dialog:
            del self._dialogs[dialog.id]

    def get(self, call_id: str, local_tag: str, remote_tag: str) -> Dialog | None:
        return self._dialogs.get(DialogId(call_id, local_tag, remote_tag))

    def for_request(self, request: Request) -> Dialog | None:
        """The dialog of an incoming request: our tag is in To, theirs in From (§12.2.2)."""
        return self.get(request.call_id, request.to.tag or "", request.from_.tag or "")

    def for_response(self, response: Response) -> Dialog | None:
        """The dialog of a response to our request: our tag is in From, theirs in To."""
        return self.get(response.call_id, response.from_.tag or "", response.to.tag or "")


def _state_for(status: int) -> DialogState:
    return DialogState.EARLY if status < 200 else DialogState.CONFIRMED


def _contact_uri(message: Request | Response,
                 fallback: SipUri | AbsoluteUri | None = None) -> SipUri | AbsoluteUri:
    """The first Contact URI; else ``fallback`` (RFC 2543 peers may send no Contact, and
    requests then go to the From/To address), else ValueError."""
    try:
        contacts = message.contacts
    except SipParseError as exc:
        raise ValueError(f"bad Contact: {exc.reason}") from exc
    if contacts:
        return contacts[0].uri
    if fallback is not None:
        return fallback
    raise ValueError("no Contact header")


def _strip_name_addr(value: str) -> str:
    """The URI inside a Route/Record-Route value ``[display] <uri>;params`` (§20.30)."""
    start, end = value.find("<"), value.rfind(">")
    if start < 0 or end < start:
        return value.strip()
    return value[start + 1:end]

