"""The call lifecycle in both directions as one (state, trigger) -> state table, the h11 way:
a call's state moves only through :func:`transition`; a pair missing from the table is a bug
and is refused loudly with both names."""

from __future__ import annotations

import enum


class CallState(enum.Enum):
    RINGING = "ringing"        # inbound: 180 sent, waiting for accept/reject;
    #                            outbound: the callee is alerting (180/183 received)
    ANSWERING = "answering"    # inbound: accept taken, media and engine being set up
    DIALING = "dialing"        # outbound: INVITE on its way, no provisional answer yet
    ACCEPTED = "accepted"      # inbound: 200 OK sent, waiting for the ACK
    ACTIVE = "active"          # the dialog is confirmed both ways: media flows
    ENDED = "ended"            # BYE sent or received after the call was up
    REJECTED = "rejected"      # inbound: final 4xx-6xx sent on the application's word
    CANCELLED = "cancelled"    # the caller gave up (CANCEL), or we hung up while dialing
    TIMED_OUT = "timed_out"    # nobody accepted, or the callee did not answer, in time
    FAILED = "failed"          # could not be set up (media, engine, transport, a 4xx-6xx)

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_up(self) -> bool:
        return self in (CallState.ACCEPTED, CallState.ACTIVE)

    @property
    def is_early(self) -> bool:
        """Before the answer: the verbs that end such a call reject or cancel it."""
        return self in (CallState.RINGING, CallState.ANSWERING, CallState.DIALING)


class Trigger(enum.Enum):
    ACCEPT = "accept"          # the application accepted a ringing inbound call
    ABANDON = "abandon"        # the accept could not be carried out; the call still rings
    ANSWER = "answer"          # our 2xx went out
    ACK = "ack"                # the ACK for our 2xx arrived
    PROGRESS = "progress"      # a 1xx for our INVITE
    CONNECT = "connect"        # a 2xx for our INVITE (we ACK it at once)
    REJECT = "reject"          # we answered the INVITE with a final error
    CANCEL = "cancel"          # the INVITE was cancelled (by either side)
    TIMEOUT = "timeout"        # ring / answer timer ran out
    FAIL = "fail"              # set-up failed
    END = "end"                # BYE either way, or any teardown of an answered call


_FINAL = frozenset({CallState.ENDED, CallState.REJECTED, CallState.CANCELLED,
                    CallState.TIMED_OUT, CallState.FAILED})

S, T = CallState, Trigger
TABLE: dict[tuple[CallState, Trigger], CallState] = {
    # inbound
    (S.RINGING, T.ACCEPT): S.ANSWERING,
    (S.RINGING, T.REJECT): S.REJECTED,
    (S.RINGING, T.CANCEL): S.CANCELLED,
    (S.RINGING, T.TIMEOUT): S.TIMED_OUT,
    (S.RINGING, T.FAIL): S.FAILED,
    (S.ANSWERING, T.ABANDON): S.RINGING,
    (S.ANSWERING, T.ANSWER): S.ACCEPTED,
    (S.ANSWERING, T.REJECT): S.REJECTED,
    (S.ANSWERING, T.CANCEL): S.CANCELLED,
    (S.ANSWERING, T.TIMEOUT): S.TIMED_OUT,
    (S.ANSWERING, T.FAIL): S.FAILED,
    (S.ACCEPTED, T.ACK): S.ACTIVE,
    (S.ACCEPTED, T.END): S.ENDED,
    (S.ACCEPTED, T.FAIL): S.FAILED,
    # outbound
    (S.DIALING, T.PROGRESS): S.RINGING,
    (S.RINGING, T.PROGRESS): S.RINGING,
    (S.DIALING, T.CONNECT): S.ACTIVE,
    (S.RINGING, T.CONNECT): S.ACTIVE,
    (S.DIALING, T.CANCEL): S.CANCELLED,
    (S.DIALING, T.TIMEOUT): S.TIMED_OUT,
    (S.DIALING, T.FAIL): S.FAILED,
    # both
    (S.ACTIVE, T.END): S.ENDED,
    (S.ACTIVE, T.FAIL): S.FAILED,
}
del S, T


class InvalidTransition(RuntimeError):
    pass


def transition(current: CallState, trigger: Trigger) -> CallState:
    new = TABLE.get((current, trigger))
    if new is None:
        raise InvalidTransition(f"a call that is {current.value} cannot take {trigger.value}")
    return new
