"""check_request: the UAS checks of RFC 3261 §8.2, one rule at a time and in order."""

from __future__ import annotations

import pytest

from callgate.sip.message import Request, Response, parse_message
from callgate.sip.validate import check_request

ALLOWED = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO"})


def request(method: str = "INVITE", *, uri: str = "sip:proj_x@gw.example.com",
            extra: str = "", body: bytes = b"v=0\r\n", ctype: str | None = "application/sdp",
            to_tag: str = "", cseq_method: str | None = None) -> Request:
    head = (f"{method} {uri} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK77\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:alice@example.com>;tag=f1\r\n"
            f"To: <sip:proj_x@gw.example.com>{to_tag}\r\n"
            "Call-ID: c1\r\n"
            f"CSeq: 5 {cseq_method or method}\r\n"
            + (f"Content-Type: {ctype}\r\n" if ctype else "")
            + extra + f"Content-Length: {len(body)}\r\n\r\n")
    msg = parse_message(head.encode() + body)
    assert isinstance(msg, Request)
    return msg


def check(req: Request, project_id: str | None = "proj_x",
          supported: frozenset[str] = frozenset({"timer", "100rel"}),
          accepted: frozenset[str] = frozenset({"application/sdp"})) -> Response | None:
    return check_request(req, project_id=project_id, supported=supported,
                         allowed_methods=ALLOWED, accepted_types=accepted)


def status(resp: Response | None) -> int | None:
    return None if resp is None else resp.status


def test_good_invite_passes() -> None:
    assert check(request()) is None
    assert check(request(extra="Require: TIMER\r\nAccept: application/*\r\n")) is None


def test_ack_is_never_answered() -> None:
    ack = request("ACK", uri="tel:+1", extra="Require: foo\r\n", ctype="text/plain")
    ack.headers.set("Max-Forwards", "0")
    assert check(ack) is None


def test_known_unsupported_method_is_405_with_allow() -> None:
    resp = check(request("REGISTER", body=b"", ctype=None))
    assert resp is not None and resp.status == 405
    assert resp.headers.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO"]
    assert resp.to.tag and resp.call_id == "c1" and resp.cseq.method == "REGISTER"


def test_unknown_method_is_501() -> None:
    assert status(check(request("FOO", body=b"", ctype=None))) == 501


def test_structure_comes_first() -> None:
    req = request("FOO", body=b"", ctype=None)
    req.headers.set("CSeq", "5 INVITE")  # RFC 4475 mismatch02: 400, not 501
    assert status(check(req)) == 400
    req = request()
    req.headers.add("Call-ID", "c2")
    assert status(check(req)) == 400
    req = request()
    req.headers.add("Content-Length", "5")
    assert status(check(req)) == 400


def test_non_sip_request_uri_is_416() -> None:
    assert status(check(request(uri="tel:+15551234567"))) == 416
    assert status(check(request(uri="sips:proj_x@gw.example.com"))) is None


def test_max_forwards_zero() -> None:
    req = request()
    req.headers.set("Max-Forwards", "0")
    assert status(check(req)) == 483
    opts = request("OPTIONS", uri="sip:gw.example.com", body=b"", ctype=None)
    opts.headers.set("Max-Forwards", "0")
    assert check(opts) is None  # OPTIONS may be answered (RFC 4475 zeromf)


def test_unknown_require_is_420_with_unsupported() -> None:
    resp = check(request(extra="Require: timer, foo\r\nRequire: bar\r\n"))
    assert resp is not None and resp.status == 420
    assert resp.headers.get_all("Unsupported") == ["foo", "bar"]
    cancel = request("CANCEL", body=b"", ctype=None, extra="Require: foo\r\n")
    assert check(cancel) is None  # Require does not apply to CANCEL (§8.2.2.3)


@pytest.mark.parametrize(("ctype", "extra", "expected", "header"), [
    ("text/plain", "", 415, ("Accept", "application/sdp")),
    ("Application/SDP;charset=x", "", None, None),
    (None, "", 400, None),
    ("application/sdp", "Content-Encoding: gzip\r\n", 415, ("Accept-Encoding", "identity")),
    ("application/sdp", "Content-Encoding: identity\r\n", None, None),
])
def test_body_checks(ctype: str | None, extra: str, expected: int | None,
                     header: tuple[str, str] | None) -> None:
    resp = check(request(ctype=ctype, extra=extra))
    assert status(resp) == expected
    if header is not None:
        assert resp is not None and resp.headers.get(header[0]) == header[1]


def test_empty_body_needs_no_content_type() -> None:
    assert check(request(body=b"", ctype=None)) is None
    assert check(request(body=b"", ctype="application/unknown")) is None


@pytest.mark.parametrize(("accept", "expected"), [
    ("text/nobodyKnowsThis", 406),  # RFC 4475 sdp01
    ("application/sdp", None),
    ("text/plain, application/sdp;level=1", None),
    ("*/*", None),
    ("application/sdp;q=0", 406),
    ("application/sdp;q=0.5", None),
    ("", 406),  # an empty Accept allows nothing (§20.1)
])
def test_accept_on_invite(accept: str, expected: int | None) -> None:
    assert status(check(request(extra=f"Accept: {accept}\r\n"))) == expected


def test_accept_only_matters_for_invite() -> None:
    info = request("INFO", extra="Accept: text/plain\r\n", ctype="application/sdp", to_tag=";tag=t")
    assert check(info) is None


def test_request_uri_user_must_be_the_project() -> None:
    assert status(check(request(uri="sip:other@gw.example.com"))) == 404
    assert status(check(request(uri="sip:gw.example.com"))) == 404
    assert check(request(uri="sip:proj_x@gw.example.com"), project_id=None) is None
    assert check(request(uri="sip:other@gw.example.com"), project_id=None) is None
    assert check(request(uri="sip:%70roj_x@gw.example.com")) is None  # escapes compare equal
    # mid-dialog requests target our Contact; OPTIONS may have no user at all
    assert check(request(uri="sip:10.0.0.1:5060", to_tag=";tag=ours")) is None
    assert check(request("OPTIONS", uri="sip:gw.example.com", body=b"", ctype=None)) is None
    assert check(request("CANCEL", uri="sip:other@gw", body=b"", ctype=None)) is None


def test_404_comes_after_the_other_checks() -> None:
    assert status(check(request(uri="sip:other@gw.example.com", ctype="text/plain"))) == 415
