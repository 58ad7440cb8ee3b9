"""Which user code a job may run, checked at submit: the server's allow-list, then an import.

``helios server`` and the operator run jobs for network clients, and a python step runs whatever its
module does on import and call; so they run only modules their administrator allowed
(``--python-modules``, :func:`model.usercode.check_allowed`). The native API and ``helios run``
(``UserCodePolicy.patterns`` None) run any importable module: the caller is the user.

Where the control plane's environment is the workers' (the embedded substrate), it also imports each
reference so that a typo or a missing package is a 400 at submit rather than a failed run; the
operator cannot (the job's image holds the code), so there the first run fails with the same message.
Importing runs the module's code, so it happens only after the allow-list passed, and off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from heliosdb_streaming.functions import KeyedProcessFunction
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import FieldError
from heliosdb_streaming.model.usercode import UserCodeError, check_allowed
from heliosdb_streaming.runtime.usercode import (
    ALLOW_LIST_ENV,
    UserCodeLoadError,
    UserCodeNotAllowedError,
    check_defined_in,
    load_class,
    load_function,
    resolve,
)


@dataclass(frozen=True, slots=True)
class UserCodePolicy:
    """``patterns``: modules allowed (fnmatch, or a package and its submodules); None allows any.
    ``import_check``: import each reference at submit (the workers share this environment)."""

    patterns: tuple[str, ...] | None = None
    import_check: bool = True

    @classmethod
    def server(cls, patterns: Sequence[str], *, import_check: bool = True) -> UserCodePolicy:
        """A network server's policy: only ``patterns`` (none by default: no user code at all)."""
        return cls(tuple(p.strip() for p in patterns if p.strip()), import_check)


def worker_env(policy: UserCodePolicy) -> dict[str, str]:
    """What tells a worker the allow-list, so that it checks what it imports too (none: any module)."""
    return {} if policy.patterns is None else {ALLOW_LIST_ENV: ",".join(policy.patterns)}


def function_fields(config: JobConfig) -> list[tuple[str, str, str]]:
    """``(field path, reference, step type)`` of every step that names user code (``config.function``)."""
    found: list[tuple[str, str, str]] = []
    for i, step in enumerate(config.transformations):
        reference = getattr(step.config, "function", None)
        if isinstance(reference, str):
            found.append((f"transformations[{i}].config.function", reference, step.type))
    return found


def not_allowed_errors(config: JobConfig, policy: UserCodePolicy, *, prefix: str = "") -> list[FieldError]:
    """Each field naming a module the policy does not allow (no I/O)."""
    errors: list[FieldError] = []
    for field, reference, _ in function_fields(config):
        try:
            check_allowed(reference, policy.patterns)
        except UserCodeError as e:
            errors.append(FieldError(prefix + field, str(e)))
    return errors


def import_errors(
    config: JobConfig, policy: UserCodePolicy, *, prefix: str = ""
) -> tuple[list[FieldError], list[FieldError]]:
    """``(not allowed, invalid)``: each field whose reference resolves to code defined outside the
    allowed modules, and each that does not import here or is not a function where one is needed.

    Runs user modules' top-level code: call it off the event loop, and only for allowed modules."""
    refused: list[FieldError] = []
    errors: list[FieldError] = []
    for field, reference, step_type in function_fields(config):
        try:
            if step_type == "python":
                load_function(reference, policy.patterns)
            elif step_type == "process":
                load_class(reference, KeyedProcessFunction, policy.patterns)
            else:  # another step type checks the kind of its own object when it is built
                check_defined_in(reference, resolve(reference), policy.patterns)
        except UserCodeNotAllowedError as e:
            refused.append(FieldError(prefix + field, str(e)))
        except UserCodeLoadError as e:
            errors.append(FieldError(prefix + field, str(e)))
    return refused, errors
