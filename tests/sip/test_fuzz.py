"""Property tests: hostile bytes never raise anything but SipParseError, and whatever parses
prints back to something that parses the same. Budget: a few seconds in total."""

from __future__ import annotations

import contextlib
import time
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.sip.message import (
    NameAddr,
    Request,
    SipParseError,
    SipUri,
    StreamFramer,
    Via,
    make_response,
    parse_message,
    parse_uri,
)
from callgate.sip.validate import check_request
from tests.conftest import SHARED
from tests.sip.test_rfc4475 import assert_round_trip

FAST = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@cache
def corpus() -> list[bytes]:
    conf = SHARED / "conformance"
    paths = sorted((conf / "rfc4475").glob("*.dat")) + sorted((conf / "invites").glob("*.sip"))
    return [p.read_bytes() for p in paths]


SPECIALS = [b",", b";", b"<", b">", b'"', b"\\", b"%", b":", b"@", b"?", b"=", b" ", b"\t",
            b"\r\n", b"\r\n ", b"\n", b"\r", b"\x00", b"\x8e", b"\xd0\x9f", b"[", b"]", b"/",
            b"SIP/2.0", b"Content-Length: 99999", b"l: 0", b"\r\n\r\n", b"*", b"0"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus())))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            data[pos:pos] = draw(st.sampled_from(SPECIALS))
        elif kind == 1:
            data[pos : pos + draw(st.integers(1, 40))] = b""
        elif kind == 2 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == 3:
            data[pos:pos] = draw(st.binary(max_size=12))
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


def exercise(data: bytes) -> None:
    """Parse; on success touch every view, validate, and check the round trip."""
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert exc.status in (400, 505)
        if exc.partial is not None:
            make_response(exc.partial, exc.status, to_tag="t").to_bytes()
            assert exc.partial.vias
        return
    for view in ("vias", "call_id", "cseq", "from_", "to", "max_forwards", "content_type",
                 "contacts", "record_routes", "routes"):
        try:
            getattr(message, view)
        except SipParseError:
            assert view in ("record_routes", "routes")  # the others were checked by the parser
    if isinstance(message, Request):
        check_request(message, project_id="user", supported=frozenset({"timer"}),
                      allowed_methods=frozenset({"INVITE", "ACK", "BYE", "OPTIONS"}),
                      accepted_types=frozenset({"application/sdp"}))
        make_response(message, 200, to_tag="x").to_bytes()
    assert_round_trip(message)


@FAST
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    exercise(data)


@FAST
@given(st.binary(max_size=300).map(lambda b: b"INVITE sip:a@b SIP/2.0\r\n" + b))
def test_random_header_sections(data: bytes) -> None:
    exercise(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus(data: bytes) -> None:
    exercise(data)


@FAST
@given(st.sampled_from(range(len(corpus()))), st.lists(st.integers(1, 300), max_size=30))
def test_stream_framer_random_cuts(index: int, cuts: list[int]) -> None:
    data = corpus()[index] + b"\r\n" + corpus()[(index + 1) % len(corpus())]
    framer = StreamFramer(max_size=4096)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for raw in framer.feed(data[pos : pos + cut]):
                exercise(raw)
            pos += cut
    except SipParseError as exc:
        assert exc.status in (400, 413)


# --- generated messages round-trip exactly ---------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"]) | st.sampled_from("\udc8e\udcff%@;?:"),
                min_size=1, max_size=12)
_PARAMS = st.dictionaries(_TEXT.map(str.lower).filter(lambda k: k == k.lower()),
                          st.none() | _TEXT, max_size=3)
_HOST = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,8}[a-z0-9])?(\.[a-z][a-z0-9]{0,5}){0,3}",
                      fullmatch=True) | st.ip_addresses(v=6).map(str) | st.ip_addresses(
                          v=4).map(str)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.none() | _TEXT)
    password = draw(st.none() | st.text(max_size=6)) if user is not None else None
    return SipUri(draw(st.sampled_from(["sip", "sips"])), user, password, draw(_HOST),
                  draw(st.none() | st.integers(0, 65535)), draw(_PARAMS),
                  draw(st.dictionaries(_TEXT, st.text(max_size=6), max_size=2)))


@FAST
@given(sip_uris())
def test_generated_uris_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


_TOKEN = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,10}", fullmatch=True)
_DISPLAY = st.none() | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
                               min_size=1, max_size=15)


@FAST
@given(sip_uris().map(lambda u: SipUri(u.scheme, u.user, u.password, u.host, u.port, u.params)),
       _DISPLAY, _TOKEN, st.dictionaries(_TOKEN.map(str.lower), st.none() | _TOKEN, max_size=3),
       st.binary(max_size=50), st.sampled_from(["UDP", "TCP", "TLS", "WS"]))
def test_generated_requests_round_trip(uri: SipUri, display: str | None, tag: str,
                                       params: dict[str, str | None], body: bytes,
                                       transport: str) -> None:
    from_ = NameAddr(display, uri, {**params, "tag": tag})
    via = Via(transport, uri.host, uri.port, {"branch": "z9hG4bK" + tag, **params})
    req = Request("INVITE", uri)
    req.headers.add("Via", str(via))
    req.headers.add("From", str(from_))
    req.headers.add("To", str(NameAddr(None, uri)))
    req.headers.add("Call-ID", tag + "@host")
    req.headers.add("CSeq", "1 INVITE")
    req.headers.add("Contact", f"{from_}, <{uri}>")
    req.body = body
    back = parse_message(req.to_bytes())
    assert isinstance(back, Request)
    assert back.uri == uri and back.body == body
    assert back.from_ == from_ and back.vias == [via]
    assert back.contacts == [from_, NameAddr(None, uri)]


# --- no quadratic or exponential corners ------------------------------------------------------

_BASE = ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
         "To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n")
_N = 60000
PATHOLOGICAL = [
    "Via: SIP/2.0/UDP " + " " * _N + "x", "Via: " + "SIP/ " * (_N // 5),
    'Contact: "' + '\\"' * (_N // 2), "Contact: " + "a " * (_N // 2),
    "Contact: " + "<sip:a@b>," * (_N // 10), "Contact: " + '",' * (_N // 2),
    "Contact: " + "<" * _N, "Contact: <sip:a@b>" + ";a=b" * (_N // 4),
    "Contact: <sip:a@b" + ";a" * (_N // 2) + ">", "Contact: <sip:" + "%41" * (_N // 3) + "@b>",
    "Subject: a" + "\r\n " * (_N // 3), "X: y\r\n" * (_N // 6),
    "Subject: " + "\\\x01" * (_N // 2), "Date: " + "Mon, " * (_N // 5),
    "Contact: <sip:[" + ":" * _N + "]>", "Contact: <sip:" + "a:" * (_N // 2) + ">",
]


def test_pathological_headers_are_linear() -> None:
    for extra in PATHOLOGICAL:
        data = (_BASE + extra + "\r\n\r\n").encode()
        start = time.perf_counter()
        with contextlib.suppress(SipParseError):
            parse_message(data, max_headers=_N, max_header_line=2 * _N)  # the scanners, unbounded
        assert time.perf_counter() - start < 1.0, extra[:40]


def _cpu_seconds(data: bytes, repeat: int = 3) -> float:
    """The least CPU time of a few parses: other processes' load does not count in CPU time,
    and the minimum drops the runs a cache miss or a collection happened to hit."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        with contextlib.suppress(SipParseError):
            parse_message(data, max_headers=_N, max_header_line=2 * _N)
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.parametrize("pair", ["\\a", '\\"', "\\\\"])
def test_a_60_kb_quoted_header_full_of_quoted_pairs_parses_in_under_5_ms(pair: str) -> None:
    display = pair * (_N // 2)
    data = (_BASE.replace("From: <sip:a@b>;tag=1", f'From: "{display}" <sip:a@b>;tag=1')
            + "\r\n").encode()
    assert len(data) > _N
    message = parse_message(data, max_header_line=2 * _N)
    assert message.from_.display is not None and len(message.from_.display) == _N // 2
    assert _cpu_seconds(data) < 0.005


# Pieces a hostile header is built from: quoting, escapes, separators, brackets.
_PIECES = st.sampled_from(['"', "\\", '\\"', "\\\\", ",", ";", "<", ">", "a", " ", "=",
                           "%41", "@", ":", "sip:", ";a=b", '";', '",'])


@FAST
@given(pattern=st.lists(_PIECES, min_size=1, max_size=6).map("".join),
       name=st.sampled_from(["From", "To", "Contact", "Via", "Subject", "Route", "Refer-To"]))
def test_parse_cost_per_byte_does_not_grow_with_size(pattern: str, name: str) -> None:
    """A CPU budget per byte: growing a hostile header eightfold may not cost more than
    about eightfold (a quadratic scanner would cost 64-fold), and no byte may cost more
    than 2 microseconds, far above the ~0.05 measured."""
    def message(size: int) -> bytes:
        return (_BASE + f"{name}: " + pattern * (size // len(pattern)) + "\r\n\r\n").encode()

    small, large = message(6000), message(48000)
    cost_small = max(_cpu_seconds(small), 20e-6) / len(small)
    cost_large = _cpu_seconds(large) / len(large)
    assert cost_large < 2e-6, (pattern, name, cost_large)
    assert cost_large < 3 * cost_small, (pattern, name, cost_small, cost_large)
