from __future__ import annotations

import itertools

from heliosdb_streaming.control.lifecycle import TRANSITIONS, Event, allowed_events, next_status
from heliosdb_streaming.model.types import JobStatus as S


def test_happy_path() -> None:
    status = S.SUBMITTED
    for event, expected in [
        (Event.START, S.RUNNING),
        (Event.PAUSE, S.PAUSED),
        (Event.RESUME, S.RUNNING),
        (Event.FINISH, S.FINISHED),
    ]:
        new = next_status(status, event)
        assert new is expected
        status = new


def test_terminal_states_only_restart() -> None:
    for status in (S.FINISHED, S.FAILED, S.CANCELLED):
        assert allowed_events(status) == [Event.RESTART]
        assert next_status(status, Event.RESTART) is S.SUBMITTED


def test_illegal_transitions_are_none() -> None:
    assert next_status(S.SUBMITTED, Event.PAUSE) is None
    assert next_status(S.PAUSED, Event.PAUSE) is None
    assert next_status(S.CANCELLED, Event.CANCEL) is None
    assert next_status(S.FINISHED, Event.RESUME) is None


def test_table_is_total_over_known_pairs() -> None:
    for status, event in itertools.product(S, Event):
        assert next_status(status, event) == TRANSITIONS.get((status, event))
    assert all(not s.terminal for (s, e) in TRANSITIONS if e != Event.RESTART)
