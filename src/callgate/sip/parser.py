"""Parse one SIP message (a datagram, or one message framed off a stream) — RFC 3261 §7, §25.

Strict where RFC 4475 asks for rejection, lenient where real traffic needs it:

* leading CRLFs are skipped (§7.5); LWS folding is replaced by one SP (§7.3.1); compact header
  names are expanded; bare-LF line ends are accepted when the whole header section uses them;
* a datagram whose header section is not closed by an empty line is read as having no body;
* Content-Length (§18.3, §20.14): octets beyond it are ignored (RFC 4475 dblreq); fewer octets
  than it announces, a non-numeric value or several Content-Length headers are a 400; with no
  Content-Length the body is the rest of the datagram;
* every request and response must have readable Via, From, To, Call-ID and CSeq (exactly one
  of each of the last four), the CSeq method must equal the request method (§8.1.1.5), and
  Max-Forwards, Content-Type, Contact and Date must be well formed when present. A returned
  message therefore has working views for all of those;
* the start line must be exactly ``Method SP Request-URI SP SIP-Version`` (§7.1) with no
  headers in the Request-URI (§19.1.1); SIP-Version other than 2.0 is a 505.

A request that fails after its start line and top Via could be read (leniently if need be)
carries ``partial`` on the error, so that the caller can answer it; ACKs never do (§17.2.1).
"""

from __future__ import annotations

import re

from callgate.sip.errors import SipParseError
from callgate.sip.grammar import TOKEN_RE, header_key
from callgate.sip.headers import Headers, parse_via_list
from callgate.sip.model import Request, Response
from callgate.sip.uri import AbsoluteUri, SipUri, parse_uri

__all__ = ["check_structure", "parse_message"]

_FOLD_RE = re.compile(r"\r?\n[ \t]+")
# Control characters other than HTAB are not allowed in a header section, except escaped in a
# quoted string (quoted-pair, §25.1: RFC 4475 intmeth carries "\<NUL>").
_CTL_RE = re.compile(r"(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CTL_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
# header name exactly as written (before the colon) -> (lookup key, canonical name)
_NAMES_SEEN: dict[str, tuple[str, str]] = {}
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]{1,5}\.[0-9]{1,5}")
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{1,2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def parse_message(data: bytes, *, max_headers: int = 128,
                  max_header_line: int = 8192) -> Request | Response:
    """Parse one framed message. Raises :class:`SipParseError` (only) on malformed input:
    a request with more than ``max_headers`` header fields gets a 413, one with a header
    field longer than ``max_header_line`` (after unfolding) a 400, before any is read."""
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    sep_len = 4
    lf_end = data.find(b"\n\n")
    if lf_end >= 0 and (end < 0 or lf_end < end):
        end, sep_len = lf_end, 2
    if end < 0:
        head_bytes, body = data.rstrip(b"\r\n"), b""
    else:
        head_bytes, body = data[:end], data[end + sep_len :]
    if not head_bytes:
        raise SipParseError("empty message")
    # bytes.translate runs in C; the regex (slow per character) only runs when a control
    # character is actually there, to allow the escaped ones.
    text = head_bytes.decode("utf-8", "surrogateescape")
    if len(head_bytes.translate(None, _CTL_BYTES)) != len(head_bytes) and _CTL_RE.search(text):
        raise SipParseError("control character in the header section")
    start_line, headers, longest = _parse_head(text)
    over = _over_limits(len(headers), longest, max_headers, max_header_line)
    if start_line[:4].upper() == "SIP/":
        if over is not None:
            raise over
        response = _parse_status_line(start_line, headers)
        response.body = _frame_body(headers, body)
        check_structure(response, None)
        return response
    try:
        method, uri, version = _parse_request_line(start_line)
    except SipParseError as exc:
        exc.partial = _lenient_request(start_line, headers, body)
        raise
    request = Request(method, uri, headers, body, version)
    try:
        if over is not None:
            raise over
        if version != "SIP/2.0":
            raise SipParseError(f"unsupported SIP version {version}", 505)
        if isinstance(uri, SipUri) and uri.headers:
            # §19.1.1: headers are not allowed in a Request-URI (RFC 4475 escruri).
            raise SipParseError("headers in the Request-URI")
        request.body = _frame_body(headers, body)
        check_structure(request, method)
    except SipParseError as exc:
        exc.partial = _answerable(request)
        raise
    return request


def _over_limits(count: int, longest: int, max_headers: int,
                 max_header_line: int) -> SipParseError | None:
    if count > max_headers:
        return SipParseError(f"{count} header fields, more than {max_headers}", 413)
    if longest > max_header_line:
        return SipParseError(f"a header field of {longest} characters, more than "
                             f"{max_header_line}", 400)
    return None


def _parse_head(head: str) -> tuple[str, Headers, int]:
    if "\n " in head or "\n\t" in head:
        head = _FOLD_RE.sub(" ", head)
    if "\r\n" in head:
        crlf = head.count("\r\n")
        if head.count("\r") != crlf or head.count("\n") != crlf:
            raise SipParseError("bare CR or LF in the header section")
        lines = head.split("\r\n")
    else:
        if "\r" in head:
            raise SipParseError("bare CR in the header section")
        lines = head.split("\n")
    items: list[tuple[str, str, str]] = []
    names = _NAMES_SEEN
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"bad header line: {line[:64]!r}")
        known = names.get(name)
        if known is None:
            known = _header_name(name)
        items.append((known[0], known[1], value.strip(" \t")))
    return lines[0], Headers._from_lines(items), max(map(len, lines[1:]), default=0)


def _header_name(raw: str) -> tuple[str, str]:
    name = raw.rstrip(" \t")
    if TOKEN_RE.fullmatch(name) is None:
        raise SipParseError(f"bad header name: {raw[:64]!r}")
    known = header_key(name)
    if len(_NAMES_SEEN) < 1024:  # bounded: random names from a flood must not grow it forever
        _NAMES_SEEN[raw] = known
    return known


def _parse_version(text: str) -> str:
    if _VERSION_RE.fullmatch(text) is None:
        raise SipParseError(f"bad SIP version: {text[:32]!r}")
    return text.upper()


def _parse_request_line(line: str) -> tuple[str, SipUri | AbsoluteUri, str]:
    # Exactly single SPs (§7.1): RFC 4475 lwsstart, trws and lwsruri are 400s.
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"bad request line: {line[:96]!r}")
    method, uri_text, version = parts
    if TOKEN_RE.fullmatch(method) is None:
        raise SipParseError(f"bad method: {method[:32]!r}")
    version = _parse_version(version)
    return method, parse_uri(uri_text), version


def _parse_status_line(line: str, headers: Headers) -> Response:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    version = _parse_version(version)
    if version != "SIP/2.0":
        raise SipParseError(f"unsupported SIP version {version}", 505)
    if _STATUS_RE.fullmatch(code) is None:
        # RFC 4475 bigcode: 4294967301 must not be read as a number at all.
        raise SipParseError(f"bad status code: {code[:32]!r}")
    return Response(int(code), reason, headers, b"", version)


def _frame_body(headers: Headers, body: bytes) -> bytes:
    lines = headers.lines("Content-Length")
    if not lines:
        return body  # §18.3: on a datagram the body runs to its end
    if len(lines) > 1:
        raise SipParseError("multiple Content-Length headers")  # RFC 4475 mcl01
    value = lines[0].strip()
    if not value.isascii() or not value.isdigit():
        raise SipParseError(f"bad Content-Length: {value[:32]!r}")  # RFC 4475 ncl
    length = int(value)
    if length > len(body):
        raise SipParseError(f"body shorter than Content-Length {length}")  # RFC 4475 clerr
    return body[:length] if length < len(body) else body


def check_structure(msg: Request | Response, method: str | None) -> None:
    """The header checks every parsed message passes (see the module docstring)."""
    if not msg.headers.lines("Via"):
        raise SipParseError("missing Via header")
    _ = msg.vias, msg.from_, msg.to, msg.call_id
    if method is not None and msg.cseq.method != method:
        raise SipParseError("CSeq method does not match the request method")  # RFC 4475 mismatch01
    _ = msg.cseq, msg.max_forwards, msg.content_type, msg.contacts
    for date in msg.headers.lines("Date"):
        # rfc1123-date in GMT only (§20.17, RFC 4475 baddate)
        if _DATE_RE.fullmatch(date) is None:
            raise SipParseError(f"bad Date: {date[:64]!r}")


def _answerable(request: Request) -> Request | None:
    """``request`` marked as a partial if a response can be routed back to its sender: it is
    not an ACK and its top Via names a sent-by (§18.2.2); read leniently."""
    if request.method == "ACK":
        return None
    vias = request.headers.lines("Via")
    if not vias or not parse_via_list(vias[0], lenient=True):
        return None
    request._lenient = True
    return request


def _lenient_request(line: str, headers: Headers, body: bytes) -> Request | None:
    """The request behind a start line that breaks §7.1 only in spacing or brackets
    (RFC 4475 lwsstart, trws, lwsruri, ltgtruri), so that it can get its 400."""
    parts = line.split()
    if len(parts) < 3 or TOKEN_RE.fullmatch(parts[0]) is None:
        return None
    uri_text = "".join(parts[1:-1])
    if uri_text.startswith("<") and uri_text.endswith(">"):
        uri_text = uri_text[1:-1]
    try:
        uri = parse_uri(uri_text, lenient=True)
    except SipParseError:
        return None
    return _answerable(Request(parts[0], uri, headers, body, "SIP/2.0"))
