"""The job model: ``JobConfig`` (the spec's Rust struct, in Python) and its wire form (the submit body).

``JobSubmitRequest`` is exactly the spec's ``POST /api/v1/jobs`` body; ``JobConfig`` is the flat native
form (``checkpoint_interval`` is a ``timedelta``). ``JobConfig.from_dict`` and ``to_dict`` convert
between them, and every validation problem is reported at once with its field path.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from heliosdb_streaming.model.connectors import (
    BOOTSTRAP_SERVERS_SCHEMA,
    DISCRIMINATOR_TAGS,
    STORED,
    AnySink,
    AnySource,
    KafkaSource,
    StrictInt,
    check_servers,
    is_stored,
    split_servers,
)
from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError
from heliosdb_streaming.model.plan import check_plan
from heliosdb_streaming.model.transformations import (
    MAX_EXPRESSION_COST_PER_JOB,
    AnyTransformation,
    expression_costs,
    process_key_errors,
)

MAX_PARALLELISM = 1024
Parallelism = Annotated[StrictInt, Field(ge=1, le=MAX_PARALLELISM)]
CheckpointIntervalMs = Annotated[StrictInt, Field(ge=100, le=86_400_000)]
MaxStateMb = Annotated[
    StrictInt,
    Field(
        ge=1,
        le=1_048_576,
        description="(addition) memory state backend: a task whose state grows past this many MB fails "
        "with a clear error instead of exhausting the machine",
    ),
]
DEFAULT_MAX_STATE_MB = 1024
DEFAULT_MAX_PARALLELISM = 128
MaxParallelism = Annotated[
    StrictInt,
    Field(
        ge=1,
        le=32_768,
        description="(addition) key groups of every keyed stage: hash(key) mod max_parallelism picks a "
        "key's group, a task owns a range of groups, and the number is fixed for the job's life (it is "
        "the highest parallelism a keyed stage can be rescaled to), as Flink's maxParallelism",
    ),
]
IdleTimeoutMs = Annotated[
    StrictInt,
    Field(
        ge=100,
        le=86_400_000,
        description="(addition) an origin (a source split, or an upstream task) that has had no records "
        "for this long is left out of the downstream watermark (Flink's idleness)",
    ),
]
MAX_STEPS = 64  # sources, transformations, sinks: each list
MIN_SAVEPOINT_INTERVAL_MS = 1_000
MAX_SAVEPOINT_INTERVAL_MS = 7 * 86_400_000


def _savepoint_interval(v: int) -> int:
    if 0 < v < MIN_SAVEPOINT_INTERVAL_MS:
        raise ValueError(f"must be 0 (off) or at least {MIN_SAVEPOINT_INTERVAL_MS}")
    return v


SavepointIntervalMs = Annotated[
    StrictInt,
    Field(
        ge=0,
        le=MAX_SAVEPOINT_INTERVAL_MS,
        description="(addition) take a savepoint described 'periodic' this often while the job runs "
        f"(0 = off, else {MIN_SAVEPOINT_INTERVAL_MS} ms to 7 days), as the Flink operator's periodic "
        "savepoints",
    ),
    AfterValidator(_savepoint_interval),
]
SavepointsRetained = Annotated[
    StrictInt,
    Field(
        ge=1,
        le=100,
        description="(addition) periodic savepoints kept; older ones are deleted (savepoints a person "
        "created never are)",
    ),
]
MAX_FAILURES_PER_INTERVAL = 1000  # failure_rate: the failure times are kept with the job


class StateBackendType(StrEnum):
    MEMORY = "memory"
    ROCKSDB = "rocksdb"


class OnErrorPolicy(StrEnum):
    """What a task does with a record that fails an expression or a sink: skip (count, log) or fail."""

    SKIP = "skip"
    FAIL = "fail"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartStrategy(_Strict):
    """How a failed job restarts. On the wire: a name (``"fixed_delay"``) or an object with parameters.

    Defaults for the bare names: fixed_delay = 3 attempts, 10 s apart; exponential_backoff = 10
    attempts from 1 s doubling up to 60 s; failure_rate = at most 1 failure per 60 s, restarts 10 s
    apart (Flink's failure-rate strategy: the job fails when more than ``max_failures_per_interval``
    failures fall within the sliding ``failure_rate_interval_ms``; ``control.restart_policy``).
    fixed_delay and exponential_backoff count failures in a row: a run that lasted ``reset_after_ms``
    (default 1 h; 0: never) before it failed starts the count again, so a long-lived job is not failed
    by failures spread over its whole life.
    """

    type: Literal["none", "fixed_delay", "exponential_backoff", "failure_rate"] = "fixed_delay"
    attempts: StrictInt = Field(default=3, ge=0, le=1_000_000)
    delay_ms: StrictInt = Field(default=10_000, ge=0, le=86_400_000)
    max_attempts: StrictInt = Field(default=10, ge=0, le=1_000_000)
    initial_delay_ms: StrictInt = Field(default=1_000, ge=0, le=86_400_000)
    max_delay_ms: StrictInt = Field(default=60_000, ge=0, le=86_400_000)
    max_failures_per_interval: StrictInt = Field(default=1, ge=1, le=MAX_FAILURES_PER_INTERVAL)
    failure_rate_interval_ms: StrictInt = Field(default=60_000, ge=1, le=86_400_000)
    # fixed_delay and exponential_backoff: a run that lasted this long without failing gives the job
    # its restarts (and the first backoff delay) back, as Flink's exponential-delay
    # ``reset-backoff-threshold`` (1 h there too); 0 never resets. failure_rate has its own window.
    reset_after_ms: StrictInt = Field(default=3_600_000, ge=0, le=30 * 86_400_000)

    @staticmethod
    def none() -> RestartStrategy:
        return RestartStrategy(type="none")

    @staticmethod
    def fixed_delay(attempts: int, delay: timedelta) -> RestartStrategy:
        return RestartStrategy(type="fixed_delay", attempts=attempts, delay_ms=_ms(delay))

    @staticmethod
    def failure_rate(
        max_failures_per_interval: int, failure_rate_interval: timedelta, delay: timedelta
    ) -> RestartStrategy:
        return RestartStrategy(
            type="failure_rate",
            max_failures_per_interval=max_failures_per_interval,
            failure_rate_interval_ms=_ms(failure_rate_interval),
            delay_ms=_ms(delay),
        )

    @staticmethod
    def exponential_backoff(
        max_attempts: int, initial_delay: timedelta, max_delay: timedelta
    ) -> RestartStrategy:
        return RestartStrategy(
            type="exponential_backoff",
            max_attempts=max_attempts,
            initial_delay_ms=_ms(initial_delay),
            max_delay_ms=_ms(max_delay),
        )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"type": v}
        return v

    @model_validator(mode="after")
    def _delays_ordered(self) -> Self:
        if self.type == "exponential_backoff" and self.initial_delay_ms > self.max_delay_ms:
            raise ValueError("initial_delay_ms must not exceed max_delay_ms")
        return self

    def to_wire(self) -> str | dict[str, Any]:
        """The bare name when the parameters are the defaults (as the spec shows), else the object."""
        if self == RestartStrategy(type=self.type):
            return self.type
        keys = {
            "none": (),
            "fixed_delay": ("attempts", "delay_ms"),
            "exponential_backoff": ("max_attempts", "initial_delay_ms", "max_delay_ms"),
            "failure_rate": ("max_failures_per_interval", "failure_rate_interval_ms", "delay_ms"),
        }[self.type]
        wire = {"type": self.type, **{k: getattr(self, k) for k in keys}}
        if self.type in ("fixed_delay", "exponential_backoff") and self.reset_after_ms != 3_600_000:
            wire["reset_after_ms"] = self.reset_after_ms
        return wire

    def max_restarts(self) -> int:
        """Restarts in a row the strategy allows (failure_rate: within one interval)."""
        return {
            "none": 0,
            "fixed_delay": self.attempts,
            "exponential_backoff": self.max_attempts,
            "failure_rate": self.max_failures_per_interval,
        }[self.type]

    def delay_for(self, restart_number: int) -> float:
        """Seconds to wait before restart number ``restart_number`` (1-based)."""
        if self.type in ("fixed_delay", "failure_rate"):
            return self.delay_ms / 1000
        if self.type == "exponential_backoff":
            factor: int = 1 << min(max(restart_number - 1, 0), 40)
            return float(min(self.initial_delay_ms * factor, self.max_delay_ms)) / 1000
        return 0.0


def _ms(td: timedelta) -> int:
    return int(td.total_seconds() * 1000)


RestartStrategyWire = Annotated[
    RestartStrategy,
    Field(
        description="'none' | 'fixed_delay' | 'exponential_backoff' | 'failure_rate', or an object with "
        "parameters"
    ),
]


def _check_storage_uri(v: str) -> str:
    if not v.startswith(("file:///", "s3://")):
        raise ValueError("must be a file:///absolute/path or s3://bucket/prefix URI")
    return v


CheckpointStorageUri = Annotated[
    str,
    AfterValidator(_check_storage_uri),
    Field(description="Where checkpoints and savepoints go: file:///dir or s3://bucket/prefix"),
]


DEFAULT_MAX_BACKLOG_MESSAGES = 5_000


class RepartitionSettings(_Strict):
    """Where records cross stages between worker processes: Kafka internal topics on these brokers."""

    bootstrap_servers: Annotated[list[str], WithJsonSchema(BOOTSTRAP_SERVERS_SCHEMA)] = Field(
        min_length=1, description="host:port list or a comma string"
    )
    max_backlog_messages: int = Field(
        default=DEFAULT_MAX_BACKLOG_MESSAGES,
        ge=100,
        le=10_000_000,
        description="How far a stage may run ahead of the next: messages of an internal topic its "
        "readers have not taken yet, beyond which the writers read no more input (a message carries up "
        "to a few thousand records of one key group); it bounds how long a checkpoint's alignment waits",
    )

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_servers(v)

    @field_validator("bootstrap_servers")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        return check_servers(v)


# ------------------------------------------------------------------------------------ autoscaler

AUTOSCALER_MAX_DELAY_MS = 86_400_000


class AutoscalerSettings(_Strict):
    """``config.autoscaler``: the job's parallelism follows its load (the Flink operator's autoscaler).

    Decided by ``control.autoscaler`` from the workers' measured busy time, backpressure and source
    lag: required parallelism = current * utilization / ``target_utilization``, clamped to
    [``min_parallelism``, ``max_parallelism``], the splits or key groups that exist and the server's
    free slots. ``apply`` rescales with a savepoint and a restart at the new parallelism (results stay
    exact); ``recommend`` only records what it would do.
    """

    enabled: bool = Field(
        default=False, strict=True, description="(addition) whether the autoscaler watches the job"
    )
    min_parallelism: Parallelism = Field(default=1, description="(addition) never scale below this")
    max_parallelism: Parallelism = Field(
        default=MAX_PARALLELISM,
        description="(addition) never scale above this (nor above the source's splits, the keyed "
        "stages' key groups or the server's free slots)",
    )
    target_utilization: float = Field(
        default=0.7,
        gt=0,
        le=1,
        strict=True,
        allow_inf_nan=False,
        description="(addition) the busy-time fraction each worker should run at (0-1]",
    )
    stabilization_ms: StrictInt = Field(
        default=300_000,
        ge=0,
        le=AUTOSCALER_MAX_DELAY_MS,
        description="(addition) no decision this long after a run starts (its metrics settle first)",
    )
    cooldown_ms: StrictInt = Field(
        default=300_000,
        ge=0,
        le=AUTOSCALER_MAX_DELAY_MS,
        description="(addition) no rescale this long after the previous one",
    )
    metrics_window_ms: StrictInt = Field(
        default=60_000,
        ge=1_000,
        le=AUTOSCALER_MAX_DELAY_MS,
        description="(addition) busy time and backpressure are averaged over this window",
    )
    mode: Literal["apply", "recommend"] = Field(
        default="apply", description="(addition) apply: rescale the job; recommend: only record decisions"
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Self:
        if self.min_parallelism > self.max_parallelism:
            raise ValueError("min_parallelism must not exceed max_parallelism")
        return self


class JobSettings(_Strict):
    """The ``config`` object of the submit body."""

    parallelism: Parallelism = 1
    checkpoint_interval_ms: CheckpointIntervalMs = 60_000
    state_backend: StateBackendType = StateBackendType.MEMORY
    restart_strategy: RestartStrategyWire = Field(default_factory=RestartStrategy)
    on_error: OnErrorPolicy = OnErrorPolicy.SKIP
    checkpoints_retained: StrictInt = Field(default=3, ge=1, le=100)
    checkpoint_storage: CheckpointStorageUri | None = None
    max_state_mb: MaxStateMb = DEFAULT_MAX_STATE_MB
    max_parallelism: MaxParallelism = DEFAULT_MAX_PARALLELISM
    idle_timeout_ms: IdleTimeoutMs = 30_000
    savepoint_interval_ms: SavepointIntervalMs = 0
    savepoints_retained: SavepointsRetained = 3
    repartition: RepartitionSettings | None = Field(
        default=None,
        description="(addition) brokers of the internal topics that carry records between stages; "
        "default: the brokers of the job's Kafka source",
    )
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)


class JobSubmitRequest(_Strict):
    """Exactly the spec's ``POST /api/v1/jobs`` body."""

    name: str = Field(min_length=1, max_length=200)
    config: JobSettings = Field(default_factory=JobSettings)
    sources: list[AnySource] = Field(min_length=1, max_length=MAX_STEPS)
    transformations: list[AnyTransformation] = Field(default_factory=list, max_length=MAX_STEPS)
    sinks: list[AnySink] = Field(min_length=1, max_length=MAX_STEPS)

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.strip() or not v.isprintable():
            raise ValueError("must be printable and not blank")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if len(self.sources) > 1 and len({s.type for s in self.sources}) > 1:
            raise ValueError("all sources of a job must be of one type")
        return self

    @model_validator(mode="after")
    def _work_per_record(self, info: ValidationInfo) -> Self:
        if not is_stored(info):
            check_work_per_record(self.transformations)
            check_process_keys(self.transformations)
        return self

    @model_validator(mode="after")
    def _plan_runs(self, info: ValidationInfo) -> Self:
        if not is_stored(info):
            s = self.config
            raise_plan_errors(
                self.sources, self.transformations, s.parallelism, s.max_parallelism, s.repartition
            )
        return self


class JobConfig(_Strict):
    """A job, as the native API takes it (the spec's ``JobConfig`` struct).

    ``JobConfig.from_dict(body)`` takes the REST body; ``to_dict()`` gives it back.
    """

    name: str = Field(min_length=1, max_length=200)
    parallelism: Parallelism = 1
    checkpoint_interval: timedelta = timedelta(seconds=60)
    state_backend: StateBackendType = StateBackendType.MEMORY
    restart_strategy: RestartStrategy = Field(default_factory=RestartStrategy)
    on_error: OnErrorPolicy = OnErrorPolicy.SKIP
    checkpoints_retained: StrictInt = Field(default=3, ge=1, le=100)
    checkpoint_storage: CheckpointStorageUri | None = None
    max_state_mb: MaxStateMb = DEFAULT_MAX_STATE_MB
    max_parallelism: MaxParallelism = DEFAULT_MAX_PARALLELISM
    idle_timeout: timedelta = timedelta(seconds=30)
    savepoint_interval: timedelta = timedelta(0)  # zero: no periodic savepoints
    savepoints_retained: SavepointsRetained = 3
    repartition: RepartitionSettings | None = None
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
    sources: list[AnySource] = Field(min_length=1, max_length=MAX_STEPS)
    transformations: list[AnyTransformation] = Field(default_factory=list, max_length=MAX_STEPS)
    sinks: list[AnySink] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _work_per_record(self, info: ValidationInfo) -> Self:
        if not is_stored(info):
            check_work_per_record(self.transformations)
            check_process_keys(self.transformations)
        return self

    @model_validator(mode="after")
    def _plan_runs(self, info: ValidationInfo) -> Self:
        if not is_stored(info):
            self.check_plan()
        return self

    def check_plan(self, path: str | None = None) -> None:
        """Raises ``InvalidJobConfigError`` when the job's plan cannot run at its parallelism (see
        ``plan.check_plan``). ``path``: report every problem there (a restart's override), naming the
        field the plan's rule is about in the message. Cheap: every door calls it, even on a config
        built without validation (``model_copy``)."""
        raise_plan_errors(
            self.sources,
            self.transformations,
            self.parallelism,
            self.max_parallelism,
            self.repartition,
            path=path,
        )

    @classmethod
    def from_dict(cls, body: Any) -> JobConfig:
        """Validates a submit body; raises ``InvalidJobConfigError`` listing every problem.

        CPU-bound for large bodies (expressions are compiled): servers call it off their event loop.
        """
        try:
            request = JobSubmitRequest.model_validate(body)
        except ValidationError as e:
            raise InvalidJobConfigError(field_errors(e)) from None
        return cls.from_request(request)

    @classmethod
    def from_stored(cls, body: Any) -> JobConfig:
        """A config the job store holds (``to_dict`` of one that passed ``from_dict``): its structure is
        checked, but expressions and patterns are not compiled again and bounds added since are not
        applied, so that a server starts quickly and shows every job it has (the worker of a job
        that runs again validates it fully)."""
        try:
            request = JobSubmitRequest.model_validate(body, context={STORED: True})
        except ValidationError as e:
            raise InvalidJobConfigError(field_errors(e)) from None
        return cls.model_validate(_fields_of(request), context={STORED: True})

    @classmethod
    def from_request(cls, request: JobSubmitRequest) -> JobConfig:
        return cls(**_fields_of(request))

    @classmethod
    def validated(cls, **fields: Any) -> JobConfig:
        """Builds from keyword fields, turning validation failures into ``InvalidJobConfigError``."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise InvalidJobConfigError(field_errors(e)) from None

    @property
    def checkpoint_interval_ms(self) -> int:
        return _ms(self.checkpoint_interval)

    @property
    def idle_timeout_ms(self) -> int:
        return _ms(self.idle_timeout)

    @property
    def savepoint_interval_ms(self) -> int:
        return _ms(self.savepoint_interval)

    def max_backlog_messages(self) -> int:
        """``repartition.max_backlog_messages`` (its default when the brokers are the source's)."""
        if self.repartition is None:
            return DEFAULT_MAX_BACKLOG_MESSAGES
        return self.repartition.max_backlog_messages

    def repartition_servers(self) -> list[str] | None:
        """The brokers of the internal topics: ``repartition``'s, else the job's Kafka source's."""
        return repartition_servers(self.repartition, self.sources)

    def settings_dict(self) -> dict[str, Any]:
        """The ``config`` object as the spec shows it in details."""
        return {
            "parallelism": self.parallelism,
            "checkpoint_interval_ms": self.checkpoint_interval_ms,
            "state_backend": self.state_backend.value,
            "restart_strategy": self.restart_strategy.to_wire(),
            "on_error": self.on_error.value,
            "checkpoints_retained": self.checkpoints_retained,
            **({"checkpoint_storage": self.checkpoint_storage} if self.checkpoint_storage else {}),
            "max_state_mb": self.max_state_mb,
            "max_parallelism": self.max_parallelism,
            "idle_timeout_ms": self.idle_timeout_ms,
            "savepoint_interval_ms": self.savepoint_interval_ms,
            "savepoints_retained": self.savepoints_retained,
            **({"repartition": self.repartition.model_dump(mode="json")} if self.repartition else {}),
            "autoscaler": self.autoscaler.model_dump(mode="json"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.settings_dict(),
            "sources": [s.model_dump(mode="json", by_alias=True) for s in self.sources],
            "transformations": [t.model_dump(mode="json", by_alias=True) for t in self.transformations],
            "sinks": [s.model_dump(mode="json", by_alias=True) for s in self.sinks],
        }

    def with_overrides(self, overrides: JobConfigOverrides | None) -> JobConfig:
        if overrides is None:
            return self
        changes = {k: v for k, v in overrides.model_dump(exclude_none=True).items()}
        if "checkpoint_interval_ms" in changes:
            changes["checkpoint_interval"] = timedelta(milliseconds=changes.pop("checkpoint_interval_ms"))
        # the pipeline is this job's, validated already: not compiled again (on the caller's loop)
        config = JobConfig.model_validate({**dict(self), **changes}, context={STORED: True})
        if overrides.parallelism is not None:  # the plan may not run at the new parallelism
            config.check_plan("config_overrides.parallelism")
        return config


class JobConfigOverrides(_Strict):
    """Settings a restart may change without invalidating the job's state."""

    parallelism: Parallelism | None = None
    checkpoint_interval_ms: CheckpointIntervalMs | None = None
    restart_strategy: RestartStrategyWire | None = None
    on_error: OnErrorPolicy | None = None
    autoscaler: AutoscalerSettings | None = Field(
        default=None,
        description="(addition) the autoscaler's settings from this restart on (the whole object), e.g. "
        "to switch mode from recommend to apply",
    )


def _fields_of(request: JobSubmitRequest) -> dict[str, Any]:
    s = request.config
    return {
        "name": request.name,
        "parallelism": s.parallelism,
        "checkpoint_interval": timedelta(milliseconds=s.checkpoint_interval_ms),
        "state_backend": s.state_backend,
        "restart_strategy": s.restart_strategy,
        "on_error": s.on_error,
        "checkpoints_retained": s.checkpoints_retained,
        "checkpoint_storage": s.checkpoint_storage,
        "max_state_mb": s.max_state_mb,
        "max_parallelism": s.max_parallelism,
        "idle_timeout": timedelta(milliseconds=s.idle_timeout_ms),
        "savepoint_interval": timedelta(milliseconds=s.savepoint_interval_ms),
        "savepoints_retained": s.savepoints_retained,
        "repartition": s.repartition,
        "autoscaler": s.autoscaler,
        "sources": list(request.sources),
        "transformations": list(request.transformations),
        "sinks": list(request.sinks),
    }


def repartition_servers(repartition: RepartitionSettings | None, sources: list[Any]) -> list[str] | None:
    """The brokers of a job's internal topics: ``repartition``'s, else its Kafka source's."""
    if repartition is not None:
        return list(repartition.bootstrap_servers)
    for source in sources:
        if isinstance(source, KafkaSource):
            return list(source.config.bootstrap_servers)
    return None


def raise_plan_errors(
    sources: list[Any],
    transformations: list[Any],
    parallelism: int,
    max_parallelism: int,
    repartition: RepartitionSettings | None,
    *,
    path: str | None = None,
) -> None:
    """Raises ``InvalidJobConfigError`` with what makes the job's plan impossible, if anything."""
    errors = check_plan(
        sources,
        transformations,
        parallelism=parallelism,
        max_parallelism=max_parallelism,
        repartition_servers=repartition_servers(repartition, sources),
    )
    if errors and path is not None:
        errors = [FieldError(path, f"{e.path}: {e.message}") for e in errors]
    if errors:
        raise InvalidJobConfigError(errors)


def check_process_keys(transformations: list[Any]) -> None:
    """A process step's state and timers are per key: refuse one that has no key to use."""
    problems = process_key_errors(transformations)
    if problems:
        raise InvalidJobConfigError([FieldError(f"transformations[{i}].config.key", m) for i, m in problems])


def check_work_per_record(transformations: list[Any]) -> None:
    """Every expression of a job is evaluated at most once per record: bound their nodes together."""
    total = 0
    for i, step in enumerate(transformations):
        for path, cost in expression_costs(step):
            total += cost
            if total > MAX_EXPRESSION_COST_PER_JOB:
                raise InvalidJobConfigError(
                    [
                        FieldError(
                            f"transformations[{i}].{path}",
                            f"the job's expressions have more than {MAX_EXPRESSION_COST_PER_JOB} parts "
                            "together (work per record)",
                        )
                    ]
                )


def field_errors(error: ValidationError) -> list[FieldError]:
    """Pydantic errors as field paths a user can read: ``transformations[1].config.pattern``."""
    out: list[FieldError] = []
    for item in error.errors(include_url=False):
        path = _format_loc(item["loc"])
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        if item["type"] == "union_tag_invalid":
            ctx = item.get("ctx", {})
            tag, allowed = ctx.get("tag"), ctx.get("expected_tags", "")
            message = f"unknown type {tag!r}; expected one of {allowed}"
        previous = next((i for i, e in enumerate(out) if e.path == (path or "(body)")), None)
        if previous is not None and item["loc"][-1] in _UNION_MEMBERS:  # one message per field
            out[previous] = FieldError(
                out[previous].path, f"{out[previous].message}, or {message[0].lower()}{message[1:]}"
            )
            continue
        out.append(FieldError(path or "(body)", message))
    return out


_UNION_MEMBERS = frozenset({"str", "int"})


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    prev: int | str | None = None
    for elem in loc:
        if isinstance(elem, int):
            parts.append(f"[{elem}]")
        elif isinstance(prev, int) and elem in DISCRIMINATOR_TAGS:
            pass  # the discriminated union's tag is not part of the user's path
        elif "[" in elem and elem.startswith(("function-", "tagged-union")):
            pass
        elif elem in _UNION_MEMBERS and isinstance(prev, str):
            pass  # which member of ``str | int`` failed is not part of the user's path
        else:
            parts.append(("." if parts else "") + elem)
        prev = elem
    return "".join(parts)
