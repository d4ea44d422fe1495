"""Trunks in the calls core: who may call in (admission), and the REGISTER bindings and NAT
keep-alives of the trunks that want them.

Admission, per new INVITE: with no trunk configured anyone may call (today's open gateway,
with a warning at start). Otherwise a call is a trunk's when its source address is in the
trunk's ``inbound_cidrs``, when it arrives over the trunk's registration binding (the
Request-URI names the unguessable Contact user we registered), or when it answers a digest
challenge with a trunk's credentials (``inbound_challenge``). Anything else gets 403.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets

from callgate.calls import actions as act
from callgate.calls.base import CoreBase
from callgate.calls.registration import Registration, TrunkTarget
from callgate.calls.screening import refuse
from callgate.log import event
from callgate.sip import events as ev
from callgate.sip.digest import challenge_header, verify
from callgate.sip.message import Headers, Request, new_tag

logger = logging.getLogger("callgate.trunks")

REALM = "callgate"
NONCE_MEMORY = 1000


class Trunking(CoreBase):
    def start_trunks(self, now: float) -> None:
        """Begin registering (the listeners are bound, so our Via and Contact are known)."""
        trunks = self.settings.trunks
        if not trunks:
            event(logger, "trunks.open_admission", logging.WARNING,
                  note="no trunks configured: any caller that reaches the SIP port is admitted")
        for name, trunk in trunks.items():
            if not trunk.registers:
                continue
            target = TrunkTarget.of(trunk)
            local = self.sent_by.get(target.transport)
            if local is None:
                event(logger, "trunk.no_transport", logging.ERROR, trunk=name,
                      transport=target.transport)
                continue
            self.registrations[name] = Registration(name, trunk, local=local,
                                                    user_agent=self.settings.user_agent)

    @property
    def contact_users(self) -> set[str]:
        return {reg.contact_user for reg in self.registrations.values()}

    def trunk_deadline(self) -> float | None:
        times = [t for reg in self.registrations.values() if (t := reg.deadline()) is not None]
        return min(times) if times else None

    def trunk_timers(self, now: float) -> None:
        for reg in self.registrations.values():
            if reg.due is not None and reg.due <= now:
                self._register(reg, reg.request(now))
            if reg.keepalive_at is not None and reg.keepalive_at <= now:
                self._keepalive(reg, now)

    def _register(self, reg: Registration, request: Request) -> None:
        target = reg.target
        key = self._transmit(request, (target.host, target.port), target.transport,
                             f"trunk:{reg.name}")
        self._trunk_pending[key] = (reg, "register")

    def _keepalive(self, reg: Registration, now: float) -> None:
        target = reg.target
        reg.keepalive_sent(now)
        if target.transport != "udp":
            self._emit(act.SendKeepalive((target.host, target.port), target.transport))
            return
        # On UDP an OPTIONS both refreshes the NAT binding and, through the received/rport
        # of its answer, tells us whether our public address moved.
        aor = f"<sip:{reg.trunk.username or 'callgate'}@{reg.domain}>"
        request = Request("OPTIONS", target.uri, Headers([
            ("From", f"{aor};tag={new_tag()}"), ("To", aor),
            ("Call-ID", secrets.token_hex(16)), ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70")]), b"")
        key = self._transmit(request, (target.host, target.port), target.transport,
                             f"trunk:{reg.name}")
        self._trunk_pending[key] = (reg, "keepalive")

    def trunk_response(self, rx: ev.ResponseReceived, now: float) -> bool:
        """A response to a trunk's REGISTER or keep-alive (True: it was one)."""
        entry = self._trunk_pending.get(rx.tx_key)
        if entry is None:
            return False
        if rx.response.status < 200:
            return True
        del self._trunk_pending[rx.tx_key]
        reg, kind = entry
        again = (reg.on_response(rx.response, now) if kind == "register"
                 else reg.on_keepalive_answer(rx.response, now))
        if again is not None:
            self._register(reg, again)
        return True

    def trunk_timeout(self, timeout: ev.TransactionTimeout, now: float) -> bool:
        entry = self._trunk_pending.pop(timeout.tx_key, None)
        if entry is None:
            return False
        reg, kind = entry
        if kind == "register":
            reg.on_failure(now, f"no answer (timer {timeout.timer})")
        return True

    # -- admission ------------------------------------------------------------------------------

    def admit(self, rx: ev.RequestReceived) -> str | None:
        """The trunk a new INVITE belongs to ("" with no trunks configured), or None when it
        was refused (the answer, 403 or a 401 challenge, is already queued)."""
        trunks = self.settings.trunks
        if not trunks:
            return ""
        request = rx.request
        try:
            source = ipaddress.ip_address(rx.addr[0])
        except ValueError:
            source = None
        for name, trunk in trunks.items():
            if source is not None and any(source in ipaddress.ip_network(cidr, strict=False)
                                          for cidr in trunk.inbound_cidrs):
                return name
        for name, reg in self.registrations.items():
            if getattr(request.uri, "user", None) == reg.contact_user:
                return name
        challengers = {name: t for name, t in trunks.items() if t.inbound_challenge}
        credential = request.headers.get("Authorization")
        if credential is not None:
            for name, trunk in challengers.items():
                assert trunk.username is not None and trunk.password is not None
                if verify(credential, method="INVITE", realm=REALM, username=trunk.username,
                          password=trunk.password, nonces=set(self._nonces)):
                    return name
        if challengers:
            nonce = secrets.token_hex(16)
            self._nonces[nonce] = None
            while len(self._nonces) > NONCE_MEMORY:
                self._nonces.popitem(last=False)
            self._reply(rx, refuse(request, 401, "Unauthorized", [
                ("WWW-Authenticate", challenge_header(REALM, nonce))]))
            event(logger, "call.challenged", sip_call_id=request.call_id,
                  peer=f"{rx.addr[0]}:{rx.addr[1]}", retried=credential is not None)
            return None
        self._reply(rx, refuse(request, 403, "Forbidden"))
        event(logger, "call.refused_source", logging.WARNING, sip_call_id=request.call_id,
              peer=f"{rx.addr[0]}:{rx.addr[1]}")
        return None
