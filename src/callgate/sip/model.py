"""Request and Response objects: parsed header views, serialization.

Import them from :mod:`callgate.sip.message`, which re-exports everything in the syntax layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from callgate.sip.errors import SipParseError
from callgate.sip.headers import (
    CSeq,
    Headers,
    NameAddr,
    Via,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addr_list,
    parse_via_list,
)
from callgate.sip.status import reason_phrase
from callgate.sip.uri import AbsoluteUri, SipUri

__all__ = ["Request", "Response"]

_T = TypeVar("_T")


class _Message:
    """What requests and responses share: headers, body, and cached parsed views.

    Views are parsed on first use and cached until the headers change (any ``Headers`` mutation
    or a new ``headers`` object). They are snapshots: edit ``headers`` to change the message.
    """

    headers: Headers
    body: bytes
    version: str
    _lenient: bool
    _cache: dict[str, object]
    _cache_headers: Headers | None
    _cache_rev: int

    def __init__(self, headers: Headers | None, body: bytes, version: str) -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version
        self._lenient = False
        self._cache = {}
        self._cache_headers = None
        self._cache_rev = -1

    def _key(self) -> tuple[object, ...]:
        """The start-line fields that, with headers and body, make two messages equal."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Message)
        return (self._key(), self.version, self.headers, self.body) == (
            other._key(), other.version, other.headers, other.body)

    __hash__ = None  # type: ignore[assignment]

    def _view(self, name: str, build: Callable[[], _T]) -> _T:
        h = self.headers
        if self._cache_headers is not h or self._cache_rev != h._rev:
            self._cache = {}
            self._cache_headers = h
            self._cache_rev = h._rev
        try:
            return self._cache[name]  # type: ignore[return-value]
        except KeyError:
            value = build()
            self._cache[name] = value
            return value

    def _single(self, name: str) -> str:
        lines = self.headers._by_key(name.lower())
        if len(lines) != 1:
            raise SipParseError(f"{'missing' if not lines else 'multiple'} {name} header")
        return lines[0]

    @property
    def vias(self) -> list[Via]:
        def build() -> list[Via]:
            out: list[Via] = []
            for line in self.headers._by_key("via"):
                out += parse_via_list(line, lenient=self._lenient)
            return out

        return self._view("vias", build)

    @property
    def call_id(self) -> str:
        def build() -> str:
            value = self._single("Call-ID")
            # Call-ID = word ["@" word] (§25.1); real Call-IDs carry other visible characters
            # ('=' from base64), so only emptiness and whitespace are refused.
            if not value or any(c in value for c in " \t"):
                raise SipParseError(f"bad Call-ID: {value[:64]!r}")
            return value

        return self._view("call_id", build)

    @property
    def cseq(self) -> CSeq:
        return self._view("cseq", lambda: parse_cseq(self._single("CSeq")))

    @property
    def from_(self) -> NameAddr:
        return self._view("from", lambda: parse_name_addr(self._single("From")))

    @property
    def to(self) -> NameAddr:
        return self._view("to", lambda: parse_name_addr(self._single("To")))

    @property
    def max_forwards(self) -> int | None:
        def build() -> int | None:
            lines = self.headers._by_key("max-forwards")
            if not lines:
                return None
            value = self._single("Max-Forwards").strip()
            # 1*DIGIT, 0-255 (§20.22; RFC 4475 scalar02 sends 300)
            if not value.isascii() or not value.isdigit() or int(value) > 255:
                raise SipParseError(f"bad Max-Forwards: {value[:64]!r}")
            return int(value)

        return self._view("max_forwards", build)

    @property
    def content_type(self) -> str | None:
        """Lower-cased ``type/subtype`` without parameters."""

        def build() -> str | None:
            lines = self.headers._by_key("content-type")
            if not lines:
                return None
            return parse_media_type(self._single("Content-Type"))[0]

        return self._view("content_type", build)

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value; ``Contact: *`` (REGISTER only, §10.2.2) reads as no contact."""

        def build() -> list[NameAddr]:
            lines = self.headers._by_key("contact")
            if len(lines) == 1 and lines[0].strip() == "*":
                return []
            out: list[NameAddr] = []
            for line in lines:
                out += parse_name_addr_list(line)
            return out

        return self._view("contacts", build)

    @property
    def record_routes(self) -> list[NameAddr]:
        return self._view("record_routes", lambda: self._name_addrs("Record-Route"))

    @property
    def routes(self) -> list[NameAddr]:
        return self._view("routes", lambda: self._name_addrs("Route"))

    def _name_addrs(self, name: str) -> list[NameAddr]:
        out: list[NameAddr] = []
        for line in self.headers._by_key(name.lower()):
            out += parse_name_addr_list(line)
        return out

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Canonical wire form: CRLF line ends, canonical header names, and exactly one
        Content-Length, set from the body (it replaces any Content-Length already there)."""
        lines = [self._start_line()]
        length = str(len(self.body))
        placed = False
        for key, name, value in self.headers._items:
            if key == "content-length":
                if placed:
                    continue
                value = length
                placed = True
            lines.append(f"{name}: {value}")
        if not placed:
            lines.append(f"Content-Length: {length}")
        head = "\r\n".join(lines)
        # A CR or LF inside a value would start a header of the sender's choosing.
        if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
            raise ValueError("CR or LF inside a start line or header value")
        return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


class Request(_Message):
    def __init__(self, method: str, uri: SipUri | AbsoluteUri, headers: Headers | None = None,
                 body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.method = method
        self.uri = uri

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def _key(self) -> tuple[object, ...]:
        return (self.method, self.uri)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} ({len(self.headers)} headers)>"


class Response(_Message):
    def __init__(self, status: int, reason: str | None = None, headers: Headers | None = None,
                 body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _key(self) -> tuple[object, ...]:
        return (self.status, self.reason)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} ({len(self.headers)} headers)>"
