"""An SRTP call over TLS signalling (issue 3 "Must show" 3): baresip calls callgate over SIP/TLS
offering RTP/SAVP with an SDES key (``a=crypto``, RFC 4568); the echo must come back intact
through SRTP both ways, and a forged packet whose auth tag does not verify must be dropped and
counted while the call goes on.

The forged packet is an authentic SRTP packet made with the very key baresip offered (read
from its SIP trace), with one bit of its HMAC-SHA1-80 tag flipped, so the only thing wrong with
it is the tag (the test checks that with libsrtp before sending it). It comes from another UDP
socket than baresip's, so callgate runs with symmetric RTP off: with latching on, a packet from
any address but the latched one is dropped as foreign before SRTP looks at it (counted in
``foreign_packets``), and this test is about the auth check behind that.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pylibsrtp
import pytest

from tests.e2e.audio import match, phrase_wav, piecewise_match
from tests.e2e.baresip import baresip_call, call_stats, logged
from tests.e2e.harness import PROJECT_ID, callgate, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PHRASE = "Secure echo test, five four three two one."
FORGED = 3
SUITES = {"AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
          "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32}


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def forged_packets(suite: str, key_b64: str, count: int) -> list[bytes]:
    """SRTP packets protected with the caller's own key, each with one tag bit flipped."""
    key = base64.b64decode(key_b64 + "=" * (-len(key_b64) % 4))
    sender = pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=SUITES[suite]))
    checker = pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=SUITES[suite]))
    ssrc = int.from_bytes(os.urandom(4), "big")
    packets = []
    for n in range(count):
        header = bytes([0x80, 0x00]) + (1000 + n).to_bytes(2, "big") + (
            160 * n).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
        authentic = sender.protect(header + bytes([0xFF]) * 160)  # PCMU silence
        forged = authentic[:-1] + bytes([authentic[-1] ^ 0x01])
        with pytest.raises(pylibsrtp.Error, match="authentication failure"):
            checker.unprotect(forged)
        assert checker.unprotect(authentic) == header + bytes([0xFF]) * 160
        packets.append(forged)
    return packets


def test_srtp_call_over_tls_echoes_and_drops_a_bad_auth_tag(
        tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls_port = free_port(socket.SOCK_STREAM, both=False)
    source = phrase_wav(tmp_path / "phrase.wav", PHRASE, rate=8000)
    with callgate(tmp_path, tls_cert=str(cert), tls_key=str(key), sip_tls_port=str(tls_port),
                  symmetric_rtp="false") as gw:
        target = f"sip:{PROJECT_ID}@127.0.0.1:{tls_port}"
        with baresip_call(tmp_path / "baresip", target, source, codec="PCMU", tls_ca=cert,
                          srtp=True, trace=True) as phone:
            with contextlib.suppress(AssertionError):
                phone.wait_established(timeout=15)
            assert phone.established, (
                "baresip's call over TLS failed; if its log says 'Function not implemented', "
                "callgate's Contact has a sips: URI that baresip v1.0.0 (libre 1.1) cannot "
                "route its ACK to, although the request was sent to a sip: URI (RFC 3261 "
                f"§12.1.1 asks for SIPS only then):\n{phone.tail()}")
            [opened] = logged(gw, "media.open")
            suite, key_b64 = phone.offered_crypto()
            forged = forged_packets(suite, key_b64, FORGED)
            time.sleep(0.8)  # into the phrase
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
                attacker.bind(("127.0.0.1", 0))
                for packet in forged:
                    attacker.sendto(packet, ("127.0.0.1", int(opened["port"])))
                    time.sleep(0.1)
            phone.wait_ended(timeout=20)
        stats = call_stats(gw)
        [incoming] = logged(gw, "call.incoming")
        [started] = logged(gw, "media.start")

    assert incoming["transport"] == "tls"
    assert started["srtp"] == "True" and started["codec"] == "PCMU", started
    assert re.search(r"SRTP is Enabled \(cryptosuite=AES_CM_128_HMAC_SHA1_(80|32)\)", phone.log)
    sent, rate = phone.dump("enc")
    received, _ = phone.dump("dec")
    echo = piecewise_match(sent, received, rate)
    whole = match(sent, received, rate)
    report = (f"SRTP/TLS PCMU: correlation {echo.coefficient:.3f} aligned per window (lags "
              f"{min(echo.lags_ms, default=0):.1f}-{max(echo.lags_ms, default=0):.1f} ms), "
              f"{whole.coefficient:.3f} with one lag of {whole.lag_ms:.1f} ms; "
              f"srtp_auth_failures={stats['srtp_auth_failures']} "
              f"srtp_failures={stats['srtp_failures']} packets_in={stats['packets_in']}")
    print(report)
    assert len(echo.lags_ms) >= 6 and echo.coefficient >= 0.9, report
    # Exactly the forged packets failed authentication (baresip's own all verified), they were
    # dropped (the audio around them came back intact) and the call's audio kept flowing.
    assert int(stats["srtp_auth_failures"]) == FORGED, stats
    assert int(stats["srtp_failures"]) >= FORGED, stats
    assert int(stats["packets_in"]) > 200 and int(stats["packets_out"]) > 200, stats
    assert stats["unknown_pt"] == "0" and stats["malformed"] == "0", stats
