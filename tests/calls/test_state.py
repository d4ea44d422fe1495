"""The call lifecycle table: legal moves pass, anything else is refused loudly."""

from __future__ import annotations

import pytest

from callgate.calls.state import TABLE, CallState, InvalidTransition, Trigger, transition


def test_inbound_happy_path() -> None:
    state = CallState.RINGING
    for trigger in (Trigger.ACCEPT, Trigger.ANSWER, Trigger.ACK, Trigger.END):
        state = transition(state, trigger)
    assert state is CallState.ENDED and state.is_final


def test_outbound_happy_path() -> None:
    state = CallState.DIALING
    for trigger in (Trigger.PROGRESS, Trigger.PROGRESS, Trigger.CONNECT, Trigger.END):
        state = transition(state, trigger)
    assert state is CallState.ENDED


@pytest.mark.parametrize("final", [s for s in CallState if s.is_final])
def test_final_states_are_final(final: CallState) -> None:
    assert not [key for key in TABLE if key[0] is final]
    with pytest.raises(InvalidTransition):
        transition(final, Trigger.ACK)


def test_no_skipping_the_answer() -> None:
    with pytest.raises(InvalidTransition, match="ringing cannot take ack"):
        transition(CallState.RINGING, Trigger.ACK)
    assert CallState.ACCEPTED.is_up and not CallState.RINGING.is_up


def test_a_failed_accept_leaves_the_call_ringing() -> None:
    assert transition(CallState.ANSWERING, Trigger.ABANDON) is CallState.RINGING
