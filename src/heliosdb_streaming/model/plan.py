"""The job's plan: where its pipeline is cut into stages, and why. Pure logic over the job model.

A keyed step (``key_by``, a keyed ``window``/``cep``/``process``) is right only if every event of a
key reaches the one task that holds the key's state. The first stage reads the sources (one task per
split); whether its tasks already hold whole keys depends on how the input is partitioned, which only
the user can declare (``partitioned_by`` of a Kafka or file source; datagen puts each ``card_id`` on
one partition). Wherever a step needs events grouped differently from the step before, the plan
starts a new stage whose input is routed by key: key group = hash(key) mod ``max_parallelism``, and a
task of the stage owns a range of key groups. An unkeyed window or CEP step over more than one split
is a *global* step: its stage has one key group, so one task sees every event.

How the grouping is tracked, step by step (``_Grouping``): the stage's input is grouped by a key
expression, by nothing known (the first stage without a declaration), by everything (``ANY``: a
single datagen partition, one task sees all), or globally (one task). A ``filter`` keeps it; a
``map`` that assigns or drops a field the key expression reads loses it; a window, CEP or process
step emits new records, so what comes out is no longer grouped by the declared fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from heliosdb_streaming.model.errors import FieldError

StageInput = Literal["splits", "key_groups", "global"]

ANY = "\x00any"
"""The grouping of input that one task reads whole: every key (and the global step) is in one task."""
GLOBAL = "\x00global"
"""The grouping after a global boundary: one task sees every event."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Boundary:
    """Where records cross from one stage to the next, regrouped."""

    stage: int  # the stage that starts here (>= 1)
    step: int  # position in ``transformations`` of the first step of that stage
    key: str | None  # the key expression records are routed by; None: a global step (one task)
    reason: str  # why the step needs its input grouped again, in words a user can act on

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "key": self.key, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Stage:
    """A run of steps whose tasks see the same grouping of records."""

    index: int
    steps: tuple[int, ...]  # positions in ``transformations``
    input: StageInput  # splits (stage 0), key groups routed by ``key``, or one global task
    key: str | None  # the key expression its input is routed by (None for splits and global)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "steps": list(self.steps), "input": self.input, "key": self.key}


@dataclass(frozen=True, slots=True)
class JobPlan:
    """The stages of a job in order, with the boundaries between them."""

    stages: tuple[Stage, ...]
    boundaries: tuple[Boundary, ...]
    declared_key: str | None  # the grouping the sources declare (``partitioned_by``), if any

    @property
    def needs_exchange(self) -> bool:
        """True when records cross stages, so they must be routed between tasks."""
        return bool(self.boundaries)

    def stage_of_step(self, step: int) -> Stage:
        for stage in self.stages:
            if step in stage.steps:
                return stage
        raise IndexError(f"no step {step} in this plan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [s.to_dict() for s in self.stages],
            "boundaries": [b.to_dict() for b in self.boundaries],
            "declared_key": self.declared_key,
        }

    def describe(self, step_types: list[str]) -> list[str]:
        """The plan as lines a person reads (``helios validate``)."""
        lines: list[str] = []
        for stage in self.stages:
            steps = ", ".join(f"[{i}] {step_types[i]}" for i in stage.steps) or "(no steps)"
            if stage.input == "splits":
                grouping = "one task per source split"
            elif stage.input == "global":
                grouping = "one global task"
            else:
                grouping = f"key groups by {stage.key}"
            lines.append(f"stage {stage.index}: {grouping}: {steps}")
            boundary = next((b for b in self.boundaries if b.stage == stage.index + 1), None)
            if boundary is not None:
                lines.append(f"  -> repartition before step [{boundary.step}]: {boundary.reason}")
        return lines


def declared_key(sources: list[Any]) -> str | None:
    """The grouping a job's sources promise: one source's ``partitioned_by`` (datagen: ``card_id``;
    one datagen partition: ``ANY``). Several sources promise nothing: a key may be in each of them."""
    if len(sources) != 1:
        return None
    source = sources[0]
    if source.type == "datagen":
        return ANY if source.config.partitions == 1 else "card_id"
    declared: str | None = getattr(source.config, "partitioned_by", None)
    return declared


def plan_job(sources: list[Any], transformations: list[Any]) -> JobPlan:
    """Cuts the pipeline into stages (see the module docstring for the rules)."""
    declared = declared_key(sources)
    grouping: str | None = declared
    key_by: str | None = None  # the key the keyed steps after a key_by use
    stages: list[list[int]] = [[]]
    boundaries: list[Boundary] = []
    inputs: list[tuple[StageInput, str | None]] = [("splits", None)]

    def cut(step: int, key: str | None, reason: str) -> None:
        stages.append([])
        boundaries.append(Boundary(len(stages) - 1, step, key, reason))
        inputs.append(("global", None) if key is None else ("key_groups", key))

    for i, step in enumerate(transformations):
        kind = step.type
        needed: str | None = None  # the key this step needs its input grouped by, if any
        is_global = False
        if kind == "key_by":
            key_by = step.config.key
            needed = key_by
        elif kind in ("window", "cep", "process"):
            own = getattr(step.config, "key", None)
            if own:
                needed = own
            elif key_by is not None:
                needed = key_by
            elif kind == "process":
                needed = None  # refused at submit by the process step's own validation
            else:
                is_global = True
        if needed is not None and not _grouped_by(grouping, needed):
            cut(i, needed, _reason(kind, needed, grouping, declared, stage_zero=len(stages) == 1))
            grouping = needed
        elif is_global and grouping not in (ANY, GLOBAL):
            cut(i, None, f"an unkeyed {kind} step sees every event: one global task, fed by every split")
            grouping = GLOBAL
        elif needed is not None:
            grouping = needed if grouping != ANY else ANY
        stages[-1].append(i)
        grouping = _after(step, grouping)

    return JobPlan(
        stages=tuple(
            Stage(index, tuple(steps), inputs[index][0], inputs[index][1])
            for index, steps in enumerate(stages)
        ),
        boundaries=tuple(boundaries),
        declared_key=None if declared == ANY else declared,
    )


def _grouped_by(grouping: str | None, key: str) -> bool:
    return grouping == ANY or (grouping is not None and _same_key(grouping, key))


def _same_key(a: str, b: str) -> bool:
    return "".join(a.split()) == "".join(b.split())


def _reason(kind: str, key: str, grouping: str | None, declared: str | None, *, stage_zero: bool) -> str:
    step = f"key_by {key}" if kind == "key_by" else f"keyed {kind} (key {key})"
    if grouping is None and stage_zero:
        if declared is None:
            return (
                f"{step}: the sources declare no partitioning, so a key's events may arrive on several "
                "splits (declare partitioned_by on the source if each key lives in one split)"
            )
        return f"{step}: a step before it changes the declared partitioning field {declared}"
    if grouping is None:
        return f"{step}: the step before it emits new records, no longer grouped by key"
    if grouping == GLOBAL:
        return f"{step}: its input is one global task; spread it over key groups by {key}"
    return f"{step}: its input is grouped by {grouping}, not by {key}"


def _after(step: Any, grouping: str | None) -> str | None:
    """The grouping of what a step emits, given the grouping of what it reads."""
    if grouping in (ANY, GLOBAL):
        return grouping
    kind = step.type
    if kind in ("filter", "key_by"):
        return grouping
    if kind == "map":
        if grouping is None:
            return None
        touched = set(step.config.fields) | set(step.config.drop)
        return None if touched & set(_IDENTIFIER.findall(grouping)) else grouping
    if kind == "python" and getattr(step.config, "kind", None) == "filter":
        return grouping
    return None  # python map/flat_map, window, cep, process: new records


def check_plan(
    sources: list[Any],
    transformations: list[Any],
    *,
    parallelism: int,
    max_parallelism: int,
    repartition_servers: list[str] | None,
) -> list[FieldError]:
    """What makes a job's plan impossible to run: a repartition across worker processes with no
    brokers to carry it, or more tasks than key groups."""
    plan = plan_job(sources, transformations)
    if not plan.needs_exchange:
        return []
    errors: list[FieldError] = []
    first = plan.boundaries[0]
    if parallelism > 1 and repartition_servers is None:
        errors.append(
            FieldError(
                f"transformations[{first.step}]",
                f"this {transformations[first.step].type} step needs its records regrouped "
                f"({first.reason}); at parallelism {parallelism} they cross worker processes through "
                "Kafka internal topics, and the job has no brokers for them: set "
                "config.repartition.bootstrap_servers (or use a Kafka source, whose brokers are the "
                "default), or run at parallelism 1",
            )
        )
    if parallelism > max_parallelism:
        errors.append(
            FieldError(
                "config.parallelism",
                f"parallelism {parallelism} is above max_parallelism {max_parallelism}: a keyed stage "
                "cannot have more tasks than key groups",
            )
        )
    return errors
