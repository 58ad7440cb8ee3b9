"""The Helm chart, linted and rendered by Helm's own Go code (helm-python-sdk) and checked against Kubernetes.

Every manifest of every values scenario is validated against the Kubernetes 1.30 OpenAPI schemas with
``kubernetes-validate`` in strict mode (unknown fields fail). The Prometheus Operator kinds are not in
those schemas, so they are checked against the subset of ``monitoring.coreos.com/v1`` the chart writes
(below), equally strict. Then the values a user cares about: what the operator and the API server run,
what they may touch (least-privilege RBAC), which Secret they read, and that Services reach their pods.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from heliosdb_streaming.kubernetes import crds

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "heliosdb-streaming"
KUBE_VERSION = "1.30"
RELEASE, NAMESPACE = "helios", "streaming"
FULLNAME = f"{RELEASE}-heliosdb-streaming"

Manifest = dict[str, Any]

NON_DEFAULT = {
    "image": {"repository": "registry.example.com/team/helios", "tag": "2.0.1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "existingSecret": "helios-credentials",
    "s3": {"endpoint": "minio.minio.svc:9000", "secure": False, "region": "eu-west-1"},
    "checkpointStorage": "s3://helios-checkpoints/jobs",
    "operator": {
        "watchNamespaces": ["team-a", "team-b"],
        "persistence": {"enabled": False},
        "controlPort": 7171,
        "extraArgs": ["--verbose"],
        "livenessProbe": {"tcpSocket": {"port": "control"}},
        "allowPaths": ["/data/in", "/data/out"],
        "pythonModules": ["acme", "fraud.*"],
    },
    "workers": {"envSecret": "helios-worker-env", "serviceAccount": "helios-worker"},
    "api": {
        "jobNamespace": "team-a",
        "replicas": 2,
        "service": {"type": "LoadBalancer", "port": 80},
        "allowedHosts": ["helios.example.com"],
        "allowedOrigins": ["https://console.example.com"],
        "clusterDomain": "k8s.example",
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True, "namespaces": ["team-a", "team-b"]},
    },
    "dashboards": {"label": "grafana-dashboard", "labelValue": "heliosdb", "namespace": "monitoring"},
    "commonLabels": {"team": "streaming"},
}
INLINE_SECRETS = {
    "s3": {"accessKey": "AKIAEXAMPLE", "secretKey": "s3cr3t"},
    "auth": {"apiToken": "token-from-values"},
    "api": {"enabled": False},
    "dashboards": {"enabled": False},
}
JOB_MANAGERS = {"jobManagers": {"enabled": True, "namespaces": ["jobs-a", "jobs-b"]}}
SCENARIOS = {
    "defaults": {},
    "non-default": NON_DEFAULT,
    "inline-secrets": INLINE_SECRETS,
    "job-managers": JOB_MANAGERS,
    "job-managers-watched": {**NON_DEFAULT, **JOB_MANAGERS},
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[Manifest]:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[Manifest] = []
    for path, text in sorted(files.items()):
        if not path.endswith(".txt"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return files["heliosdb-streaming/templates/NOTES.txt"]


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (doc,) = find(docs, kind, name)
    return doc


def container(deployment: Manifest) -> Manifest:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(deployment: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


# --------------------------------------------------------------------------- lint, schema, render


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    # severity 1 is INFO ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


BAD_VALUES = {
    "negative replicas": ({"api": {"replicas": -1}}, "/api/replicas"),
    "port of the wrong type": ({"operator": {"controlPort": "7070"}}, "/operator/controlPort"),
    "port out of range": ({"api": {"port": 70000}}, "/api/port"),
    "unknown key": ({"operater": {}}, "operater"),
    "unknown nested key": ({"operator": {"persistence": {"enable": False}}}, "enable"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad namespace": ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
    "bad checkpoint storage": ({"checkpointStorage": "file:///tmp"}, "/checkpointStorage"),
    "bad size": ({"operator": {"persistence": {"size": "lots"}}}, "/operator/persistence/size"),
    "bad interval": ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval"),
    "boolean as a string": ({"s3": {"secure": "false"}}, "/s3/secure"),
    "relative allowed path": ({"operator": {"allowPaths": ["data"]}}, "/operator/allowPaths/0"),
    "python module with a space": ({"operator": {"pythonModules": ["acme x"]}}, "/operator/pythonModules/0"),
    "origin with a path": ({"api": {"allowedOrigins": ["https://x.example/app"]}}, "/api/allowedOrigins/0"),
    "two hosts in one item": ({"api": {"allowedHosts": ["a.example,b.example"]}}, "/api/allowedHosts/0"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES), ids=str)
def test_values_schema_rejects_bad_values(chart: helm.Chart, case: str) -> None:
    values, where = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):  # helm template/install enforce it too
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_values_schema_accepts_the_scenarios(chart: helm.Chart, scenario: str) -> None:
    chart.validate_schema(SCENARIOS[scenario])


# Subset of monitoring.coreos.com/v1 (Prometheus Operator API reference) that the chart writes.
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_SECRET_KEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "authorization": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY},
        },
    },
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}


def _monitor_schema(endpoints_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": _NAMESPACE_SELECTOR,
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": _monitor_schema("endpoints"),
    "PodMonitor": _monitor_schema("podMetricsEndpoints"),
}


def _cert_manager_schema(spec: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """The subset of ``cert-manager.io/v1`` the chart writes, as strict as the Kubernetes schemas."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": required,
                "properties": spec,
            },
        },
    }


CERT_MANAGER_SCHEMAS = {
    "Issuer": _cert_manager_schema({"selfSigned": {"type": "object", "maxProperties": 0}}, ["selfSigned"]),
    "Certificate": _cert_manager_schema(
        {
            "secretName": {"type": "string", "minLength": 1},
            "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            "issuerRef": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"kind": {"enum": ["Issuer", "ClusterIssuer"]}, "name": {"type": "string"}},
            },
        },
        ["secretName", "dnsNames", "issuerRef"],
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_rendered_manifest_is_valid_kubernetes(chart: helm.Chart, scenario: str) -> None:
    docs = render(chart, SCENARIOS[scenario])
    assert docs
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, MONITOR_SCHEMAS[doc["kind"]])
        elif doc["apiVersion"] == "cert-manager.io/v1":
            jsonschema.validate(doc, CERT_MANAGER_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"], doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects with one name"


def test_the_validator_has_teeth(chart: helm.Chart) -> None:
    deployment = one(render(chart, {}), "Deployment", f"{FULLNAME}-operator")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_the_chart_ships_the_generated_crds(chart: helm.Chart) -> None:
    shipped = {Path(c["name"]).name: c["data"] for c in chart.crds}
    assert shipped == {name: crds.render(crd) for name, crd in crds.all_crds().items()}
    for text in shipped.values():
        kubernetes_validate.validate(yaml.safe_load(text), KUBE_VERSION, strict=True)


def test_conversion_webhook_reaches_every_replica_with_the_crds_names(chart: helm.Chart) -> None:
    """The Service and Certificate the StreamingJob CRD names (``crds.webhook_conversion``, its
    cert-manager annotation): every operator replica serves ``/convert`` over TLS, leader or not."""
    docs = render(chart, {})
    conversion = crds.streaming_job_crd()["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
    service = one(docs, "Service", conversion["name"])
    assert [p["port"] for p in service["spec"]["ports"]] == [conversion["port"]]
    assert "streaming.heliosdb.io/operator-leader" not in service["spec"]["selector"]
    operator = one(docs, "Deployment", f"{FULLNAME}-operator")
    assert service["spec"]["selector"].items() <= operator["spec"]["template"]["metadata"]["labels"].items()
    c = container(operator)
    assert {"name": "webhook", "containerPort": conversion["port"], "protocol": "TCP"} in c["ports"]
    assert env_of(operator)["HELIOS_WEBHOOK_TLS_DIR"] == "/etc/helios/webhook"
    certificate = one(docs, "Certificate", conversion["name"])
    annotation = crds.streaming_job_crd()["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation.split("/")[1] == certificate["metadata"]["name"]
    assert f"{conversion['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    volumes = {v["name"]: v for v in operator["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    off = render(chart, {"operator": {"conversionWebhook": {"enabled": False}}})
    assert not find(off, "Certificate") and not find(off, "Service", conversion["name"])
    assert "HELIOS_WEBHOOK_TLS_DIR" not in env_of(one(off, "Deployment", f"{FULLNAME}-operator"))


# ------------------------------------------------------------------------------------ the workloads


def test_default_operator(chart: helm.Chart) -> None:
    docs = render(chart, {})
    operator = one(docs, "Deployment", f"{FULLNAME}-operator")
    spec = operator["spec"]
    # two replicas, one leader (Lease), rolled one at a time: a standby is always there to take over
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    c = container(operator)
    assert c["image"] == "heliosdb/heliosdb-streaming:0.1.0"
    assert c["args"] == [
        "operator",
        "--all-namespaces",
        "--home",
        "/var/lib/helios",
        "--control-port",
        "7070",
        "--metrics-port",
        "8083",
        "--leader-election",
        "--lease-name",
        f"{FULLNAME}-operator",
        "--lease-duration",
        "15",
    ]
    assert {"name": "control", "containerPort": 7070, "protocol": "TCP"} in c["ports"]
    assert {"name": "read", "containerPort": 8082, "protocol": "TCP"} in c["ports"]
    env = env_of(operator)
    assert env["HELIOS_CONTROL_ADDRESS"] == f"{FULLNAME}-operator.{NAMESPACE}.svc:7070"
    assert env["HELIOS_READ_PORT"] == "8082"  # the read API the API server asks, behind the API token
    assert env["HELIOS_API_TOKEN"]["secretKeyRef"] == {"name": FULLNAME, "key": "api-token", "optional": True}
    assert env["HELIOS_IMAGE"] == c["image"]
    assert "HELIOS_WORKER_ENV_SECRET" not in env and "HELIOS_CHECKPOINT_STORAGE" not in env
    assert "HELIOS_ALLOW_PATHS" not in env  # the home only
    assert "HELIOS_PYTHON_MODULES" not in env  # no user code
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "s3-access-key",
        "optional": True,
    }
    # with job managers (the default) the operator holds no job state: no claim, no RWX storage
    assert operator_home(operator) == {"name": "home", "emptyDir": {}}
    assert find(docs, "PersistentVolumeClaim") == []
    # without, its home holds every job's control-plane state: a claim a standby on another node mounts
    in_operator = render(chart, {"jobManagers": {"enabled": False}})
    claim = operator_home(one(in_operator, "Deployment", f"{FULLNAME}-operator"))["persistentVolumeClaim"]
    assert claim["claimName"] == f"{FULLNAME}-operator"
    pvc = one(in_operator, "PersistentVolumeClaim", f"{FULLNAME}-operator")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def operator_home(operator: Manifest) -> dict[str, Any]:
    home = next(m for m in container(operator)["volumeMounts"] if m["mountPath"] == "/var/lib/helios")
    return dict(next(v for v in operator["spec"]["template"]["spec"]["volumes"] if v["name"] == home["name"]))


def test_operator_high_availability(chart: helm.Chart) -> None:
    """Two replicas: a PDB, probes and scraping on the metrics port (served by a standby too, so both
    are ready and a drain can move either), the Service selecting the leader's label, the Lease Role."""
    docs = render(chart, {})
    operator = one(docs, "Deployment", f"{FULLNAME}-operator")
    c = container(operator)
    assert {"name": "metrics", "containerPort": 8083, "protocol": "TCP"} in c["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    annotations = operator["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("8083", "/metrics")
    env = env_of(operator)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    pdb = one(docs, "PodDisruptionBudget", f"{FULLNAME}-operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    service = one(docs, "Service", f"{FULLNAME}-operator")
    assert service["spec"]["selector"]["streaming.heliosdb.io/operator-leader"] == "true"
    assert rules_of(docs, "Role", f"{FULLNAME}-operator-leader-election", NAMESPACE) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [f"{FULLNAME}-operator"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
    ]
    # one replica without leader election: Recreate, no PDB, no Lease Role, the Service selects the pod
    single = {"operator": {"replicas": 1, "leaderElection": {"enabled": False}}}
    docs = render(chart, single)
    operator = one(docs, "Deployment", f"{FULLNAME}-operator")
    assert (operator["spec"]["replicas"], operator["spec"]["strategy"]) == (1, {"type": "Recreate"})
    assert "--leader-election" not in container(operator)["args"]
    assert find(docs, "PodDisruptionBudget") == []
    assert find(docs, "Role", f"{FULLNAME}-operator-leader-election") == []
    assert (
        "streaming.heliosdb.io/operator-leader"
        not in one(docs, "Service", f"{FULLNAME}-operator")["spec"]["selector"]
    )
    with pytest.raises(helm.errors.HelmError):  # two active operators would both run every job
        render(chart, {"operator": {"replicas": 2, "leaderElection": {"enabled": False}}})


def test_default_api_server_and_services(chart: helm.Chart) -> None:
    docs = render(chart, {})
    api = one(docs, "Deployment", f"{FULLNAME}-api")
    c = container(api)
    assert c["args"] == ["server", "--host", "0.0.0.0", "--port", "8081", "--substrate", "kubernetes"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(api)
    assert env["HELIOS_API_TOKEN"]["secretKeyRef"]["name"] == FULLNAME
    assert env["HELIOS_JOB_NAMESPACE"] == NAMESPACE
    assert env["HELIOS_OPERATOR_URL"] == f"http://{FULLNAME}-operator.{NAMESPACE}.svc:8082"
    # the Host names in-cluster clients use (the pod's address and localhost are allowed by the server)
    service = f"{FULLNAME}-api"
    assert env["HELIOS_ALLOWED_HOSTS"].split(",") == [
        service,
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local",
    ]
    assert "HELIOS_ALLOWED_ORIGINS" not in env
    # Each Service selects exactly the pods of one Deployment, on a port that Deployment names.
    deployments = find(docs, "Deployment")
    for service in find(docs, "Service"):
        selector = dict(service["spec"]["selector"])
        selector.pop("streaming.heliosdb.io/operator-leader", None)  # the leader sets it on its own pod
        matching = [
            d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, service["metadata"]["name"]
        port_names = {p["name"] for p in container(matching[0])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    operator_service = one(docs, "Service", f"{FULLNAME}-operator")
    assert operator_service["spec"]["ports"][0]["port"] == 7070
    assert operator_service["spec"]["ports"][1] == {
        "name": "read",
        "port": 8082,
        "targetPort": "read",
        "protocol": "TCP",
    }
    assert one(docs, "Service", f"{FULLNAME}-api")["spec"]["ports"][0]["port"] == 8081
    for d in deployments:
        assert (
            d["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        )
        account = d["spec"]["template"]["spec"]["serviceAccountName"]
        assert find(docs, "ServiceAccount", account), account


def test_generated_token_and_no_plaintext_credentials(chart: helm.Chart) -> None:
    docs = render(chart, {})
    secret = one(docs, "Secret", FULLNAME)
    assert set(secret["data"]) == {"api-token", "jobmanager-key"}  # no S3 keys were given
    token = secret["data"]["api-token"]
    assert len(base64.b64decode(token)) == 40
    inline = render(chart, INLINE_SECRETS)
    data = one(inline, "Secret", FULLNAME)["data"]
    decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
    assert len(decoded.pop("jobmanager-key")) == 48  # generated: the job managers' tokens derive from it
    assert decoded == {
        "s3-access-key": "AKIAEXAMPLE",
        "s3-secret-key": "s3cr3t",
        "api-token": "token-from-values",
    }
    text = json.dumps(inline)
    assert "s3cr3t" not in text.replace(data["s3-secret-key"], "")


def test_non_default_values(chart: helm.Chart) -> None:
    docs = render(chart, NON_DEFAULT)
    assert find(docs, "Secret") == []  # existingSecret: the chart makes none
    assert find(docs, "PersistentVolumeClaim") == []
    operator = one(docs, "Deployment", f"{FULLNAME}-operator")
    c = container(operator)
    assert c["image"] == "registry.example.com/team/helios:2.0.1"
    assert c["imagePullPolicy"] == "Always"
    assert c["args"] == [
        "operator", "--namespace", "team-a", "--namespace", "team-b", "--home", "/var/lib/helios",
        "--control-port", "7171", "--metrics-port", "8083", "--leader-election", "--lease-name",
        f"{FULLNAME}-operator", "--lease-duration", "15", "--verbose",
    ]  # fmt: skip
    assert one(docs, "Service", f"{FULLNAME}-operator")["spec"]["ports"][0]["port"] == 7171
    assert c["livenessProbe"] == {"tcpSocket": {"port": "control"}}
    pod = operator["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert {"name": "home", "emptyDir": {}} in pod["volumes"]
    env = env_of(operator)
    assert env["HELIOS_S3_ENDPOINT"] == "minio.minio.svc:9000"
    assert (env["HELIOS_S3_SECURE"], env["AWS_REGION"]) == ("false", "eu-west-1")
    assert env["HELIOS_CHECKPOINT_STORAGE"] == "s3://helios-checkpoints/jobs"
    assert env["HELIOS_CONTROL_ADDRESS"] == f"{FULLNAME}-operator.{NAMESPACE}.svc:7171"
    assert (env["HELIOS_WORKER_ENV_SECRET"], env["HELIOS_WORKER_SERVICE_ACCOUNT"]) == (
        "helios-worker-env",
        "helios-worker",
    )
    api_env = env_of(one(docs, "Deployment", f"{FULLNAME}-api"))
    assert not any(k.startswith(("AWS_", "HELIOS_S3")) for k in api_env)  # the API needs no S3 access
    assert api_env["HELIOS_JOB_NAMESPACE"] == "team-a"
    hosts = api_env["HELIOS_ALLOWED_HOSTS"].split(",")
    assert hosts[-2:] == [f"{FULLNAME}-api.{NAMESPACE}.svc.k8s.example", "helios.example.com"]
    assert api_env["HELIOS_ALLOWED_ORIGINS"] == "https://console.example.com"
    assert env["HELIOS_ALLOW_PATHS"] == "/data/in:/data/out"
    assert env["HELIOS_PYTHON_MODULES"] == "acme,fraud.*"
    for deployment in find(docs, "Deployment"):
        for e in container(deployment)["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "helios-credentials"
        assert deployment["metadata"]["labels"]["team"] == "streaming"
    api = one(docs, "Deployment", f"{FULLNAME}-api")
    assert api["spec"]["replicas"] == 2
    assert one(docs, "Service", f"{FULLNAME}-api")["spec"]["type"] == "LoadBalancer"


def test_monitors(chart: helm.Chart) -> None:
    assert find(render(chart, {}), "ServiceMonitor") == find(render(chart, {}), "PodMonitor") == []
    docs = render(chart, NON_DEFAULT)
    sm = one(docs, "ServiceMonitor", f"{FULLNAME}-api")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["authorization"]["credentials"] == {
        "name": "helios-credentials",
        "key": "api-token",
        "optional": True,
    }
    api_labels = one(docs, "Service", f"{FULLNAME}-api")["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= api_labels.items()
    pm = one(docs, "PodMonitor", f"{FULLNAME}-jobs")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert pm["spec"]["selector"]["matchExpressions"][0]["key"] == "streaming.heliosdb.io/job"


def test_dashboards(chart: helm.Chart) -> None:
    sources = sorted((ROOT / "dashboards").glob("*.json"))
    assert sources
    copies = sorted((CHART / "dashboards").glob("*.json"))
    assert [p.name for p in copies] == [p.name for p in sources]
    for src, copy in zip(sources, copies, strict=True):
        assert copy.read_bytes() == src.read_bytes(), f"{copy} is stale: run `make chart-sync`"
    for values, label, value, namespace in (
        ({}, "grafana_dashboard", "1", NAMESPACE),
        (NON_DEFAULT, "grafana-dashboard", "heliosdb", "monitoring"),
    ):
        maps = find(render(chart, values), "ConfigMap")
        assert len(maps) == len(sources)
        shipped = {}
        for cm in maps:
            assert cm["metadata"]["labels"][label] == value
            assert cm["metadata"]["namespace"] == namespace
            shipped.update({k: json.loads(v) for k, v in cm["data"].items()})
        assert shipped == {p.name: json.loads(p.read_text()) for p in sources}
    assert find(render(chart, INLINE_SECRETS), "ConfigMap") == []


# ------------------------------------------------------------------------------------------- RBAC


def rules_of(docs: list[Manifest], kind: str, name: str, namespace: str | None = None) -> list[Manifest]:
    matches = [
        d for d in find(docs, kind, name) if namespace is None or d["metadata"]["namespace"] == namespace
    ]
    (role,) = matches
    rules: list[Manifest] = role["rules"]
    return rules


def grants(rules: list[Manifest], resource: str, verb: str, group: str = "") -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rbac_has_no_wildcards_and_reads_no_secrets(chart: helm.Chart, scenario: str) -> None:
    """Only the operator touches Secrets, and only to write each job's file: nobody can read one."""
    for doc in render(chart, SCENARIOS[scenario]):
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (doc["metadata"]["name"], rule)
            if "secrets" in rule["resources"]:
                assert doc["metadata"]["name"].endswith(("-operator", "-jobmanager")), doc["metadata"]["name"]
                assert rule["resources"] == ["secrets"] and set(rule["verbs"]) <= {"create", "patch"}


# The operator's rules, pinned: each verb is a request it makes (tests/k8s run it against an API server
# that enforces exactly these; HELIOS_RBAC_AUDIT lists what was used). A new request needs a rule here.
OPERATOR_NAMESPACED_RULES = [
    # delete: a StreamingJob whose ttlSecondsAfterFinished is up, the old color of a blue/green switch;
    # create: the colors of a StreamingJobDeployment (test_operator_bluegreen)
    {
        "apiGroups": [crds.GROUP],
        "resources": ["streamingjobs"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    # create: savepoints taken on cancel, for upgrades and switches, periodic ones; delete: by retention
    {
        "apiGroups": [crds.GROUP],
        "resources": ["savepoints"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": [crds.GROUP],
        "resources": ["streamingjobdeployments"],
        "verbs": ["list", "watch", "patch"],
    },
    {
        "apiGroups": [crds.GROUP],
        "resources": ["streamingjobs/status", "savepoints/status", "streamingjobdeployments/status"],
        "verbs": ["patch"],
    },
    {
        "apiGroups": [crds.GROUP],
        "resources": ["streamingjobs/finalizers", "streamingjobdeployments/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    # spec.podDisruptionBudget: test_operator_ha creates, changes and turns one off
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create", "patch", "delete"]},
]
CRD_SCAN_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}


def test_operator_rbac_cluster_wide(chart: helm.Chart) -> None:
    docs = render(chart, {})
    rules = rules_of(docs, "ClusterRole", f"{FULLNAME}-operator")
    assert rules == [CRD_SCAN_RULE, *OPERATOR_NAMESPACED_RULES]
    group = crds.GROUP
    assert grants(rules, "savepoints", "create", group)  # it records the savepoints it takes on cancel
    assert grants(rules, "streamingjobs", "create", group)  # the colors of a StreamingJobDeployment
    assert not grants(rules, "streamingjobdeployments", "create", group)  # deployments come from users
    assert not any(grants(rules, "secrets", v) for v in ("get", "list", "watch", "delete"))
    assert not grants(rules, "namespaces", "list")  # cluster-wide, kopf does not scan namespaces
    binding = one(docs, "ClusterRoleBinding", f"{FULLNAME}-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-operator", "namespace": NAMESPACE}
    ]
    assert find(docs, "Role", f"{FULLNAME}-operator") == []


def test_operator_rbac_per_namespace_grants_nothing_cluster_wide(chart: helm.Chart) -> None:
    for values in (
        NON_DEFAULT,
        {"operator": {"watchNamespaces": ["team-a"]}, "api": {"jobNamespace": "team-a"}},
    ):
        docs = render(chart, values)
        assert find(docs, "ClusterRole") == find(docs, "ClusterRoleBinding") == []
    docs = render(chart, NON_DEFAULT)
    for ns in ("team-a", "team-b"):
        assert rules_of(docs, "Role", f"{FULLNAME}-operator", ns) == OPERATOR_NAMESPACED_RULES
        binding = [
            b for b in find(docs, "RoleBinding", f"{FULLNAME}-operator") if b["metadata"]["namespace"] == ns
        ]
        assert binding[0]["subjects"][0]["namespace"] == NAMESPACE
        assert binding[0]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{FULLNAME}-operator",
        }


API_RULES = [
    {
        "apiGroups": [crds.GROUP],
        "resources": ["streamingjobs"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
    {"apiGroups": [crds.GROUP], "resources": ["savepoints"], "verbs": ["get", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
]


def test_api_rbac(chart: helm.Chart) -> None:
    """Pinned, as the operator's: what restapi/ requests (HELIOS_RBAC_AUDIT of tests/k8s/test_apiserver)."""
    docs = render(chart, NON_DEFAULT)
    rules = rules_of(docs, "Role", f"{FULLNAME}-api", "team-a")
    assert rules == API_RULES
    assert not grants(rules, "streamingjobs/status", "patch", crds.GROUP)  # status is the operator's
    assert not grants(rules, "pods", "create") and not grants(rules, "events", "create")
    binding = one(docs, "RoleBinding", f"{FULLNAME}-api")
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": f"{FULLNAME}-api",
        "namespace": NAMESPACE,
    }
    assert find(render(chart, INLINE_SECRETS), "Role", f"{FULLNAME}-api") == []  # api.enabled: false


def test_notes(chart: helm.Chart) -> None:
    text = notes(chart, {})
    assert f"svc/{FULLNAME}-api" in text and "all namespaces" in text
    text = notes(chart, NON_DEFAULT | {"api": {"jobNamespace": "elsewhere"}})
    assert "team-a, team-b" in text and "is not among operator.watchNamespaces" in text


# A job manager's rules, pinned as the operator's: each is a request ``helios jobmanager`` makes for its
# one StreamingJob (tests/k8s/test_operator_jobmanager.py runs job managers as this account against an
# API server enforcing exactly these). Nothing cluster-wide, nothing listed or watched but its pods.
JOBMANAGER_RULES = [
    {"apiGroups": [crds.GROUP], "resources": ["streamingjobs"], "verbs": ["get", "delete"]},
    {
        "apiGroups": [crds.GROUP],
        "resources": ["streamingjobs/status", "savepoints/status"],
        "verbs": ["patch"],
    },
    # create: the savepoints it takes itself (cancel, upgrade, periodic); delete: by retention
    {"apiGroups": [crds.GROUP], "resources": ["savepoints"], "verbs": ["get", "create", "patch", "delete"]},
    {"apiGroups": [crds.GROUP], "resources": ["streamingjobs/finalizers"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},  # a repeat: patch
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create", "patch", "delete"]},
]


def test_job_managers_rbac_and_operator_env(chart: helm.Chart) -> None:
    """With job managers: their account and Role in each job namespace (the listed ones, or the watched
    ones), bound to that account only; the operator is told to use it and gets the token key."""
    off = render(chart, {"jobManagers": {"enabled": False}})
    assert not [d for d in off if "jobmanager" in d["metadata"]["name"]]
    env = container(one(off, "Deployment", f"{FULLNAME}-operator"))["env"]
    assert "HELIOS_JOB_MANAGERS" not in {e["name"] for e in env}
    for values, namespaces in (
        (JOB_MANAGERS, ["jobs-a", "jobs-b"]),
        ({**NON_DEFAULT, **JOB_MANAGERS}, ["team-a", "team-b"]),
        ({}, [NAMESPACE]),  # the default
    ):
        docs = render(chart, values)
        name = f"{FULLNAME}-jobmanager"
        assert sorted(d["metadata"]["namespace"] for d in find(docs, "ServiceAccount", name)) == namespaces
        for ns in namespaces:
            assert rules_of(docs, "Role", name, ns) == JOBMANAGER_RULES
            (binding,) = [b for b in find(docs, "RoleBinding", name) if b["metadata"]["namespace"] == ns]
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
        assert not [d for d in find(docs, "ClusterRole") if "jobmanager" in d["metadata"]["name"]]
        env = {e["name"]: e for e in container(one(docs, "Deployment", f"{FULLNAME}-operator"))["env"]}
        assert env["HELIOS_JOB_MANAGERS"]["value"] == "true"
        assert env["HELIOS_JOBMANAGER_SERVICE_ACCOUNT"]["value"] == name
        assert env["HELIOS_JOBMANAGER_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "jobmanager-key"
        if "existingSecret" not in values:
            secret = one(docs, "Secret", FULLNAME)
            assert len(base64.b64decode(secret["data"]["jobmanager-key"])) == 48
