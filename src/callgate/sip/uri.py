"""SIP and SIPS URIs (RFC 3261 §19.1, grammar in §25.1) and any other absolute URI.

Escapes: the user, password, URI parameters and URI headers are stored *unescaped* (``%41`` is
read as ``A``; bytes that are not UTF-8 become surrogates, Python's ``surrogateescape``), so
``uri.user == "alice"`` compares what the RFC says is equal (§19.1.4, RFC 4475 esc01).
``str()`` escapes again whatever the component's grammar does not allow. The one thing lost is
whether an allowed reserved character (``;`` ``?`` ``/`` ...) was escaped on the wire.

Parameter names are lower-cased (they compare case-insensitively, §19.1.4); values keep their
case. IPv6 hosts are stored without brackets and written with them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from callgate.sip.errors import SipParseError

__all__ = ["AbsoluteUri", "SipUri", "format_host", "parse_hostport", "parse_uri"]

_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved ); '#' is not in the grammar but feature
# codes such as "*67#" arrive raw from real phones, and it is harmless inside the userinfo.
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/#]|{_ESC})+")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*")
_PARAM_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+")
_HNAME_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})+")
_HVALUE_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*")
# Characters a component may carry unescaped when we write it (complements of the sets above).
_USER_UNSAFE = re.compile(rf"[^{_UNRESERVED}&=+$,;?/]")
_PASSWORD_UNSAFE = re.compile(rf"[^{_UNRESERVED}&=+$,]")
_PARAM_UNSAFE = re.compile(rf"[^{_UNRESERVED}\[\]/:&+$]")
_HNV_UNSAFE = re.compile(rf"[^{_UNRESERVED}\[\]/?:+$]")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Lenient: underscores appear in real host names; a numeric top label (RFC 3261 §25.1 forbids
# it) shows up in real traffic too (see the neuralx INVITE in shared/conformance/invites).
_HOST_RE = re.compile(r"[A-Za-z0-9_\-.]+")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# absoluteURI (§25.1): any visible character except the ones that delimit it in a header.
_ABSOLUTE_RE = re.compile(r"[!#-;=?-~]+")


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def _escape(text: str, unsafe: re.Pattern[str]) -> str:
    if unsafe.search(text) is None:
        return text
    out: list[str] = []
    for ch in text:
        if unsafe.match(ch) is None:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def format_host(host: str) -> str:
    """A host as it appears in a URI or Via: IPv6 addresses in brackets (§25.1)."""
    return f"[{host}]" if ":" in host else host


def parse_hostport(text: str, *, lenient: bool = False) -> tuple[str, int | None]:
    """``host [":" port]`` with the host as stored (IPv6 without brackets). ``lenient`` also
    reads an IPv6 address written without brackets (RFC 3261 forbids it; the valid8 INVITE does
    it), taking a last ":digits" group as the port; used only to route an error response."""
    if lenient and not text.startswith("[") and text.count(":") > 1:
        return _unbracketed_ipv6(text)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference: {text!r}")
        host = text[1:end]
        if not _is_ipv6(host):
            raise SipParseError(f"bad IPv6 address: {host[:64]!r}")
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"junk after IPv6 reference: {text!r}")
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            # RFC 3261 §25.1 requires "[...]" around an IPv6 address (the valid8 INVITE).
            raise SipParseError(f"IPv6 address without brackets: {text[:64]!r}")
        host, sep, port_text = text.partition(":")
        if _HOST_RE.fullmatch(host) is None:
            raise SipParseError(f"bad host: {text[:64]!r}")
        if not sep:
            return host, None
    if _PORT_RE.fullmatch(port_text) is None or int(port_text) > 65535:
        raise SipParseError(f"bad port: {text[:64]!r}")
    return host, int(port_text)


def _unbracketed_ipv6(text: str) -> tuple[str, int | None]:
    if _is_ipv6(text):
        return text, None
    host, _, port = text.rpartition(":")
    if _is_ipv6(host) and _PORT_RE.fullmatch(port) is not None and int(port) <= 65535:
        return host, int(port)
    raise SipParseError(f"bad host: {text[:64]!r}")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


@dataclass
class SipUri:
    """``sip:`` / ``sips:`` URI with its components unescaped (see the module docstring)."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(_escape(self.user, _USER_UNSAFE))
            if self.password is not None:
                parts += [":", _escape(self.password, _PASSWORD_UNSAFE)]
            parts.append("@")
        parts.append(format_host(self.host))
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.params.items():
            parts += [";", _escape(name, _PARAM_UNSAFE)]
            if value is not None:
                parts += ["=", _escape(value, _PARAM_UNSAFE)]
        sep = "?"
        for name, value in self.headers.items():
            parts += [sep, _escape(name, _HNV_UNSAFE), "=", _escape(value, _HNV_UNSAFE)]
            sep = "&"
        return "".join(parts)


@dataclass
class AbsoluteUri:
    """Any URI whose scheme is not sip/sips (``tel:``, ``mailto:``, ``urn:``, ...), kept opaque."""

    scheme: str
    value: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}"


def parse_uri(text: str, *, lenient: bool = False) -> SipUri | AbsoluteUri:
    """Parse a URI exactly as written (no surrounding whitespace or angle brackets).
    ``lenient`` accepts an unbracketed IPv6 host (see :func:`parse_hostport`)."""
    colon = text.find(":")
    if colon <= 0 or _SCHEME_RE.fullmatch(text, 0, colon) is None:
        raise SipParseError(f"bad URI scheme: {text[:64]!r}")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest, lenient)
    if _ABSOLUTE_RE.fullmatch(rest) is None:
        raise SipParseError(f"bad {scheme}: URI: {text[:64]!r}")
    return AbsoluteUri(scheme, rest)


def _parse_sip(scheme: str, rest: str, lenient: bool) -> SipUri:
    user: str | None = None
    password: str | None = None
    # '@' is in none of the host, parameter or header character sets, so the first one (if any)
    # ends the userinfo, whose user part may itself hold ';' and '?' (RFC 4475 intmeth, semiuri).
    at = rest.find("@")
    if at >= 0:
        user_text, sep, password_text = rest[:at].partition(":")
        if _USER_RE.fullmatch(user_text) is None:
            raise SipParseError(f"bad user part in URI: {user_text[:64]!r}")
        user = _unescape(user_text)
        if sep:
            if _PASSWORD_RE.fullmatch(password_text) is None:
                raise SipParseError("bad password in URI")
            password = _unescape(password_text)
        rest = rest[at + 1 :]
    headers: dict[str, str] = {}
    question = rest.find("?")
    if question >= 0:
        for item in rest[question + 1 :].split("&"):
            name, sep, value = item.partition("=")
            if not sep or _HNAME_RE.fullmatch(name) is None or _HVALUE_RE.fullmatch(value) is None:
                raise SipParseError(f"bad URI header: {item[:64]!r}")
            headers[_unescape(name)] = _unescape(value)
        rest = rest[:question]
    params: dict[str, str | None] = {}
    semi = rest.find(";")
    if semi >= 0:
        for item in rest[semi + 1 :].split(";"):
            name, sep, value = item.partition("=")
            if _PARAM_RE.fullmatch(name) is None or (sep and _PARAM_RE.fullmatch(value) is None):
                raise SipParseError(f"bad URI parameter: {item[:64]!r}")
            params[_unescape(name).lower()] = _unescape(value) if sep else None
        rest = rest[:semi]
    host, port = parse_hostport(rest, lenient=lenient)
    return SipUri(scheme, user, password, host, port, params, headers)
