"""Builds the runnable parts of a job from its config: the source reader, each task's chain, the sinks.

A job is one source type (possibly several sources), a linear chain of transformations and one or
more sinks. Every task (one split) gets its own chain instance and its own state stores, so keyed
state lives with the split that produces its keys.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from heliosdb_streaming.functions import KeyedProcessFunction
from heliosdb_streaming.model import connectors, expr, transformations
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.durations import parse_duration_ms
from heliosdb_streaming.model.patterns import parse_pattern
from heliosdb_streaming.model.transformations import parse_aggregate
from heliosdb_streaming.runtime import usercode
from heliosdb_streaming.runtime.contracts import Record, SinkWriter, SourceReader, StateStore, Transformation
from heliosdb_streaming.runtime.transformations import basic
from heliosdb_streaming.runtime.transformations.cep import CepTransformation
from heliosdb_streaming.runtime.transformations.process import ProcessTransformation
from heliosdb_streaming.runtime.transformations.python import PythonTransformation
from heliosdb_streaming.runtime.transformations.window import WindowTransformation

KeyFn = Callable[[Record], Any]
StoreFactory = Callable[[str], StateStore]
"""Makes the state store of one transformation of one task, given a name unique within the task."""


@dataclass(frozen=True, slots=True)
class OperatorInfo:
    """One operator of the job as the API shows it (``task-N``)."""

    task_id: str
    name: str


def operator_names(config: JobConfig) -> list[OperatorInfo]:
    """The job's operators in order: sources, transformations, sinks (``tasks`` in job details)."""
    names = [f"{s.type}-source" for s in config.sources]
    names += [_transformation_name(t.type) for t in config.transformations]
    names += [f"{s.type}-sink" for s in config.sinks]
    return [OperatorInfo(f"task-{i}", name) for i, name in enumerate(names, start=1)]


def _transformation_name(kind: str) -> str:
    return {"cep": "cep-matcher", "window": "window-aggregate", "key_by": "key-by"}.get(kind, kind)


def build_source_readers(config: JobConfig) -> list[SourceReader]:
    readers: list[SourceReader] = []
    for index, source in enumerate(config.sources):
        readers.append(_build_source(source, index))
    return readers


def _build_source(source: Any, index: int) -> SourceReader:
    s = source.config
    if isinstance(source, connectors.KafkaSource):
        from heliosdb_streaming.runtime.connectors import kafka

        return kafka.KafkaSourceReader(
            bootstrap_servers=s.bootstrap_servers,
            topic=s.topic,
            group_id=s.group_id,
            start_from=s.start_from,
            format=s.format,
            event_time_field=s.event_time_field,
            source_index=index,
        )
    if isinstance(source, connectors.DatagenSource):
        from heliosdb_streaming.runtime.connectors import datagen

        return datagen.DatagenSourceReader(
            schema=s.schema_,
            rate_per_sec=s.rate_per_sec,
            count=s.count,
            partitions=s.partitions,
            seed=s.seed,
            keys=s.keys,
            source_index=index,
        )
    if isinstance(source, connectors.FileSource):
        from heliosdb_streaming.runtime.connectors import files

        return files.FileSourceReader(path=s.path, format=s.format, source_index=index)
    raise ValueError(f"unknown source type {source.type!r}")


def build_sinks(config: JobConfig) -> list[SinkWriter]:
    return [_build_sink(sink) for sink in config.sinks]


def _build_sink(sink: Any) -> SinkWriter:
    """Imports each connector only when a job uses it (asyncpg, aiokafka are not free to import)."""
    s = sink.config
    if isinstance(sink, connectors.DatabaseSink):
        from heliosdb_streaming.runtime.connectors import database

        return database.DatabaseSinkWriter(
            connection_string=s.connection_string,
            table=s.table,
            key=s.key,
            batch_size=s.batch_size,
            exactly_once=s.delivery == "exactly_once",
        )
    if isinstance(sink, connectors.KafkaSink):
        from heliosdb_streaming.runtime.connectors import kafka

        return kafka.KafkaSinkWriter(
            bootstrap_servers=s.bootstrap_servers, topic=s.topic, key_field=s.key_field
        )
    if isinstance(sink, connectors.FileSink):
        from heliosdb_streaming.runtime.connectors import files

        return files.FileSinkWriter(path=s.path)
    if isinstance(sink, connectors.PrintSink):
        from heliosdb_streaming.runtime.connectors import printer

        return printer.PrintSinkWriter(prefix=s.prefix)
    if isinstance(sink, connectors.DiscardSink):
        from heliosdb_streaming.runtime.connectors import discard

        return discard.DiscardSinkWriter()
    raise ValueError(f"unknown sink type {sink.type!r}")


def store_name(position: int, step_type: str) -> str:
    """A step's state store: named by its position and type, which is how a snapshot's state finds
    its step again after a restore (also into a changed pipeline)."""
    return f"{position}-{step_type}"


def store_names(config: JobConfig) -> set[str]:
    """The state stores a task of this job keeps: one per window, CEP or process step."""
    return {
        store_name(position, step.type)
        for position, step in enumerate(config.transformations)
        if isinstance(
            step,
            transformations.WindowTransformation
            | transformations.CepTransformation
            | transformations.ProcessTransformation,
        )
    }


def build_chain(
    config: JobConfig,
    store_for: StoreFactory,
    steps: Collection[int] | None = None,
    *,
    external_watermark: bool = False,
) -> list[Transformation]:
    """The transformations of one task, each keyed step with its own store.

    A ``key_by`` sets the key of the keyed steps after it; a window, CEP or process step's own ``key``
    wins. A process step's class is imported here, in the worker (``runtime/usercode.py``).
    ``steps`` (positions) limits the chain to one stage's steps (a ``key_by`` of an earlier stage
    still keys them). ``external_watermark``: the stage's first event-time step takes its watermark
    from the exchange (``advance_watermark``) instead of deriving it from its own input.
    """
    chain: list[Transformation] = []
    key_fn: KeyFn | None = None
    key_text: str | None = None  # the key_by's expression
    external = external_watermark
    for position, step in enumerate(config.transformations):
        built: Transformation | None = None
        if isinstance(step, transformations.KeyByTransformation):
            key_by = basic.KeyByTransformation(step.config.key)
            key_fn, key_text = key_by.key_fn, step.config.key
            built = key_by
        if steps is not None and position not in steps:
            continue
        name = store_name(position, step.type)
        if isinstance(step, transformations.FilterTransformation):
            built = basic.FilterTransformation(step.config.condition)
        elif isinstance(step, transformations.MapTransformation):
            built = basic.MapTransformation(dict(step.config.fields), list(step.config.drop))
        elif isinstance(step, transformations.WindowTransformation):
            timed = external and step.config.time == "event"
            built = _window(step.config, store_for(name), key_fn, timed)
            external = external and not timed
        elif isinstance(step, transformations.CepTransformation):
            built = _cep(step.config, store_for(name), key_fn, external)
            external = False
        elif isinstance(step, transformations.PythonTransformation):
            built = PythonTransformation(step.config.function, step.config.kind)
        elif isinstance(step, transformations.ProcessTransformation):
            built = _process(step.config, store_for(name), key_fn, external, key_text)
            external = False
        elif built is None:
            raise ValueError(f"unknown transformation type {step.type!r}")
        chain.append(built)
    return chain


def first_event_time_step(config: JobConfig, steps: Collection[int]) -> tuple[int, str, int] | None:
    """The stage's first event-time step as (position, time field, lag): the exchange observes that
    field on the records it routes, and an origin's watermark is its largest value minus the lag
    (a window or a process step: ``max_out_of_orderness`` + 1 ms, as Flink's; CEP: 1 ms)."""
    for position in sorted(steps):
        step = config.transformations[position]
        if isinstance(step, transformations.WindowTransformation) and step.config.time == "event":
            return position, step.config.time_field, parse_duration_ms(step.config.max_out_of_orderness) + 1
        if isinstance(step, transformations.CepTransformation):
            return position, step.config.time_field, 1
        if isinstance(step, transformations.ProcessTransformation):
            return position, step.config.time_field, parse_duration_ms(step.config.max_out_of_orderness) + 1
    return None


def _window(
    c: transformations.WindowSettings, store: StateStore, key_fn: KeyFn | None, external: bool = False
) -> Transformation:
    return WindowTransformation(
        store,
        kind=c.kind,
        size_ms=_ms_or_none(c.size),
        slide_ms=_ms_or_none(c.slide),
        gap_ms=_ms_or_none(c.gap),
        time=c.time,
        time_field=c.time_field,
        allowed_lateness_ms=parse_duration_ms(c.allowed_lateness),
        max_out_of_orderness_ms=parse_duration_ms(c.max_out_of_orderness),
        key_fn=basic.compile_key(c.key) if c.key else key_fn,
        aggregates={name: parse_aggregate(text) for name, text in c.aggregates.items()},
        external_watermark=external,
    )


def _cep(
    c: transformations.CepSettings, store: StateStore, key_fn: KeyFn | None, external: bool = False
) -> Transformation:
    return CepTransformation(
        store,
        pattern=parse_pattern(c.pattern),
        pattern_text=c.pattern,
        define={var: expr.compile_condition(text) for var, text in c.define.items()},
        key_fn=basic.compile_key(c.key) if c.key else key_fn,
        window_ms=_ms_or_none(c.window),
        time_field=c.time_field,
        contiguity=c.contiguity,
        after_match=c.after_match,
        external_watermark=external,
    )


def _process(
    c: transformations.ProcessSettings,
    store: StateStore,
    key_fn: KeyFn | None,
    external: bool = False,
    key_text: str | None = None,
) -> Transformation:
    cls = usercode.load_class(c.function, KeyedProcessFunction, usercode.worker_allow_list())
    key = basic.compile_key(c.key) if c.key else key_fn
    key_text = c.key or key_text
    if key is None:  # refused at submit; a stored config is not checked again
        raise ValueError(f"process step {c.function} has no key: set its 'key' or put a key_by before it")
    try:
        function = cls()
    except Exception as e:
        raise usercode.UserCodeLoadError(
            f"cannot create {c.function}: {cls.__qualname__}() raised {type(e).__name__}: {e}"
        ) from e
    return ProcessTransformation(
        store,
        function,
        key_fn=key,
        function_name=c.function,
        time_field=c.time_field,
        max_out_of_orderness_ms=parse_duration_ms(c.max_out_of_orderness),
        external_watermark=external,
        key_field=expr.single_field(key_text) if key_text else None,
    )


def _ms_or_none(value: str | int | None) -> int | None:
    return None if value is None else parse_duration_ms(value)
