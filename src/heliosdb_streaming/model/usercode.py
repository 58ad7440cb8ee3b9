"""References to user code (``package.module:qualname``) and who may run it.

A job names user code by reference, never by value: workers are other processes (other pods on
Kubernetes) and import the reference from their own environment. So the native API turns a function or
class into its reference here, and refuses what no other process could import (lambdas, nested
functions, objects of ``__main__``). A network server runs only modules its operator allowed
(``--python-modules``): :func:`check_allowed`. Pure: nothing is imported here.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
REFERENCE_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"
"""A reference as a JSON Schema pattern (the OpenAPI document, the CRDs)."""
_REFERENCE_RE = re.compile(rf"({_DOTTED}):({_DOTTED})")
_MAIN_MODULES = frozenset({"__main__", "__mp_main__"})
MOVE_HINT = "move it to a module the workers can import (a package on PYTHONPATH or installed)"
PYTHON_MODULES_FLAG = "--python-modules"


class UserCodeError(ValueError):
    """A reference that does not name importable user code, with why (a ValueError: pydantic reports it)."""


@dataclass(frozen=True, slots=True)
class CodeReference:
    """``module:qualname``: the module to import, then the attribute path inside it."""

    module: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


def parse_reference(text: str) -> CodeReference:
    """``"pkg.mod:Class.attr"`` -> its parts; UserCodeError when it is not of that shape."""
    if not isinstance(text, str):
        raise UserCodeError(
            f"a function reference is a string 'package.module:name', got {type(text).__name__}"
        )
    m = _REFERENCE_RE.fullmatch(text)
    if m is None:
        raise UserCodeError(
            f"invalid function reference {text!r}: expected 'package.module:name' (a module path, a "
            "colon, then the function's or class's name in it)"
        )
    module, qualname = m.group(1), m.group(2)
    dunder = next((p for p in qualname.split(".") if p.startswith("__") and p.endswith("__")), None)
    if dunder is not None:  # __globals__, __class__, __call__...: a way out of the module named
        raise UserCodeError(f"invalid function reference {text!r}: {dunder!r} is a special attribute")
    if module in _MAIN_MODULES:
        raise UserCodeError(f"{text!r} is in the __main__ script, which workers do not run: {MOVE_HINT}")
    return CodeReference(module, qualname)


def reference_of(obj: object) -> str:
    """The reference of a module-level function, class or callable object (or a reference string,
    checked); UserCodeError for what another process could not import by name."""
    if isinstance(obj, str):
        return str(parse_reference(obj))
    if not callable(obj):
        raise UserCodeError(
            f"expected a function, a class or a 'module:name' string, got {type(obj).__name__}"
        )
    if inspect.ismethod(obj) and not inspect.isclass(obj.__self__):
        raise UserCodeError(
            f"{obj.__qualname__} is a method bound to an instance, which a reference cannot carry: "
            "pass a module-level function or class"
        )
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise UserCodeError(
            f"a {type(obj).__name__} object has no importable name: pass a module-level function or "
            "class, or a 'module:name' string"
        )
    if "<lambda>" in qualname:
        raise UserCodeError(
            f"a lambda ({module}:{qualname}) cannot be imported by workers: define a function and {MOVE_HINT}"
        )
    if "<locals>" in qualname:
        raise UserCodeError(
            f"{module}:{qualname} is defined inside a function (a closure or nested definition), which "
            f"workers cannot import: define it at module level and {MOVE_HINT}"
        )
    if module in _MAIN_MODULES:
        raise UserCodeError(
            f"{qualname} is defined in the __main__ script, which workers do not run: {MOVE_HINT}"
        )
    return str(parse_reference(f"{module}:{qualname}"))


def module_allowed(module: str, patterns: Sequence[str]) -> bool:
    """Whether ``module`` matches an allow-list entry: an fnmatch pattern on the module name
    (``acme.*``), or a package name that allows itself and everything under it (``acme``)."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(module, pattern) or module.startswith(pattern + "."):
            return True
    return False


def check_allowed(reference: str, patterns: Sequence[str] | None) -> None:
    """UserCodeError unless ``reference``'s module may run here; ``patterns`` None allows any module
    (the native API, ``helios run``: it is the user's own process)."""
    ref = parse_reference(reference)
    if patterns is None or module_allowed(ref.module, patterns):
        return
    allowed = ", ".join(patterns) if patterns else "none"
    raise UserCodeError(
        f"module {ref.module!r} is not allowed on this server (allowed: {allowed}); its administrator "
        f"can allow it with {PYTHON_MODULES_FLAG} {ref.module.split('.')[0]}"
    )
