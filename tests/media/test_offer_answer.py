"""RFC 3264 offer/answer for the one audio stream: codecs, DTMF, direction, hold, SRTP keys."""

from __future__ import annotations

import base64
import os
import struct

import pylibsrtp
import pytest

from callgate.media.offer_answer import (
    SDES_SUITES,
    CodecSpec,
    CryptoSuite,
    NegotiatedMedia,
    NegotiationError,
    accept_answer,
    answer_offer,
    content_changed,
    make_offer,
)
from callgate.sip.sdp import SessionDescription, parse_crypto, parse_sdp

PREFS = ("opus", "G722", "PCMU", "PCMA")
LOCAL_IP = "192.0.2.10"
PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def key_for(suite: str, length: int | None = None) -> str:
    return base64.b64encode(os.urandom(length or SDES_SUITES[suite])).decode()


def make_crypto(suite: str) -> CryptoSuite:
    return CryptoSuite(1, suite, key_for(suite))


def sdp(media: str, *, session: str = "", c: str = "c=IN IP4 198.51.100.7\r\n",
        version: int = 1) -> SessionDescription:
    text = (f"v=0\r\no=peer 42 {version} IN IP4 198.51.100.7\r\ns=-\r\n{c}t=0 0\r\n{session}"
            + media)
    return parse_sdp(text.encode())


def audio(formats: str, *attrs: str, port: int = 30000, proto: str = "RTP/AVP") -> str:
    return f"m=audio {port} {proto} {formats}\r\n" + "".join(f"a={a}\r\n" for a in attrs)


def answer(offer: SessionDescription, prefs: tuple[str, ...] = PREFS, *, version: int = 1,
           **kw: object) -> tuple[SessionDescription, NegotiatedMedia]:
    return answer_offer(offer, local_ip=LOCAL_IP, local_port=40000, preferences=prefs,
                        session_id=77, session_version=version, make_crypto=make_crypto,
                        **kw)  # type: ignore[arg-type]


def refusal(offer: SessionDescription, prefs: tuple[str, ...] = PREFS) -> NegotiationError:
    with pytest.raises(NegotiationError) as info:
        answer(offer, prefs)
    assert info.value.status == 488
    return info.value


# --- codec choice -------------------------------------------------------------------------


def test_first_offered_codec_we_support_wins_and_pt_is_kept() -> None:
    offer = sdp(audio("18 8 0 96", "rtpmap:18 G729/8000", "rtpmap:96 opus/48000/2"))
    body, media = answer(offer)
    assert media.codec == CodecSpec("PCMA", 8, 8000, 1, None)
    m = body.media[0]
    assert m.formats == ["8"] and m.port == 40000 and m.proto == "RTP/AVP"
    assert m.values("rtpmap") == ["8 PCMA/8000"]
    assert body.connection == LOCAL_IP and body.origin.session_id == 77


def test_preferences_only_filter() -> None:
    offer = sdp(audio("0 8 9"))
    assert answer(offer, ("PCMA", "PCMU"))[1].codec.name == "PCMU"
    assert answer(offer, ("pcma",))[1].codec.name == "PCMA"
    assert answer(offer, ("G722",))[1].codec == CodecSpec("G722", 9, 8000, 1, None)


def test_opus_dynamic_pt_kept_with_fec_in_answer() -> None:
    offer = sdp(audio("96 0", "rtpmap:96 OPUS/48000/2", "fmtp:96 maxplaybackrate=16000"))
    body, media = answer(offer)
    assert media.codec == CodecSpec("opus", 96, 48000, 2, "maxplaybackrate=16000")
    m = body.media[0]
    assert m.formats == ["96"]
    assert m.values("rtpmap") == ["96 opus/48000/2"]
    assert m.values("fmtp") == ["96 useinbandfec=1"]


@pytest.mark.parametrize("rtpmap", ["OPUS/16000", "opus/48000", "opus/48000/1", "opus/8000/2"])
def test_only_opus_48000_2_is_opus(rtpmap: str) -> None:
    offer = sdp(audio("109 8", f"rtpmap:109 {rtpmap}"))
    assert answer(offer)[1].codec.name == "PCMA"
    assert refusal(offer, ("opus",)).warning.startswith("305 ")


def test_g722_uses_its_8000_hz_rtp_clock() -> None:
    assert answer(sdp(audio("9")))[1].codec == CodecSpec("G722", 9, 8000, 1, None)
    offer = sdp(audio("9 0", "rtpmap:9 G722/16000"))  # wrong clock: not G.722 as we know it
    assert answer(offer)[1].codec.name == "PCMU"


def test_static_pt_without_rtpmap_and_lowercase_names() -> None:
    offer = sdp(audio("3 97 8", "rtpmap:97 pcmu/8000/1"))
    assert answer(offer)[1].codec == CodecSpec("PCMU", 97, 8000, 1, None)
    assert answer(sdp(audio("3 8")))[1].codec.name == "PCMA"


def test_duplicate_payload_type_is_never_negotiated() -> None:
    offer = sdp(audio("101 0 101", "rtpmap:101 PCMA/8000", "rtpmap:101 telephone-event/8000"))
    body, media = answer(offer)
    assert media.codec.name == "PCMU" and media.dtmf_payload_type is None
    assert body.media[0].formats == ["0"]
    only_ambiguous = sdp(audio("97 97", "rtpmap:97 PCMU/8000", "rtpmap:97 PCMA/8000"))
    assert refusal(only_ambiguous).warning.startswith("305 ")
    # the same mapping twice is not ambiguous
    same = sdp(audio("97 97", "rtpmap:97 PCMU/8000", "rtpmap:97 pcmu/8000"))
    assert answer(same)[1].codec == CodecSpec("PCMU", 97, 8000, 1, None)


def test_no_common_codec() -> None:
    err = refusal(sdp(audio("18 4 96 101", "rtpmap:96 AMR-WB/16000",
                            "rtpmap:101 telephone-event/8000")))
    assert err.warning == '305 callgate "no common audio codec"'


def test_preferences_must_name_known_codecs() -> None:
    for prefs in ((), ("PCMU", "G729"), ("telephone-event",)):
        with pytest.raises(ValueError):
            answer(sdp(audio("0")), prefs)


# --- telephone-event ----------------------------------------------------------------------


def test_dtmf_only_when_offered() -> None:
    body, media = answer(sdp(audio("0")))
    assert media.dtmf_payload_type is None and body.media[0].formats == ["0"]


def test_dtmf_pt_and_events_echoed() -> None:
    offer = sdp(audio("8 102", "rtpmap:102 telephone-event/8000/1", "fmtp:102 0-15"))
    body, media = answer(offer)
    assert media.dtmf_payload_type == 102
    assert body.media[0].formats == ["8", "102"]
    assert body.media[0].values("rtpmap") == ["8 PCMA/8000", "102 telephone-event/8000"]
    assert body.media[0].values("fmtp") == ["102 0-15"]


def test_dtmf_default_events_and_wideband_event_clock_ignored() -> None:
    offer = sdp(audio("0 113 126", "rtpmap:113 telephone-event/16000",
                      "rtpmap:126 telephone-event/8000"))
    body, media = answer(offer)
    assert media.dtmf_payload_type == 126
    assert body.media[0].values("fmtp") == ["126 0-16"]
    assert answer(sdp(audio("0 113", "rtpmap:113 telephone-event/16000")))[
        1].dtmf_payload_type is None


# --- direction and hold ---------------------------------------------------------------------


@pytest.mark.parametrize(("offered", "answered", "hold"), [
    ("sendrecv", "sendrecv", False),
    ("sendonly", "recvonly", True),
    ("recvonly", "sendonly", False),
    ("inactive", "inactive", True),
])
def test_direction_answered_per_rfc3264(offered: str, answered: str, hold: bool) -> None:
    body, media = answer(sdp(audio("0", offered)))
    assert body.direction_for(body.media[0]) == answered
    assert body.media[0].has(answered)
    assert media.direction == answered and media.on_hold is hold
    assert media.sends is (answered in ("sendrecv", "sendonly"))


def test_session_level_direction_applies_unless_media_overrides() -> None:
    assert answer(sdp(audio("0"), session="a=sendonly\r\n"))[1].direction == "recvonly"
    assert answer(sdp(audio("0", "sendrecv"), session="a=inactive\r\n"))[1].direction == \
        "sendrecv"


def test_unknown_direction_spelling_means_sendrecv() -> None:
    assert answer(sdp(audio("8", "SendRecv")))[1].direction == "sendrecv"


def test_legacy_hold_connection_address() -> None:
    body, media = answer(sdp(audio("0"), c="c=IN IP4 0.0.0.0\r\n"))
    assert media.remote_addr == ("0.0.0.0", 30000)
    assert media.on_hold and media.direction == "recvonly"
    assert body.media[0].has("recvonly") and body.connection == LOCAL_IP
    assert answer(sdp(audio("0", "recvonly"), c="c=IN IP4 0.0.0.0\r\n"))[1].direction == \
        "inactive"


def test_hold_and_unhold_re_offers_bump_version_only_on_change() -> None:
    """A call, a hold re-INVITE, a repeated hold, then resume (RFC 3264 §8.4, §8)."""
    first_body, first = answer(sdp(audio("0 101", "rtpmap:101 telephone-event/8000")), version=1)
    assert not first.on_hold
    version, previous = 1, first_body
    expected = [("sendonly", True, "recvonly"), ("sendonly", False, "recvonly"),
                ("sendrecv", True, "sendrecv"), ("inactive", True, "inactive")]
    for n, (direction, changes, ours) in enumerate(expected, start=2):
        offer = sdp(audio("0 101", "rtpmap:101 telephone-event/8000", direction), version=n)
        body, media = answer(offer, version=version)
        assert content_changed(previous, body) is changes
        if changes:
            version += 1
            body, media = answer(offer, version=version)
        assert body.origin.session_version == version
        assert media.direction == ours and media.on_hold is (ours != "sendrecv")
        previous = body
    assert version == 4
    assert content_changed(None, previous)


# --- transports and SRTP --------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["RTP/AVP", "RTP/AVPF"])
def test_plain_transport_kept(proto: str) -> None:
    body, media = answer(sdp(audio("0", "rtcp-fb:* trr-int 1000", proto=proto)))
    assert body.media[0].proto == proto and media.proto == proto
    assert media.local_crypto is None and media.remote_crypto is None
    assert not body.media[0].has("crypto")


@pytest.mark.parametrize("suite", sorted(SDES_SUITES))
@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/SAVPF"])
def test_savp_with_each_suite(suite: str, proto: str) -> None:
    offer_key = key_for(suite)
    offer = sdp(audio("0", f"crypto:5 {suite} inline:{offer_key}|2^31", proto=proto))
    body, media = answer(offer)
    assert body.media[0].proto == proto == media.proto
    assert media.remote_crypto == CryptoSuite(5, suite, offer_key)
    assert media.local_crypto is not None and media.local_crypto.tag == 5
    [line] = body.media[0].values("crypto")
    parsed = parse_crypto(line)
    assert parsed is not None and (parsed.tag, parsed.suite) == (5, suite)
    assert parsed.key_b64 == media.local_crypto.key_b64 != offer_key
    # the keys really work with libsrtp: the offerer protects, we unprotect with remote_crypto
    sender = srtp_session(offer_key, suite, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    receiver = srtp_session(media.remote_crypto.key_b64, suite,
                            pylibsrtp.Policy.SSRC_ANY_INBOUND)
    packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + bytes(160)
    assert receiver.unprotect(sender.protect(packet)) == packet


def srtp_session(key_b64: str, suite: str, ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=base64.b64decode(key_b64), ssrc_type=ssrc_type,
                              srtp_profile=PROFILES[suite])
    return pylibsrtp.Session(policy)


@pytest.mark.parametrize("suite", sorted(SDES_SUITES))
def test_key_lengths_match_libsrtp(suite: str) -> None:
    pylibsrtp.Policy(key=bytes(SDES_SUITES[suite]), srtp_profile=PROFILES[suite])
    with pytest.raises(ValueError):
        pylibsrtp.Policy(key=bytes(SDES_SUITES[suite] - 1), srtp_profile=PROFILES[suite])


def test_first_supported_crypto_in_offer_order() -> None:
    offer = sdp(audio(
        "0",
        f"crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key_for('', 46)}",
        f"crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{key_for('', 29)}",      # short key
        f"crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{key_for('', 30)}|2^20|1:4",  # MKI
        f"crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{key_for('', 30)} KDR=1",  # session param
        f"crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{key_for('', 30)}",
        f"crypto:6 AES_CM_128_HMAC_SHA1_80 inline:{key_for('', 30)}",
        proto="RTP/SAVP"))
    body, media = answer(offer)
    assert media.remote_crypto is not None and media.remote_crypto.tag == 5
    assert media.remote_crypto.suite == "AES_CM_128_HMAC_SHA1_32"
    assert len(body.media[0].values("crypto")) == 1
    _, media80 = answer(offer, srtp_suites=("AES_CM_128_HMAC_SHA1_80",))
    assert media80.remote_crypto is not None and media80.remote_crypto.tag == 6


def test_savp_without_usable_crypto_is_refused() -> None:
    key = key_for("", 46)
    err = refusal(sdp(audio("0", f"crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key}",
                            proto="RTP/SAVP")))
    assert err.warning.startswith("306 ")
    assert refusal(sdp(audio("0", proto="RTP/SAVP"))).warning.startswith("306 ")


def test_crypto_on_plain_rtp_is_optional_srtp() -> None:
    key = key_for("AES_CM_128_HMAC_SHA1_80")
    body, media = answer(sdp(audio("0", f"crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{key}")))
    assert media.proto == "RTP/AVP" and media.remote_crypto is not None
    assert media.local_crypto is not None and body.media[0].has("crypto")
    body, media = answer(sdp(audio("0", "crypto:3 AES_CM_128_HMAC_SHA1_80 inline:AAAA")))
    assert media.local_crypto is None and not body.media[0].has("crypto")


def test_make_crypto_must_honour_the_suite() -> None:
    key = key_for("AES_CM_128_HMAC_SHA1_80")
    offer = sdp(audio("0", f"crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}", proto="RTP/SAVP"))
    with pytest.raises(ValueError):
        answer_offer(offer, local_ip=LOCAL_IP, local_port=1, preferences=PREFS, session_id=1,
                     session_version=1,
                     make_crypto=lambda s: CryptoSuite(1, "AEAD_AES_128_GCM", key))
    with pytest.raises(ValueError):
        answer_offer(offer, local_ip=LOCAL_IP, local_port=1, preferences=PREFS, session_id=1,
                     session_version=1, make_crypto=lambda s: CryptoSuite(1, s, "AAAA"))


@pytest.mark.parametrize("proto", ["UDP/TLS/RTP/SAVPF", "TCP/RTP/AVP", "udptl"])
def test_unsupported_transports(proto: str) -> None:
    err = refusal(sdp(audio("0", "fingerprint:sha-256 AB:CD", "setup:actpass", proto=proto)))
    assert err.warning.startswith("302 callgate ")


# --- stream layout ---------------------------------------------------------------------------


def test_other_streams_refused_with_port_zero_in_order() -> None:
    offer = sdp("m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
                + audio("0", port=0)
                + audio("8 101", "rtpmap:101 telephone-event/8000", "sendonly")
                + audio("0", port=32000)
                + "m=image 6000 udptl t38\r\n")
    body, media = answer(offer)
    layout = [(m.media, m.port, m.proto, m.formats) for m in body.media]
    assert layout == [("video", 0, "RTP/AVP", ["96"]), ("audio", 0, "RTP/AVP", ["0"]),
                      ("audio", 40000, "RTP/AVP", ["8", "101"]),
                      ("audio", 0, "RTP/AVP", ["0"]), ("image", 0, "udptl", ["t38"])]
    assert all(not m.attributes for m in body.media if m.port == 0)
    assert media.remote_addr == ("198.51.100.7", 30000) and media.codec.name == "PCMA"


def test_a_refused_audio_stream_does_not_stop_a_later_one() -> None:
    offer = sdp(audio("18", proto="RTP/AVP") + audio("0", port=30002))
    body, media = answer(offer)
    assert [m.port for m in body.media] == [0, 40000]
    assert media.remote_addr[1] == 30002


def test_no_audio_at_all() -> None:
    err = refusal(sdp("m=image 15580 udptl t38\r\n"))
    assert err.warning == '304 callgate "no audio stream offered"'
    assert refusal(sdp("m=video 5000 RTP/AVP 96\r\n" + audio("0", port=0))).warning.startswith(
        "304 ")


def test_rtcp_mux_echoed_only_when_offered() -> None:
    body, media = answer(sdp(audio("0", "rtcp-mux", "rtcp:30000")))
    assert body.media[0].has("rtcp-mux") and media.rtcp_mux and media.remote_rtcp_addr is None
    body, media = answer(sdp(audio("0", "rtcp:30011 IN IP4 198.51.100.99")))
    assert not body.media[0].has("rtcp-mux") and not media.rtcp_mux
    assert media.remote_rtcp_addr == ("198.51.100.99", 30011)
    assert answer(sdp(audio("0", "rtcp:30001")))[1].remote_rtcp_addr == ("198.51.100.7", 30001)
    assert answer(sdp(audio("0")))[1].remote_rtcp_addr is None


def test_addresses() -> None:
    v6 = sdp(audio("0"), c="c=IN IP6 2001:db8::7\r\n")
    body, media = answer_offer(v6, local_ip="2001:db8::10", local_port=4000, preferences=PREFS,
                               session_id=1, session_version=1, make_crypto=make_crypto)
    assert media.remote_addr == ("2001:db8::7", 30000)
    assert b"c=IN IP6 2001:db8::10\r\n" in body.to_bytes()
    assert b"o=- 1 1 IN IP6 2001:db8::10\r\n" in body.to_bytes()
    assert refusal(v6).warning.startswith("301 ")  # we are IPv4 only here
    assert refusal(sdp(audio("0"), c="c=IN IP4 233.252.0.1/16\r\n")).warning.startswith("301 ")
    assert refusal(sdp(audio("0"), c="")).warning.startswith("301 ")
    media_level = sdp("m=audio 30000 RTP/AVP 0\r\nc=IN IP4 203.0.113.5\r\n", c="")
    assert answer(media_level)[1].remote_addr == ("203.0.113.5", 30000)
    assert answer(sdp(audio("0"), c="c=IN IP4 media.example.net\r\n"))[1].remote_addr == (
        "media.example.net", 30000)


@pytest.mark.parametrize(("attrs", "ptime"), [
    ((), 20), (("ptime:30",), 30), (("ptime:10",), 10), (("ptime:60",), 60),
    (("ptime:25",), 20), (("ptime:100",), 20), (("ptime:20.0",), 20), (("ptime:x",), 20),
    (("ptime:40", "maxptime:30"), 30), (("maxptime:10",), 10), (("maxptime:140",), 20),
])
def test_ptime_rule(attrs: tuple[str, ...], ptime: int) -> None:
    body, media = answer(sdp(audio("0", *attrs)))
    assert media.ptime == ptime
    assert body.media[0].values("ptime") == ["20"]  # what we want to receive


def test_negotiation_error_shape() -> None:
    err = NegotiationError("no common audio codec")
    assert (err.status, err.warning) == (488, '305 callgate "no common audio codec"')
    assert NegotiationError("x", code=304, status=606).status == 606


# --- our own offers (late offer, re-INVITE) ---------------------------------------------------


def test_make_offer_contents() -> None:
    offer = make_offer(local_ip=LOCAL_IP, local_port=40002, preferences=PREFS, session_id=9,
                       session_version=3)
    [m] = offer.media
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 40002, "RTP/AVP",
                                                     ["111", "9", "0", "8", "101"])
    assert m.values("rtpmap") == ["111 opus/48000/2", "9 G722/8000", "0 PCMU/8000",
                                  "8 PCMA/8000", "101 telephone-event/8000"]
    assert m.values("fmtp") == ["111 useinbandfec=1", "101 0-16"]
    assert m.has("sendrecv") and m.has("rtcp-mux") and m.first("ptime") == "20"
    assert (offer.origin.session_id, offer.origin.session_version) == (9, 3)
    assert parse_sdp(offer.to_bytes()) == offer
    again = make_offer(local_ip=LOCAL_IP, local_port=1, preferences=("PCMU", "pcmu"),
                       session_id=1, session_version=1)
    assert again.media[0].formats == ["0", "101"]


def test_make_offer_validation() -> None:
    with pytest.raises(ValueError):
        make_offer(local_ip=LOCAL_IP, local_port=1, preferences=("GSM",), session_id=1,
                   session_version=1)
    with pytest.raises(ValueError):
        make_offer(local_ip=LOCAL_IP, local_port=1, preferences=PREFS, session_id=1,
                   session_version=1, direction="hold")
    with pytest.raises(ValueError):
        make_offer(local_ip=LOCAL_IP, local_port=1, preferences=PREFS, session_id=1,
                   session_version=1, crypto=CryptoSuite(1, "AES_CM_128_HMAC_SHA1_80", "AA"))


@pytest.mark.parametrize("suite", [None, *sorted(SDES_SUITES)])
def test_offer_answer_round_trip(suite: str | None) -> None:
    crypto = CryptoSuite(2, suite, key_for(suite)) if suite else None
    offer = make_offer(local_ip="198.51.100.7", local_port=40002, preferences=("PCMA", "opus"),
                       session_id=9, session_version=1, crypto=crypto)
    wire = parse_sdp(offer.to_bytes())
    their_body, theirs = answer(wire, ("opus", "PCMU", "PCMA"))
    ours = accept_answer(offer, parse_sdp(their_body.to_bytes()))
    assert ours.codec == CodecSpec("PCMA", 8, 8000, 1, None) == theirs.codec
    assert ours.dtmf_payload_type == 101 == theirs.dtmf_payload_type
    assert ours.remote_addr == (LOCAL_IP, 40000) and ours.rtcp_mux and theirs.rtcp_mux
    assert ours.direction == "sendrecv" and ours.proto == theirs.proto
    assert ours.local_crypto == theirs.remote_crypto == crypto
    assert ours.remote_crypto == theirs.local_crypto
    assert (ours.remote_crypto is None) is (suite is None)


def answer_text(media: str, c: str = "c=IN IP4 203.0.113.1\r\n") -> SessionDescription:
    return parse_sdp(f"v=0\r\no=x 1 1 IN IP4 203.0.113.1\r\ns=-\r\n{c}t=0 0\r\n{media}")


def late_offer(**kw: object) -> SessionDescription:
    return make_offer(local_ip=LOCAL_IP, local_port=40002, preferences=PREFS, session_id=9,
                      session_version=1, **kw)  # type: ignore[arg-type]


def test_accept_answer_reads_their_choices() -> None:
    got = accept_answer(late_offer(), answer_text(audio(
        "96 0 101", "rtpmap:96 opus/48000/2", "fmtp:96 stereo=0", "rtpmap:101 telephone-event/8000",
        "recvonly", "ptime:40")))
    assert got.codec == CodecSpec("opus", 96, 48000, 2, "stereo=0")
    assert got.dtmf_payload_type == 101 and got.direction == "sendonly" and got.ptime == 40
    assert not got.rtcp_mux and got.remote_rtcp_addr is None
    held = accept_answer(late_offer(direction="sendonly"), answer_text(audio("0", "recvonly")))
    assert held.direction == "sendonly" and held.dtmf_payload_type is None
    legacy = accept_answer(late_offer(), answer_text(audio("0"), c="c=IN IP4 0.0.0.0\r\n"))
    assert legacy.direction == "recvonly" and legacy.on_hold


@pytest.mark.parametrize(("media", "code"), [
    (audio("0", port=0), "304"),
    ("m=video 5000 RTP/AVP 0\r\n", "302"),
    (audio("0", proto="RTP/SAVP"), "302"),
    (audio("18 101", "rtpmap:101 telephone-event/8000"), "305"),
])
def test_accept_answer_refusals(media: str, code: str) -> None:
    with pytest.raises(NegotiationError) as info:
        accept_answer(late_offer(), answer_text(media))
    assert info.value.warning.startswith(code + " ")
    with pytest.raises(NegotiationError):
        accept_answer(late_offer(), answer_text(audio("0"), c=""))
    with pytest.raises(NegotiationError):
        accept_answer(late_offer(), answer_text(""))


def test_accept_answer_crypto_must_match_tag_and_suite() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    offer = late_offer(crypto=CryptoSuite(4, suite, key_for(suite)))
    wrong_tag = answer_text(audio("0", f"crypto:1 {suite} inline:{key_for(suite)}",
                                  proto="RTP/SAVP"))
    with pytest.raises(NegotiationError) as info:
        accept_answer(offer, wrong_tag)
    assert info.value.warning.startswith("306 ")
    good_key = key_for(suite)
    good = answer_text(audio("0", f"crypto:4 {suite} inline:{good_key}", proto="RTP/SAVP"))
    assert accept_answer(offer, good).remote_crypto == CryptoSuite(4, suite, good_key)


def test_accept_answer_needs_our_offer() -> None:
    with pytest.raises(ValueError):
        accept_answer(answer_text(audio("0", port=0)), answer_text(audio("0")))
