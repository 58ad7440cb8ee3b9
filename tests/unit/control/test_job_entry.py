"""What the control plane writes into a job's message from its workers' reports."""

from __future__ import annotations

from heliosdb_streaming.control.entry import problems_message


def test_a_problem_quoting_a_connection_string_is_masked_in_the_message() -> None:
    """The message is stored in jobs.db and shown by the API and as the StreamingJob's status."""
    text = problems_message(
        {1: ("retrying: cannot reach postgresql://bob:pa/ss%40x@db:5432/x",), 0: ("broker down",)}
    )
    assert text == (
        "Running with problems: worker 0 broker down; worker 1 retrying: cannot reach "
        "postgresql://bob:***@db:5432/x"
    )
    assert problems_message({0: ()}) is None
