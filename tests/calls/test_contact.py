"""The Contact callgate puts in its answers (RFC 3261 §12.1.1, §19.1.4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from callgate.calls.signalling import Signalling

GATE = SimpleNamespace(contact_ports={"udp": 5060, "tcp": 5060, "tls": 5061},
                       settings=SimpleNamespace(sip_port=5060, project_id="proj_x"))


@pytest.mark.parametrize(("transport", "secure", "contact"), [
    ("udp", False, "<sip:proj_x@192.0.2.7:5060>"),
    ("tcp", False, "<sip:proj_x@192.0.2.7:5060;transport=tcp>"),
    # A trunk dialling sip:…;transport=tls (OpenAI's form) gets a sip: Contact: a sips: one
    # would oblige it to reach us over TLS end to end, which phones such as baresip refuse.
    ("tls", False, "<sip:proj_x@192.0.2.7:5061;transport=tls>"),
    ("tls", True, "<sips:proj_x@192.0.2.7:5061;transport=tls>"),
])
def test_contact(transport: str, secure: bool, contact: str) -> None:
    assert Signalling._contact(GATE, "192.0.2.7", transport, secure=secure) == contact  # type: ignore[arg-type]


def test_ipv6_contact_is_bracketed() -> None:
    assert Signalling._contact(GATE, "2001:db8::7", "udp", secure=False) == (  # type: ignore[arg-type]
        "<sip:proj_x@[2001:db8::7]:5060>")
