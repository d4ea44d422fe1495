"""RFC 4028 session timers: what the UAS answers, and when the session must be refreshed.

Pure functions over a request and ``now``; the call layer keeps the deadline and acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from callgate.sip.message import Request

MIN_SE = 90  # RFC 4028 §4: the smallest interval anyone may ask for
# The longest interval granted. A peer asking for more (99999999999999999999 has been seen)
# gets this: RFC 4028 §9 lets the UAS lower the interval, never below Min-SE. Two hours
# still finds a vanished peer; a call the timer cannot police would hold its ports for ever.
MAX_SE = 7200


@dataclass(frozen=True, slots=True)
class SessionTimer:
    interval: int          # seconds
    refresher: str         # "uac" (the caller refreshes) or "uas" (we do)
    required: bool         # the caller supports timers: answer with Require: timer

    def header(self) -> str:
        return f"{self.interval};refresher={self.refresher}"

    def response_headers(self) -> list[tuple[str, str]]:
        headers = [("Session-Expires", self.header())]
        if self.required:
            headers.append(("Require", "timer"))
        return headers

    def next_deadline(self, now: float) -> float:
        """When to act: refresh at half the interval (§7.2) if we refresh, otherwise give up
        on a silent peer at ``interval - min(32, interval/3)`` (§10) and send BYE."""
        if self.refresher == "uas":
            return now + self.interval / 2
        return now + self.interval - min(32.0, self.interval / 3)


class IntervalTooSmall(ValueError):
    """The request asked for less than our Min-SE: answer 422 with ``Min-SE`` (§9)."""

    def __init__(self, min_se: int):
        super().__init__(f"Session-Expires below Min-SE {min_se}")
        self.min_se = min_se


def _option_tags(request: Request, name: str) -> set[str]:
    return {tag.strip().lower() for tag in request.headers.get_all(name)}


def _parse_value(text: str) -> tuple[int, dict[str, str]]:
    value, *params = (part.strip() for part in text.split(";"))
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().lower()
    return int(value), parsed


def negotiate(request: Request, *, default_interval: int, min_se: int = MIN_SE,
              max_se: int = MAX_SE, current: SessionTimer | None = None) -> SessionTimer:
    """The timer for the 2xx answering ``request`` (an INVITE or UPDATE), per RFC 4028 §9,
    at most ``max_se`` seconds (however large the Session-Expires or Min-SE asked for).

    Raises :class:`IntervalTooSmall` for a Session-Expires under our Min-SE, and ValueError
    for an unparseable one (answer 400).
    """
    supports = "timer" in _option_tags(request, "Supported")
    raw = request.headers.get("Session-Expires")
    if raw is None:
        if current is not None and not supports:
            return current
        # §9: a UAS may still ask for a timer; with a caller that doesn't support it, we are
        # the refresher. With one that does, it refreshes (it asked for nothing itself).
        interval = min(max(default_interval, min_se), max_se)
        return SessionTimer(interval, "uac" if supports else "uas", supports)
    interval, params = _parse_value(raw)
    if interval < 1:
        raise ValueError("Session-Expires must be a positive integer")
    peer_min = request.headers.get("Min-SE")
    floor = max(min_se, int(peer_min.split(";")[0]) if peer_min else 0)
    if interval < min_se:
        raise IntervalTooSmall(min_se)
    interval = min(max(interval, floor), max_se)
    refresher = params.get("refresher")
    if refresher not in ("uac", "uas"):
        refresher = "uac" if supports else "uas"
    return SessionTimer(interval, refresher, supports)
