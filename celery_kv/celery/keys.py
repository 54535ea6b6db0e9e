"""Coordination keys of a task call: templates, callables and argument fingerprints.

A template such as ``"{tenant_id}"`` is formatted with the call's arguments bound by
name through the task's signature, defaults applied, so ``f(1)`` and ``f(x=1)`` give
the same key. A callable key receives the call's ``*args, **kwargs``. Without either,
the key is a digest of the task name and the canonical JSON of the bound arguments.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import string
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from ..store import codec, fingerprint
from ..store.keys import validate_namespace

MAX_KEY_LENGTH = 255  # the idempotency primitive's limit; longer computed keys are digested
_FIELD_BASE = re.compile(r"[.\[]")


def task_signature(task_cls: Any) -> inspect.Signature:
    """The call signature of a task's ``run`` as callers see it (no ``self`` for bind=True)."""
    raw = inspect.getattr_static(task_cls, "run")
    if isinstance(raw, staticmethod):
        return inspect.signature(raw.__func__)
    sig = inspect.signature(raw)
    params = list(sig.parameters.values())[1:]  # a method or a bound task: drop self
    return sig.replace(parameters=params)


class Call:
    """One call's arguments, bound by name with defaults applied."""

    def __init__(
        self, task_name: str, sig: inspect.Signature, args: Any, kwargs: Any
    ) -> None:
        self.task_name = task_name
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        try:
            bound = sig.bind(*self.args, **self.kwargs)
        except TypeError as exc:
            raise TypeError(
                f"task {task_name!r}: arguments {self.args!r}, {self.kwargs!r} do not match "
                f"its signature {sig}: {exc}"
            ) from None
        bound.apply_defaults()
        self.sig = sig
        self.arguments: dict[str, Any] = dict(bound.arguments)

    @cached_property
    def names(self) -> dict[str, Any]:
        """Arguments by name for templates: ``**kwargs`` contents are flattened in."""
        flat: dict[str, Any] = {}
        for name, value in self.arguments.items():
            if self.sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                for key, item in value.items():
                    flat.setdefault(key, item)
            else:
                flat[name] = value
        return flat

    @cached_property
    def canonical(self) -> str:
        """Canonical JSON of the bound arguments (key order never matters)."""
        encoded = codec.dumps(
            self.arguments, what=f"arguments of task {self.task_name!r} (for its default key)"
        )
        return json.dumps(json.loads(encoded), sort_keys=True, separators=(",", ":"))

    @cached_property
    def fingerprint(self) -> str:
        """The default key: a digest of the task name and the canonical arguments."""
        return fingerprint(f"{self.task_name}\n{self.canonical}".encode())


def short_key(key: str) -> str:
    """A key of at most 255 characters: longer ones are replaced by a digest."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "blake2b:" + hashlib.blake2b(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeySpec:
    """A key option: a template string or a callable, checked against the task signature."""

    def __init__(
        self, task_name: str, option: str, value: Any, sig: inspect.Signature
    ) -> None:
        self.task_name = task_name
        self.option = option
        self.value = value
        self._fn: Callable[..., Any] | None = None
        if isinstance(value, str):
            self._check_template(value, sig)
        elif callable(value):
            self._fn = value
        else:
            raise TypeError(
                f"task {task_name!r}: option {option}={value!r} must be a template string "
                "such as '{tenant_id}' or a callable taking the task's arguments"
            )

    def _where(self) -> str:
        return f"task {self.task_name!r}: option {self.option}={self.value!r}"

    def _check_template(self, template: str, sig: inspect.Signature) -> None:
        if not template:
            raise ValueError(f"{self._where()} is empty")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{self._where()} is not a valid template: {exc}") from None
        params = sig.parameters
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for field in fields:
            base = _FIELD_BASE.split(field, 1)[0]
            if not base or base.isdigit():
                raise ValueError(
                    f"{self._where()}: fields must name parameters ('{{tenant_id}}'), "
                    f"not positions ({field!r})"
                )
            if base not in params and not open_kwargs:
                raise ValueError(
                    f"{self._where()} names {base!r}, which is not a parameter of the task "
                    f"(parameters: {', '.join(params) or 'none'})"
                )

    def render(self, call: Call) -> str:
        """The key for one call, as a string."""
        if self._fn is not None:
            value = self._fn(*call.args, **call.kwargs)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise TypeError(f"{self._where()} returned {value!r}; a key must be a str or int")
            return str(value)
        try:
            return str(self.value).format_map(_Strict(call.names))
        except KeyError as exc:
            raise ValueError(f"{self._where()}: argument {exc.args[0]!r} was not given") from None


class _Strict(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def namespace_for(task_name: str) -> str:
    """A cache/idempotency namespace for a task: its name, or a digest when not plain."""
    try:
        return validate_namespace(task_name)
    except ValueError:
        return "task-" + fingerprint(task_name.encode("utf-8", "surrogatepass"))


def task_id_of(token: str | None) -> str | None:
    """The task id in an owner token (``<task id>`` queued, ``<task id>#run:<n>`` running)."""
    if token is None:
        return None
    head, sep, _ = token.rpartition(RUN_MARK)
    return head if sep else token


RUN_MARK = "#run:"


def run_token(task_id: str, nonce: str) -> str:
    return f"{task_id}{RUN_MARK}{nonce}"


def is_run_of(token: str | None, task_id: str) -> bool:
    return token is not None and token.startswith(f"{task_id}{RUN_MARK}")


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
