"""Which StreamingJob each control-plane job belongs to, kept on disk beside the job's files.

The control plane recovers active jobs as soon as it starts, before kopf has seen any resource, and its
launcher must then know the namespace, name and pod settings of each job. So the binding is written
when a job is submitted (``<home>/jobs/<job_id>/binding.json``) and read back at startup; it also
holds what the operator has applied (the restart nonce and the generation), which the status shows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.kubernetes.operator.pods import Target

logger = logging.getLogger(__name__)

FILE = "binding.json"


@dataclass(slots=True)
class Binding:
    job_id: str
    namespace: str
    name: str
    uid: str
    # the latest upgrade of an edited spec (``reconciler``; ``status.upgrade`` shows it)
    upgrade: dict[str, Any] | None = None
    image: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    applied_nonce: int = 0
    observed_generation: int | None = None  # the generation whose spec is applied
    ttl_seconds_after_finished: int | None = None  # spec.ttlSecondsAfterFinished, as last reconciled
    generation: int | None = None  # the newest generation reconciled (applied or not)
    spec_pending: str | None = None  # why the newest generation is not applied yet
    pod_template: dict[str, Any] = field(default_factory=dict)
    # the pod settings (image, resources, podTemplate) the job's runs were last (re)started with by the
    # user: a change of them is applied by the next restartNonce, as a change of the job's settings
    applied_pod: dict[str, Any] | None = None
    disruption_budget: int | None = None  # the maxUnavailable of the PodDisruptionBudget it made, if any

    @property
    def pod_settings(self) -> dict[str, Any]:
        return {"image": self.image, "resources": self.resources, "podTemplate": self.pod_template}

    def pod_changes(self) -> list[str]:
        """The pod settings that differ from those the job was last (re)started with."""
        applied = self.applied_pod if self.applied_pod is not None else self.pod_settings
        return [k for k, v in self.pod_settings.items() if applied.get(k) != v]

    @property
    def target(self) -> Target:
        return Target(
            self.namespace, self.name, self.uid, self.image, dict(self.resources), dict(self.pod_template)
        )


class Bindings:
    """The bindings of one operator home, indexed by job id and by (namespace, name)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._by_job: dict[str, Binding] = {}
        self._by_object: dict[tuple[str, str], str] = {}

    def load(self) -> None:
        for path in sorted((self.home / "jobs").glob(f"*/{FILE}")):
            try:
                binding = Binding(**orjson.loads(path.read_bytes()))
            except (OSError, ValueError, TypeError) as e:
                logger.error("ignoring unreadable binding %s: %s", path, e)
                continue
            self._index(binding)

    def _index(self, binding: Binding) -> None:
        self._by_job[binding.job_id] = binding
        self._by_object[(binding.namespace, binding.name)] = binding.job_id

    def save(self, binding: Binding) -> None:
        """Writes atomically (temp file + rename), so a crash leaves the old or the new binding."""
        self._index(binding)
        directory = self.home / "jobs" / binding.job_id
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{FILE}.tmp"
        tmp.write_bytes(orjson.dumps(asdict(binding)))
        os.replace(tmp, directory / FILE)

    def remove(self, job_id: str) -> None:
        binding = self._by_job.pop(job_id, None)
        if binding is None:
            return
        if self._by_object.get((binding.namespace, binding.name)) == job_id:
            del self._by_object[(binding.namespace, binding.name)]
        (self.home / "jobs" / job_id / FILE).unlink(missing_ok=True)

    def get(self, job_id: str) -> Binding | None:
        return self._by_job.get(job_id)

    def for_object(self, namespace: str, name: str) -> Binding | None:
        job_id = self._by_object.get((namespace, name))
        return self._by_job.get(job_id) if job_id else None

    def target(self, job_id: str) -> Target | None:
        binding = self._by_job.get(job_id)
        return binding.target if binding else None

    def all(self) -> list[Binding]:
        return list(self._by_job.values())
