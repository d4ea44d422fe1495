"""Cut a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1).

On a stream, Content-Length is mandatory and is the only way to find the end of a message; CRLFs
between messages are keep-alives (a "ping" is CRLFCRLF, answered by a single CRLF "pong").
After a :class:`SipParseError` the stream cannot be resynchronised: close the connection.
"""

from __future__ import annotations

from callgate.sip.errors import SipParseError
from callgate.sip.grammar import header_key

__all__ = ["StreamFramer"]


class StreamFramer:
    """Feed bytes as they arrive; get back every complete message, each exactly as sent."""

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scanned = 0  # how far the search for the end of the header section has got
        self._pings = 0
        self._crlfs = 0  # CRLFs skipped since the last message or ping

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the messages it completes. Raises :class:`SipParseError`:
        400 for a header section without a valid Content-Length, 413 over ``max_size``."""
        self._buf += data
        out: list[bytes] = []
        while True:
            self._skip_keepalives()
            if not self._buf:
                return out
            message = self._next_message()
            if message is None:
                return out
            out.append(message)

    @property
    def pending(self) -> int:
        """Bytes of a message that has begun but is not complete."""
        return len(self._buf)

    def take_pings(self) -> int:
        """How many CRLFCRLF keep-alive pings arrived since the last call; the transport owes a
        CRLF pong for each (RFC 5626 §4.4.1)."""
        pings, self._pings = self._pings, 0
        return pings

    def _skip_keepalives(self) -> None:
        buf = self._buf
        i = 0
        while i < len(buf) and buf[i] in (0x0D, 0x0A):
            if buf[i] == 0x0A:
                self._crlfs += 1
                if self._crlfs == 2:
                    self._pings += 1
                    self._crlfs = 0
            i += 1
        if i:
            del buf[:i]
            self._scanned = 0
        if buf:
            self._crlfs = 0

    def _next_message(self) -> bytes | None:
        buf = self._buf
        start = max(0, self._scanned - 3)
        end = buf.find(b"\r\n\r\n", start)
        sep = 4
        lf_end = buf.find(b"\n\n", start)
        if lf_end >= 0 and (end < 0 or lf_end < end):
            end, sep = lf_end, 2
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > self.max_size:
                raise SipParseError("header section over the size limit", 413)
            return None
        body_start = end + sep
        length = _content_length(bytes(buf[:end]))
        total = body_start + length
        if total > self.max_size:
            raise SipParseError(f"message of {total} bytes over the size limit", 413)
        if len(buf) < total:
            self._scanned = end  # the header section is known; wait for the body
            return None
        message = bytes(buf[:total])
        del buf[:total]
        self._scanned = 0
        return message


def _content_length(head: bytes) -> int:
    text = head.decode("latin-1")
    if "\n " in text or "\n\t" in text:
        text = text.replace("\r\n ", " ").replace("\r\n\t", " ").replace("\n ", " ")
        text = text.replace("\n\t", " ")
    found: list[str] = []
    for line in text.split("\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and header_key(name.strip(" \t"))[0] == "content-length":
            found.append(value.strip(" \t\r"))
    if not found:
        # §18.3: "In the case of stream-oriented transports, its use is mandatory."
        raise SipParseError("missing Content-Length on a stream transport")
    if len(found) > 1 or not found[0].isascii() or not found[0].isdigit():
        raise SipParseError(f"bad Content-Length on a stream: {found!r}")
    return int(found[0])
