"""Header storage and the structured headers a SIP endpoint reads (RFC 3261 §7.3, §20).

:class:`Headers` keeps header lines in order with their raw (unfolded) values; names are
case-insensitive, compact forms are expanded, and known names are written in their canonical
spelling (``Call-ID``, ``CSeq``, ``WWW-Authenticate``); unknown names keep the spelling received.
Structured values (:class:`NameAddr`, :class:`Via`, :class:`CSeq`) are parsed on demand by the
``parse_*`` functions here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from callgate.sip.errors import SipParseError
from callgate.sip.grammar import (
    DISPLAY_TOKENS_RE,
    LIST_KEYS,
    TOKEN_CHARS,
    TOKEN_RE,
    format_params,
    header_key,
    parse_params,
    quote,
    quoted_end,
    split_list,
    unquote,
)
from callgate.sip.uri import AbsoluteUri, SipUri, format_host, parse_hostport, parse_uri

__all__ = [
    "CSeq",
    "Headers",
    "NameAddr",
    "Via",
    "parse_cseq",
    "parse_media_type",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_via_list",
]


class Headers:
    """Ordered, case-insensitive multimap of header lines."""

    __slots__ = ("_index", "_items", "_rev")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # (lookup key, output name, value) per header line
        self._items: list[tuple[str, str, str]] = [(*header_key(n), v) for n, v in items]
        self._rev = 0  # bumped on every change, so that parsed views know to re-parse
        self._index: dict[str, list[str]] | None = None

    @classmethod
    def _from_lines(cls, items: list[tuple[str, str, str]]) -> Headers:
        self = cls.__new__(cls)
        self._items = items
        self._rev = 0
        self._index = None
        return self

    def _by_key(self, key: str) -> list[str]:
        """Raw line values for a lookup key (built once per change: lookups are O(1))."""
        index = self._index
        if index is None:
            index = {}
            for k, _, value in self._items:
                if k in index:
                    index[k].append(value)
                else:
                    index[k] = [value]
            self._index = index
        return index.get(key, [])

    def _changed(self) -> None:
        self._rev += 1
        self._index = None

    def get(self, name: str) -> str | None:
        """First value: of the first line, split at commas for list headers."""
        key = header_key(name)[0]
        lines = self._by_key(key)
        if not lines:
            return None
        if key in LIST_KEYS:
            values = self.get_all(name)
            return values[0] if values else lines[0]
        return lines[0]

    def get_all(self, name: str) -> list[str]:
        """Every value, in order; list headers (§7.3.1) are split at top-level commas and
        empty elements dropped."""
        key = header_key(name)[0]
        if key not in LIST_KEYS:
            return list(self._by_key(key))
        out: list[str] = []
        for value in self._by_key(key):
            out.extend(part for part in split_list(value) if part)
        return out

    def lines(self, name: str) -> list[str]:
        """The raw value of each line of this header (no comma splitting)."""
        return list(self._by_key(header_key(name)[0]))

    def add(self, name: str, value: str) -> None:
        self._items.append((*header_key(name), value))
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` by one, placed where the first was (else at the end)."""
        key, out = header_key(name)
        new: list[tuple[str, str, str]] = []
        placed = False
        for item in self._items:
            if item[0] == key:
                if not placed:
                    new.append((key, out, value))
                    placed = True
            else:
                new.append(item)
        if not placed:
            new.append((key, out, value))
        self._items = new
        self._changed()

    def remove(self, name: str) -> None:
        key = header_key(name)[0]
        self._items = [item for item in self._items if item[0] != key]
        self._changed()

    def copy(self) -> Headers:
        return Headers._from_lines(list(self._items))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return bool(self._by_key(header_key(name)[0]))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


@dataclass
class NameAddr:
    """``[display-name] <uri> *(;param)`` or ``addr-spec *(;param)`` (§20.10, §20.20, §20.39).
    ``display`` is unquoted (escapes resolved); params are the header's, not the URI's."""

    display: str | None
    uri: SipUri | AbsoluteUri
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f"{quote(self.display)} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass
class Via:
    """One via-parm (§20.42). ``host`` is stored without IPv6 brackets."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        params = format_params(self.params)
        return f"SIP/2.0/{self.transport} {format_host(self.host)}{port}{params}"


@dataclass
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_name_addr(text: str) -> NameAddr:
    """One From/To/Contact/Route-style value."""
    s = text.strip()
    # The first of '"', '<', ';' decides the form: a quoted display name, a token display name
    # before '<', or an addr-spec whose ';' parameters belong to the header (§20).
    first = len(s)
    for ch in '"<;':
        i = s.find(ch, 0, first)
        if i >= 0:
            first = i
    if first < len(s) and s[first] == '"':
        if s[:first].strip():
            raise SipParseError(f"junk before quoted display name: {s[:64]!r}")
        end = quoted_end(s, first)
        display: str | None = unquote(s[first + 1 : end - 1])
        rest = s[end:].lstrip(" \t")
        if not rest.startswith("<"):
            raise SipParseError(f"display name without <URI>: {s[:64]!r}")
    elif first < len(s) and s[first] == "<":
        words = s[:first].strip(" \t")
        if words and DISPLAY_TOKENS_RE.fullmatch(words) is None:
            raise SipParseError(f"bad display name (needs quotes): {words[:64]!r}")
        display = words or None
        rest = s[first:]
    else:
        uri_text = s[:first].rstrip(" \t")
        # §20: a URI holding ',', ';' or '?' must be in angle brackets (RFC 4475 regbadct).
        if "?" in uri_text or "," in uri_text:
            raise SipParseError(f"URI with '?' or ',' outside <>: {uri_text[:64]!r}")
        return NameAddr(None, parse_uri(uri_text), parse_params(s[first:]))
    close = rest.find(">")
    if close < 0:
        raise SipParseError(f"unterminated <URI>: {s[:64]!r}")
    # No whitespace is allowed inside the brackets (LAQUOT/RAQUOT, RFC 4475 badaspec): the URI
    # parser rejects it.
    return NameAddr(display, parse_uri(rest[1:close]), parse_params(rest[close + 1 :]))


def parse_name_addr_list(value: str) -> list[NameAddr]:
    """Every element of a Contact/Route/Record-Route line; empty elements are errors."""
    out = []
    for part in split_list(value):
        if not part:
            raise SipParseError("empty element in a header list")
        out.append(parse_name_addr(part))
    return out


# sent-protocol = protocol-name SLASH protocol-version SLASH transport, SLASH = SWS "/" SWS.
_SENT_PROTOCOL_RE = re.compile(
    rf"[{TOKEN_CHARS}]+[ \t]*/[ \t]*[{TOKEN_CHARS}]+[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]+(\S.*)",
    re.S,
)


def _parse_via(text: str, lenient: bool) -> Via:
    semi = text.find(";")
    head = (text if semi < 0 else text[:semi]).strip(" \t")
    m = _SENT_PROTOCOL_RE.fullmatch(head)
    if m is None:
        raise SipParseError(f"bad Via: {text[:64]!r}")
    transport, sent_by = m.group(1).upper(), m.group(2)
    # sent-by = host [ COLON port ], COLON = SWS ":" SWS
    if sent_by.startswith("["):
        close = sent_by.find("]") + 1
        host_text, rest = sent_by[:close], sent_by[close:].strip(" \t")
    else:
        host_text, sep, port = sent_by.partition(":")
        host_text, rest = host_text.rstrip(" \t"), sep + port
        if lenient and rest.count(":") > 1:
            host_text, rest = sent_by.strip(" \t"), ""
    if rest:
        if rest[0] != ":":
            raise SipParseError(f"bad Via sent-by: {sent_by[:64]!r}")
        host_text = host_text + ":" + rest[1:].strip(" \t")
    if not host_text:
        raise SipParseError(f"bad Via sent-by: {sent_by[:64]!r}")
    host, port_num = parse_hostport(host_text, lenient=lenient)
    params = parse_params(text[semi:], lenient=lenient) if semi >= 0 else {}
    return Via(transport, host, port_num, params)


def parse_via_list(value: str, *, lenient: bool = False) -> list[Via]:
    """Every via-parm on one Via line. ``lenient`` (used only to answer a broken request) skips
    unreadable elements and malformed parameters instead of raising."""
    out = []
    for part in split_list(value):
        try:
            if not part:
                raise SipParseError("empty Via element")
            out.append(_parse_via(part, lenient))
        except SipParseError:
            if not lenient:
                raise
    return out


_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})[ \t]+([{TOKEN_CHARS}]+)")


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(value.strip())
    # §8.1.1.5: the sequence number must fit in 32 bits (RFC 4475 scalar02/scalarlg).
    if m is None or int(m.group(1)) > 0xFFFFFFFF:
        raise SipParseError(f"bad CSeq: {value[:64]!r}")
    return CSeq(int(m.group(1)), m.group(2))


def parse_media_type(value: str) -> tuple[str, dict[str, str | None]]:
    """``type/subtype *(;param)`` -> (lower-cased "type/subtype", params)."""
    main, semi, rest = value.partition(";")
    kind, slash, sub = main.partition("/")
    kind, sub = kind.strip(), sub.strip()
    if not slash or TOKEN_RE.fullmatch(kind) is None or TOKEN_RE.fullmatch(sub) is None:
        raise SipParseError(f"bad media type: {value[:64]!r}")
    params = parse_params(semi + rest) if semi else {}
    return f"{kind}/{sub}".lower(), params
