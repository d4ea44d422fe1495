"""A trunk's REGISTER binding (RFC 3261 §10.2), sans-IO: requests out, responses in, ``now``.

Refreshes before the granted expiry, answers 401/407 digest challenges (once per nonce),
backs off exponentially on failure (honouring Retry-After), follows 423 Min-Expires, and keeps
the NAT binding open: CRLF on TCP/TLS (RFC 5626 §3.5.1), OPTIONS on UDP. When the registrar
or a keep-alive answer shows a new public address (``received``/``rport``, RFC 3581) the
Contact is rewritten to it and the binding renewed, so calls routed over it reach us.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from callgate.config import Trunk
from callgate.log import event
from callgate.sip.digest import authorization, choose_challenge
from callgate.sip.events import Addr
from callgate.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    SipUri,
    new_tag,
    parse_uri,
)

logger = logging.getLogger("callgate.trunks")

RETRY_FIRST = 5.0      # seconds before the first retry after a failure
RETRY_CAP = 300.0      # longest wait between attempts


@dataclass(frozen=True, slots=True)
class TrunkTarget:
    uri: SipUri
    host: str
    port: int
    transport: str

    @classmethod
    def of(cls, trunk: Trunk) -> TrunkTarget:
        uri = parse_uri(trunk.address)
        assert isinstance(uri, SipUri)  # config checked the scheme
        transport = "tls" if uri.scheme == "sips" else (uri.transport or "udp")
        return cls(uri, uri.host, uri.port or (5061 if transport == "tls" else 5060), transport)


class Registration:
    """One trunk's binding. ``local`` is our (host, port) on the trunk's transport, as first
    advertised; ``contact_user`` the user part of our Contact, which identifies calls
    delivered over this binding. ``next_request(now)`` and ``keepalive_due`` say what to send;
    ``on_response``/``on_failure`` feed back what happened."""

    def __init__(self, name: str, trunk: Trunk, *, local: Addr, contact_user: str | None = None,
                 user_agent: str = "callgate") -> None:
        self.name = name
        self.trunk = trunk
        self.target = TrunkTarget.of(trunk)
        self.domain = trunk.domain or self.target.host
        self.public: Addr = local
        self.contact_user = contact_user or "cg" + secrets.token_hex(8)
        self.user_agent = user_agent
        self.call_id = secrets.token_hex(16) + "@callgate"
        self.from_tag = new_tag()
        self.cseq = 0
        self.state = "unregistered"
        self.expires = trunk.expires
        self.granted = 0
        self.failures = 0
        self.answered_nonces: set[str] = set()
        self.due: float | None = 0.0            # when to (re-)REGISTER; None: one is in flight
        self.keepalive_at: float | None = None
        self.in_flight: Request | None = None

    @property
    def contact(self) -> str:
        host, port = self.public
        host = f"[{host}]" if ":" in host else host
        param = "" if self.target.transport == "udp" else f";transport={self.target.transport}"
        return f"<sip:{self.contact_user}@{host}:{port}{param}>"

    def deadline(self) -> float | None:
        times = [t for t in (self.due, self.keepalive_at) if t is not None]
        return min(times) if times else None

    def request(self, now: float, *, expires: int | None = None,
                challenge: Response | None = None) -> Request:
        """A REGISTER (a refresh, or ``expires=0`` to remove the binding)."""
        self.cseq += 1
        aor = f"sip:{self.trunk.username}@{self.domain}"
        uri = SipUri(scheme=self.target.uri.scheme, host=self.target.host,
                     port=self.target.uri.port, params=dict(self.target.uri.params))
        headers = Headers([
            ("From", f"<{aor}>;tag={self.from_tag}"), ("To", f"<{aor}>"),
            ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", self.contact), ("Expires", str(self.expires if expires is None
                                                      else expires)),
            ("User-Agent", self.user_agent), ("Max-Forwards", "70")])
        request = Request("REGISTER", uri, headers, b"")
        if challenge is None:
            self.answered_nonces.clear()  # a new attempt: each nonce may be answered once
        else:
            chosen = choose_challenge(challenge)
            assert chosen is not None and self.trunk.username and self.trunk.password
            headers.add(chosen.answer_header, authorization(
                chosen, method="REGISTER", uri=str(uri), username=self.trunk.username,
                password=self.trunk.password))
        self.in_flight = request
        self.due = None
        return request

    def on_response(self, response: Response, now: float) -> Request | None:
        """A final response to our REGISTER; returns the next REGISTER to send at once."""
        status = response.status
        self.in_flight = None
        if status in (401, 407):
            chosen = choose_challenge(response)
            usable = (chosen is not None and self.trunk.password is not None
                      and (self.trunk.realm is None or chosen.realm == self.trunk.realm)
                      and (chosen.stale or chosen.nonce not in self.answered_nonces))
            if usable and chosen is not None:
                self.answered_nonces = {chosen.nonce}
                return self.request(now, challenge=response)
            self._fail(now, status, "credentials refused" if chosen else "no usable challenge")
            return None
        if status == 423:
            min_expires = response.headers.get("Min-Expires") or ""
            if min_expires.isdigit() and int(min_expires) > self.expires:
                self.expires = int(min_expires)
                return self.request(now)
        if 200 <= status < 300:
            self._registered(response, now)
            moved = self._learn_public(response)
            return self.request(now) if moved else None
        retry = response.headers.get("Retry-After") or ""
        self._fail(now, status, response.reason,
                   float(retry.split(";")[0]) if retry.split(";")[0].strip().isdigit() else None)
        return None

    def on_failure(self, now: float, reason: str) -> None:
        self.in_flight = None
        self._fail(now, 408, reason)

    def on_keepalive_answer(self, response: Response, now: float) -> Request | None:
        """An answer to our OPTIONS keep-alive: re-register if our public address moved."""
        if self._learn_public(response) and self.in_flight is None:
            return self.request(now)
        return None

    def keepalive_sent(self, now: float) -> None:
        self.keepalive_at = now + self.trunk.keepalive if self.trunk.keepalive > 0 else None

    def _registered(self, response: Response, now: float) -> None:
        granted = self.expires
        mine = self.contact_user + "@"
        try:
            contacts = response.contacts
        except SipParseError:
            contacts = []  # a registrar's garbled Contact: its Expires, or what we asked
        for item in contacts:
            if mine in str(item.uri) and (item.params.get("expires") or "").isdigit():
                granted = int(item.params["expires"] or 0)
        header = response.headers.get("Expires") or ""
        if granted == self.expires and header.isdigit():
            granted = int(header)
        self.granted, self.failures = granted, 0
        # Refresh with a margin: at 90% of the time granted, never later than 5 s before.
        self.due = now + max(granted / 2, min(granted * 0.9, granted - 5))
        if self.keepalive_at is None:
            self.keepalive_sent(now)
        if self.state != "registered":
            event(logger, "trunk.registered", trunk=self.name, expires=granted,
                  contact=self.contact)
        self.state = "registered"

    def _learn_public(self, response: Response) -> bool:
        vias = response.vias
        if not vias:
            return False
        received = vias[0].params.get("received")
        rport = vias[0].params.get("rport")
        if not received and not rport:
            return False
        public = (received or self.public[0],
                  int(rport) if rport and rport.isdigit() else self.public[1])
        if public == self.public:
            return False
        event(logger, "trunk.public_address", trunk=self.name,
              old=f"{self.public[0]}:{self.public[1]}", new=f"{public[0]}:{public[1]}")
        self.public = public
        return True

    def _fail(self, now: float, status: int, reason: str | None,
              retry_after: float | None = None) -> None:
        self.failures += 1
        wait = min(RETRY_CAP, RETRY_FIRST * 2 ** (self.failures - 1))
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_CAP * 4))
        self.due = now + wait
        self.state = "failed"
        event(logger, "trunk.registration_failed", logging.WARNING, trunk=self.name,
              status=status, reason=reason, retry_in=round(wait, 1), failures=self.failures)
