"""StreamFramer: SIP over TCP/TLS framed by Content-Length (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

import random

import pytest

from callgate.sip.message import SipParseError, StreamFramer, parse_message
from tests.conftest import SHARED


def message(n: int, body: bytes = b"") -> bytes:
    return (f"OPTIONS sip:gw.example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}\r\n"
            f"From: <sip:a@example.com>;tag={n}\r\nTo: <sip:gw.example.com>\r\n"
            f"Call-ID: call-{n}\r\nCSeq: {n} OPTIONS\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_several_messages_in_one_segment() -> None:
    msgs = [message(1), message(2, b"hello\r\n\r\nworld"), message(3, b"\x00" * 10)]
    framer = StreamFramer()
    assert framer.feed(b"".join(msgs)) == msgs
    assert framer.feed(b"") == []


def test_messages_split_at_every_byte() -> None:
    msgs = [message(1, b"a body with CRLFCRLF\r\n\r\ninside"), message(2)]
    framer = StreamFramer()
    out: list[bytes] = []
    for byte in b"".join(msgs):
        out += framer.feed(bytes([byte]))
    assert out == msgs


def test_random_segmentation_of_real_invites() -> None:
    rng = random.Random(4475)
    files = sorted((SHARED / "conformance" / "invites").glob("*.sip"))
    stream = [p.read_bytes() for p in files]
    data = b"\r\n\r\n".join(stream)  # keep-alives between messages
    framer = StreamFramer()
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 700)
        out += framer.feed(data[pos : pos + step])
        pos += step
    assert out == stream
    for raw in out[:3]:
        parse_message(raw)


def test_crlf_keepalives_are_skipped_and_pings_counted() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []  # a pong from the peer, or half a ping
    assert framer.feed(b"\r\n" + message(1) + b"\r\n\r\n") == [message(1)]
    assert framer.take_pings() == 3
    assert framer.take_pings() == 0


def test_missing_content_length_on_a_stream_is_400() -> None:
    raw = message(1).replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(SipParseError) as err:
        StreamFramer().feed(raw)
    assert err.value.status == 400


@pytest.mark.parametrize("value", [b"-1", b"abc", b"5, 6", b""])
def test_bad_content_length_is_400(value: bytes) -> None:
    raw = message(1).replace(b"Content-Length: 0", b"Content-Length: " + value)
    with pytest.raises(SipParseError) as err:
        StreamFramer().feed(raw)
    assert err.value.status == 400


def test_compact_folded_and_lowercase_content_length() -> None:
    for spelling in (b"l: 5", b"content-length   :    5", b"Content-Length:\r\n 5"):
        raw = message(1).replace(b"Content-Length: 0", spelling) + b"abcde"
        assert StreamFramer().feed(raw + message(2)) == [raw, message(2)]


def test_duplicate_content_length_is_400() -> None:
    raw = message(1).replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 0\r\n")
    with pytest.raises(SipParseError):
        StreamFramer().feed(raw)


def test_size_bound() -> None:
    framer = StreamFramer(max_size=300)
    with pytest.raises(SipParseError) as err:
        framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX-Long: " + b"x" * 400)
    assert err.value.status == 413
    with pytest.raises(SipParseError) as err:
        StreamFramer(max_size=300).feed(message(1).replace(b"Content-Length: 0",
                                                           b"Content-Length: 100000"))
    assert err.value.status == 413
    assert StreamFramer(max_size=len(message(1))).feed(message(1)) == [message(1)]


def test_lf_only_stream() -> None:
    raw = message(1, b"xy").replace(b"\r\n", b"\n")
    assert StreamFramer().feed(raw + raw) == [raw, raw]
