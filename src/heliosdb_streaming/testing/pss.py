"""The ``restricted`` Pod Security Standard as a pure check of a pod spec, for tests.

A namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` has the API server refuse pods
that break these rules; neither kmock nor ``kubernetes-validate`` knows them, so this module states them
as the Kubernetes documentation does (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
"Restricted" includes "Baseline"; policy version v1.30), and ``violations`` lists each rule a pod spec
breaks. Every control of the two profiles is here except AppArmor annotations and the Windows-only
``hostProcess``, which our pods never set (they are checked as absent all the same).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Baseline "Capabilities": what a container may add (restricted narrows it to NET_BIND_SERVICE).
RESTRICTED_ADDABLE = frozenset({"NET_BIND_SERVICE"})
# Restricted "Volume Types"
ALLOWED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Baseline "Sysctls": the safe set
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SECCOMP_OK = frozenset({"RuntimeDefault", "Localhost"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield f"{key}[{c.get('name')}]", c


def violations(spec: Mapping[str, Any]) -> list[str]:
    """The rules of the restricted profile that the pod spec ``spec`` breaks (empty: admitted)."""
    out: list[str] = []
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    # --- Baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):  # Host Namespaces
        if spec.get(field):
            out.append(f"{field} must be unset or false")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess must be unset or false")
    for sysctl in pod_sc.get("sysctls") or []:  # Sysctls
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    if (pod_sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:  # SELinux
        out.append("securityContext.seLinuxOptions.type is not allowed")
    for field in ("user", "role"):
        if (pod_sc.get("seLinuxOptions") or {}).get(field):
            out.append(f"securityContext.seLinuxOptions.{field} must be unset")
    for volume in spec.get("volumes") or []:  # HostPath Volumes, and restricted Volume Types
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {volume.get('name')} has a type outside {sorted(ALLOWED_VOLUMES)}")
    # --- Restricted, pod level
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:  # Running as Non-root user
        out.append("securityContext.runAsUser must not be 0")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_OK:  # Seccomp
        out.append(f"securityContext.seccompProfile.type {pod_seccomp} is not allowed")
    for where, c in _containers(spec):
        sc: Mapping[str, Any] = c.get("securityContext") or {}
        if sc.get("privileged"):  # Privileged Containers
            out.append(f"{where}: privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess must be unset or false")
        for port in c.get("ports") or []:  # HostPorts
            if port.get("hostPort"):
                out.append(f"{where}: hostPort must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):  # /proc Mount Type
            out.append(f"{where}: procMount must be Default")
        if (sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            out.append(f"{where}: seLinuxOptions.type is not allowed")
        # --- Restricted, per container
        if sc.get("allowPrivilegeEscalation") is not False:  # Privilege Escalation
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):  # Running as Non-root
            out.append(f"{where}: runAsNonRoot must be true (in the container or the pod)")
        if sc.get("runAsUser") == 0:  # Running as Non-root user
            out.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_OK:  # Seccomp
            out.append(f"{where}: seccompProfile.type {seccomp} is not allowed")
        if seccomp is None and pod_seccomp is None:
            out.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        capabilities = sc.get("capabilities") or {}  # Capabilities
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f"{where}: capabilities.drop must include ALL")
        added = set(capabilities.get("add") or []) - RESTRICTED_ADDABLE
        if added:
            out.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE, not {sorted(added)}")
    return out


def pod_specs(manifest: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(what, pod spec)`` of every pod a manifest creates: a Pod, a workload's pod template, a Job's,
    a CronJob's."""
    kind, name = manifest.get("kind"), (manifest.get("metadata") or {}).get("name")
    spec = manifest.get("spec") or {}
    if kind == "Pod":
        yield f"Pod/{name}", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield f"{kind}/{name}", spec["template"]["spec"]
    elif kind == "CronJob":
        yield f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]["spec"]
