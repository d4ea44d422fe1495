"""URIs (RFC 3261 §19.1) and the structured headers (§20): parse, print, reject."""

from __future__ import annotations

import pytest

from callgate.sip.headers import (
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_via_list,
)
from callgate.sip.message import (
    AbsoluteUri,
    CSeq,
    Headers,
    NameAddr,
    SipParseError,
    SipUri,
    Via,
    parse_uri,
)

# --- URIs -------------------------------------------------------------------------------------


def test_sip_uri_components() -> None:
    uri = parse_uri("sips:alice:secret@Example.COM:5061;transport=TLS;lr;Maddr=x.example.org"
                    "?Subject=hi&Priority=urgent")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips", "alice", "secret", "Example.COM", 5061)
    assert uri.params == {"transport": "TLS", "lr": None, "maddr": "x.example.org"}
    assert uri.transport == "tls"
    assert uri.headers == {"Subject": "hi", "Priority": "urgent"}


def test_scheme_is_case_insensitive() -> None:
    uri = parse_uri("SIP:bob@host")
    assert isinstance(uri, SipUri) and uri.scheme == "sip"


def test_ipv6_reference() -> None:
    uri = parse_uri("sip:u@[2001:db8::1]:5070;transport=udp")
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("2001:db8::1", 5070)
    assert str(uri) == "sip:u@[2001:db8::1]:5070;transport=udp"
    assert parse_uri("sip:[::1]") == SipUri("sip", None, None, "::1", None, {}, {})


def test_escapes_are_decoded_and_reencoded() -> None:
    uri = parse_uri("sip:%75se%72;x=%41@host;n%61me=v%61lue%25%34%31;%6C%72?h=%3Csip:a%3E")
    assert isinstance(uri, SipUri)
    assert uri.user == "user;x=A"
    assert uri.params == {"name": "value%41", "lr": None}
    assert uri.headers == {"h": "<sip:a>"}
    again = parse_uri(str(uri))
    assert again == uri
    assert str(uri) == "sip:user;x=A@host;name=value%2541;lr?h=%3Csip:a%3E"


def test_escaped_nul_and_non_utf8() -> None:
    uri = parse_uri("sip:null-%00-%8E@example.com")
    assert isinstance(uri, SipUri)
    assert uri.user == "null-\x00-\udc8e"
    assert str(uri) == "sip:null-%00-%8E@example.com"


def test_user_with_reserved_characters() -> None:
    # RFC 4475 intmeth: ';' '?' '/' ',' are legal in the user part; the first '@' ends it.
    text = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird@example.com"
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird"
    assert str(uri) == text


def test_constructed_uri_escapes_what_it_must() -> None:
    uri = SipUri(user="a b@c", host="example.com", params={"k": "v;w"}, headers={"X": "a&b"})
    assert str(uri) == "sip:a%20b%40c@example.com;k=v%3Bw?X=a%26b"
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize("text", [
    "tel:+1-201-555-0123;phone-context=example.com",
    "mailto:alice@example.com",
    "urn:service:sos",
    "http://www.example.com/a?b=c",
    "soap.beep://192.0.2.103:3002",
])
def test_absolute_uris(text: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteUri)
    assert str(uri) == text.split(":", 1)[0].lower() + ":" + text.split(":", 1)[1]
    assert uri.scheme == text.split(":", 1)[0]


@pytest.mark.parametrize("text", [
    "", "sip", ":foo", "1sip:host", "sip:", "sip:user@", "sip:@host", "sip:host:",
    "sip:host:70000", "sip:host:12a", "sip:ho st", " sip:host", "sip:host ",
    "sip:host;;lr", "sip:host;=x", "sip:host;a=", "sip:host?", "sip:host?a", "sip:us%ZZer@host",
    "sip:[::1", "sip:[zz::1]", "sip:[::1]x", "sip:fe80::1:5060", "sip:a<b@host", "tel:",
    "tel:+1 555", "sip:host\x00",
])
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_lenient_unbracketed_ipv6_only_on_request() -> None:
    with pytest.raises(SipParseError):
        parse_uri("sip:4321@fec0:0:0:0:216:d3ff:fe0d:22c:5060")
    uri = parse_uri("sip:4321@fec0:0:0:0:216:d3ff:fe0d:22c:5060", lenient=True)
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("fec0:0:0:0:216:d3ff:fe0d:22c", 5060)


# --- Headers ----------------------------------------------------------------------------------


def test_headers_case_insensitive_and_canonical() -> None:
    h = Headers([("call-id", "abc"), ("v", "SIP/2.0/UDP a;branch=z9hG4bK1"),
                 ("VIA", "SIP/2.0/UDP b;branch=z9hG4bK2, SIP/2.0/TCP c"), ("www-authenticate", "x"),
                 ("cseq", "1 INVITE"), ("X-Custom-Thing", "v1"), ("l", "0")])
    assert h.get("CALL-ID") == "abc" and h.get("i") == "abc"
    assert [name for name, _ in h] == ["Call-ID", "Via", "Via", "WWW-Authenticate", "CSeq",
                                       "X-Custom-Thing", "Content-Length"]
    assert h.get("via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get_all("Via") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b;branch=z9hG4bK2",
                                "SIP/2.0/TCP c"]
    assert h.lines("via") == ["SIP/2.0/UDP a;branch=z9hG4bK1",
                              "SIP/2.0/UDP b;branch=z9hG4bK2, SIP/2.0/TCP c"]
    assert "x-custom-thing" in h and "Content-Length" in h and "Route" not in h
    assert 3 not in h
    assert h.get("x-CUSTOM-thing") == "v1"
    assert h.get("Missing") is None and h.get_all("Missing") == []


@pytest.mark.parametrize(("compact", "full"), [
    ("i", "Call-ID"), ("m", "Contact"), ("e", "Content-Encoding"), ("l", "Content-Length"),
    ("c", "Content-Type"), ("f", "From"), ("s", "Subject"), ("k", "Supported"), ("t", "To"),
    ("v", "Via"), ("o", "Event"), ("u", "Allow-Events"), ("r", "Refer-To"), ("b", "Referred-By"),
    ("x", "Session-Expires"), ("a", "Accept-Contact"), ("j", "Reject-Contact"),
    ("y", "Identity"), ("d", "Request-Disposition"),
])
def test_compact_forms(compact: str, full: str) -> None:
    h = Headers([(compact.upper(), "value")])
    assert list(h) == [(full, "value")]
    assert h.get(full) == "value" and h.get(compact) == "value"


def test_list_splitting_respects_quotes_and_brackets() -> None:
    h = Headers([
        ("Contact", '"Doe, John" <sip:j@a;x="1,2">;q=0.5, <sip:k@b?h=a,b>, sip:l@c'),
        ("Allow", "INVITE,ACK , ,BYE"),
        ("Authorization", 'Digest username="a", realm="b", nonce="c"'),
        ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
    ])
    assert h.get_all("Contact") == ['"Doe, John" <sip:j@a;x="1,2">;q=0.5', "<sip:k@b?h=a,b>",
                                    "sip:l@c"]
    assert h.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert h.get("Allow") == "INVITE"
    # Not list headers: a comma is part of the value.
    assert h.get_all("Authorization") == ['Digest username="a", realm="b", nonce="c"']
    assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_headers_set_remove_add_and_equality() -> None:
    h = Headers([("Via", "a"), ("To", "t"), ("Via", "b"), ("Content-Length", "9")])
    h.set("via", "c")
    assert list(h) == [("Via", "c"), ("To", "t"), ("Content-Length", "9")]
    h.remove("content-length")
    h.add("Supported", "timer")
    h.set("Require", "timer")
    assert list(h) == [("Via", "c"), ("To", "t"), ("Supported", "timer"), ("Require", "timer")]
    assert h == Headers(list(h)) and h != Headers([("Via", "c")])
    copy = h.copy()
    copy.add("X", "y")
    assert len(copy) == len(h) + 1


# --- name-addr / addr-spec ------------------------------------------------------------------


def test_name_addr_quoted_display_with_escapes() -> None:
    na = parse_name_addr(r'"J Rosenberg \\\""  <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert na.display == 'J Rosenberg \\"'
    assert na.tag == "98asjd8"
    assert str(na) == r'"J Rosenberg \\\"" <sip:jdrosen@example.com>;tag=98asjd8'
    assert parse_name_addr(str(na)) == na


def test_name_addr_token_display_and_no_space() -> None:
    na = parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert (na.display, na.tag) == ("caller", "323")
    assert parse_name_addr("'Joe Bloggs' <sip:j@b>").display == "'Joe Bloggs'"
    assert parse_name_addr("Псков-5 <sip:1@h>").display == "Псков-5"  # valid UTF-8 tolerated
    assert parse_name_addr("<sip:a@b>").display is None


def test_addr_spec_params_belong_to_the_header() -> None:
    na = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam;tag=x")
    assert isinstance(na.uri, SipUri)
    assert na.uri.params == {}
    assert na.params == {"unknownparam": None, "tag": "x"}
    inside = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert isinstance(inside.uri, SipUri)
    assert inside.uri.params == {"unknownparam": None} and inside.params == {}


def test_name_addr_quoted_param_values_keep_quotes() -> None:
    na = parse_name_addr('<sip:a@b>;+sip.instance="<urn:uuid:1,2;3>";reg-id=1;Expires=60')
    assert na.params == {"+sip.instance": '"<urn:uuid:1,2;3>"', "reg-id": "1", "expires": "60"}
    na = parse_name_addr('sip:a@b;+sip.instance="<urn:uuid:1>"')
    assert na.params == {"+sip.instance": '"<urn:uuid:1>"'}


def test_absolute_uri_in_name_addr() -> None:
    na = parse_name_addr("isbn:2983792873")
    assert na.uri == AbsoluteUri("isbn", "2983792873")
    assert parse_name_addr("<tel:+19195551002>;reason=user-busy").params == {"reason": "user-busy"}


@pytest.mark.parametrize("text", [
    '"Mr. J. User <sip:j.user@example.com>',  # RFC 4475 quotbal
    "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # RFC 4475 baddn
    '"Watson, Thomas" < sip:t.watson@example.org >',  # RFC 4475 badaspec
    "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # RFC 4475 regbadct
    "c\udc8e test <sip:00_12@us2>;tag=k",  # a non-UTF-8 byte in an unquoted display name
    '<sip:caller@host>;;;;', "<sip:a@b", '"a" sip:a@b', 'x "a" <sip:a@b>', "<sip:a@b> junk",
    "<sip:a@b>;tag", "", "<>", "<sip:a@b>;t=\"x", "<sip:a@b>;t=a b",
])
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


def test_name_addr_list() -> None:
    items = parse_name_addr_list("<sip:a@x;lr>,<sip:b@y;lr>")
    assert [str(i.uri) for i in items] == ["sip:a@x;lr", "sip:b@y;lr"]
    with pytest.raises(SipParseError):
        parse_name_addr_list("<sip:a@x>,,<sip:b@y>")


def test_name_addr_constructed() -> None:
    na = NameAddr(None, SipUri(user="a", host="b"), {"tag": "t1"})
    assert str(na) == "<sip:a@b>;tag=t1"
    assert na.tag == "t1"


# --- Via --------------------------------------------------------------------------------------


def test_via_with_lws_everywhere() -> None:
    # RFC 4475 wsinv: LWS is legal around '/', ':' and ';'.
    vias = parse_via_list("SIP  /    2.0   / tcp  192.168.255.111 :  5061  ; branch= z9hG4bK30239"
                          " ;rport, SIP/2.0/UDP [2001:db8::9]:5060;received=2001:db8::1")
    assert vias[0] == Via("TCP", "192.168.255.111", 5061, {"branch": "z9hG4bK30239",
                                                          "rport": None})
    assert vias[0].branch == "z9hG4bK30239" and vias[0].sent_by == ("192.168.255.111", 5061)
    assert vias[1] == Via("UDP", "2001:db8::9", 5060, {"received": "2001:db8::1"})
    assert str(vias[1]) == "SIP/2.0/UDP [2001:db8::9]:5060;received=2001:db8::1"
    assert parse_via_list(str(vias[0])) == [vias[0]]


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP 192.0.2.15;;,;,,", "SIP/2.0/UDP", "SIP/2.0 host", "SIP/2.0/UDP host:port",
    "SIP/2.0/UDP fe80::1:5060", "SIP/2.0/UDP a b", "SIP/2.0/UDP host;branch", ",",
    "SIP/2.0/UDP [::1", "SIP/2.0/UDP host;branch=a b",
])
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via_list(text)


def test_lenient_via_for_error_responses() -> None:
    vias = parse_via_list("SIP/2.0/UDP 192.0.2.15;;,;,,", lenient=True)
    assert vias == [Via("UDP", "192.0.2.15", None, {})]
    vias = parse_via_list("SIP/2.0/UDP fe80:0:0:0:21a:a0ff:fe07:32e0:5060;branch=z9hG4bKx",
                          lenient=True)
    assert vias == [Via("UDP", "fe80:0:0:0:21a:a0ff:fe07:32e0", 5060, {"branch": "z9hG4bKx"})]


# --- CSeq, media types ------------------------------------------------------------------------


def test_cseq() -> None:
    assert parse_cseq("0009\t INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(4294967295, "BYE")) == "4294967295 BYE"
    assert parse_cseq("4294967295 BYE").seq == 4294967295
    for bad in ("4294967296 BYE", "36893488147419103232 REGISTER", "1", "INVITE", "-1 BYE",
                "1 IN VITE", "1 INV<ITE", "١ INVITE"):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_media_type() -> None:
    assert parse_media_type("Application/SDP") == ("application/sdp", {})
    assert parse_media_type("multipart/mixed;boundary=7a9c ; charset=\"x\"") == (
        "multipart/mixed", {"boundary": "7a9c", "charset": '"x"'})
    for bad in ("application", "/sdp", "application/", "a b/c", "text/plain;"):
        with pytest.raises(SipParseError):
            parse_media_type(bad)
