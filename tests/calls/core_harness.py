"""A calls core on a fake clock, with SIP messages as a peer would send them."""

from __future__ import annotations

import random
from typing import Any, TypeVar

from callgate.calls import actions as act
from callgate.calls.core import CallCore
from callgate.config import Settings
from callgate.sip import events as ev
from callgate.sip.message import Request, Response, make_response, parse_message

GATE = "192.0.2.10"
PEER = ("203.0.113.5", 5062)
OFFER = ("v=0\r\no=peer 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"
         "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
A = TypeVar("A")


def settings(**overrides: Any) -> Settings:
    return Settings(project_id="proj_x", sip_port=5060, **overrides)


class Peer:
    """One caller (Call-ID ``call-1``) talking to a :class:`CallCore` at time ``now``."""

    def __init__(self, core: CallCore, *, contact: str = f"<sip:alice@{PEER[0]}:{PEER[1]}>",
                 allow: str = "INVITE, ACK, BYE, CANCEL, UPDATE") -> None:
        self.core = core
        self.contact = contact
        self.allow = allow
        self.now = 1000.0
        self.to = "<sip:proj_x@192.0.2.10>"
        self.cseq = 1
        self.branches = 0
        self.actions: list[act.Action] = []

    def request(self, method: str, *, body: str = "", cseq: int | None = None,
                extra: str = "") -> Request:
        self.branches += 1
        ctype = "Content-Type: application/sdp\r\n" if body and "v=0" in body else ""
        raw = (f"{method} sip:proj_x@{GATE} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch=z9hG4bKp{self.branches};rport\r\n"
               f"From: <sip:alice@example.org>;tag=alice1\r\nTo: {self.to}\r\n"
               f"Call-ID: call-1\r\nCSeq: {cseq or self.cseq} {method}\r\n"
               f"Contact: {self.contact}\r\nAllow: {self.allow}\r\nMax-Forwards: 70\r\n"
               f"{extra}{ctype}Content-Length: {len(body)}\r\n\r\n{body}")
        message = parse_message(raw.encode())
        assert isinstance(message, Request)
        return message

    def send(self, method: str, **kwargs: Any) -> ev.TxKey:
        request = self.request(method, **kwargs)
        key = ev.TxKey(True, method, f"z9hG4bKp{self.branches}")
        if method == "ACK":
            self.core.handle_sip(ev.AckReceived(request, PEER, "udp"), self.now)
        else:
            self.core.handle_sip(ev.RequestReceived(request, key, PEER, "udp"), self.now)
        return key

    def answer(self, sent: act.SendRequest, status: int, body: str = "") -> None:
        response = make_response(sent.request, status, body=body.encode(),
                                 content_type="application/sdp" if body else None,
                                 headers=[("Contact", self.contact)])
        self.core.handle_sip(ev.ResponseReceived(response, sent.tx_key), self.now)

    def drain(self) -> list[act.Action]:
        out: list[act.Action] = []
        while (action := self.core.next_action()) is not None:
            out.append(action)
        self.actions += out
        return out

    def advance(self, seconds: float) -> list[act.Action]:
        self.now += seconds
        deadline = self.core.get_timer()
        while deadline is not None and deadline <= self.now:
            self.core.handle_timer(self.now)
            deadline = self.core.get_timer()
        return self.drain()

    def call_up(self, *, body: str = OFFER, extra: str = "") -> str:
        """INVITE, accept, 200, ACK: an answered call; returns its id."""
        self.send("INVITE", body=body, extra=extra)
        offered = only(self.drain(), act.OfferCall)
        call_id = offered.call_id
        self.core.accept(call_id, {"type": "realtime", "model": "echo"}, self.now)
        assert self.core.answer(call_id, 30000, self.now)
        ok = only(self.drain(), act.SendResponse)
        assert ok.response.status == 200
        self.to = ok.response.headers.get("To") or ""
        self.send("ACK", body=sdp_answer() if not body else "")
        self.drain()
        return call_id


def core(**overrides: Any) -> CallCore:
    return CallCore(settings(**overrides), sent_by={"udp": (GATE, 5060), "tcp": (GATE, 5060)},
                    contact_ports={"udp": 5060, "tcp": 5060}, local_ip=lambda remote: GATE,
                    rng=random.Random(7))


def sdp_answer() -> str:
    return OFFER.replace("RTP/AVP 0 101", "RTP/AVP 0")


def only(actions: list[act.Action], kind: type[A]) -> A:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def of(actions: list[act.Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def statuses(actions: list[act.Action]) -> list[int]:
    return [a.response.status for a in actions if isinstance(a, act.SendResponse)]


def methods(actions: list[act.Action]) -> list[str]:
    return [a.request.method for a in actions if isinstance(a, act.SendRequest | act.SendAck)]


def response_to(sent: act.SendRequest, status: int) -> Response:
    return make_response(sent.request, status)
