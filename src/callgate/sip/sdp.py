"""SDP syntax (RFC 8866, which obsoletes RFC 4566): parse and serialize session descriptions.

Only the grammar lives here, plus the value grammars of the attributes that negotiation reads
(``rtpmap``, ``fmtp``, ``crypto``); choosing codecs is ``callgate.media.offer_answer``'s job.

The parser is liberal in what it accepts from real peers (RFC 8866 §5 allows a bare LF line
end; trailing blanks, a missing final line end, an empty last line and unknown attributes are
all common) and strict where a wrong reading would send media somewhere bad: a connection
address that is neither an IP literal nor a host name is an error. Every failure is an
``SdpError`` whose message names the line number and field, never the offending text, so that
hostile input (SQL injection probes in ``c=`` are routine) cannot reach logs or SIP headers.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field

MAX_SDP_SIZE = 65536
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

_LINE_END = re.compile(r"\r\n|\r|\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_KNOWN_TYPES = frozenset("vosiuepcbtrzkam")


class SdpError(ValueError):
    """The body is not a session description we can read (never quotes the input)."""


Attribute = tuple[str, str | None]


@dataclass(slots=True)
class Origin:
    """The o= line (RFC 8866 §5.2). ``session_version`` must grow whenever the SDP changes."""

    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"


@dataclass(slots=True)
class MediaDescription:
    """One m= section. ``connection`` is the bare address of a media-level c= line."""

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    bandwidths: list[tuple[str, str]] = field(default_factory=list)
    port_count: int = 1
    title: str | None = None
    key: str | None = None

    def has(self, name: str) -> bool:
        """Whether an attribute is present; names are case-sensitive (RFC 8866 §5.13)."""
        return any(n == name for n, _ in self.attributes)

    def values(self, name: str) -> list[str]:
        """Values of every ``a=name:value`` line, in order."""
        return [v for n, v in self.attributes if n == name and v is not None]

    def first(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None


@dataclass(slots=True)
class SessionDescription:
    """A whole description; ``connection`` is the bare address of the session-level c= line."""

    origin: Origin
    session_name: str = "-"
    connection: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    bandwidths: list[tuple[str, str]] = field(default_factory=list)
    times: list[tuple[str, list[str]]] = field(default_factory=lambda: [("0 0", [])])
    timezones: str | None = None
    key: str | None = None

    def connection_for(self, media: MediaDescription) -> str | None:
        """RFC 8866 §5.7: a media-level c= overrides the session-level one."""
        return media.connection if media.connection is not None else self.connection

    def direction_for(self, media: MediaDescription) -> str:
        """RFC 3264 §5.1 / RFC 8866 §6.7: media level, else session level, else sendrecv."""
        for attrs in (media.attributes, self.attributes):
            for name, _ in attrs:
                if name in DIRECTIONS:
                    return name
        return "sendrecv"

    def to_bytes(self) -> bytes:
        o = self.origin
        lines = [f"v={self.version}",
                 f"o={o.username} {o.session_id} {o.session_version} {o.nettype} {o.addrtype} "
                 f"{o.address}",
                 f"s={self.session_name or '-'}"]
        lines += _optional("i", self.information) + _optional("u", self.uri)
        lines += [f"e={e}" for e in self.emails] + [f"p={p}" for p in self.phones]
        lines += _connection_line(self.connection)
        lines += [f"b={t}:{v}" for t, v in self.bandwidths]
        for timing, repeats in self.times or [("0 0", [])]:
            lines.append(f"t={timing}")
            lines += [f"r={r}" for r in repeats]
        lines += _optional("z", self.timezones) + _optional("k", self.key)
        lines += _attribute_lines(self.attributes)
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count != 1 else str(m.port)
            lines.append(" ".join([f"m={m.media}", port, m.proto, *m.formats]))
            lines += _optional("i", m.title) + _connection_line(m.connection)
            lines += [f"b={t}:{v}" for t, v in m.bandwidths] + _optional("k", m.key)
            lines += _attribute_lines(m.attributes)
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _optional(letter: str, value: str | None) -> list[str]:
    return [] if value is None else [f"{letter}={value}"]


def _connection_line(address: str | None) -> list[str]:
    if address is None:
        return []
    return [f"c=IN {'IP6' if ':' in address else 'IP4'} {address}"]


def _attribute_lines(attributes: list[Attribute]) -> list[str]:
    return [f"a={n}" if v is None else f"a={n}:{v}" for n, v in attributes]


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body; raises ``SdpError`` (only) when it cannot be read."""
    if len(data) > MAX_SDP_SIZE:
        raise SdpError("session description too large")
    # surrogateescape keeps non-UTF-8 bytes (legal in s=/i= under other charsets) round-trippable
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    if "\x00" in text:
        raise SdpError("NUL byte in session description")
    lines = [(n, ln.strip(" \t")) for n, ln in enumerate(_LINE_END.split(text), 1)]
    lines = [(n, ln) for n, ln in lines if ln]
    if not lines or lines[0][1] != "v=0":
        raise SdpError("session description must start with v=0")
    origin: Origin | None = None
    sdp = SessionDescription(origin=Origin(), times=[])
    seen_name = False
    media: MediaDescription | None = None
    for number, line in lines[1:]:
        if len(line) < 2 or line[1] != "=" or line[0] not in _KNOWN_TYPES:
            # RFC 8866 §5: a description with an unknown type letter must be rejected
            raise SdpError(f"line {number}: not a <type>=<value> line")
        kind, value = line[0], line[2:]
        if kind == "m":
            media = _parse_media(value, number)
            sdp.media.append(media)
        elif media is not None:
            _media_line(media, kind, value, number)
        elif kind == "o":
            if origin is not None:
                raise SdpError(f"line {number}: second o= line")
            origin = _parse_origin(value, number)
        elif kind == "s":
            if seen_name:
                raise SdpError(f"line {number}: second s= line")
            sdp.session_name, seen_name = value, True
        else:
            _session_line(sdp, kind, value, number)
    if origin is None:
        raise SdpError("no o= line")
    sdp.origin = origin
    if not sdp.times:
        sdp.times = [("0 0", [])]  # t= is mandatory, yet some peers omit it; 0 0 = unbounded
    return sdp


def _session_line(sdp: SessionDescription, kind: str, value: str, number: int) -> None:
    if kind == "c":
        sdp.connection = _parse_connection(value, number)
    elif kind == "a":
        _add_attribute(sdp.attributes, value)
    elif kind == "b":
        _add_bandwidth(sdp.bandwidths, value)
    elif kind == "t":
        sdp.times.append((value, []))
    elif kind == "r":
        if not sdp.times:
            raise SdpError(f"line {number}: r= without t=")
        sdp.times[-1][1].append(value)
    elif kind == "i":
        sdp.information = value
    elif kind == "u":
        sdp.uri = value
    elif kind == "e":
        sdp.emails.append(value)
    elif kind == "p":
        sdp.phones.append(value)
    elif kind == "z":
        sdp.timezones = value
    elif kind == "k":
        sdp.key = value
    else:  # v=
        raise SdpError(f"line {number}: v= out of place")


def _media_line(media: MediaDescription, kind: str, value: str, number: int) -> None:
    if kind == "a":
        _add_attribute(media.attributes, value)
    elif kind == "c":
        media.connection = _parse_connection(value, number)
    elif kind == "b":
        _add_bandwidth(media.bandwidths, value)
    elif kind == "i":
        media.title = value
    elif kind == "k":
        media.key = value
    else:
        raise SdpError(f"line {number}: {kind}= is not allowed inside a media section")


def _add_attribute(attributes: list[Attribute], value: str) -> None:
    name, sep, rest = value.partition(":")
    if _TOKEN.fullmatch(name):  # a nameless a= line carries nothing; skip it
        attributes.append((name, rest.strip(" \t") if sep else None))


def _add_bandwidth(bandwidths: list[tuple[str, str]], value: str) -> None:
    kind, sep, amount = value.partition(":")
    if sep and kind:
        bandwidths.append((kind, amount))


def _parse_origin(value: str, number: int) -> Origin:
    parts = value.split()
    if len(parts) != 6 or not parts[1].isdigit() or not parts[2].isdigit():
        raise SdpError(f"line {number}: malformed o= line")
    return Origin(parts[0], int(parts[1]), int(parts[2]), parts[3], parts[4], parts[5])


def _parse_media(value: str, number: int) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3 or not _TOKEN.fullmatch(parts[0]):
        raise SdpError(f"line {number}: malformed m= line")
    port_text, _, count_text = parts[1].partition("/")
    if not port_text.isdigit() or int(port_text) > 65535 or len(port_text) > 5:
        raise SdpError(f"line {number}: bad port in m= line")
    count = 1
    if count_text:
        if not count_text.isdigit() or not 1 <= int(count_text) <= 65535:
            raise SdpError(f"line {number}: bad port count in m= line")
        count = int(count_text)
    return MediaDescription(media=parts[0], port=int(port_text), proto=parts[2],
                            formats=parts[3:], port_count=count)


def _parse_connection(value: str, number: int) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0].upper() != "IN" or parts[1].upper() not in ("IP4", "IP6"):
        raise SdpError(f"line {number}: malformed c= line")
    # RFC 8866 §5.7: multicast addresses carry /ttl[/count] (IP4) or /count (IP6)
    address, _, suffix = parts[2].partition("/")
    if suffix and not all(p.isdigit() for p in suffix.split("/")):
        raise SdpError(f"line {number}: malformed c= address")
    if not _valid_address(address, parts[1].upper()):
        raise SdpError(f"line {number}: malformed c= address")
    return address


def _valid_address(address: str, addrtype: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return _valid_hostname(address)
    return ip.version == (4 if addrtype == "IP4" else 6)


def _valid_hostname(name: str) -> bool:
    """RFC 8866 §5.7 allows an FQDN; RFC 1123 §2.1: the top label is not all digits."""
    labels = name.removesuffix(".").split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(lb) for lb in labels):
        return False
    return not labels[-1].isdigit()


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`` (RFC 8866 §6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1  # RFC 8866 §6.6: audio defaults to one channel


def parse_rtpmap(value: str) -> RtpMap | None:
    """The mapping, or None when the value is malformed (the caller ignores such a line)."""
    m = re.fullmatch(r"(\d{1,3})\s+([^\s/]+)/(\d{1,6})(?:/(\d{1,2}))?", value.strip())
    if m is None or int(m[1]) > 127:
        return None
    return RtpMap(int(m[1]), m[2], int(m[3]), int(m[4]) if m[4] else 1)


def parse_fmtp(value: str) -> tuple[str, str] | None:
    """``a=fmtp:<format> <parameters>`` → (format, parameters)."""
    fmt, _, params = value.strip().partition(" ")
    return (fmt, params.strip()) if fmt else None


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """``a=crypto`` (RFC 4568 §9.1) with a single inline key; ``key`` is master key || salt."""

    tag: int
    suite: str
    key_b64: str
    key: bytes
    lifetime: str | None
    mki: str | None
    session_params: tuple[str, ...]


def parse_crypto(value: str) -> CryptoAttribute | None:
    """The attribute, or None when it is malformed or uses several keys (which we never use)."""
    parts = value.split()
    if len(parts) < 3 or not parts[0].isdigit() or len(parts[0]) > 9:
        return None
    method, _, info = parts[2].partition(":")
    if method != "inline" or ";" in info:  # RFC 4568 §9.2: several key-params → not for us
        return None
    key_b64, *extra = info.split("|")
    lifetime = mki = None
    for item in extra:
        if ":" in item:
            mki = item
        else:
            lifetime = item
    try:
        key = base64.b64decode(key_b64 + "=" * (-len(key_b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not key or len(extra) > 2:
        return None
    return CryptoAttribute(int(parts[0]), parts[1], key_b64, key, lifetime, mki,
                           tuple(parts[3:]))
