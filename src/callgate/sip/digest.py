"""HTTP Digest authentication as SIP uses it (RFC 3261 §22), for both ends; pure functions.

Algorithms: MD5 (RFC 2617) and SHA-256 (RFC 8760 §2, RFC 7616), each also in its ``-sess``
form; ``qop=auth`` and ``auth-int`` or no qop at all. As a UAC: :func:`choose_challenge` picks
the challenge to answer from a 401 (``WWW-Authenticate``) or 407 (``Proxy-Authenticate``) and
:func:`authorization` builds the ``Authorization``/``Proxy-Authorization`` value. As a UAS:
:func:`challenge_header` and :func:`verify` check a credential we asked for.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from callgate.sip.message import Response

#: Ours to answer, in the order we prefer them (RFC 8760 §2.4: the strongest we support).
ALGORITHMS = {"SHA-256": "sha256", "MD5": "md5"}


class DigestError(ValueError):
    """A challenge or credential that cannot be used (malformed, unsupported algorithm)."""


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False  # from Proxy-Authenticate (407): answer with Proxy-Authorization

    @property
    def base_algorithm(self) -> str:
        return self.algorithm.upper().removesuffix("-SESS")

    @property
    def answer_header(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a="b", c=d`` -> ("digest", {"a": "b", "c": "d"}) (RFC 3261 §25.1 auth-param;
    quoted strings may hold commas and escaped quotes)."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            out = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(rest[i])
                i += 1
            if i >= n:
                raise DigestError("unterminated quoted string in auth parameters")
            i += 1
            params[name] = "".join(out)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[name] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


def parse_challenge(value: str, *, proxy: bool = False) -> Challenge:
    scheme, params = parse_params(value)
    if scheme != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme!r}")
    if "nonce" not in params or "realm" not in params:
        raise DigestError("challenge without realm or nonce")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(realm=params["realm"], nonce=params["nonce"],
                     algorithm=params.get("algorithm", "MD5"), qop=qop,
                     opaque=params.get("opaque"),
                     stale=params.get("stale", "").lower() == "true", proxy=proxy)


def choose_challenge(response: Response) -> Challenge | None:
    """The challenge in a 401/407 to answer: of those we support, the first with the
    strongest algorithm (a server lists its preferred one first, RFC 8760 §2.4)."""
    proxy = response.status == 407
    name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    usable: list[Challenge] = []
    for line in response.headers.lines(name):
        try:
            challenge = parse_challenge(line, proxy=proxy)
        except DigestError:
            continue
        if challenge.base_algorithm in ALGORITHMS and (not challenge.qop or {"auth", "auth-int"}
                                                        & set(challenge.qop)):
            usable.append(challenge)
    order = list(ALGORITHMS)
    usable.sort(key=lambda c: order.index(c.base_algorithm))
    return usable[0] if usable else None


def _h(algorithm: str, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.new(ALGORITHMS[algorithm], data).hexdigest()


def compute(challenge: Challenge, *, method: str, uri: str, username: str, password: str,
            cnonce: str, nc: int, body: bytes = b"") -> tuple[str, str | None]:
    """The ``response`` value and the qop used (RFC 7616 §3.4.1-3.4.3)."""
    alg = challenge.base_algorithm
    if alg not in ALGORITHMS:
        raise DigestError(f"unsupported digest algorithm {challenge.algorithm!r}")
    ha1 = _h(alg, f"{username}:{challenge.realm}:{password}")
    if challenge.algorithm.upper().endswith("-SESS"):
        ha1 = _h(alg, f"{ha1}:{challenge.nonce}:{cnonce}")
    qop = None
    if challenge.qop:
        qop = "auth" if "auth" in challenge.qop else "auth-int"
    ha2 = _h(alg, f"{method}:{uri}" if qop != "auth-int" else
             f"{method}:{uri}:{_h(alg, body)}")
    if qop is None:
        return _h(alg, f"{ha1}:{challenge.nonce}:{ha2}"), None
    return _h(alg, f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}"), qop


def authorization(challenge: Challenge, *, method: str, uri: str, username: str,
                  password: str, nc: int = 1, cnonce: str | None = None,
                  body: bytes = b"") -> str:
    """The Authorization/Proxy-Authorization value answering ``challenge``."""
    cnonce = cnonce or secrets.token_hex(8)
    response, qop = compute(challenge, method=method, uri=uri, username=username,
                            password=password, cnonce=cnonce, nc=nc, body=body)
    parts = [f'username="{_quote(username)}"', f'realm="{_quote(challenge.realm)}"',
             f'nonce="{_quote(challenge.nonce)}"', f'uri="{_quote(uri)}"',
             f'response="{response}"', f"algorithm={challenge.algorithm}"]
    if qop is not None:
        parts += [f'cnonce="{cnonce}"', f"nc={nc:08x}", f"qop={qop}"]
    if challenge.opaque is not None:
        parts.append(f'opaque="{_quote(challenge.opaque)}"')
    return "Digest " + ", ".join(parts)


def challenge_header(realm: str, nonce: str, algorithm: str = "SHA-256") -> str:
    """A WWW-Authenticate/Proxy-Authenticate value asking for ``qop=auth``."""
    return f'Digest realm="{_quote(realm)}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'


def verify(value: str, *, method: str, realm: str, username: str, password: str,
           nonces: set[str], body: bytes = b"") -> bool:
    """Whether an Authorization value is a valid answer to one of our ``nonces``."""
    try:
        scheme, params = parse_params(value)
    except DigestError:
        return False
    if scheme != "digest" or params.get("nonce") not in nonces:
        return False
    if params.get("username") != username or params.get("realm") != realm:
        return False
    qop = params.get("qop")
    challenge = Challenge(realm=realm, nonce=params["nonce"],
                          algorithm=params.get("algorithm", "MD5"),
                          qop=(qop,) if qop else ())
    try:
        nc = int(params.get("nc", "1"), 16)
        expected, _ = compute(challenge, method=method, uri=params.get("uri", ""),
                              username=username, password=password,
                              cnonce=params.get("cnonce", ""), nc=nc, body=body)
    except (DigestError, ValueError):
        return False
    return hmac.compare_digest(expected, params.get("response", ""))


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
