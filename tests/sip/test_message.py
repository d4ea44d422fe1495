"""Whole messages (RFC 3261 §7): parse, parsed views, serialization, responses, identifiers."""

from __future__ import annotations

import re

import pytest

from callgate.sip.message import (
    CSeq,
    Headers,
    Request,
    Response,
    SipParseError,
    SipUri,
    Via,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)

SDP = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def invite(*, extra: str = "", body: bytes = SDP, length: int | None = None,
           start: str = "INVITE sip:proj_x@gw.example.com SIP/2.0") -> bytes:
    head = (
        f"{start}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
        "Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKdef;received=198.51.100.7\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
        "To: <sip:proj_x@gw.example.com>\r\n"
        "Call-ID: a84b4c76e66710@pc33.example.com\r\n"
        "CSeq: 314159 INVITE\r\n"
        "Contact: <sip:alice@192.0.2.1:5060;transport=udp>\r\n"
        "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
        "Content-Type: application/sdp\r\n"
        f"{extra}"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


def test_parse_typical_invite_views() -> None:
    req = parse_message(invite())
    assert isinstance(req, Request)
    assert req.method == "INVITE" and req.version == "SIP/2.0"
    assert req.uri == SipUri("sip", "proj_x", None, "gw.example.com", None, {}, {})
    assert req.vias == [
        Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKabc", "rport": None}),
        Via("TCP", "proxy.example.com", None, {"branch": "z9hG4bKdef",
                                               "received": "198.51.100.7"}),
    ]
    assert req.call_id == "a84b4c76e66710@pc33.example.com"
    assert req.cseq == CSeq(314159, "INVITE")
    assert (req.from_.display, req.from_.tag) == ("Alice", "1928301774")
    assert req.to.tag is None and str(req.to.uri) == "sip:proj_x@gw.example.com"
    assert req.max_forwards == 70
    assert req.content_type == "application/sdp"
    assert [str(c.uri) for c in req.contacts] == ["sip:alice@192.0.2.1:5060;transport=udp"]
    assert [str(r.uri) for r in req.record_routes] == ["sip:p1.example.com;lr",
                                                       "sip:p2.example.com;lr"]
    assert req.routes == []
    assert req.body == SDP


def test_to_bytes_is_canonical_and_round_trips() -> None:
    raw = (b"\r\n\r\nINVITE sip:proj_x@gw SIP/2.0\r\n"
           b"v: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
           b"f: <sip:a@b>;tag=1\r\nt: <sip:proj_x@gw>\r\ni: cid\r\n"
           b"cseq: 1 INVITE\r\nc: application/sdp\r\n"
           b"Subject: folded\r\n  over\r\n\tlines\r\n"
           b"l: 5\r\n\r\nhello world")
    req = parse_message(raw)
    assert isinstance(req, Request)
    assert req.body == b"hello"
    assert req.headers.get("Subject") == "folded over lines"
    wire = req.to_bytes()
    assert wire == (b"INVITE sip:proj_x@gw SIP/2.0\r\n"
                    b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                    b"From: <sip:a@b>;tag=1\r\nTo: <sip:proj_x@gw>\r\nCall-ID: cid\r\n"
                    b"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
                    b"Subject: folded over lines\r\n"
                    b"Content-Length: 5\r\n\r\nhello")
    assert parse_message(wire) == req


def test_content_length_always_written_and_corrected() -> None:
    req = parse_message(invite())
    assert isinstance(req, Request)
    req.body = b"x" * 7
    wire = req.to_bytes()
    assert wire.count(b"Content-Length") == 1 and b"\r\nContent-Length: 7\r\n" in wire
    req.headers.remove("Content-Length")
    assert req.to_bytes().endswith(b"Content-Length: 7\r\n\r\nxxxxxxx")
    built = Request("OPTIONS", SipUri(host="example.com"))
    assert built.to_bytes() == b"OPTIONS sip:example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_response_parse_and_round_trip() -> None:
    raw = (b"SIP/2.0 180 Ringing soon\r\n"
           b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc\r\n"
           b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 2 INVITE\r\n"
           b"Content-Length: 0\r\n\r\n")
    resp = parse_message(raw)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason, resp.to.tag, resp.cseq.method) == (
        180, "Ringing soon", "2", "INVITE")
    assert resp.to_bytes() == raw
    assert parse_message(resp.to_bytes()) == resp


def test_body_is_bytes_with_nul_and_header_bytes_survive() -> None:
    body = b"\x00\x01binary\xff\x00"
    raw = invite(extra="X-Name: caf\xe9 \u041f\r\n", body=body)
    raw = raw.replace("caf\xe9".encode(), b"caf\xe9")  # one Latin-1 byte, not UTF-8
    req = parse_message(raw)
    assert isinstance(req, Request)
    assert req.body == body
    assert req.headers.get("X-Name") == "caf\udce9 \u041f"
    assert req.to_bytes() == raw


def test_lf_only_line_ends_and_missing_blank_line() -> None:
    head, _, body = invite().partition(b"\r\n\r\n")
    req = parse_message(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert isinstance(req, Request)
    assert req.body == SDP and req.call_id == "a84b4c76e66710@pc33.example.com"
    with pytest.raises(SipParseError):  # mixed line ends: a bare LF among CRLFs
        parse_message(head.replace(b"\r\nTo", b"\nTo") + b"\r\n\r\n" + body)
    bare = invite(body=b"").rstrip(b"\r\n") + b"\r\n"  # datagram ends after the last header
    req = parse_message(bare)
    assert isinstance(req, Request) and req.body == b""


def test_datagram_content_length_rules() -> None:
    longer = parse_message(invite(body=SDP + b"TRAILING GARBAGE", length=len(SDP)))
    assert longer.body == SDP  # octets after Content-Length are ignored (§18.3)
    no_length = invite().replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")
    assert parse_message(no_length).body == SDP  # the body runs to the end of the datagram
    with pytest.raises(SipParseError) as err:
        parse_message(invite(length=len(SDP) + 1))
    assert err.value.status == 400 and err.value.partial is not None
    assert err.value.partial.call_id == "a84b4c76e66710@pc33.example.com"
    for bad in ("-1", "1e3", "", "٣"):
        with pytest.raises(SipParseError):
            parse_message(invite().replace(f"Content-Length: {len(SDP)}".encode(),
                                           f"Content-Length: {bad}".encode()))


@pytest.mark.parametrize(("edit", "status"), [
    (("CSeq: 314159 INVITE", "CSeq: 314159 BYE"), 400),
    (("Call-ID: a84b4c76e66710@pc33.example.com\r\n", ""), 400),
    (("Max-Forwards: 70", "Max-Forwards: 256"), 400),
    (("Max-Forwards: 70", "Max-Forwards: 70\r\nMax-Forwards: 69"), 400),
    (("To: <sip:proj_x@gw.example.com>", "To: <sip:proj_x@gw.example.com>\r\nTo: <sip:x@y>"), 400),
    (("Content-Type: application/sdp", "Content-Type: sdp"), 400),
    (("Contact: <sip:alice@192.0.2.1:5060;transport=udp>", "Contact: <sip:alice@>"), 400),
    (("Max-Forwards: 70", "Max-Forwards: 70\r\nDate: Sat, 13 Nov 2010 23:29:00 EST"), 400),
    (("SIP/2.0\r\n", "SIP/3.0\r\n"), 505),
    (("INVITE sip:proj_x@gw.example.com SIP", "INVITE sip:proj_x@gw.example.com?a=b SIP"), 400),
    (("Max-Forwards: 70", "Max-Forwards: 70" + "\r\nX-Pad: 1" * 130), 413),
    (("Max-Forwards: 70", "Max-Forwards: 70\r\nSubject: " + "a" * 9000), 400),
    (("Max-Forwards: 70", "Max-Forwards: 70\r\nSubject: a" + "\r\n b" * 4200), 400),
])
def test_answerable_errors(edit: tuple[str, str], status: int) -> None:
    raw = invite().replace(edit[0].encode(), edit[1].encode(), 1)
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    assert err.value.status == status
    partial = err.value.partial
    assert partial is not None and partial.method == "INVITE"
    response = make_response(partial, status, to_tag="t9")
    assert response.to_bytes().startswith(f"SIP/2.0 {status} ".encode())
    assert response.headers.lines("Via") == parse_message(invite()).headers.lines("Via")
    assert response.vias == parse_message(invite()).vias


@pytest.mark.parametrize("raw", [
    b"", b"\r\n\r\n", b"INVITE\r\n\r\n", b"garbage line\r\nVia: x\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nNo colon here\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\rX: y\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nSubject: a\x00b\r\n\r\n",
    b"SIP/2.0 99 Too Small\r\n\r\n", b"SIP/2.0 1000 Big\r\n\r\n", b"SIP/2.0 2xx OK\r\n\r\n",
])
def test_unanswerable_errors(raw: bytes) -> None:
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    assert err.value.partial is None


def test_ack_is_never_answered() -> None:
    raw = invite(start="ACK sip:proj_x@gw.example.com SIP/2.0").replace(b"314159 INVITE",
                                                                       b"314159 ACK")
    assert isinstance(parse_message(raw), Request)
    with pytest.raises(SipParseError) as err:
        parse_message(raw.replace(b"314159 ACK", b"314159 BYE"))
    assert err.value.partial is None


def test_response_errors_have_no_partial() -> None:
    raw = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n"
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    assert err.value.partial is None


def test_views_follow_header_changes() -> None:
    req = parse_message(invite())
    assert isinstance(req, Request)
    assert req.max_forwards == 70
    req.headers.set("Max-Forwards", "69")
    assert req.max_forwards == 69
    req.headers = Headers([("Call-ID", "new")])
    assert req.call_id == "new"
    with pytest.raises(SipParseError):
        _ = req.cseq


def test_to_bytes_refuses_header_injection() -> None:
    req = parse_message(invite())
    req.headers.add("X-Evil", "a\r\nVia: injected")
    with pytest.raises(ValueError):
        req.to_bytes()


# --- make_response ------------------------------------------------------------------------------


def test_make_response_copies_the_right_headers() -> None:
    req = parse_message(invite(extra="Timestamp: 54\r\n"))
    assert isinstance(req, Request)
    resp = make_response(req, 200, to_tag="totag", headers=[("Contact", "<sip:gw@192.0.2.9>")],
                         body=b"v=0\r\n", content_type="application/sdp")
    assert (resp.status, resp.reason) == (200, "OK")
    assert [name for name, _ in resp.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq",
                                                  "Contact", "Content-Type"]
    assert resp.headers.lines("Via") == req.headers.lines("Via")
    assert resp.to.tag == "totag" and resp.from_ == req.from_
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    wire = resp.to_bytes()
    assert wire.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    trying = make_response(req, 100, to_tag="ignored")
    assert trying.to.tag is None and trying.reason == "Trying"
    assert trying.headers.get("Timestamp") == "54"
    assert "Timestamp" not in resp.headers


def test_make_response_keeps_existing_to_tag() -> None:
    req = parse_message(invite().replace(b"To: <sip:proj_x@gw.example.com>",
                                         b"To: sip:proj_x@gw.example.com;tag=abc"))
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="other")
    assert resp.to.tag == "abc" and resp.reason == "Busy Here"
    addr_spec = parse_message(invite().replace(b"To: <sip:proj_x@gw.example.com>",
                                               b"To: sip:proj_x@gw.example.com"))
    assert isinstance(addr_spec, Request)
    assert make_response(addr_spec, 404, to_tag="n1").to.tag == "n1"
    assert make_response(addr_spec, 699, "Custom").reason == "Custom"
    assert make_response(addr_spec, 499).reason == "Client Error"


def test_make_response_to_partial_with_broken_to_never_raises() -> None:
    raw = invite().replace(b"To: <sip:proj_x@gw.example.com>", b'To: "unbalanced <sip:x@y>')
    with pytest.raises(SipParseError) as err:
        parse_message(raw)
    partial = err.value.partial
    assert partial is not None
    resp = make_response(partial, 400, to_tag="x")
    assert resp.headers.get("To") == '"unbalanced <sip:x@y>'
    assert b"SIP/2.0 400 Bad Request\r\n" in resp.to_bytes()


def test_identifiers() -> None:
    tags = {new_tag() for _ in range(200)}
    assert len(tags) == 200 and all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tags)
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) > 20 and branch != new_branch()
    cid = new_call_id()
    assert re.fullmatch(r"[0-9a-f]{32}", cid) and cid != new_call_id()


def test_header_limits_are_settings() -> None:
    raw = invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 70" + b"\r\nX-Pad: 1" * 20, 1)
    assert isinstance(parse_message(raw), Request)
    with pytest.raises(SipParseError) as err:
        parse_message(raw, max_headers=20)
    assert err.value.status == 413 and "more than 20" in err.value.reason
    with pytest.raises(SipParseError) as err:
        parse_message(raw, max_header_line=60)
    assert err.value.status == 400
    response = raw.replace(b"INVITE sip:proj_x@gw.example.com SIP/2.0", b"SIP/2.0 200 OK", 1)
    with pytest.raises(SipParseError) as err:
        parse_message(response, max_headers=20)
    assert err.value.partial is None  # nobody to answer: dropped
