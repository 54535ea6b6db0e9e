"""Coordination keys of a task call: templates, callables and argument fingerprints.

A template such as ``"{tenant_id}"`` is formatted with the call's arguments bound by
name through the task's signature, defaults applied, so ``f(1)`` and ``f(x=1)`` give
the same key. A callable key receives the call's ``*args, **kwargs``. Without either,
the key is a digest of the task name and the canonical JSON of the bound arguments.

Why a template's keys never collide (the rendering is injective):

- each value is encoded by ``E`` into the alphabet ``A`` = ASCII letters, digits, ``-``,
  ``_``, ``.`` and ``%``. A str keeps the characters of ``A`` but ``%`` and
  percent-encodes every other UTF-8 byte (``a:b`` is ``a%3Ab``); if it would then read
  as an int (``"42"``), its first character is escaped too (``%342``). An int is its
  decimal (``42``, ``-7``). Any other JSON value (None, bool, float, list, dict, what
  kombu's JSON knows) is ``%j`` + its canonical JSON, escaped like a str. A value over
  255 characters is ``%h`` + a blake2b of its type and content. After a ``%`` a str
  only has uppercase hex, so ``%j``/``%h``, a bare integer, and anything else (a str,
  percent-decoded) never meet: ``E`` is injective;
- fields are plain parameter names, and two fields must be parted by literal text
  holding a character outside ``A`` (``"{a}:{b}"``, ``"{a}/{b}"``; never ``"{a}{b}"``,
  ``"{a}x{b}"`` or ``"{a}-{b}"``). Reading a key left to right, the first character
  outside ``A`` after a value is that known separator, so each value's end is found.

Plain ids (``acme``, ``eu-west-1``, ``42``) therefore render as they are.
A key longer than 255 characters (the idempotency limit) becomes ``#blake2b:<hex>``.
A key that starts with ``#`` gets one more ``#``, so a user's string, explicit
idempotency keys included, never lands on a digest.
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

from ..primitives._arguments import short
from ..store import codec, fingerprint
from ..store.keys import validate_namespace

MAX_KEY_LENGTH = 255  # the idempotency primitive's limit; longer computed keys are digested
_MAX_VALUE = MAX_KEY_LENGTH  # a longer value is digested on its own (a 10 MB argument)
_VALUE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.%")  # the alphabet of E
_KEPT = re.compile(r"[A-Za-z0-9_.-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_INTEGER = re.compile(r"-?[0-9]+")
_DIGEST = "#blake2b:"


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


class _Bounded(str):
    """A key ``short_key`` already made (a digest or a ``#``-escaped key): kept as it is."""


def short_key(key: str) -> str:
    """A key of at most 255 characters: longer ones become ``#blake2b:<hex>``.

    A key that starts with ``#`` gets one more, so no given key reaches a digest.
    """
    if isinstance(key, _Bounded):
        return key
    escaped = "#" + key if key.startswith("#") else key
    if len(escaped) > MAX_KEY_LENGTH:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass")).hexdigest()
        return _Bounded(_DIGEST + digest)
    return _Bounded(escaped) if escaped.startswith("#") else escaped


def _escape(text: str) -> str:
    """Letters, digits, ``-``, ``_`` and ``.`` as they are, every other UTF-8 byte as ``%XX``."""
    if _KEPT.fullmatch(text):
        return text
    return _UNSAFE.sub(_percent, text)


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match[0].encode("utf-8", "surrogatepass"))


def _hashed(kind: bytes, payload: bytes) -> str:
    return "%h" + hashlib.blake2b(kind + b"\n" + payload, digest_size=20).hexdigest()


def encode_value(value: Any, what: str) -> str:
    """``E(value)`` (see the module docstring): injective, in the alphabet ``A``.

    Values are keyed by their JSON form, what a worker receives: a tuple keys like a
    list. A value that is not JSON raises a ``TypeError`` that names ``what``.
    """
    if isinstance(value, str):
        text = str.__str__(value)
        if len(text) > _MAX_VALUE:
            return _hashed(b"s", text.encode("utf-8", "surrogatepass"))
        escaped = _escape(text)
        if _INTEGER.fullmatch(escaped):  # "42" must not read as 42
            return f"%{ord(escaped[0]):02X}{escaped[1:]}"
        return escaped
    if isinstance(value, int) and not isinstance(value, bool):
        number = int(value)
        if number.bit_length() > 512:  # past what str() prints quickly (or at all)
            return _hashed(b"i", format(number, "x").encode())
        return str(number)
    encoded = codec.dumps(value, what=what)
    canonical = json.dumps(
        json.loads(encoded), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    if len(canonical) > _MAX_VALUE:
        return _hashed(b"j", canonical.encode("utf-8", "surrogatepass"))
    return "%j" + _escape(canonical)


class KeySpec:
    """A key option: a template string or a callable, checked against the task signature."""

    def __init__(
        self, task_name: str, option: str, value: Any, sig: inspect.Signature
    ) -> None:
        self.task_name = task_name
        self.option = option
        self.value = value
        self._fn: Callable[..., Any] | None = None
        self._pieces: tuple[tuple[str, str | None], ...] = ()
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
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"{self._where()} is not a valid template: {exc}") from None
        params = sig.parameters
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        pieces: list[tuple[str, str | None]] = []
        previous: str | None = None
        for literal, field, spec, conversion in parsed:
            if field is None:
                pieces.append((literal, None))
                continue
            self._check_field(field, spec, conversion)
            if previous is not None and all(c in _VALUE_CHARS for c in literal):
                raise ValueError(
                    f"{self._where()}: fields {{{previous}}} and {{{field}}} must be parted by "
                    "text holding a character other than a letter, a digit, '-', '_', '.' or "
                    "'%' (such as "
                    f"'{{{previous}}}:{{{field}}}'), else two calls could share a key"
                )
            if field not in params and not open_kwargs:
                raise ValueError(
                    f"{self._where()} names {field!r}, which is not a parameter of the task "
                    f"(parameters: {', '.join(params) or 'none'})"
                )
            pieces.append((literal, field))
            previous = field
        self._pieces = tuple(pieces)

    def _check_field(self, field: str, spec: str | None, conversion: str | None) -> None:
        if not field or field.isdigit():
            raise ValueError(
                f"{self._where()}: fields must name parameters ('{{tenant_id}}'), "
                f"not positions ({field!r})"
            )
        if not field.isidentifier():
            raise ValueError(
                f"{self._where()}: field {field!r} must be a plain parameter name "
                "(no attribute access or indexing)"
            )
        if conversion or spec:
            extra = f"!{conversion}" if conversion else f":{spec}"
            raise ValueError(
                f"{self._where()}: field {field!r} must be a plain parameter name "
                f"(no conversion or format spec such as {extra!r})"
            )

    def render(self, call: Call) -> str:
        """The key for one call: values encoded injectively, at most 255 characters."""
        if self._fn is not None:
            value = self._fn(*call.args, **call.kwargs)
            return short_key(encode_value(value, f"{self._where()} returned {short(value)}, which"))
        names = call.names
        parts: list[str] = []
        for literal, field in self._pieces:
            parts.append(literal)
            if field is not None:
                if field not in names:
                    raise ValueError(f"{self._where()}: argument {field!r} was not given")
                value = names[field]
                parts.append(encode_value(
                    value, f"{self._where()}: argument {field}={short(value)}"))
        return short_key("".join(parts))


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
