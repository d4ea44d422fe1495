"""RFC 4475 torture tests: one test per message in ../shared/conformance/rfc4475, each held to
the outcome the README table (and the RFC section it cites) gives.

Outcomes:
* ``valid``: parses; the fields the RFC discusses read as it says; ``check_request`` (for a
  request) returns the given status or None.
* ``reject``: ``parse_message`` raises SipParseError with the given status; for a request, with a
  ``partial`` from which a response can be built (routed by its top Via).
* ``drop``: a response that does not parse: SipParseError without partial (responses are never
  answered).
* ``answer``: parses, and ``check_request`` returns the given status (+ required headers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from callgate.sip.message import (
    AbsoluteUri,
    Request,
    Response,
    SipParseError,
    SipUri,
    make_response,
    parse_message,
)
from callgate.sip.validate import check_request
from tests.conftest import SHARED

DIR = SHARED / "conformance" / "rfc4475"

# What the UAS under test supports: a gateway that takes calls, not a registrar.
ALLOWED = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "PRACK",
                     "REFER", "NOTIFY"})
SUPPORTED = frozenset({"timer", "replaces", "100rel"})
ACCEPTED = frozenset({"application/sdp", "application/dtmf-relay"})


def check(req: Request, project_id: str | None = None) -> Response | None:
    return check_request(req, project_id=project_id, supported=SUPPORTED,
                         allowed_methods=ALLOWED, accepted_types=ACCEPTED)


@dataclass
class Expect:
    outcome: str  # valid | reject | drop | answer
    status: int | None = None
    fields: Callable[[Request | Response], None] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _wsinv(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.params == {"unknownparam": None}
    assert m.to.tag == "1918181833n" and str(m.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert m.from_.display == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = m.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    (route,) = m.routes
    assert isinstance(route.uri, SipUri) and route.uri.params == {
        "lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert m.content_type == "application/sdp" and len(m.body) == 150


UNUSUAL_USER = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"


def _intmeth(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.method == m.cseq.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.uri.user == UNUSUAL_USER
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert isinstance(m.to.uri, SipUri) and m.to.uri.user == UNUSUAL_USER
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params == {"fromparam''~+*_!.-%": '"работающий"', "tag": "_token~1'+`*%!-."}
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert m.body == b""


def _esc01(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert (m.uri.user, m.uri.host) == ("sips:user@example.com", "example.net")
    assert isinstance(m.to.uri, SipUri) and m.to.uri.user == "user"
    assert isinstance(m.from_.uri, SipUri) and m.from_.uri.user == "I have spaces"
    (contact,) = m.contacts
    assert isinstance(contact.uri, SipUri) and contact.uri.user == "caller"
    assert contact.uri.params == {"lr": None, "name": "value%41"}
    assert m.content_type == "application/sdp" and len(m.body) == 150


def _escnull(m: Request | Response) -> None:
    assert isinstance(m.to.uri, SipUri) and m.to.uri.user == "null-\x00-null"
    assert [c.uri.user for c in m.contacts if isinstance(c.uri, SipUri)] == ["\x00", "\x00\x00"]


def _esc02(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.method == m.cseq.method == "RE%47IST%45R"  # not REGISTER: token chars, no escapes
    assert m.to.display == "%Z%45" and m.from_.display == "%Z%45"
    assert m.vias[0].branch == "z9hG4bK209%fzsnel234"
    assert len(m.contacts) == 2 and m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def _lwsdisp(m: Request | Response) -> None:
    assert (m.from_.display, m.from_.tag, str(m.from_.uri)) == (
        "caller", "323", "sip:caller@example.com")


def _longreq(m: Request | Response) -> None:
    assert m.to.display is not None and m.to.display.startswith("I have a user name of extreme")
    assert isinstance(m.to.uri, SipUri) and m.to.uri.port == 6000 and len(m.to.uri.params) == 3
    assert m.from_.tag is not None and len(m.from_.tag) == 155 and m.from_.tag.endswith("2424")
    assert len(m.from_.params) == 3
    assert len(m.vias) == 34
    assert m.vias[0].host == "sip33.example.com" and m.vias[-1].params["received"] == "192.0.2.5"
    assert m.vias[-1].branch is not None and m.vias[-1].branch.startswith("verylonglong")
    assert len(m.body) == 150


def _dblreq(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412" and m.body == b""


def _semiuri(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert (m.uri.user, m.uri.host, m.uri.params) == ("user;par=u@example.net", "example.com", {})
    assert m.headers.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag"]


def _transports(m: Request | Response) -> None:
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def _mpart01(m: Request | Response) -> None:
    assert m.content_type == "multipart/mixed" and len(m.body) == 553
    assert m.body.startswith(b"--7a9cbec02ceef655\r\n") and b"\x00" in m.body


def _unreason(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(m.body) == 154


def _noreason(m: Request | Response) -> None:
    assert isinstance(m, Response) and (m.status, m.reason) == (100, "")


def _badbranch(m: Request | Response) -> None:
    assert m.vias[0].branch == "z9hG4bK"  # just the cookie: RFC 2543 matching applies


def _inv2543(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.vias[0].branch is None and m.max_forwards is None
    assert "Content-Length" not in m.headers and m.body.startswith(b"v=0") and len(m.body) == 105
    assert isinstance(m.to.uri, SipUri) and m.to.params == {"user": "phone"}


def _bcast(m: Request | Response) -> None:
    # A UAC discards a response with more than one Via (§8.1.3.3): the transaction layer's job.
    assert isinstance(m, Response) and len(m.vias) == 2 and m.vias[1].host == "255.255.255.255"


def _cparam01(m: Request | Response) -> None:
    (c,) = m.contacts
    assert isinstance(c.uri, SipUri) and c.uri.params == {} and c.params == {"unknownparam": None}


def _cparam02(m: Request | Response) -> None:
    (c,) = m.contacts
    assert isinstance(c.uri, SipUri) and c.uri.params == {"unknownparam": None} and c.params == {}


def _regescrt(m: Request | Response) -> None:
    (c,) = m.contacts
    assert isinstance(c.uri, SipUri) and c.uri.headers == {"Route": "<sip:sip.example.com>"}


def _unksm2(m: Request | Response) -> None:
    assert m.to.uri == AbsoluteUri("isbn", "2983792873")
    assert m.from_.uri == AbsoluteUri("http", "//www.example.com")
    assert [c.uri for c in m.contacts] == [AbsoluteUri("name", "John_Smith")]


def _unkscm(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.uri == AbsoluteUri("nobodyknowsthisscheme", "totallyopaquecontent")


def _novelsc(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.uri == AbsoluteUri("soap.beep", "//192.0.2.103:3002")


def _zeromf(m: Request | Response) -> None:
    assert m.max_forwards == 0


EXPECTED: dict[str, Expect] = {
    # 3.1.1 valid messages
    "wsinv": Expect("valid", None, _wsinv),
    "intmeth": Expect("valid", 501, _intmeth),
    "esc01": Expect("valid", None, _esc01),
    "escnull": Expect("valid", 405, _escnull),
    "esc02": Expect("valid", 501, _esc02),
    "lwsdisp": Expect("valid", None, _lwsdisp),
    "longreq": Expect("valid", None, _longreq),
    "dblreq": Expect("valid", 405, _dblreq),
    "semiuri": Expect("valid", None, _semiuri),
    "transports": Expect("valid", None, _transports),
    "mpart01": Expect("valid", 405, _mpart01),  # MESSAGE: known, not allowed here
    "unreason": Expect("valid", None, _unreason),
    "noreason": Expect("valid", None, _noreason),
    # 3.1.2 invalid syntax
    "badinv01": Expect("reject", 400),
    "clerr": Expect("reject", 400),
    "ncl": Expect("reject", 400),
    "scalar02": Expect("reject", 400),
    "scalarlg": Expect("drop"),
    "quotbal": Expect("reject", 400),
    "ltgtruri": Expect("reject", 400),
    "lwsruri": Expect("reject", 400),
    "lwsstart": Expect("reject", 400),
    "trws": Expect("reject", 400),
    "escruri": Expect("reject", 400),
    "baddate": Expect("reject", 400),
    "regbadct": Expect("reject", 400),
    "badaspec": Expect("reject", 400),
    "baddn": Expect("reject", 400),
    "badvers": Expect("reject", 505),
    "mismatch01": Expect("reject", 400),
    "mismatch02": Expect("reject", 400),
    "bigcode": Expect("drop"),
    # 3.2.1 transaction layer
    "badbranch": Expect("valid", None, _badbranch),
    # 3.3 application semantics
    "insuf": Expect("reject", 400),
    "unkscm": Expect("answer", 416, _unkscm),
    "novelsc": Expect("answer", 416, _novelsc),
    "unksm2": Expect("answer", 405, _unksm2, {"Allow": "INVITE, ACK, CANCEL, BYE, OPTIONS"}),
    "bext01": Expect("answer", 420, None,
                     {"Unsupported": "nothingSupportsThis, nothingSupportsThisEither"}),
    "invut": Expect("answer", 415, None, {"Accept": "application/sdp"}),
    "regaut01": Expect("answer", 405, None, {"Allow": "INVITE"}),
    "multi01": Expect("reject", 400),
    "mcl01": Expect("reject", 400),
    "bcast": Expect("valid", None, _bcast),
    "zeromf": Expect("answer", None, _zeromf),
    "cparam01": Expect("answer", 405, _cparam01),
    "cparam02": Expect("answer", 405, _cparam02),
    "regescrt": Expect("answer", 405, _regescrt),
    "sdp01": Expect("answer", 406),
    # 3.4 backward compatibility
    "inv2543": Expect("valid", None, _inv2543),
}


def test_every_file_has_an_expectation() -> None:
    assert sorted(p.stem for p in DIR.glob("*.dat")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rfc4475(name: str) -> None:
    data = (DIR / f"{name}.dat").read_bytes()
    expect = EXPECTED[name]
    if expect.outcome in ("reject", "drop"):
        with pytest.raises(SipParseError) as err:
            parse_message(data)
        if expect.outcome == "drop":
            assert err.value.partial is None
            assert data.startswith(b"SIP/2.0 ")
            return
        assert err.value.status == expect.status
        _assert_answerable(err.value, data)
        return
    message = parse_message(data)
    if expect.fields is not None:
        expect.fields(message)
    if isinstance(message, Request):
        response = check(message)
        assert (response.status if response else None) == expect.status, (
            response.to_bytes() if response else None)
        if response is not None:
            _assert_well_formed_response(message, response, expect.headers)
    else:
        assert expect.status is None
    assert_round_trip(message)


def assert_round_trip(message: Request | Response) -> None:
    """to_bytes() parses back to the same message (Content-Length added or corrected), and
    printing that again gives the same bytes."""
    wire = message.to_bytes()
    again = parse_message(wire)
    assert again.to_bytes() == wire
    assert again.body == message.body
    assert [h for h in again.headers if h[0] != "Content-Length"] == [
        h for h in message.headers if h[0] != "Content-Length"]
    if isinstance(message, Request):
        assert isinstance(again, Request)
        assert (again.method, again.uri, again.version) == (
            message.method, message.uri, message.version)
    else:
        assert isinstance(again, Response)
        assert (again.status, again.reason) == (message.status, message.reason)


def _assert_answerable(err: SipParseError, data: bytes) -> None:
    partial = err.partial
    assert partial is not None, err.reason
    assert data.startswith(partial.method.encode() + b" ")
    top = partial.vias[0]  # where the response goes (§18.2.2)
    response = make_response(partial, err.status, to_tag="t1")
    wire = response.to_bytes()
    assert wire.startswith(f"SIP/2.0 {err.status} ".encode())
    assert response.headers.lines("Via") == partial.headers.lines("Via")
    assert top.host


def _assert_well_formed_response(req: Request, response: Response,
                                 headers: dict[str, str]) -> None:
    back = parse_message(response.to_bytes())
    assert isinstance(back, Response)
    assert back.call_id == req.call_id and back.cseq == req.cseq and back.vias == req.vias
    assert back.to.tag is not None  # a final response carries a To tag (§8.2.6.2)
    for name, value in headers.items():
        got = back.headers.get_all(name)
        wanted = [v.strip() for v in value.split(",")]
        assert all(w in got for w in wanted), (name, got)


def test_not_our_project_gets_404_only_after_other_checks() -> None:
    longreq = parse_message((DIR / "longreq.dat").read_bytes())
    assert isinstance(longreq, Request)
    resp = check(longreq, project_id="proj_x")
    assert resp is not None and resp.status == 404
    assert check(longreq, project_id="user") is None
    # wsinv carries a To tag: a mid-dialog request, whose Request-URI is our Contact.
    wsinv = parse_message((DIR / "wsinv.dat").read_bytes())
    assert isinstance(wsinv, Request) and check(wsinv, project_id="proj_x") is None
    invut = parse_message((DIR / "invut.dat").read_bytes())
    assert isinstance(invut, Request)
    resp = check(invut, project_id="proj_x")
    assert resp is not None and resp.status == 415
    # OPTIONS probes may target any user, or none.
    zeromf = parse_message((DIR / "zeromf.dat").read_bytes())
    assert isinstance(zeromf, Request) and check(zeromf, project_id="proj_x") is None


def test_esc01_matches_project_after_unescaping() -> None:
    esc01 = parse_message((DIR / "esc01.dat").read_bytes())
    assert isinstance(esc01, Request)
    assert check(esc01, project_id="sips:user@example.com") is None
