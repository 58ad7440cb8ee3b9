"""``spec.resources`` and ``spec.podTemplate`` of a StreamingJob: the pod settings a user may set.

As the Flink operator's ``podTemplate``, the template is the base of every worker pod and the
operator's own settings go on top (``operator.pods.worker_pod`` does the merge). The models are the
subset of ``core/v1`` that a platform team sets on workload pods: labels and annotations, the pod's
``securityContext``, ``imagePullSecrets``, scheduling (``nodeSelector``, ``tolerations``, ``affinity``,
``topologySpreadConstraints``, ``priorityClassName``), ``volumes``, and for the container named
``worker`` its ``env`` (plain values or references to Secrets and ConfigMaps), ``envFrom``,
``volumeMounts`` and ``resources``. The CRD schema is generated from them (``crds.py``), so the API
server refuses a field the operator would ignore; ``affinity`` and each volume's source are left open
(``core/v1`` schemas too large to copy, the API server checks them when the pod is created).

Fields Kubernetes names in camelCase keep their Kubernetes names here, so a podTemplate can be copied
from a Deployment.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from heliosdb_streaming.model.errors import FieldError, InvalidJobConfigError

# A resource.Quantity: "500m", "1Gi", "2" or a plain number (the core API's int-or-string).
QUANTITY_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]i?|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)] | int
NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS label: volume names, container names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceRequirements(_Strict):
    """core/v1 ResourceRequirements: quantities per resource name (``cpu``, ``memory``, ...)."""

    requests: dict[str, Quantity] = Field(default_factory=dict, description="Minimum the pod is given")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Maximum the pod may use")


class TemplateMetadata(_Strict):
    labels: dict[str, str] = Field(default_factory=dict, description="Added to every worker pod")
    annotations: dict[str, str] = Field(default_factory=dict, description="Added to every worker pod")


class LocalObjectReference(_Strict):
    name: str = Field(min_length=1)


class KeySelector(_Strict):
    """A key of a Secret or a ConfigMap."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    optional: bool = False


class EnvVarSource(_Strict):
    secretKeyRef: KeySelector | None = None
    configMapKeyRef: KeySelector | None = None
    fieldRef: dict[str, Any] | None = Field(default=None, description="core/v1 ObjectFieldSelector")


class EnvVar(_Strict):
    name: str = Field(min_length=1)
    value: str | None = None
    valueFrom: EnvVarSource | None = None


class EnvFromRef(_Strict):
    name: str = Field(min_length=1)
    optional: bool = False


class EnvFromSource(_Strict):
    prefix: str | None = None
    secretRef: EnvFromRef | None = None
    configMapRef: EnvFromRef | None = None


class VolumeMount(_Strict):
    name: str = Field(pattern=NAME)
    mountPath: str = Field(pattern=r"^/")
    subPath: str | None = None
    readOnly: bool = False


class WorkerContainer(_Strict):
    """What is merged into the worker container (the only container of a worker pod)."""

    name: Literal["worker"] = "worker"
    env: list[EnvVar] = Field(default_factory=list)
    envFrom: list[EnvFromSource] = Field(default_factory=list)
    volumeMounts: list[VolumeMount] = Field(default_factory=list)
    resources: ResourceRequirements | None = Field(
        default=None, description="spec.resources takes precedence over this"
    )
    securityContext: dict[str, Any] | None = Field(
        default=None, description="core/v1 SecurityContext, merged over the restricted defaults"
    )


class SeccompProfile(_Strict):
    type: Literal["RuntimeDefault", "Localhost", "Unconfined"]
    localhostProfile: str | None = None


class PodSecurityContext(_Strict):
    runAsUser: int | None = Field(default=None, ge=0)
    runAsGroup: int | None = Field(default=None, ge=0)
    runAsNonRoot: bool | None = None
    fsGroup: int | None = Field(default=None, ge=0)
    fsGroupChangePolicy: Literal["OnRootMismatch", "Always"] | None = None
    supplementalGroups: list[int] = Field(default_factory=list)
    seccompProfile: SeccompProfile | None = None
    seLinuxOptions: dict[str, Any] | None = None


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


class TopologySpreadConstraint(_Strict):
    maxSkew: int = Field(ge=1)
    topologyKey: str = Field(min_length=1)
    whenUnsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    labelSelector: dict[str, Any] | None = Field(default=None, description="core/v1 LabelSelector")
    minDomains: int | None = Field(default=None, ge=1)
    matchLabelKeys: list[str] = Field(default_factory=list)


class Volume(BaseModel):
    """A core/v1 Volume: its name, and its source (``secret``, ``persistentVolumeClaim``...) as given."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME)


class TemplatePodSpec(_Strict):
    securityContext: PodSecurityContext | None = None
    imagePullSecrets: list[LocalObjectReference] = Field(default_factory=list)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(default=None, description="core/v1 Affinity")
    topologySpreadConstraints: list[TopologySpreadConstraint] = Field(default_factory=list)
    priorityClassName: str | None = None
    volumes: list[Volume] = Field(default_factory=list)
    containers: list[WorkerContainer] = Field(default_factory=list, max_length=1)


class PodTemplate(_Strict):
    """The base of every worker pod of the job (Flink's ``podTemplate``)."""

    metadata: TemplateMetadata | None = None
    spec: TemplatePodSpec | None = None


def parse(pod_template: Any, resources: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The podTemplate and resources of a spec, validated and without unset fields (what the merge
    takes); ``InvalidJobConfigError`` with spec paths otherwise (the API server may not have checked:
    a CRD installed before these fields existed)."""
    errors: list[FieldError] = []
    out: list[dict[str, Any]] = []
    for path, model, value in (
        ("spec.podTemplate", PodTemplate, pod_template),
        ("spec.resources", ResourceRequirements, resources),
    ):
        try:
            parsed = model.model_validate(value or {})
        except ValidationError as e:
            errors += [
                FieldError(".".join([path, *(str(p) for p in err["loc"])]), err["msg"]) for err in e.errors()
            ]
            out.append({})
            continue
        out.append(parsed.model_dump(exclude_none=True, exclude_defaults=True))
    if errors:
        raise InvalidJobConfigError(errors)
    return out[0], out[1]
