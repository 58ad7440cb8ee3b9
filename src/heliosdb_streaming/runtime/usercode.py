"""Imports user code a job references (``package.module:qualname``) in the process that runs it.

Workers import from the environment they inherit (``PYTHONPATH``, installed packages; on Kubernetes
the job's image). Every way this fails is a :class:`UserCodeLoadError` whose message says which
reference, what went wrong and what to do, because it becomes the reason the job failed.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from heliosdb_streaming.model.usercode import CodeReference, UserCodeError, parse_reference


class UserCodeLoadError(Exception):
    """A reference that cannot be imported or resolved here, or names the wrong kind of object."""


def resolve(reference: str | CodeReference) -> Any:
    """The object ``reference`` names: its module imported, then each attribute of its qualname."""
    try:
        ref = reference if isinstance(reference, CodeReference) else parse_reference(reference)
    except UserCodeError as e:
        raise UserCodeLoadError(str(e)) from None
    try:
        module = importlib.import_module(ref.module)
    except ModuleNotFoundError as e:
        if e.name is not None and (ref.module == e.name or ref.module.startswith(e.name + ".")):
            raise UserCodeLoadError(
                f"cannot import {ref}: no module named {e.name!r} in this environment (install the "
                "package, or put its directory on PYTHONPATH of the server and its workers)"
            ) from e
        raise UserCodeLoadError(f"cannot import {ref}: importing {ref.module!r} failed: {e}") from e
    except Exception as e:  # the module's own top-level code raised: user code, report it whatever it is
        raise UserCodeLoadError(
            f"cannot import {ref}: importing {ref.module!r} raised {type(e).__name__}: {e}"
        ) from e
    obj: Any = module
    parts = ref.qualname.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            missing = ".".join(parts[: i + 1])
            raise UserCodeLoadError(
                f"cannot resolve {ref}: module {ref.module!r} has no attribute {missing!r}"
            ) from None
    return obj


def load_function(reference: str | CodeReference) -> Callable[..., Any]:
    """A callable that is not a class (a function, or a module-level callable object)."""
    obj = resolve(reference)
    if inspect.isclass(obj):
        raise UserCodeLoadError(
            f"{reference} is a class; a python step needs a function that takes one record "
            "(a KeyedProcessFunction class belongs in a 'process' step)"
        )
    if not callable(obj):
        raise UserCodeLoadError(f"{reference} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def load_class(reference: str | CodeReference, base: type) -> type:
    """A class that subclasses ``base``."""
    obj = resolve(reference)
    if not inspect.isclass(obj):
        raise UserCodeLoadError(
            f"{reference} is a {type(obj).__name__}, not a class (subclass {base.__name__})"
        )
    if not issubclass(obj, base):
        raise UserCodeLoadError(f"{reference} does not subclass {base.__module__}.{base.__qualname__}")
    return obj
