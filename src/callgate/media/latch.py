"""Strict RTP: which source address may feed a call's audio, sans-IO.

Plain symmetric RTP latches to whoever sends first, so anyone who guesses the port before the
caller's first packet takes over the call's audio both ways. Here the address the SDP named is
always believed (and wins back the call from any source learned before it). A source the SDP
did not name (a caller behind NAT, whose SDP carries its private address) is learned only
from a run of ``PROBATION`` packets of one SSRC with consecutive sequence numbers, and only
within ``LEARNING_WINDOW_S`` of the SDP arriving; once a source is known, others are foreign.
When the SDP names an address that is not a private one (so not a NAT's inside), only that
host may be learned: its NAT or firewall may change the port, never the host.
That is Asterisk's ``strictrtp=seqno`` rule. SRTP needs no probation: a packet that passes
authentication (RFC 3711 §3.3) proves its sender holds the call's key, so it latches at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

Address = tuple[str, int]
Verdict = Literal["peer", "learning", "foreign"]

# Four in sequence, as Asterisk's default ``probation``: at 50 packets a second a NATed caller
# loses 60 ms of its first words; a blind sprayer must guess SSRC continuity and the port.
PROBATION = 4
# A caller starts sending within a second of our answer; an attacker who finds the port later
# than this finds it closed to learning.
LEARNING_WINDOW_S = 5.0
# Enough for a few NAT candidates at once, too few for a flood of sources to cost memory.
_MAX_CANDIDATES = 8
# The inside of a NAT: RFC 1918, RFC 6598 (carrier-grade NAT), link-local, RFC 4193 ULAs.
_NAT_INSIDE = tuple(ipaddress.ip_network(net) for net in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "fc00::/7", "fe80::/10"))


def behind_nat(host: str) -> bool:
    """Whether an SDP address can only be the inside of a NAT: a private or link-local
    address (unlike loopback, this host, reachable as it is)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # not an address at all: nothing to hold the source to
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _NAT_INSIDE if net.version == ip.version)


@dataclass(slots=True)
class _Candidate:
    ssrc: int
    sequence: int
    run: int


class SourceLatch:
    """Decides, per RTP packet, whether its source is the call's peer."""

    def __init__(self) -> None:
        self.expected: Address | None = None   # what the SDP named (resolved)
        self._any_host = True                  # whether a source may be learned from any host
        self.source: Address | None = None     # the peer, once known
        self.learned = False                   # source came from learning, not from the SDP
        self._learn_until = 0.0
        self._candidates: dict[Address, _Candidate] = {}
        # After a re-INVITE moved the media, the old peer's packets still in flight must not
        # be learned as the new source.
        self._stale: Address | None = None
        self._stale_until = 0.0

    def expect(self, addr: Address | None, now: float, *, stale_for: float = 0.0) -> None:
        """A new SDP address: forget the old source and learn afresh for a while."""
        if self.source is not None and stale_for:
            self._stale, self._stale_until = self.source, now + stale_for
        self.resolve(addr)
        self.source = None
        self.learned = False
        self._learn_until = now + LEARNING_WINDOW_S
        self._candidates.clear()

    def resolve(self, addr: Address | None) -> None:
        """The SDP's host name resolved (or the hold address): the expected address only."""
        self.expected = addr
        self._any_host = addr is None or behind_nat(addr[0])

    def admit(self, addr: Any, ssrc: int, sequence: int, now: float, *,
              authenticated: bool = False) -> Verdict:
        """Whether a packet from ``addr`` is the peer's (latching it if need be), held back
        while its source is on probation, or foreign. ``authenticated``: it passed SRTP
        authentication."""
        host, port = addr[0], addr[1]
        source = self.source
        if source is not None and source[0] == host and source[1] == port:
            return "peer"
        expected = self.expected
        if expected is not None and expected[0] == host and expected[1] == port:
            self._latch((host, port), learned=False)
            return "peer"
        if authenticated:
            self._latch((host, port), learned=True)
            return "peer"
        if source is not None or now > self._learn_until:
            return "foreign"
        if not self._any_host and expected is not None and expected[0] != host:
            return "foreign"
        stale = self._stale
        if stale is not None and stale[0] == host and stale[1] == port:
            if now < self._stale_until:
                return "foreign"
            self._stale = None
        return self._learn((host, port), ssrc, sequence)

    def is_expected(self, addr: Any) -> bool:
        expected = self.expected
        return expected is not None and expected[0] == addr[0] and expected[1] == addr[1]

    def admit_rtcp(self, addr: Any, *, authenticated: bool = False) -> bool:
        """RTCP comes from the peer's host (its port may be anything: RFC 3605, NAT)."""
        if authenticated:
            return True
        host = addr[0]
        return any(known is not None and known[0] == host
                   for known in (self.source, self.expected))

    def _learn(self, addr: Address, ssrc: int, sequence: int) -> Verdict:
        candidate = self._candidates.get(addr)
        if (candidate is not None and candidate.ssrc == ssrc
                and sequence == (candidate.sequence + 1) & 0xFFFF):
            candidate.sequence, candidate.run = sequence, candidate.run + 1
        else:
            if candidate is None and len(self._candidates) >= _MAX_CANDIDATES:
                return "foreign"
            candidate = self._candidates[addr] = _Candidate(ssrc, sequence, 1)
        if candidate.run < PROBATION:
            return "learning"
        self._latch(addr, learned=True)
        return "peer"

    def _latch(self, addr: Address, *, learned: bool) -> None:
        self.source, self.learned = addr, learned
        self._candidates.clear()
