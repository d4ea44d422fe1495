"""Digest authentication (RFC 3261 §22) against the RFCs' own worked examples."""

from __future__ import annotations

import pytest

from callgate.sip.digest import (
    Challenge,
    DigestError,
    authorization,
    challenge_header,
    choose_challenge,
    compute,
    parse_challenge,
    parse_params,
    verify,
)
from callgate.sip.message import Response, parse_message


def test_rfc2617_md5_example() -> None:
    challenge = Challenge(realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                          qop=("auth", "auth-int"))
    response, qop = compute(challenge, method="GET", uri="/dir/index.html", username="Mufasa",
                            password="Circle Of Life", cnonce="0a4f113b", nc=1)
    assert (response, qop) == ("6629fae49393a05397450978507c4ef1", "auth")


def test_rfc7616_sha256_example() -> None:
    challenge = Challenge(realm="http-auth@example.org", algorithm="SHA-256", qop=("auth",),
                          nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v")
    response, _ = compute(challenge, method="GET", uri="/dir/index.html", username="Mufasa",
                          password="Circle of Life", nc=1,
                          cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def _challenged(status: int, *values: str) -> Response:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    lines = "".join(f"{name}: {v}\r\n" for v in values)
    raw = (f"SIP/2.0 {status} Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
           "From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
           f"{lines}Content-Length: 0\r\n\r\n")
    message = parse_message(raw.encode())
    assert isinstance(message, Response)
    return message


def test_sha256_is_preferred_and_407_answers_with_proxy_authorization() -> None:
    response = _challenged(407, 'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"',
                           'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"')
    chosen = choose_challenge(response)
    assert chosen is not None and chosen.algorithm == "SHA-256" and chosen.proxy
    assert chosen.answer_header == "Proxy-Authorization"


def test_unknown_schemes_and_algorithms_are_skipped() -> None:
    assert choose_challenge(_challenged(401, 'Basic realm="r"',
                                        'Digest realm="r", nonce="n", algorithm=SHA-512-256'
                                        )) is None
    only_md5 = choose_challenge(_challenged(401, 'Digest realm="r", nonce="n"'))
    assert only_md5 is not None and only_md5.algorithm == "MD5" and not only_md5.proxy


def test_quoted_values_keep_commas_and_escapes() -> None:
    scheme, params = parse_params(r'Digest realm="a, \"b\"", nonce=xyz, qop="auth,auth-int"')
    assert scheme == "digest"
    assert params == {"realm": 'a, "b"', "nonce": "xyz", "qop": "auth,auth-int"}
    with pytest.raises(DigestError):
        parse_challenge('Digest realm="open')


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
def test_our_answer_verifies(algorithm: str) -> None:
    challenge = parse_challenge(challenge_header("callgate", "abc", algorithm))
    value = authorization(challenge, method="INVITE", uri="sip:proj@192.0.2.1",
                          username="trunk", password="s3cret")
    assert verify(value, method="INVITE", realm="callgate", username="trunk",
                  password="s3cret", nonces={"abc"})
    assert not verify(value, method="INVITE", realm="callgate", username="trunk",
                      password="wrong", nonces={"abc"})
    assert not verify(value, method="INVITE", realm="callgate", username="trunk",
                      password="s3cret", nonces={"other"})


def test_no_qop_is_the_rfc2069_form() -> None:
    value = authorization(Challenge(realm="r", nonce="n"), method="REGISTER", uri="sip:r",
                          username="u", password="p")
    assert "qop=" not in value and "cnonce" not in value
