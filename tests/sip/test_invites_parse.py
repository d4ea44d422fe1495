"""Every real-world INVITE in ../shared/conformance/invites parses (or gets the strict 400 its
README names) and exposes what a UAS needs: Call-ID, From tag, Via branch, body bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from callgate.sip.message import (
    Request,
    SipParseError,
    SipUri,
    make_response,
    parse_message,
)
from callgate.sip.validate import check_request
from tests.conftest import SHARED

DIR = SHARED / "conformance" / "invites"
FILES = sorted(p.name for p in DIR.glob("*.sip"))

# README "strict: 400": a non-UTF-8 byte in an unquoted display name, IPv6 hosts without
# brackets, headers in the Request-URI.
STRICT_400 = {
    "vericall-edge-malformed-from-audio-video.sip": "display name",
    "valid8-ipv6-unbracketed-hosts.sip": "IPv6 address without brackets",
    "polycom-spip601-attended-transfer-replaces.sip": "Request-URI",
}


def load(name: str) -> bytes:
    return (DIR / name).read_bytes()


def test_the_corpus_is_there() -> None:
    assert len(FILES) == 24 and set(STRICT_400) <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_invite_parses_with_uas_fields(name: str) -> None:
    data = load(name)
    if name in STRICT_400:
        with pytest.raises(SipParseError) as err:
            parse_message(data)
        assert err.value.status == 400 and STRICT_400[name] in err.value.reason
        partial = err.value.partial
        assert partial is not None and partial.method == "INVITE"
        error = make_response(partial, 400, to_tag="t")
        assert error.headers.lines("Via") == partial.headers.lines("Via")
        assert partial.vias[0].branch  # read leniently: where the 400 goes (§18.2.2)
        assert error.to_bytes().startswith(b"SIP/2.0 400 Bad Request\r\n")
        return
    req = parse_message(data)
    assert isinstance(req, Request) and req.method == "INVITE"
    assert req.call_id and req.from_.tag and req.vias[0].branch
    assert req.cseq.method == "INVITE"
    assert isinstance(req.uri, SipUri)
    declared = req.headers.get("Content-Length")
    assert declared is not None and len(req.body) == int(declared)
    assert data.endswith(req.body)
    # A standards-following UAS answers these; nothing in the syntax checks refuses them.
    user = req.uri.user
    response = check_request(req, project_id=user, supported=frozenset({"timer", "replaces"}),
                             allowed_methods=frozenset({"INVITE", "ACK", "BYE", "CANCEL"}),
                             accepted_types=frozenset({"application/sdp"}))
    assert response is None
    if name in SPECIFIC:
        SPECIFIC[name](req)
    again = parse_message(req.to_bytes())
    assert isinstance(again, Request)
    assert again.to_bytes() == req.to_bytes() and list(again.headers) == list(req.headers)


def _ims(req: Request) -> None:
    # two Via values in one line, bracketed IPv6 everywhere
    assert [(v.host, v.port) for v in req.vias] == [
        ("fd17:625c:f037:2:a00:27ff:feb9:3519", 5062),
        ("fd17:625c:f037:2:a00:27ff:feb9:1521", 15060),
    ]
    assert req.vias[1].params["received"] == "fd17:625c:f037:2:a00:27ff:feb9:1521"
    assert len(req.record_routes) == 2 and len(req.routes) == 2
    assert isinstance(req.uri, SipUri) and req.uri.host == "fd17:625c:f037:2:a00:27ff:feb9:4222"


def _xlite(req: Request) -> None:
    assert req.content_type == "application/sdp" and req.body == b""  # compact "c:"
    assert req.headers.get_all("Supported") == ["replaces", "100rel"]
    assert req.vias[0].params == {"branch": "z9hG4bK-d8754z-4d7620d2feccbfac-1---d8754z-",
                                  "rport": "4820", "received": "202.165.193.129"}
    assert (req.headers.get("Authorization") or "").startswith('Digest username="555555555"')


def _russian(req: Request) -> None:
    assert req.from_.display == "Псков-5"
    assert "Псков".encode() in req.to_bytes()
    (contact,) = req.contacts
    assert isinstance(contact.uri, SipUri) and contact.uri.user == "gw+maxus_gw-1"


def _utstarcom(req: Request) -> None:
    (contact,) = req.contacts
    assert contact.display is None and str(contact.uri) == "sip:55555555555@10.60.65.26:5061"
    assert req.to.display == "55555555555555"
    diversions = req.headers.get_all("Diversion")
    assert len(diversions) == 2 and "<tel:+19195551002>" in diversions[1]
    assert req.headers.get("P-Asserted-Identity") == "<sip:55555555555@10.60.65.26;user=phone>"


def _netgear(req: Request) -> None:
    assert isinstance(req.uri, SipUri) and req.uri.params == {"tcid-0": None}
    assert req.content_type == "application/sdp" and req.from_.display == "UNAVAILABLE"


def _neuralx(req: Request) -> None:
    assert isinstance(req.uri, SipUri) and req.uri.user is None
    assert req.from_.display == "'Joe Bloggs'"
    assert req.headers.get_all("Allow") == ["INVITE", "CANCEL", "OPTIONS", "BYE", "REFER", "INFO",
                                            "UPDATE"]


def _clarent(req: Request) -> None:
    assert req.max_forwards is None and len(req.vias) == 2
    assert isinstance(req.from_.uri, SipUri) and req.from_.uri.user is None


def _localphone(req: Request) -> None:
    assert req.max_forwards == 12
    assert req.vias[1].branch == "76c5c145958c18a58a4b8f83c82476d8"  # no magic cookie
    assert req.headers.get("Session-Expires") == "3600;Refresher=uac"


def _linphone(req: Request) -> None:
    assert req.to.display is None and req.to.params == {}  # To without angle brackets
    (contact,) = req.contacts
    assert contact.params == {"+org.linphone.specs": '"lime"'}
    assert [v.transport for v in req.vias] == ["TCP", "UDP"]


def _sipjs(req: Request) -> None:
    assert req.vias[1].transport == "WSS" and req.vias[1].host.endswith(".invalid")
    assert isinstance(req.record_routes[0].uri, SipUri)


def _carrier(req: Request) -> None:
    assert req.body == b"" and req.content_type is None
    assert len(req.headers.get_all("P-Asserted-Identity")) == 2
    assert len(req.headers.get_all("History-Info")) == 2


def _reinvite(req: Request) -> None:
    assert req.to.tag is not None  # in-dialog


SPECIFIC: dict[str, Callable[[Request], None]] = {
    "ims-b2bua-ipv6-precondition-amrwb-only.sip": _ims,
    "xlite4-compact-content-type-no-body.sip": _xlite,
    "russian-fs-sbc-tcp-utf8-precondition.sip": _russian,
    "utstarcom-ngn-diversion-pai.sip": _utstarcom,
    "netgear-ta612v-duplicate-payload-type.sip": _netgear,
    "neuralx-mxsf-quoted-names-route.sip": _neuralx,
    "clarent-c5cm-softswitch-g723.sip": _clarent,
    "localphone-nextone-msw-g729-session-timer.sip": _localphone,
    "linphone-android-avpf-via-kamailio.sip": _linphone,
    "sipjs-webrtc-via-kamailio-dtls-ice.sip": _sipjs,
    "carrier-late-offer-no-sdp-pai-history-info.sip": _carrier,
    "arcor-cpe-reinvite-sorted-headers.sip": _reinvite,
    "italtel-imss-reinvite-t38-image-only.sip": _reinvite,
}


def test_vericall_byte_is_kept_not_crashed_on() -> None:
    data = load("vericall-edge-malformed-from-audio-video.sip")
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    partial = err.value.partial
    assert partial is not None
    assert partial.headers.get("From") == "c\udc8e test <sip:00_12_34_56_78_90@us2>;tag=klsk+kwDc"
    # The raw byte goes back out unchanged in the 400 (From is copied as received).
    assert b"From: c\x8e test <sip:" in make_response(partial, 400, to_tag="x").to_bytes()
