"""The call lifecycle as one transition table (the h11 way): state moves only through
:func:`transition`, anything else is a bug reported with the call id."""

from __future__ import annotations

import enum


class CallState(enum.Enum):
    INCOMING = "incoming"      # INVITE received, not yet offered to the application
    RINGING = "ringing"        # 180 sent, webhook delivered or pending, waiting for a decision
    ACCEPTED = "accepted"      # 200 OK sent, waiting for the ACK
    ACTIVE = "active"          # ACK received, media flowing
    ENDED = "ended"            # BYE sent or received after the call was up
    REJECTED = "rejected"      # final 4xx-6xx sent on the application's word
    CANCELLED = "cancelled"    # the caller gave up while ringing (CANCEL)
    TIMED_OUT = "timed_out"    # nobody accepted or rejected in time
    FAILED = "failed"          # could not be set up (media, engine, transport)

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_up(self) -> bool:
        return self in (CallState.ACCEPTED, CallState.ACTIVE)


_FINAL = frozenset({CallState.ENDED, CallState.REJECTED, CallState.CANCELLED,
                    CallState.TIMED_OUT, CallState.FAILED})

TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.INCOMING: frozenset({CallState.RINGING, CallState.REJECTED, CallState.FAILED,
                                   CallState.CANCELLED}),
    CallState.RINGING: frozenset({CallState.ACCEPTED, CallState.REJECTED, CallState.CANCELLED,
                                  CallState.TIMED_OUT, CallState.FAILED}),
    CallState.ACCEPTED: frozenset({CallState.ACTIVE, CallState.ENDED, CallState.FAILED}),
    CallState.ACTIVE: frozenset({CallState.ENDED, CallState.FAILED}),
    CallState.ENDED: frozenset(),
    CallState.REJECTED: frozenset(),
    CallState.CANCELLED: frozenset(),
    CallState.TIMED_OUT: frozenset(),
    CallState.FAILED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def transition(current: CallState, new: CallState) -> CallState:
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"call cannot go from {current.value} to {new.value}")
    return new
