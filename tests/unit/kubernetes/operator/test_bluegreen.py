"""``bluegreen.decide``, ``caught_up`` and ``color_job``: the blue/green switch's decisions and the
colors' StreamingJobs, without I/O."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from heliosdb_streaming.kubernetes import crds, deployment_crd
from heliosdb_streaming.kubernetes.operator.bluegreen import (
    QUIET_TICKS,
    Action,
    CaughtUpRule,
    JobView,
    caught_up,
    color_job,
    decide,
    template_hash,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RULE = CaughtUpRule(timeout_ms=60_000, max_source_lag=100, checkpoints=2)


def active(hash_: str = "v1", **extra: Any) -> dict[str, Any]:
    return {"activeColor": "blue", "activeJob": "x-blue", "activeTemplateHash": hash_, **extra}


def switching(hash_: str = "v2", deadline: datetime = NOW + timedelta(seconds=30)) -> dict[str, Any]:
    transition = {
        "toColor": "green",
        "job": "x-green",
        "templateHash": hash_,
        "deadline": deadline.isoformat(),
    }
    return active(transition=transition)


RUNNING = JobView("running", checkpoints=5, source_lag=0)


def test_caught_up_needs_running_checkpoints_and_a_small_lag() -> None:
    assert caught_up(JobView("running", 2, 100), RULE)
    assert not caught_up(JobView("running", 1, 0), RULE)  # output not committed often enough yet
    assert not caught_up(JobView("running", 9, 101), RULE)  # still behind the newest offsets
    assert caught_up(JobView("running", 2, None), RULE)  # sources without lag: checkpoints alone
    assert not caught_up(JobView("submitted", 9, 0), RULE)
    assert caught_up(JobView("finished", 0, None), RULE)  # a bounded job that is done


def test_first_deployment_then_nothing_until_the_template_changes() -> None:
    assert decide("v1", {}, None, None, RULE, NOW)[0] == Action.DEPLOY
    assert decide("v1", active(), RUNNING, None, RULE, NOW) == (Action.NONE, "")
    assert decide("v2", active(), RUNNING, None, RULE, NOW)[0] == Action.START


def test_a_change_waits_for_a_running_active_job_and_an_aborted_template_is_not_retried() -> None:
    action, why = decide("v2", active(), JobView("submitted"), None, RULE, NOW)
    assert action == Action.WAIT and "x-blue (submitted)" in why
    assert decide("v2", active(abortedTemplateHash="v2"), RUNNING, None, RULE, NOW)[0] == Action.NONE
    assert decide("v3", active(abortedTemplateHash="v2"), RUNNING, None, RULE, NOW)[0] == Action.START


def test_switch_when_caught_up_abort_when_failed_gone_late_or_changed_again() -> None:
    assert decide("v2", switching(), RUNNING, RUNNING, RULE, NOW)[0] == Action.SWITCH
    behind = JobView("running", checkpoints=5, source_lag=5000)
    action, why = decide("v2", switching(), RUNNING, behind, RULE, NOW)
    assert action == Action.WAIT and "source lag 5000" in why
    late = switching(deadline=NOW - timedelta(seconds=1))
    action, why = decide("v2", late, RUNNING, behind, RULE, NOW)
    assert action == Action.ABORT and "did not catch up within 60000ms" in why
    assert decide("v2", switching(), RUNNING, JobView("failed"), RULE, NOW) == (
        Action.ABORT,
        "x-green is failed",
    )
    invalid = JobView("failed", message="invalid spec: spec.sinks: too short")
    why = decide("v2", switching(), RUNNING, invalid, RULE, NOW)[1]
    assert why == "x-green is failed (invalid spec: spec.sinks: too short)"
    assert decide("v2", switching(), RUNNING, None, RULE, NOW) == (Action.ABORT, "x-green was deleted")
    action, why = decide("v3", switching(), RUNNING, RUNNING, RULE, NOW)
    assert action == Action.ABORT and "changed again" in why


def savepointing(deadline: datetime = NOW + timedelta(seconds=30)) -> dict[str, Any]:
    status = switching(deadline=deadline)
    status["transition"] |= {"state": "savepointing", "savepoint": "x-blue-switch-1"}
    return status


def test_the_new_color_waits_for_the_savepoint_resource_and_aborts_when_it_fails_or_goes() -> None:
    """Before the new color exists only the Savepoint's state counts (no job to look at yet)."""
    for state in ("pending", "in_progress"):
        action, why = decide("v2", savepointing(), RUNNING, None, RULE, NOW, (state, ""))
        assert action == Action.WAIT and state in why, why
    assert decide("v2", savepointing(), RUNNING, None, RULE, NOW, ("completed", ""))[0] == Action.CREATE
    action, why = decide("v2", savepointing(), RUNNING, None, RULE, NOW, ("failed", "job is paused"))
    assert action == Action.ABORT and why == "Savepoint x-blue-switch-1 of x-blue failed (job is paused)"
    action, why = decide("v2", savepointing(), RUNNING, None, RULE, NOW, ("missing", ""))
    assert action == Action.ABORT and "was deleted" in why
    late = savepointing(deadline=NOW - timedelta(seconds=1))
    action, why = decide("v2", late, RUNNING, None, RULE, NOW, ("in_progress", ""))
    assert action == Action.ABORT and "did not complete within 60000ms" in why
    changed = decide("v3", savepointing(), RUNNING, None, RULE, NOW, ("completed", ""))
    assert changed == (Action.ABORT, "the template changed again during the switch")


def test_the_template_hash_ignores_key_order_and_settings_outside_the_template() -> None:
    a = {"template": {"spec": {"a": 1, "b": 2}}, "caughtUpTimeoutMs": 1}
    b = {"template": {"spec": {"b": 2, "a": 1}}, "caughtUpTimeoutMs": 2}
    assert template_hash(a) == template_hash(b)
    assert template_hash(a) != template_hash({"template": {"spec": {"a": 2, "b": 2}}})


def test_rule_defaults_from_the_crd() -> None:
    assert CaughtUpRule.from_spec({}) == CaughtUpRule()
    assert CaughtUpRule.from_spec({"maxSourceLag": 0, "caughtUpCheckpoints": 3}).max_source_lag == 0


def test_the_tick_success_line_is_dropped_and_other_lines_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    assert not QUIET_TICKS.filter(record("Timer 'bluegreen' succeeded."))
    assert QUIET_TICKS.filter(record("Timer 'bluegreen' failed with an exception. Will retry."))
    assert QUIET_TICKS.filter(record("Handler 'create' succeeded."))


def test_a_color_is_a_v1alpha2_streaming_job_with_the_camelcase_template_as_written() -> None:
    spec = crds.to_camel(
        {
            "config": {"parallelism": 2, "checkpoint_interval_ms": 500, "max_parallelism": 64},
            "sources": [{"type": "datagen", "config": {"rate_per_sec": 10.0, "count": 5}}],
            "transformations": [{"type": "map", "config": {"fields": {"card_id": "key"}}}],
            "sinks": [{"type": "database", "config": {"connection_string": "sqlite:///x.db", "table": "t"}}],
        }
    )
    assert spec["config"]["checkpointIntervalMs"] == 500 and "card_id" in str(spec)  # user keys kept
    body = {
        "apiVersion": crds.API_VERSION,
        "kind": deployment_crd.KIND,
        "metadata": {"name": "pay", "namespace": "ns", "uid": "u-1"},
        "spec": {"template": {"metadata": {"labels": {"team": "t"}}, "spec": spec}},
    }
    green = color_job(body, "green", "pay-blue-savepoint-1")
    assert (green["apiVersion"], green["kind"]) == ("streaming.heliosdb.io/v1alpha2", "StreamingJob")
    assert green["spec"] == {**spec, "restoreFrom": "pay-blue-savepoint-1"}
    assert "restoreFrom" not in body["spec"]["template"]["spec"]  # the template is not changed
    assert green["metadata"]["name"] == "pay-green" and green["metadata"]["labels"]["team"] == "t"
    owner = green["metadata"]["ownerReferences"]
    assert [(o["apiVersion"], o["kind"], o["uid"]) for o in owner] == [
        ("streaming.heliosdb.io/v1alpha2", "StreamingJobDeployment", "u-1")
    ]
    assert "restoreFrom" not in color_job(body, "blue", None)["spec"]
