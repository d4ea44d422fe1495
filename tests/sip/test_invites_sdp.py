"""Every real-world INVITE in ../shared/conformance/invites, negotiated as its README says.

Only the SDP layer is exercised: the body is cut off after the blank line by hand, honouring
Content-Length, so this does not depend on the SIP message parser. Files whose expected answer
is a SIP-level one (400 for a malformed header, 481 for an unknown dialog) still get their SDP
checked: the row says what the SDP layer must produce should the SIP layer let them through.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from callgate.media.offer_answer import (
    SDES_SUITES,
    CryptoSuite,
    NegotiatedMedia,
    NegotiationError,
    accept_answer,
    answer_offer,
    make_offer,
)
from callgate.sip.sdp import SdpError, SessionDescription, parse_crypto, parse_sdp

INVITES = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "invites"
PREFS = ("opus", "G722", "PCMU", "PCMA")  # the README's reference UAS


@dataclass(frozen=True)
class Answered:
    codec: str
    pt: int
    dtmf: int | None
    proto: str = "RTP/AVP"
    rtcp_mux: bool = False
    crypto_tag: int | None = None
    ptime: int = 20
    refused_lines: tuple[int, ...] = ()  # m= lines answered with port 0
    sip_level: str = ""  # what the SIP layer answers instead, when it does


@dataclass(frozen=True)
class Refused:
    warning_code: int
    sip_level: str = ""


@dataclass(frozen=True)
class Unreadable:
    """parse_sdp raises SdpError; the UAS answers 400/488 (or 403 to the peer) instead."""


@dataclass(frozen=True)
class NoOffer:
    """No SDP in the INVITE: our offer goes in the 200, the answer comes in the ACK."""


Expected = Answered | Refused | Unreadable | NoOffer

EXPECTED: dict[str, Expected] = {
    "arcor-cpe-reinvite-sorted-headers.sip": Answered(
        "PCMA", 8, None, sip_level="481 outside the matching dialog"),
    "asterisk-voipbin-to-telnyx-avpf-privacy-id.sip": Answered(
        "PCMU", 0, 101, proto="RTP/AVPF", rtcp_mux=True),
    "audiocodes-ipp-tcp-pcma-only.sip": Answered("PCMA", 8, 101),
    "carrier-late-offer-no-sdp-pai-history-info.sip": NoOffer(),
    "clarent-c5cm-softswitch-g723.sip": Answered("PCMA", 8, None),
    "freeswitch18-via-kamailio-rpid.sip": Answered("PCMU", 0, 101),
    "ims-b2bua-ipv6-precondition-amrwb-only.sip": Refused(305),
    "italtel-imss-carrier-g726-cdsc.sip": Answered("PCMA", 8, 102, ptime=30),
    "italtel-imss-reinvite-t38-image-only.sip": Refused(
        304, sip_level="481 outside the matching dialog; the call keeps its audio"),
    "linphone-android-avpf-via-kamailio.sip": Answered("PCMU", 0, 100, proto="RTP/AVPF"),
    "localphone-nextone-msw-g729-session-timer.sip": Answered("PCMU", 0, None),
    "microsip-tls-sdes-four-suites.sip": Answered("PCMA", 8, 101, crypto_tag=3),
    "nero-sipps-2005-lowercase-codecs.sip": Answered("PCMU", 0, None),
    "netgear-ta612v-duplicate-payload-type.sip": Answered("PCMU", 0, None),
    "neuralx-mxsf-quoted-names-route.sip": Answered("PCMA", 8, 101),
    "polycom-spip601-attended-transfer-replaces.sip": Answered(
        "PCMU", 0, 101, sip_level="400 (headers in Request-URI) or 481 (Replaces)"),
    "russian-fs-sbc-tcp-utf8-precondition.sip": Answered("PCMU", 0, 101, rtcp_mux=True),
    "sipjs-webrtc-via-kamailio-dtls-ice.sip": Refused(302),
    "sonicsip-scanner-sqli-c-line.sip": Unreadable(),
    "unknown-ua-tcp-opus-variants-g722.sip": Answered("PCMU", 0, 101),
    "utstarcom-ngn-diversion-pai.sip": Answered("PCMA", 8, 101),
    "valid8-ipv6-unbracketed-hosts.sip": Answered(
        "PCMU", 0, None, sip_level="400 (unbracketed IPv6 hosts)"),
    "vericall-edge-malformed-from-audio-video.sip": Answered(
        "PCMU", 0, 101, refused_lines=(1,), sip_level="400 (malformed From)"),
    "xlite4-compact-content-type-no-body.sip": NoOffer(),
}


def sip_body(data: bytes) -> bytes:
    """The body as Content-Length (or its compact form ``l``) delimits it (RFC 3261 §20.14)."""
    end = data.index(b"\r\n\r\n")
    length = None
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value.strip())
    assert length is not None, "every file carries Content-Length"
    body = data[end + 4:end + 4 + length]
    assert len(body) == length
    return body


def make_crypto(suite: str) -> CryptoSuite:
    return CryptoSuite(1, suite, base64.b64encode(os.urandom(SDES_SUITES[suite])).decode())


def negotiate(offer: SessionDescription,
              prefs: tuple[str, ...] = PREFS) -> tuple[SessionDescription, NegotiatedMedia]:
    audio_ip = next((offer.connection_for(m) for m in offer.media if m.media == "audio"), None)
    local_ip = "2001:db8::10" if audio_ip and ":" in audio_ip else "192.0.2.10"
    return answer_offer(offer, local_ip=local_ip, local_port=40000, preferences=prefs,
                        session_id=5, session_version=1, make_crypto=make_crypto)


def test_table_covers_every_file_and_readme_row() -> None:
    files = {p.name for p in INVITES.glob("*.sip")}
    readme = (INVITES / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([^`]+\.sip)` \|", readme, flags=re.MULTILINE))
    assert files == set(EXPECTED) == rows


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invite_sdp_outcome(name: str) -> None:
    expected = EXPECTED[name]
    body = sip_body((INVITES / name).read_bytes())
    if isinstance(expected, NoOffer):
        assert body == b""
        check_late_offer()
        return
    if isinstance(expected, Unreadable):
        with pytest.raises(SdpError) as info:
            parse_sdp(body)
        assert "OR" not in str(info.value) and "'" not in str(info.value)
        return
    offer = parse_sdp(body)
    if isinstance(expected, Refused):
        with pytest.raises(NegotiationError) as refused:
            negotiate(offer)
        assert refused.value.status == 488
        assert refused.value.warning.startswith(f"{expected.warning_code} callgate \"")
        return
    answer, media = negotiate(offer)
    wire = parse_sdp(answer.to_bytes())
    assert len(wire.media) == len(offer.media)  # RFC 3264 §6: one answer line per offer line
    assert [i for i, m in enumerate(wire.media) if m.port == 0] == list(expected.refused_lines)
    [audio] = [m for m in wire.media if m.port != 0]
    assert media.codec.name == expected.codec
    assert media.codec.payload_type == expected.pt
    assert media.dtmf_payload_type == expected.dtmf
    assert audio.formats == [str(expected.pt)] + ([str(expected.dtmf)] if expected.dtmf else [])
    assert audio.proto == expected.proto == media.proto
    assert audio.has("rtcp-mux") is expected.rtcp_mux
    assert media.ptime == expected.ptime
    assert media.direction == "sendrecv"
    cryptos = audio.values("crypto")
    if expected.crypto_tag is None:
        assert cryptos == []
    else:
        [line] = cryptos
        parsed = parse_crypto(line)
        assert parsed is not None and parsed.tag == expected.crypto_tag
        assert parsed.suite == "AES_CM_128_HMAC_SHA1_80"


def check_late_offer() -> None:
    offer = make_offer(local_ip="192.0.2.10", local_port=40000, preferences=PREFS,
                       session_id=5, session_version=1)
    [m] = parse_sdp(offer.to_bytes()).media
    assert m.proto == "RTP/AVP"
    names = [v.split()[1].split("/")[0] for v in m.values("rtpmap")]
    assert names == ["opus", "G722", "PCMU", "PCMA", "telephone-event"]
    # the ACK's answer, as a peer preferring G.711 would give it
    peer_answer, _ = answer_offer(offer, local_ip="198.51.100.20", local_port=5004,
                                  preferences=("PCMA", "PCMU"), session_id=1,
                                  session_version=1, make_crypto=make_crypto)
    got = accept_answer(offer, parse_sdp(peer_answer.to_bytes()))
    assert (got.codec.name, got.dtmf_payload_type, got.remote_addr) == (
        "PCMU", 101, ("198.51.100.20", 5004))


def test_opus_16000_is_never_taken_for_opus() -> None:
    name = "unknown-ua-tcp-opus-variants-g722.sip"
    offer = parse_sdp(sip_body((INVITES / name).read_bytes()))
    _, media = negotiate(offer, ("opus",))
    assert media.codec.payload_type == 111
    _, media = negotiate(offer, ("G722",))
    assert (media.codec.payload_type, media.codec.clock_rate) == (9, 8000)


def test_duplicate_pt_101_is_left_out_even_for_dtmf() -> None:
    name = "netgear-ta612v-duplicate-payload-type.sip"
    answer, media = negotiate(parse_sdp(sip_body((INVITES / name).read_bytes())))
    assert media.dtmf_payload_type is None
    assert b"101" not in answer.to_bytes()
