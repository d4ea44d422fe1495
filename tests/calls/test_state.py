"""The call lifecycle table: legal moves pass, anything else is refused loudly."""

from __future__ import annotations

import pytest

from callgate.calls.state import TRANSITIONS, CallState, InvalidTransition, transition


def test_happy_path() -> None:
    state = CallState.INCOMING
    for new in (CallState.RINGING, CallState.ACCEPTED, CallState.ACTIVE, CallState.ENDED):
        state = transition(state, new)
    assert state.is_final


@pytest.mark.parametrize("final", [s for s in CallState if s.is_final])
def test_final_states_are_final(final: CallState) -> None:
    assert TRANSITIONS[final] == frozenset()
    with pytest.raises(InvalidTransition):
        transition(final, CallState.ACTIVE)


def test_no_skipping_the_answer() -> None:
    with pytest.raises(InvalidTransition, match="ringing to active"):
        transition(CallState.RINGING, CallState.ACTIVE)
    assert CallState.ACCEPTED.is_up and not CallState.RINGING.is_up
