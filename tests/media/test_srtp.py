"""SRTP/SRTCP with SDES keys: every supported suite both ways, tampering, replay, key checks."""

from __future__ import annotations

import base64

import pytest

from callgate.media.offer_answer import CryptoSuite
from callgate.media.rtcp import ReceiverReport, SourceDescription, build_rtcp, parse_rtcp
from callgate.media.rtp import RtpPacket, RtpSequencer, parse_rtp
from callgate.media.srtp import SUPPORTED_SUITES, SrtpContext, SrtpError, key_length, new_crypto

TAG_LENGTH = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4,
              "AEAD_AES_128_GCM": 16, "AEAD_AES_256_GCM": 16}


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    """Two ends of one call: each sends with its own key and receives with the other's."""
    ours, theirs = new_crypto(1, suite), new_crypto(1, suite)
    return SrtpContext(ours, theirs), SrtpContext(theirs, ours)


def rtp(seq: int, payload: bytes = b"\xd5" * 160) -> bytes:
    return RtpPacket(8, seq, seq * 160, 0x1234, False, payload).to_bytes()


def test_supported_suites() -> None:
    assert SUPPORTED_SUITES[0] == "AES_CM_128_HMAC_SHA1_80"  # the one every SBC offers
    assert set(SUPPORTED_SUITES) == set(TAG_LENGTH)


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_new_crypto_key_material(suite: str) -> None:
    a, b = new_crypto(3, suite), new_crypto(3, suite)
    assert (a.tag, a.suite) == (3, suite)
    raw = base64.b64decode(a.key_b64, validate=True)
    assert len(raw) == key_length(suite) == {"AEAD_AES_128_GCM": 28,
                                              "AEAD_AES_256_GCM": 44}.get(suite, 30)
    assert a.key_b64 != b.key_b64


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_rtp_and_rtcp_both_ways(suite: str) -> None:
    alice, bob = pair(suite)
    sender = RtpSequencer(ssrc=0xABCD)
    for _ in range(50):
        plain = sender.frame(0, bytes(range(160)), 160).to_bytes()
        wire = alice.protect(plain)
        assert len(wire) == len(plain) + TAG_LENGTH[suite]
        assert wire[12:] != plain[12:]  # payload encrypted, header in the clear (RFC 3711 §3)
        assert wire[:12] == plain[:12]
        assert bob.unprotect(wire) == plain
    back = rtp(7)
    assert alice.unprotect(bob.protect(back)) == back
    report = build_rtcp([ReceiverReport(0xABCD), SourceDescription(((0xABCD, "a@b"),))])
    srtcp = alice.protect_rtcp(report)
    assert srtcp != report
    assert parse_rtcp(bob.unprotect_rtcp(srtcp)) == parse_rtcp(report)


@pytest.mark.parametrize("suite", SUPPORTED_SUITES)
def test_flipped_bit_fails_authentication(suite: str) -> None:
    alice, bob = pair(suite)
    for seq, position in [(1, -1), (2, 20), (3, 5)]:  # tag, payload, header
        wire = bytearray(alice.protect(rtp(seq)))
        wire[position] ^= 0x01
        with pytest.raises(SrtpError) as err:
            bob.unprotect(bytes(wire))
        assert err.value.reason == "authentication failure"
    assert bob.auth_failures == 3 and bob.replay_failures == 0
    # The stream still works after the attacks.
    good = rtp(4)
    assert bob.unprotect(alice.protect(good)) == good


def test_tampered_srtcp_fails() -> None:
    alice, bob = pair("AES_CM_128_HMAC_SHA1_80")
    wire = bytearray(alice.protect_rtcp(ReceiverReport(1).to_bytes()))
    wire[9] ^= 0x80
    with pytest.raises(SrtpError):
        bob.unprotect_rtcp(bytes(wire))
    assert bob.auth_failures == 1


def test_replay_is_rejected_and_counted() -> None:
    alice, bob = pair("AES_CM_128_HMAC_SHA1_80")
    first = alice.protect(rtp(100))
    assert parse_rtp(bob.unprotect(first)).sequence == 100
    with pytest.raises(SrtpError) as err:
        bob.unprotect(first)
    assert "replay" in err.value.reason
    assert bob.replay_failures == 1 and bob.auth_failures == 0
    # Late but unseen packets inside the replay window are still accepted.
    later = [alice.protect(rtp(s)) for s in range(101, 110)]
    for packet in reversed(later):
        bob.unprotect(packet)
    # Far behind the 128-packet window: rejected as too old.
    old = alice.protect(rtp(10))
    for s in range(110, 400):
        bob.unprotect(alice.protect(rtp(s)))
    with pytest.raises(SrtpError):
        bob.unprotect(old)
    assert bob.replay_failures == 2


def test_wrong_key_fails() -> None:
    alice, _ = pair("AES_CM_128_HMAC_SHA1_80")
    stranger = SrtpContext(new_crypto(1, "AES_CM_128_HMAC_SHA1_80"),
                           new_crypto(1, "AES_CM_128_HMAC_SHA1_80"))
    with pytest.raises(SrtpError):
        stranger.unprotect(alice.protect(rtp(1)))
    assert stranger.auth_failures == 1


def test_garbage_is_an_srtp_error() -> None:
    _, bob = pair("AES_CM_128_HMAC_SHA1_80")
    for junk in (b"", b"\x80\x00", b"\x80" * 11):
        with pytest.raises(SrtpError):
            bob.unprotect(junk)
    with pytest.raises(SrtpError):
        bob.unprotect(b"\x80" * 2000)  # beyond libsrtp's buffer
    assert bob.bad_packets == 4


def test_interop_with_known_key_unpadded_base64() -> None:
    # A key as an SDP offer carries it (RFC 4568 §10 example key); both ends derive the same.
    key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    crypto = CryptoSuite(1, "AES_CM_128_HMAC_SHA1_80", key)
    a, b = SrtpContext(crypto, crypto), SrtpContext(crypto, crypto)
    assert b.unprotect(a.protect(rtp(1))) == rtp(1)
    gcm = new_crypto(1, "AEAD_AES_128_GCM")
    unpadded = CryptoSuite(1, gcm.suite, gcm.key_b64.rstrip("="))
    assert SrtpContext(unpadded, gcm).unprotect(SrtpContext(gcm, gcm).protect(rtp(2))) == rtp(2)


@pytest.mark.parametrize(
    "crypto",
    [
        CryptoSuite(1, "AES_256_CM_HMAC_SHA1_80", base64.b64encode(bytes(46)).decode()),
        CryptoSuite(1, "F8_128_HMAC_SHA1_80", base64.b64encode(bytes(30)).decode()),
        CryptoSuite(1, "AES_CM_128_HMAC_SHA1_80", base64.b64encode(bytes(29)).decode()),
        CryptoSuite(1, "AEAD_AES_128_GCM", base64.b64encode(bytes(30)).decode()),
        CryptoSuite(1, "AES_CM_128_HMAC_SHA1_80", "not*base64!"),
    ],
)
def test_unusable_keys_rejected(crypto: CryptoSuite) -> None:
    good = new_crypto(1, "AES_CM_128_HMAC_SHA1_80")
    with pytest.raises(SrtpError):
        SrtpContext(crypto, good)
    with pytest.raises(SrtpError):
        SrtpContext(good, crypto)


def test_new_crypto_unknown_suite() -> None:
    with pytest.raises(SrtpError):
        new_crypto(1, "NULL_HMAC_SHA1_80")
