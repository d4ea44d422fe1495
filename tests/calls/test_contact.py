"""The Contact callgate puts in its answers (RFC 3261 §12.1.1, §19.1.4)."""

from __future__ import annotations

import pytest

from callgate.calls.screening import contact


@pytest.mark.parametrize(("transport", "port", "secure", "expected"), [
    ("udp", 5060, False, "<sip:proj_x@192.0.2.7:5060>"),
    ("tcp", 5060, False, "<sip:proj_x@192.0.2.7:5060;transport=tcp>"),
    # A trunk dialling sip:…;transport=tls (OpenAI's form) gets a sip: Contact: a sips: one
    # would oblige it to reach us over TLS end to end, which phones such as baresip refuse.
    ("tls", 5061, False, "<sip:proj_x@192.0.2.7:5061;transport=tls>"),
    ("tls", 5061, True, "<sips:proj_x@192.0.2.7:5061;transport=tls>"),
])
def test_contact(transport: str, port: int, secure: bool, expected: str) -> None:
    assert contact("proj_x", "192.0.2.7", port, transport, secure=secure) == expected


def test_ipv6_contact_is_bracketed() -> None:
    assert contact("proj_x", "2001:db8::7", 5060, "udp", secure=False) == (
        "<sip:proj_x@[2001:db8::7]:5060>")
