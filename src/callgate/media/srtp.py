"""SRTP/SRTCP with SDES keys (RFC 4568) on libsrtp, through pylibsrtp.

One :class:`SrtpContext` per call: our key (``local``, from our SDP) protects what we send,
the peer's key (``remote``, from its SDP) checks and decrypts what we receive (RFC 4568 §6.1:
each side sends with the key it announced). libsrtp authenticates before decrypting and keeps
the RFC 3711 §3.3.2 replay list (a 128-packet window), so a tampered or replayed packet is
rejected; both raise :class:`SrtpError` and are counted.

Suites are those pylibsrtp has profiles for: AES_CM_128_HMAC_SHA1_80/_32 (RFC 4568 §6.2) and
AEAD_AES_128_GCM / AEAD_AES_256_GCM (RFC 7714 §12). AES_256_CM_HMAC_SHA1_80 (RFC 6188) has no
pylibsrtp profile, so it is not offered or accepted.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable

import pylibsrtp

from callgate.media.offer_answer import CryptoSuite

__all__ = ["SUPPORTED_SUITES", "SrtpContext", "SrtpError", "key_length", "new_crypto"]

# suite → (pylibsrtp profile, master key || master salt length in bytes); preference order.
_SUITES: dict[str, tuple[int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AEAD_AES_256_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
    "AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
}
SUPPORTED_SUITES: tuple[str, ...] = tuple(_SUITES)


class SrtpError(ValueError):
    """A packet failed authentication or the replay check, or a key is unusable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_length(suite: str) -> int:
    """Bytes of master key || master salt for an SDES suite."""
    try:
        return _SUITES[suite][1]
    except KeyError:
        raise SrtpError(f"unsupported crypto suite {suite}") from None


def new_crypto(tag: int, suite: str) -> CryptoSuite:
    """A fresh random key for ``a=crypto`` (RFC 4568 §6.1: key || salt, base64)."""
    key = secrets.token_bytes(key_length(suite))
    return CryptoSuite(tag=tag, suite=suite, key_b64=base64.b64encode(key).decode("ascii"))


def _policy(crypto: CryptoSuite, ssrc_type: int) -> pylibsrtp.Policy:
    profile, length = _SUITES.get(crypto.suite, (None, 0))
    if profile is None:
        raise SrtpError(f"unsupported crypto suite {crypto.suite}")
    text = crypto.key_b64.strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SrtpError("crypto key is not valid base64") from None
    if len(key) != length:
        raise SrtpError(f"{crypto.suite} needs {length} bytes of key and salt, got {len(key)}")
    policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    return policy


class SrtpContext:
    def __init__(self, local: CryptoSuite, remote: CryptoSuite) -> None:
        outbound = _policy(local, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        # We never resend a packet, but allowing it keeps a retransmitted DTMF end packet
        # with an unchanged sequence number from being refused on our side.
        outbound.allow_repeat_tx = True
        self._tx = pylibsrtp.Session(outbound)
        # SSRC_ANY_INBOUND: libsrtp makes a stream (with its own replay window) per SSRC seen.
        self._rx = pylibsrtp.Session(_policy(remote, pylibsrtp.Policy.SSRC_ANY_INBOUND))
        self.local = local
        self.remote = remote
        self.auth_failures = 0
        self.replay_failures = 0
        self.bad_packets = 0

    def protect(self, rtp: bytes) -> bytes:
        return self._apply(self._tx.protect, rtp)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return self._apply(self._tx.protect_rtcp, rtcp)

    def unprotect(self, srtp: bytes) -> bytes:
        return self._check(self._rx.unprotect, srtp)

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        return self._check(self._rx.unprotect_rtcp, srtcp)

    @staticmethod
    def _apply(func: Callable[[bytes], bytes], packet: bytes) -> bytes:
        try:
            return func(bytes(packet))
        except (pylibsrtp.Error, ValueError) as exc:  # ValueError: over the 1500-byte buffer
            raise SrtpError(str(exc)) from None

    def _check(self, func: Callable[[bytes], bytes], packet: bytes) -> bytes:
        try:
            return func(bytes(packet))
        except (pylibsrtp.Error, ValueError) as exc:
            reason = str(exc)
            if reason == "authentication failure":
                self.auth_failures += 1
            elif "replay" in reason or "too old" in reason:
                self.replay_failures += 1
            else:  # too short to be SRTP, over the buffer size, ...
                self.bad_packets += 1
            raise SrtpError(reason) from None
