"""``helios k8s convert``: rewrites StreamingJob/Savepoint manifests from ``v1alpha1`` to ``v1alpha2``.

The cluster converts live objects itself (the operator's conversion webhook); manifests kept in git,
Helm values or Kustomize bases still say ``v1alpha1`` with snake_case job fields, and ``kubectl apply``
of them keeps working only while ``v1alpha1`` is served. This prints them as ``v1alpha2`` (camelCase),
with the same conversion the webhook runs; other documents pass through unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from heliosdb_streaming.kubernetes import conversion, crds


def convert_documents(text: str) -> str:
    """Every YAML document of ``text``, StreamingJobs and Savepoints of this group as ``v1alpha2``."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    out = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("apiVersion") in conversion.VERSIONS:
            doc = conversion.convert(doc, crds.API_VERSION)
        out.append(doc)
    return yaml.safe_dump_all(out, sort_keys=False, allow_unicode=True, width=110)


def _convert(args: argparse.Namespace) -> int:
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        try:
            converted = convert_documents(text)
        except (yaml.YAMLError, conversion.ConversionError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        if args.in_place and name != "-":
            Path(name).write_text(converted, encoding="utf-8")
        else:
            sys.stdout.write(converted)
    return 0


def register(sub: Any) -> None:
    """Adds ``helios k8s convert`` to the ``helios`` subcommands (``sub`` is argparse's subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser("k8s", help="Kubernetes manifest tools")
    commands = p.add_subparsers(dest="k8s_command", required=True, metavar="COMMAND")
    c = commands.add_parser(
        "convert",
        help=f"print StreamingJob/Savepoint manifests as {crds.API_VERSION} (camelCase fields)",
        description=f"Rewrites {crds.LEGACY_API_VERSION} manifests as {crds.API_VERSION}: the job's "
        "snake_case field names become camelCase; comments are not kept.",
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="YAML manifest files (- for stdin)")
    c.add_argument("--in-place", "-i", action="store_true", help="rewrite the files instead of printing")
    c.set_defaults(func=_convert)
