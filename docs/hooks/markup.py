"""Markdown helpers shared by the generators of the reference pages."""

from __future__ import annotations


def cell(text: object) -> str:
    """``text`` on one line, safe in a table cell: ``|``, ``<`` (HTML) and ``*`` (emphasis) escaped."""
    flat = " ".join(str(text or "").split())
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def code_cell(text: object) -> str:
    """``text`` on one line as a code span in a table cell (a code span shows escapes literally, and
    Python-Markdown's tables do not split cells at a pipe inside backticks)."""
    return "`" + " ".join(str(text or "").split()) + "`"
