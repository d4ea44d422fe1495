"""SDP offer/answer (RFC 3264) for callgate's one audio stream.

Rules, in the order ``answer_offer`` applies them:

* Streams: the first audio m= line we can use is answered; every other m= line (video,
  image/T.38, a second audio stream, a disabled one) is refused with port 0, in its place,
  because RFC 3264 §6 requires one answer line per offered line, in the same order.
* Transport: RTP/AVP, RTP/AVPF, RTP/SAVP, RTP/SAVPF, answered with the offered proto (RFC 3264
  §6.1 keeps the transport). DTLS-SRTP (UDP/TLS/RTP/SAVPF) and anything else is unusable.
* Keys: on SAVP(F) one offered ``a=crypto`` we support (RFC 4568 §7.1.1: the first, in the
  offerer's order) is answered with the same tag and suite and our own key. ``a=crypto`` on
  plain RTP/AVP (pjsip's "SRTP optional") is honoured the same way but is not required; SRTP
  is in use exactly when ``NegotiatedMedia.local_crypto`` is set.
* Codec: the first payload type in the offer's m= order whose codec is in ``preferences``
  (RFC 3264 §6.1: the answerer should honour the offerer's order; ``preferences`` only
  filters). The offerer's payload type number is kept. A payload type whose meaning is
  ambiguous (two different rtpmaps) is never chosen. Opus is only ``opus/48000/2`` (RFC 7587
  §7), G.722 only with its 8000 Hz RTP clock (RFC 3551 §4.5.2).
* DTMF: telephone-event/8000 (RFC 4733) only when offered, echoing its PT and events.
* ptime: we ask to receive 20 ms; ``NegotiatedMedia.ptime`` is what the peer asked to
  receive (a=ptime 10..60 in steps of 10, capped by a=maxptime; otherwise 20). ptime is only
  a wish (RFC 8866 §6.4), so a sender that cannot honour it sends 20 ms.
* Direction: RFC 3264 §6.1 (sendonly → recvonly, recvonly → sendonly, inactive → inactive).
  A connection address of 0.0.0.0 is RFC 2543 hold: never send to it (RFC 3264 §8.4).
* ``a=rtcp-mux`` is echoed when offered (RFC 5761 §5.1.1).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from callgate.sip.sdp import (
    CryptoAttribute,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    parse_crypto,
    parse_fmtp,
    parse_rtpmap,
)

# SDES suite → master key + salt length in bytes (RFC 4568 §6.2, RFC 7714 §14.2); exactly the
# suites pylibsrtp.Policy has profiles for (no AES_256_CM_* there).
SDES_SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF")
OFFER_PTIME = 20
_RTP_CODECS = {  # lower-case encoding name → (our name, RTP clock, channels, PT we offer)
    "pcmu": ("PCMU", 8000, 1, 0),
    "pcma": ("PCMA", 8000, 1, 8),
    "g722": ("G722", 8000, 1, 9),  # RFC 3551 §4.5.2: 8000 Hz clock, 16 kHz sampling
    "opus": ("opus", 48000, 2, 111),  # RFC 7587 §7: always opus/48000/2
}
_STATIC = {0: RtpMap(0, "PCMU", 8000), 8: RtpMap(8, "PCMA", 8000), 9: RtpMap(9, "G722", 8000)}
# RFC 7587 §6.1: ask the peer for in-band FEC, which our decoder uses to conceal a loss
_OUR_FMTP = {"opus": "useinbandfec=1"}
_DTMF_PT = 101
_DTMF_EVENTS = "0-16"  # RFC 4733 §3.2: the 16 keys plus flash
_FLIP = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
         "inactive": "inactive"}


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """The negotiated codec; ``fmtp`` is the peer's fmtp for it (what it wants to receive)."""

    name: str
    payload_type: int
    clock_rate: int
    channels: int
    fmtp: str | None = None


@dataclass(frozen=True, slots=True)
class CryptoSuite:
    """One SDES key (RFC 4568): ``key_b64`` is base64 of master key || master salt."""

    tag: int
    suite: str
    key_b64: str


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """The outcome for the call's audio stream; ``direction`` is what *we* do."""

    remote_addr: tuple[str, int]
    codec: CodecSpec
    dtmf_payload_type: int | None
    direction: str
    ptime: int
    proto: str
    rtcp_mux: bool
    remote_crypto: CryptoSuite | None
    local_crypto: CryptoSuite | None
    remote_rtcp_addr: tuple[str, int] | None = None  # from a=rtcp (RFC 3605), else RTP port + 1

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def on_hold(self) -> bool:
        """The peer does not want our media (a=sendonly/inactive offer, or c=0.0.0.0)."""
        return not self.sends


class NegotiationError(Exception):
    """No usable audio stream: answer ``status`` with a Warning header of ``warning``."""

    def __init__(self, reason: str, *, code: int = 305, status: int = 488) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        # RFC 3261 §20.43; ``reason`` is always our own text, never copied from the offer
        self.warning = f'{code} callgate "{reason}"'


class _Unusable(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def answer_offer(offer: SessionDescription, *, local_ip: str, local_port: int,
                 preferences: Sequence[str], session_id: int, session_version: int,
                 make_crypto: Callable[[str], CryptoSuite],
                 srtp_suites: Collection[str] = tuple(SDES_SUITES)
                 ) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer`` (rules in the module docstring) or raise ``NegotiationError``.

    ``make_crypto(suite)`` returns our key for a suite; its tag is replaced by the offer's.
    Returning the same key for the same suite keeps keys across re-INVITEs (RFC 4568 §7.1.4
    allows either), which also keeps the answer unchanged for ``content_changed``.
    ``session_version`` is the caller's: bump it only when the answer differs from the last
    one sent in this session (see ``content_changed``; RFC 3264 §8).
    """
    wanted = _check_preferences(preferences)
    answered: list[MediaDescription] = []
    result: NegotiatedMedia | None = None
    failure: _Unusable | None = None
    for m in offer.media:
        if result is None and m.media.lower() == "audio" and m.port != 0:
            try:
                section, result = _answer_audio(offer, m, wanted, local_ip, local_port,
                                                make_crypto, srtp_suites)
            except _Unusable as exc:
                failure = failure or exc
            else:
                answered.append(section)
                continue
        answered.append(MediaDescription(m.media, 0, m.proto, list(m.formats) or ["0"]))
    if result is None:
        if failure is None:
            raise NegotiationError("no audio stream offered", code=304)
        raise NegotiationError(failure.reason, code=failure.code)
    return _session(local_ip, session_id, session_version, answered), result


def make_offer(*, local_ip: str, local_port: int, preferences: Sequence[str], session_id: int,
               session_version: int, crypto: CryptoSuite | None = None,
               direction: str = "sendrecv") -> SessionDescription:
    """Our offer (late-offer INVITE, or our own re-INVITE such as hold with ``sendonly``)."""
    if direction not in _FLIP:
        raise ValueError(f"unknown direction {direction!r}")
    formats: list[str] = []
    attributes: list[tuple[str, str | None]] = []
    for name in _check_preferences(preferences):
        enc, clock, channels, pt = _RTP_CODECS[name.lower()]
        formats.append(str(pt))
        attributes += _rtpmap_attrs(pt, enc, clock, channels, _OUR_FMTP.get(enc))
    formats.append(str(_DTMF_PT))
    attributes += _dtmf_attrs(_DTMF_PT, _DTMF_EVENTS)
    attributes += [("ptime", str(OFFER_PTIME)), (direction, None), ("rtcp-mux", None)]
    if crypto is not None:
        _check_key(crypto)
        attributes.append(("crypto", f"{crypto.tag} {crypto.suite} inline:{crypto.key_b64}"))
    proto = "RTP/SAVP" if crypto is not None else "RTP/AVP"
    media = MediaDescription("audio", local_port, proto, formats, attributes=attributes)
    return _session(local_ip, session_id, session_version, [media])


def accept_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Read the answer (e.g. from the ACK of a late-offer INVITE) to the offer we made.

    Raises ``NegotiationError`` when the answer leaves no usable audio; after an ACK the
    caller's remedy is a BYE.
    """
    index = next((i for i, m in enumerate(offer.media)
                  if m.media.lower() == "audio" and m.port != 0), None)
    if index is None:
        raise ValueError("the offer has no active audio stream")
    mine = offer.media[index]
    if len(answer.media) <= index or answer.media[index].port == 0:
        raise NegotiationError("audio stream refused in the answer", code=304)
    theirs = answer.media[index]
    if theirs.media.lower() != "audio" or theirs.proto.upper() != mine.proto.upper():
        raise NegotiationError("answer does not match the offered transport", code=302)
    offered = {_codec_name(rm) for _, rm in _payload_types(mine)} - {None}
    codec_rm = next((rm for _, rm in _payload_types(theirs) if _codec_name(rm) in offered), None)
    if codec_rm is None:
        raise NegotiationError("no offered codec in the answer")
    try:
        remote_addr, legacy_hold = _remote_address(answer, theirs, offer.connection_for(mine))
    except _Unusable as exc:
        raise NegotiationError(exc.reason, code=exc.code) from None
    dtmf = _dtmf_pt(theirs) if _dtmf_pt(mine) is not None else None
    peer = answer.direction_for(theirs)
    peer = _without_recv(peer) if legacy_hold else peer
    ours = _intersect(offer.direction_for(mine), _FLIP[peer])
    local = _offered_crypto(mine)
    remote: CryptoSuite | None = None
    if local is not None:
        remote = next((c for c in _cryptos(theirs, [local.suite]) if c.tag == local.tag), None)
        if remote is None and "SAVP" in mine.proto.upper():
            raise NegotiationError("answer carries no matching a=crypto", code=306)
        if remote is None:
            local = None
    rtcp_mux = mine.has("rtcp-mux") and theirs.has("rtcp-mux")
    return NegotiatedMedia(
        remote_addr=remote_addr, codec=_spec(codec_rm, theirs), dtmf_payload_type=dtmf,
        direction=ours, ptime=_peer_ptime(theirs), proto=mine.proto, rtcp_mux=rtcp_mux,
        remote_crypto=remote, local_crypto=local,
        remote_rtcp_addr=None if rtcp_mux else _rtcp_addr(theirs, remote_addr[0]))


def content_changed(previous: SessionDescription | None, current: SessionDescription) -> bool:
    """Whether ``current`` differs from ``previous`` other than in o= session version.

    RFC 3264 §8 / RFC 8866 §5.2: the version must be increased when (and only when) the
    description changes, so a re-INVITE answer reuses the old version unless this is True.
    """
    if previous is None:
        return True
    a = dataclasses.replace(previous, origin=dataclasses.replace(previous.origin,
                                                                 session_version=0))
    b = dataclasses.replace(current, origin=dataclasses.replace(current.origin,
                                                                session_version=0))
    return a.to_bytes() != b.to_bytes()


def _answer_audio(offer: SessionDescription, m: MediaDescription, wanted: list[str],
                  local_ip: str, local_port: int, make_crypto: Callable[[str], CryptoSuite],
                  srtp_suites: Collection[str]) -> tuple[MediaDescription, NegotiatedMedia]:
    if m.proto.upper() not in RTP_PROTOS:
        raise _Unusable(302, "transport protocol not supported (RTP/AVP(F), RTP/SAVP(F) only)")
    remote_addr, legacy_hold = _remote_address(offer, m, local_ip)
    offered_crypto = next(iter(_cryptos(m, [s for s in SDES_SUITES if s in srtp_suites])), None)
    if offered_crypto is None and "SAVP" in m.proto.upper():
        raise _Unusable(306, "no supported SDES crypto suite")
    wanted_lower = [w.lower() for w in wanted]
    codec_rm = next((rm for _, rm in _payload_types(m)
                     if (_codec_name(rm) or "").lower() in wanted_lower), None)
    if codec_rm is None:
        raise _Unusable(305, "no common audio codec")
    dtmf = _dtmf_pt(m)
    peer = _without_recv(offer.direction_for(m)) if legacy_hold else offer.direction_for(m)
    ours = _FLIP[peer]
    spec = _spec(codec_rm, m)
    formats = [str(spec.payload_type)]
    attributes = _rtpmap_attrs(spec.payload_type, spec.name, spec.clock_rate, spec.channels,
                               _OUR_FMTP.get(spec.name))
    if dtmf is not None:
        formats.append(str(dtmf))
        attributes += _dtmf_attrs(dtmf, _fmtp_for(m, dtmf) or _DTMF_EVENTS)
    attributes += [("ptime", str(OFFER_PTIME)), (ours, None)]
    rtcp_mux = m.has("rtcp-mux")
    if rtcp_mux:
        attributes.append(("rtcp-mux", None))
    local_crypto: CryptoSuite | None = None
    if offered_crypto is not None:
        local_crypto = dataclasses.replace(make_crypto(offered_crypto.suite),
                                           tag=offered_crypto.tag)
        if local_crypto.suite != offered_crypto.suite:
            raise ValueError("make_crypto returned a key for another suite")
        _check_key(local_crypto)
        attributes.append(("crypto", f"{local_crypto.tag} {local_crypto.suite} "
                                     f"inline:{local_crypto.key_b64}"))
    section = MediaDescription("audio", local_port, m.proto, formats, attributes=attributes)
    negotiated = NegotiatedMedia(
        remote_addr=remote_addr, codec=spec, dtmf_payload_type=dtmf, direction=ours,
        ptime=_peer_ptime(m), proto=m.proto, rtcp_mux=rtcp_mux,
        remote_crypto=offered_crypto, local_crypto=local_crypto,
        remote_rtcp_addr=None if rtcp_mux else _rtcp_addr(m, remote_addr[0]))
    return section, negotiated


def _check_preferences(preferences: Sequence[str]) -> list[str]:
    names = [_RTP_CODECS[p.lower()][0] for p in preferences if p.lower() in _RTP_CODECS]
    if not names or len(names) != len(preferences):
        raise ValueError("preferences must name codecs among PCMU, PCMA, G722, opus")
    return list(dict.fromkeys(names))


def _session(local_ip: str, session_id: int, version: int,
             media: list[MediaDescription]) -> SessionDescription:
    addrtype = "IP6" if ":" in local_ip else "IP4"
    origin = Origin("-", session_id, version, "IN", addrtype, local_ip)
    return SessionDescription(origin=origin, session_name="callgate", connection=local_ip,
                              media=media)


def _rtpmap_attrs(pt: int, name: str, clock: int, channels: int,
                  fmtp: str | None) -> list[tuple[str, str | None]]:
    suffix = f"/{channels}" if channels != 1 else ""
    attrs: list[tuple[str, str | None]] = [("rtpmap", f"{pt} {name}/{clock}{suffix}")]
    return attrs + ([("fmtp", f"{pt} {fmtp}")] if fmtp else [])


def _dtmf_attrs(pt: int, events: str) -> list[tuple[str, str | None]]:
    return _rtpmap_attrs(pt, "telephone-event", 8000, 1, events)


def _payload_types(m: MediaDescription) -> list[tuple[int, RtpMap]]:
    """The m= line's payload types we can name, in order; ambiguous ones left out."""
    maps: dict[int, RtpMap] = {}
    ambiguous: set[int] = set()
    for value in m.values("rtpmap"):
        rm = parse_rtpmap(value)
        if rm is None:
            continue
        key = dataclasses.replace(rm, encoding=rm.encoding.lower())
        known = maps.setdefault(rm.payload_type, key)
        if known != key:
            ambiguous.add(rm.payload_type)  # one PT, two meanings: never negotiate it
    found: list[tuple[int, RtpMap]] = []
    for fmt in dict.fromkeys(m.formats):
        if not fmt.isdigit() or int(fmt) > 127 or int(fmt) in ambiguous:
            continue
        rm_or_none = maps.get(int(fmt)) or _STATIC.get(int(fmt))  # RFC 3551 static PTs
        if rm_or_none is not None:
            found.append((int(fmt), rm_or_none))
    return found


def _codec_name(rm: RtpMap) -> str | None:
    known = _RTP_CODECS.get(rm.encoding.lower())
    if known is None or (rm.clock_rate, rm.channels) != known[1:3]:
        return None
    return known[0]


def _spec(rm: RtpMap, m: MediaDescription) -> CodecSpec:
    name, clock, channels, _ = _RTP_CODECS[rm.encoding.lower()]
    return CodecSpec(name, rm.payload_type, clock, channels, _fmtp_for(m, rm.payload_type))


def _dtmf_pt(m: MediaDescription) -> int | None:
    return next((pt for pt, rm in _payload_types(m)
                 if rm.encoding.lower() == "telephone-event" and rm.clock_rate == 8000
                 and rm.channels == 1), None)


def _fmtp_for(m: MediaDescription, pt: int) -> str | None:
    for value in m.values("fmtp"):
        parsed = parse_fmtp(value)
        if parsed is not None and parsed[0] == str(pt):
            return parsed[1] or None
    return None


def _cryptos(m: MediaDescription, suites: Iterable[str]) -> list[CryptoSuite]:
    """Offered SDES keys we can use, in offer order (no MKI, no session parameters)."""
    allowed = set(suites)
    usable: list[CryptoAttribute] = []
    for value in m.values("crypto"):
        c = parse_crypto(value)
        # an MKI or session parameters (RFC 4568 §6.3) we cannot apply: skip that line
        if c is None or c.suite not in allowed or c.mki is not None or c.session_params:
            continue
        if len(c.key) == SDES_SUITES[c.suite]:
            usable.append(c)
    return [CryptoSuite(c.tag, c.suite, c.key_b64) for c in usable]


def _offered_crypto(m: MediaDescription) -> CryptoSuite | None:
    return next(iter(_cryptos(m, SDES_SUITES)), None)


def _check_key(crypto: CryptoSuite) -> None:
    length = SDES_SUITES.get(crypto.suite)
    padded = crypto.key_b64 + "=" * (-len(crypto.key_b64) % 4)
    if length is None or len(base64.b64decode(padded, validate=True)) != length:
        raise ValueError(f"not a usable {crypto.suite} key")


def _remote_address(sdp: SessionDescription, m: MediaDescription,
                    mine_ip: str | None) -> tuple[tuple[str, int], bool]:
    """The peer's RTP address, and whether it is the RFC 2543 hold address 0.0.0.0."""
    address = sdp.connection_for(m)
    if address is None:
        raise _Unusable(301, "no connection address")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (address, m.port), False  # a host name: resolving it is the caller's job
    if ip.is_unspecified:
        return (address, m.port), True
    if ip.is_multicast:
        raise _Unusable(301, "multicast media is not supported")
    if mine_ip is not None and (":" in mine_ip) != (ip.version == 6):
        raise _Unusable(301, "connection address family differs from ours")
    return (address, m.port), False


def _rtcp_addr(m: MediaDescription, default_ip: str) -> tuple[str, int] | None:
    value = m.first("rtcp")
    if value is None:
        return None
    parts = value.split()
    if not parts or not parts[0].isdigit() or not 0 < int(parts[0]) < 65536:
        return None
    ip = default_ip
    if len(parts) == 4:
        with contextlib.suppress(ValueError):
            ip = str(ipaddress.ip_address(parts[3]))
    return ip, int(parts[0])


def _peer_ptime(m: MediaDescription) -> int:
    ptime, maxptime = _number(m.first("ptime")), _number(m.first("maxptime"))
    value = ptime if ptime is not None and ptime in range(10, 61, 10) else OFFER_PTIME
    if maxptime is not None and 10 <= maxptime < value:
        value = maxptime - maxptime % 10
    return value


def _number(text: str | None) -> int | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return int(value) if value is not None and value.is_integer() else None


def _without_recv(direction: str) -> str:
    return {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)


def _intersect(a: str, b: str) -> str:
    send = a in ("sendrecv", "sendonly") and b in ("sendrecv", "sendonly")
    recv = a in ("sendrecv", "recvonly") and b in ("sendrecv", "recvonly")
    return {(True, True): "sendrecv", (True, False): "sendonly",
            (False, True): "recvonly", (False, False): "inactive"}[(send, recv)]
