"""Imports user code a job references (``package.module:qualname``) in the process that runs it.

Workers import from the environment they inherit (``PYTHONPATH``, installed packages; on Kubernetes
the job's image). Every way this fails is a :class:`UserCodeLoadError` whose message says which
reference, what went wrong and what to do, because it becomes the reason the job failed.

Under an allow-list (a server's ``--python-modules``) the object a reference resolves to must also be
*defined* in an allowed module: ``acme:run`` after ``from subprocess import run`` in ``acme`` is
``subprocess.run``, and a qualname never walks through a module (``acme:os.system``). The control plane
checks this when it imports at submit; workers do too when ``HELIOS_PYTHON_MODULES`` is set for them.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

from heliosdb_streaming.model.usercode import (
    PYTHON_MODULES_FLAG,
    CodeReference,
    UserCodeError,
    module_allowed,
    parse_reference,
)

ALLOW_LIST_ENV = "HELIOS_PYTHON_MODULES"


class UserCodeLoadError(Exception):
    """A reference that cannot be imported or resolved here, or names the wrong kind of object."""


class UserCodeNotAllowedError(UserCodeLoadError):
    """A reference of an allowed module that resolves to code defined in a module that is not allowed."""


def worker_allow_list(environ: Any = None) -> tuple[str, ...] | None:
    """The allow-list a worker was given (``HELIOS_PYTHON_MODULES``, comma-separated; set but empty:
    none), or None when it was given none (the native API, ``helios run``: any module)."""
    value = (os.environ if environ is None else environ).get(ALLOW_LIST_ENV)
    if value is None:
        return None
    return tuple(m.strip() for m in value.split(",") if m.strip())


def defining_module(obj: Any) -> str:
    """The module whose code ``obj`` is: a function's or class's ``__module__``, else its class's."""
    module = getattr(obj, "__module__", None) if inspect.isroutine(obj) or inspect.isclass(obj) else None
    if not isinstance(module, str):
        module = getattr(type(obj), "__module__", None)
    return module if isinstance(module, str) else "builtins"


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
        if inspect.ismodule(obj):
            inner = ".".join(parts[i + 1 :]) or "name"
            raise UserCodeLoadError(
                f"cannot resolve {ref}: {'.'.join(parts[: i + 1])!r} is a module; name it before the "
                f"colon: '{obj.__name__}:{inner}'"
            )
    return obj


def check_defined_in(reference: str | CodeReference, obj: Any, allowed: Sequence[str] | None) -> None:
    """UserCodeNotAllowedError unless ``obj`` is defined in a module of ``allowed`` (None: any)."""
    if allowed is None:
        return
    module = defining_module(obj)
    if not module_allowed(module, allowed):
        raise UserCodeNotAllowedError(
            f"{reference} is {getattr(obj, '__qualname__', type(obj).__qualname__)} of module {module!r}, "
            f"which is not allowed on this server (allowed: {', '.join(allowed) or 'none'}): name a function "
            f"defined in an allowed module, or allow {module.split('.')[0]!r} with {PYTHON_MODULES_FLAG}"
        )


def load_function(reference: str | CodeReference, allowed: Sequence[str] | None = None) -> Callable[..., Any]:
    """A callable that is not a class (a function, or a module-level callable object), defined in a
    module of ``allowed`` (None: any)."""
    obj = resolve(reference)
    if inspect.isclass(obj):
        raise UserCodeLoadError(
            f"{reference} is a class; a python step needs a function that takes one record "
            "(a KeyedProcessFunction class belongs in a 'process' step)"
        )
    if not callable(obj):
        raise UserCodeLoadError(f"{reference} is a {type(obj).__name__}, not a function")
    check_defined_in(reference, obj, allowed)
    return obj  # type: ignore[no-any-return]


def load_class(reference: str | CodeReference, base: type, allowed: Sequence[str] | None = None) -> type:
    """A class that subclasses ``base``, defined in a module of ``allowed`` (None: any)."""
    obj = resolve(reference)
    if not inspect.isclass(obj):
        raise UserCodeLoadError(
            f"{reference} is a {type(obj).__name__}, not a class (subclass {base.__name__})"
        )
    check_defined_in(reference, obj, allowed)
    if not issubclass(obj, base):
        raise UserCodeLoadError(f"{reference} does not subclass {base.__module__}.{base.__qualname__}")
    return obj
