"""Lexical pieces of RFC 3261 §25 shared by the header parsers: tokens, quoted strings,
top-level comma lists, generic parameters, and the table of header names.

Every scanner here is linear: either a single ``str`` method call or a regular expression used
with ``fullmatch`` whose repetitions cannot overlap (no nested ambiguous quantifiers), so a
hostile 64 KiB header costs microseconds, not seconds.
"""

from __future__ import annotations

import re

from callgate.sip.errors import SipParseError

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(rf"[{TOKEN_CHARS}]+")
# A display name without quotes is *(token LWS) (§25.1). Non-ASCII letters are tolerated when
# they are valid UTF-8 (real caller names arrive that way); lone surrogates, i.e. bytes that were
# not UTF-8 at all (the vericall INVITE's 0x8E), are not.
_WORD = rf"[{TOKEN_CHARS}\u0080-\ud7ff\ue000-\U0010ffff]+"
DISPLAY_TOKENS_RE = re.compile(rf"{_WORD}(?:[ \t]+{_WORD})*")
# gen-value = token / host / quoted-string; hosts add ':' '[' ']'. Real traffic also carries
# '/', '@', '=' ... in unknown parameters, so anything visible that does not delimit is allowed.
_GEN_VALUE_RE = re.compile(r'[^\x00-\x20\x7f;,"<>]+')
_LIST_SPECIALS = re.compile(r'[",<]')
_SEMI_SPECIALS = re.compile(r'[";]')
# Parameters whose grammar has a mandatory value (§25.1 tag-param, via-branch, via-received,
# via-maddr, via-ttl): a bare ";tag" would otherwise read as "no tag" and mismatch dialogs.
_NEED_VALUE = frozenset({"tag", "branch", "received", "maddr", "ttl"})
_QUOTE_RE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
_UNQUOTE_RE = re.compile(r"\\(.)", re.S)
_HOLD = "\ue000"  # a private-use character holds escaped backslashes while unquoting

# Canonical spelling of every header name we know, keyed by its lower-cased long form.
_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Accept-Resource-Priority",
    "Alert-Info", "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
    "Call-Info", "Contact", "Content-Disposition", "Content-Encoding", "Content-Language",
    "Content-Length", "Content-Type", "CSeq", "Date", "Diversion", "Error-Info", "Event",
    "Expires", "From", "History-Info", "Identity", "Identity-Info", "In-Reply-To", "Join",
    "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE", "Organization",
    "P-Access-Network-Info", "P-Asserted-Identity", "P-Associated-URI", "P-Called-Party-ID",
    "P-Charging-Vector", "P-Early-Media", "P-Preferred-Identity", "P-Served-User", "Path",
    "Priority", "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck",
    "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Remote-Party-ID",
    "Replaces", "Reply-To", "Request-Disposition", "Require", "Resource-Priority", "Retry-After",
    "Route", "RSeq", "Security-Client", "Security-Server", "Security-Verify", "Server",
    "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject",
    "Subscription-State", "Supported", "Target-Dialog", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
)
# Compact forms: RFC 3261 §7.3.3 (c e f i k l m s t v) and the extensions that registered one
# (a j d: RFC 3841; b: RFC 3892; o u: RFC 6665; r: RFC 3515; x: RFC 4028; y: RFC 8224;
# n: RFC 4474).
_COMPACT = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via",
    "x": "Session-Expires", "y": "Identity",
}
# lower-cased spelling on the wire -> (lookup key, canonical name)
CANONICAL: dict[str, tuple[str, str]] = {n.lower(): (n.lower(), n) for n in _NAMES}
CANONICAL.update({c: (n.lower(), n) for c, n in _COMPACT.items()})
# The usual spellings hit the table without a lower() call.
CANONICAL.update({n: (n.lower(), n) for n in _NAMES})
CANONICAL.update({c.upper(): (n.lower(), n) for c, n in _COMPACT.items()})

# Headers whose grammar is a comma-separated list (§7.3.1): a line may carry several values.
LIST_KEYS = frozenset(n.lower() for n in (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Accept-Resource-Priority",
    "Alert-Info", "Allow", "Allow-Events", "Call-Info", "Contact", "Content-Encoding",
    "Content-Language", "Diversion", "Error-Info", "History-Info", "In-Reply-To",
    "P-Asserted-Identity", "P-Associated-URI", "P-Preferred-Identity", "Path", "Proxy-Require",
    "Reason", "Record-Route", "Reject-Contact", "Remote-Party-ID", "Request-Disposition",
    "Require", "Resource-Priority", "Route", "Security-Client", "Security-Server",
    "Security-Verify", "Service-Route", "Supported", "Unsupported", "Via", "Warning",
))


def header_key(name: str) -> tuple[str, str]:
    """(case-insensitive lookup key, output name) for a header name as written."""
    known = CANONICAL.get(name)
    if known is not None:
        return known
    low = name.lower()
    known = CANONICAL.get(low)
    return known if known is not None else (low, name)


def quoted_end(text: str, start: int) -> int:
    """Index just past the quoted-string opening at ``text[start]`` (which must be '"').
    A quoted-pair's backslash takes the next character, whatever it is (§25.1)."""
    # Chunks of doubling size, each flattened by str.replace (escaped backslashes first, then
    # escaped quotes, exactly as a left-to-right scanner pairs them), so the cost is a few C
    # passes over the string however many quoted-pairs it holds, never a step per pair.
    pos, size, end = start + 1, 64, len(text)
    while pos < end:
        chunk = text[pos : pos + size]
        flat = chunk.replace("\\\\", "..").replace('\\"', "..")
        close = flat.find('"')
        if close >= 0:
            return pos + close + 1
        pos += len(chunk)
        if flat.endswith("\\"):
            pos += 1  # the chunk ended inside a quoted-pair: its character is taken
        size *= 2
    raise SipParseError("unterminated quoted string")


def unquote(text: str) -> str:
    """The content of a quoted-string (without its quotes), with quoted-pairs resolved."""
    if "\\" not in text:
        return text
    if _HOLD in text:
        return _UNQUOTE_RE.sub(r"\1", text)
    # Escaped backslashes are paired off left to right first, exactly as a scanner would pair
    # them, so every backslash left introduces one quoted-pair: three C-speed passes in all.
    return text.replace("\\\\", _HOLD).replace("\\", "").replace(_HOLD, "\\")


def quote(text: str) -> str:
    """A quoted-string for ``text``: '"', '\\' and control characters become quoted-pairs
    (§25.1). CR and LF cannot be quoted; they are left for serialization to refuse."""
    return '"' + _QUOTE_RE.sub(r"\\\g<0>", text) + '"'


def _split(text: str, sep: str, specials: re.Pattern[str], angles: bool) -> list[str]:
    parts: list[str] = []
    begin = pos = 0
    while True:
        m = specials.search(text, pos)
        if m is None:
            parts.append(text[begin:])
            return parts
        ch = m.group()
        pos = m.end()
        if ch == sep:
            parts.append(text[begin : pos - 1])
            begin = pos
        elif ch == '"':
            try:
                pos = quoted_end(text, pos - 1)
            except SipParseError:
                parts.append(text[begin:])  # the element's own parser reports it
                return parts
        elif angles:
            close = text.find(">", pos)
            if close < 0:
                parts.append(text[begin:])
                return parts
            pos = close + 1


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and <> (§7.3.1). Never raises;
    elements are stripped and may be empty (callers decide whether that is an error)."""
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [part.strip() for part in value.split(",")]
    return [part.strip() for part in _split(value, ",", _LIST_SPECIALS, True)]


def parse_params(text: str, *, lenient: bool = False) -> dict[str, str | None]:
    """``*( SEMI generic-param )`` as found after a header's main value. Names are lower-cased
    (§7.3.1: parameter names are case-insensitive); a quoted-string value keeps its quotes.
    ``lenient`` skips malformed parameters instead of raising."""
    text = text.strip()
    if not text:
        return {}
    if text[0] != ";":
        if lenient:
            return {}
        raise SipParseError(f"expected ';' before parameters: {text[:64]!r}")
    pieces = text.split(";") if '"' not in text else _split(text, ";", _SEMI_SPECIALS, False)
    params: dict[str, str | None] = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        name = name.strip()
        value = value.strip()
        ok = TOKEN_RE.fullmatch(name) is not None and (sep or name.lower() not in _NEED_VALUE)
        if ok and sep:
            if value.startswith('"'):
                try:
                    ok = quoted_end(value, 0) == len(value)
                except SipParseError:
                    ok = False
            else:
                ok = _GEN_VALUE_RE.fullmatch(value) is not None
        if not ok:
            if lenient:
                continue
            raise SipParseError(f"bad parameter: {piece.strip()[:64]!r}")
        params[name.lower()] = value if sep else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
