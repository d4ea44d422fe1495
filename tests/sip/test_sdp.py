"""SDP syntax (RFC 8866): what real peers send, what hostile peers send, and round trips."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.sip.sdp import (
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
    parse_crypto,
    parse_fmtp,
    parse_rtpmap,
    parse_sdp,
)

INVITES = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "invites"

BASIC = (
    "v=0\r\n"
    "o=alice 2890844526 2890844527 IN IP4 198.51.100.1\r\n"
    "s=call\r\n"
    "c=IN IP4 198.51.100.1\r\n"
    "t=0 0\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=sendrecv\r\n"
)


def sdp_bodies() -> list[bytes]:
    bodies = []
    for path in sorted(INVITES.glob("*.sip")):
        data = path.read_bytes()
        body = data[data.index(b"\r\n\r\n") + 4:]
        if body:
            bodies.append(body)
    return bodies


def test_basic_fields() -> None:
    sdp = parse_sdp(BASIC.encode())
    assert sdp.origin == Origin("alice", 2890844526, 2890844527, "IN", "IP4", "198.51.100.1")
    assert sdp.session_name == "call"
    assert sdp.connection == "198.51.100.1"
    assert sdp.times == [("0 0", [])]
    [m] = sdp.media
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 49170, "RTP/AVP", ["0", "8", "101"])
    assert m.connection is None
    assert m.attributes[-1] == ("sendrecv", None)
    assert m.values("rtpmap") == ["0 PCMU/8000", "101 telephone-event/8000"]
    assert m.first("fmtp") == "101 0-16"
    assert m.has("sendrecv") and not m.has("SendRecv")


@pytest.mark.parametrize("variant", [
    BASIC.replace("\r\n", "\n"),                     # bare LF (RFC 8866 §5)
    BASIC.removesuffix("\r\n"),                      # no final line end
    BASIC + "\r\n",                                  # trailing empty line
    BASIC.replace("\r\n", "  \r\n"),                 # trailing blanks
    BASIC.replace("\r\n", " \t\n") + "\n\n",
])
def test_tolerated_line_shapes(variant: str) -> None:
    assert parse_sdp(variant.encode()) == parse_sdp(BASIC.encode())
    assert parse_sdp(variant) == parse_sdp(BASIC)


def test_unknown_attributes_are_kept_in_order() -> None:
    sdp = parse_sdp(BASIC + "a=X-nat:0\r\na=silenceSupp:off - - - -\r\na=foo:\r\na=\r\n")
    assert sdp.media[0].attributes[-3:] == [
        ("X-nat", "0"), ("silenceSupp", "off - - - -"), ("foo", "")]


def test_media_level_connection_and_session_direction() -> None:
    text = BASIC.replace("c=IN IP4 198.51.100.1\r\n", "a=sendonly\r\n").replace(
        "a=sendrecv\r\n", "c=IN IP4 203.0.113.9\r\n")
    sdp = parse_sdp(text)
    m = sdp.media[0]
    assert sdp.connection is None and m.connection == "203.0.113.9"
    assert sdp.connection_for(m) == "203.0.113.9"
    assert sdp.direction_for(m) == "sendonly"  # session level applies when media says nothing
    m.attributes.append(("inactive", None))
    assert sdp.direction_for(m) == "inactive"  # media level wins


def test_default_direction_is_sendrecv_and_names_are_case_sensitive() -> None:
    sdp = parse_sdp(BASIC.replace("a=sendrecv", "a=SendOnly"))
    assert sdp.direction_for(sdp.media[0]) == "sendrecv"


def test_ipv6_and_hostname_connections() -> None:
    sdp = parse_sdp(BASIC.replace("c=IN IP4 198.51.100.1", "c=IN IP6 2001:db8::5"))
    assert sdp.connection == "2001:db8::5"
    assert b"c=IN IP6 2001:db8::5\r\n" in sdp.to_bytes()
    assert parse_sdp(BASIC.replace("198.51.100.1\r\nt", "media.example.com\r\nt")
                     ).connection == "media.example.com"
    # multicast suffixes (RFC 8866 §5.7) are accepted and dropped from the address
    assert parse_sdp(BASIC.replace("c=IN IP4 198.51.100.1", "c=IN IP4 233.252.0.1/127/2")
                     ).connection == "233.252.0.1"


@pytest.mark.parametrize("address", [
    "'/**/OR/**/'1'/**/=/**/'1'--",
    "1.2.3.999",
    "10.0.",
    "2001:db8::1",               # an IP6 address under IP4
    "<script>",
    "drop table",
    "198.51.100.1/x",
    "host_name.example",
])
def test_garbage_connection_address_is_rejected_without_echo(address: str) -> None:
    body = BASIC.replace("c=IN IP4 198.51.100.1", f"c=IN IP4 {address}")
    with pytest.raises(SdpError) as info:
        parse_sdp(body.encode())
    text = str(info.value)
    assert "line 4" in text
    for fragment in address.split():
        assert fragment not in text


def test_garbage_ip6_and_nettype() -> None:
    for line in ("c=IN IP6 198.51.100.1", "c=ATM NSAP 47.0005", "c=IN IP4", "c=IN IPX 1.2.3.4"):
        with pytest.raises(SdpError):
            parse_sdp(BASIC.replace("c=IN IP4 198.51.100.1", line))


@pytest.mark.parametrize("body", [
    "",
    "\r\n",
    "o=- 1 1 IN IP4 192.0.2.1\r\n",                  # v= missing
    "v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\n",           # unknown version
    "v=0\r\ns=x\r\n",                                 # no o=
    "v=0\r\no=- x 1 IN IP4 192.0.2.1\r\n",           # non-numeric session id
    "v=0\r\no=- 1 1 IN IP4\r\n",
    BASIC + "o=- 1 1 IN IP4 192.0.2.1\r\n",          # o= inside a media section
    BASIC.replace("s=call", "s=call\r\ns=again"),
    BASIC.replace("t=0 0", "t=0 0\r\nx=unknown"),    # RFC 8866 §5: unknown type letter
    BASIC.replace("t=0 0", "t=0 0\r\nnot a line"),
    BASIC.replace("m=audio 49170", "m=audio 70000"),
    BASIC.replace("m=audio 49170", "m=audio -1"),
    BASIC.replace("m=audio 49170", "m=audio 49170/0"),
    BASIC.replace("m=audio 49170 RTP/AVP 0 8 101", "m=audio 49170"),
    BASIC.replace("t=0 0", "t=0 0\x00"),
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nr=1 2 3\r\n",  # r= before any t=
    "v=0\r\n" + "a=x\r\n" * 20000,                  # oversized
])
def test_malformed_bodies_raise_sdp_error(body: str) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body.encode())


def test_missing_t_line_is_tolerated() -> None:
    sdp = parse_sdp(BASIC.replace("t=0 0\r\n", ""))
    assert sdp.times == [("0 0", [])]


@pytest.mark.parametrize("body", sdp_bodies(), ids=lambda b: str(len(b)))
def test_every_truncation_of_real_bodies_parses_or_raises_sdp_error(body: bytes) -> None:
    for cut in range(len(body) + 1):
        with contextlib.suppress(SdpError):
            parse_sdp(body[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_sdp_error(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n" + data)


@pytest.mark.parametrize("body", sdp_bodies(), ids=lambda b: str(len(b)))
def test_real_bodies_round_trip(body: bytes) -> None:
    try:
        sdp = parse_sdp(body)
    except SdpError:
        assert b"'/**/OR" in body  # only the scanner's body is unreadable
        return
    again = parse_sdp(sdp.to_bytes())
    assert again == sdp
    assert again.to_bytes() == sdp.to_bytes()


def test_non_utf8_bytes_survive_a_round_trip() -> None:
    body = BASIC.encode().replace(b"s=call", b"s=caf\xe9 \x8e")
    sdp = parse_sdp(body)
    assert sdp.to_bytes() == body


def test_serialization_order_and_line_ends() -> None:
    sdp = SessionDescription(
        origin=Origin("-", 7, 8, "IN", "IP4", "192.0.2.1"), session_name="x",
        connection="192.0.2.1", attributes=[("group", "BUNDLE a")],
        media=[MediaDescription("audio", 4000, "RTP/AVP", ["0"], connection="192.0.2.2",
                                attributes=[("rtcp-mux", None), ("ptime", "20")],
                                bandwidths=[("AS", "64")], port_count=2, title="voice")],
        bandwidths=[("CT", "128")], times=[("0 0", ["604800 3600 0"])])
    assert sdp.to_bytes() == (
        b"v=0\r\no=- 7 8 IN IP4 192.0.2.1\r\ns=x\r\nc=IN IP4 192.0.2.1\r\nb=CT:128\r\n"
        b"t=0 0\r\nr=604800 3600 0\r\na=group:BUNDLE a\r\n"
        b"m=audio 4000/2 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 192.0.2.2\r\nb=AS:64\r\n"
        b"a=rtcp-mux\r\na=ptime:20\r\n")
    assert parse_sdp(sdp.to_bytes()) == sdp


def test_rtpmap() -> None:
    rm = parse_rtpmap("111 opus/48000/2")
    assert rm is not None and (rm.payload_type, rm.encoding, rm.clock_rate, rm.channels) == (
        111, "opus", 48000, 2)
    pcmu = parse_rtpmap("0 pcmu/8000")
    assert pcmu is not None and pcmu.channels == 1
    for bad in ("", "x PCMU/8000", "128 PCMU/8000", "0 PCMU", "0 PCMU/abc", "0 PCMU/8000/x"):
        assert parse_rtpmap(bad) is None


def test_fmtp() -> None:
    assert parse_fmtp("101 0-15,16") == ("101", "0-15,16")
    assert parse_fmtp("111 minptime=10;useinbandfec=1") == ("111", "minptime=10;useinbandfec=1")
    assert parse_fmtp("") is None


def test_crypto_attribute() -> None:
    key = base64.b64encode(bytes(range(30))).decode()
    c = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:4")
    assert c is not None
    assert (c.tag, c.suite, c.key_b64, c.key) == (1, "AES_CM_128_HMAC_SHA1_80", key,
                                                  bytes(range(30)))
    assert (c.lifetime, c.mki, c.session_params) == ("2^20", "1:4", ())
    gcm = base64.b64encode(bytes(28)).decode().rstrip("=")  # padding left off by some peers
    c2 = parse_crypto(f"7 AEAD_AES_128_GCM inline:{gcm} UNENCRYPTED_SRTCP")
    assert c2 is not None and len(c2.key) == 28 and c2.session_params == ("UNENCRYPTED_SRTCP",)
    for bad in ("", "x AES_CM_128_HMAC_SHA1_80 inline:AAAA", "1 AES_CM_128_HMAC_SHA1_80",
                "1 AES_CM_128_HMAC_SHA1_80 uri:AAAA", "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!",
                f"1 AES_CM_128_HMAC_SHA1_80 inline:{key};inline:{key}"):
        assert parse_crypto(bad) is None
