"""What one source may cost the gateway, sans-IO: request rates and the parser's header limits.

A token bucket per source address (RFC 3261 §21.5.4 lets an overloaded server answer 503 with
Retry-After): an INVITE over its source's rate gets a stateless 503 that says when to come
back; an out-of-dialog OPTIONS, REGISTER or other probe over its rate is dropped without a
word, since answering a scanner only tells it that someone is there. Time is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

# Enough for every trunk, proxy and phone a gateway talks to; past it the least recently seen
# source is forgotten (its bucket was most likely full again anyway).
_MAX_SOURCES = 4096


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until a token is back (at least 1), for a Retry-After header."""
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


class SourceRates:
    """One :class:`TokenBucket` per source host; ``rate`` 0 turns the limit off."""

    def __init__(self, rate: float, burst: float, *, max_sources: int = _MAX_SOURCES) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, source: str, now: float) -> TokenBucket | None:
        """None when ``source`` may go on; else its empty bucket (for Retry-After)."""
        if self.rate <= 0:
            return None
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            bucket = buckets[source] = TokenBucket(self.rate, self.burst, now)
            if len(buckets) > self.max_sources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(source)
        return None if bucket.take(now) else bucket


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Per-source request rates (per second, with a burst; 0: unlimited) and the parser's
    bounds on a header section."""

    invite_rate: float = 100.0
    invite_burst: float = 200.0
    probe_rate: float = 20.0
    probe_burst: float = 50.0
    max_headers: int = 128
    max_header_line: int = 8192


class RequestGate:
    """Admission of new out-of-dialog requests by source."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self._invites = SourceRates(limits.invite_rate, limits.invite_burst)
        self._probes = SourceRates(limits.probe_rate, limits.probe_burst)

    def check(self, method: str, source: str, now: float) -> TokenBucket | None:
        """None to let the request in; else the bucket it found empty. ACK, CANCEL and
        in-dialog requests are the calls already admitted: the caller never limits those."""
        rates = self._invites if method == "INVITE" else self._probes
        return rates.take(source, now)
