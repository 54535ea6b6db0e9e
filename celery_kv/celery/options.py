"""Option declarations: each feature declares its task options once, here is what reads them.

An ``Option`` gives a name, a one-line doc, a default, the ``kv_*`` setting that supplies
the default, and a check. From the declarations come the task-class attributes, the
known-option list, the typo check, the ``kv_*`` settings and the README's tables
(``python -m celery_kv.celery.features`` prints them). Every error names the task, the
option and the bad value, and is raised where the task is defined.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..primitives._arguments import MAX_SECONDS, is_seconds
from .keys import KeySpec, task_signature

Check = Callable[[Any, "Where"], Any]


@dataclass(frozen=True)
class Where:
    """Names a value in errors: ``task 'proj.sync': option lock_ttl=-1`` or ``kv_lock_ttl=-1``."""

    text: str
    task: TaskDefinition | None = None

    def __call__(self, value: Any) -> str:
        return f"{self.text}={value!r}"


def any_value(value: Any, where: Where) -> Any:
    return value


def flag(value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where(value)} must be True or False")
    return value


def seconds(value: Any, where: Where) -> float:
    """A finite number of seconds > 0 (at most MAX_SECONDS)."""
    if not is_seconds(value, MAX_SECONDS):
        raise ValueError(
            f"{where(value)} must be a finite number of seconds > 0 (at most {MAX_SECONDS:.0e})"
        )
    return float(value)


def choice(*choices: str) -> Check:
    def check(value: Any, where: Where) -> str:
        if value not in choices:
            raise ValueError(f"{where(value)} must be one of {choices}")
        return str(value)

    check.__doc__ = " | ".join(f'``"{c}"``' for c in choices)
    return check


def positive_int(value: Any, where: Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where(value)} must be an int >= 1")
    return value


def key_spec(value: Any, where: Where) -> KeySpec:
    """A key template such as ``"{tenant_id}"`` or a callable, checked against the signature."""
    task = where.task
    if task is None:
        raise ValueError(f"{where(value)}: a key can only be a task option")
    return KeySpec(task.name, where.text.rsplit(" ", 1)[-1], value, task.signature)


@dataclass(frozen=True)
class Option:
    """One option a feature owns: task attribute ``name``, default from ``setting``."""

    name: str
    doc: str
    check: Check = any_value
    default: Any = None
    setting: str | None = None  # the kv_* setting giving the default; None: task option only
    task_option: bool = True  # False: an app-wide setting only
    shown: str | None = None  # the default as the README shows it, when repr will not do

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return "—"
        if isinstance(self.default, float) and self.default == math.floor(self.default):
            return f"`{self.default:.1f}`"
        return f"`{self.default!r}`".replace("'", '"')


class TaskDefinition:
    """One task class being defined: reads and checks its options (task over setting)."""

    def __init__(self, task_cls: Any, settings: Any) -> None:
        self.cls = task_cls
        self.name = str(task_cls.name)
        self.settings = settings
        try:
            self.signature: inspect.Signature = task_signature(task_cls)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task {self.name!r}: cannot read its signature: {exc}") from None

    def where(self, option: Option | str) -> Where:
        name = option if isinstance(option, str) else option.name
        return Where(f"task {self.name!r}: option {name}", self)

    def is_set(self, option: Option) -> bool:
        return getattr(self.cls, option.name, None) is not None

    def get(self, option: Option) -> Any:
        """The option's value, checked: the task's own, else its setting's, else the default."""
        value = getattr(self.cls, option.name, None)
        if value is not None:
            return option.check(value, self.where(option))
        if option.setting is not None:
            return self.settings.values[option.setting]
        return option.default

    def raw(self, name: str) -> Any:
        """A task attribute that is not a celery-kv option (``time_limit``, ...)."""
        return getattr(self.cls, name, None)

    def needs(self, option: Option, enabled: bool, feature: str) -> None:
        """Refuse an option set on a task whose feature is off (it would do nothing)."""
        value = getattr(self.cls, option.name, None)
        if value is not None and not enabled:
            raise ValueError(f"{self.where(option)(value)} is set but {feature} is not enabled")


def check_spelling(task_cls: Any, name: str, known: Iterable[str]) -> None:
    """A decorator option close to one of ours, or in one of our families (``cache_*``,
    ``singleton_*``, ...), but not one of ours is a typo: refuse it now.

    Only options given to ``@app.task(...)`` are read (a class-based task may have
    attributes of its own), and never Celery's own task attributes.
    """
    if not task_cls.__dict__.get("_decorated"):
        return
    from celery import Task

    options = sorted(known)
    families = tuple({o.split("_")[0] for o in options} - {"on"})
    celery_own = set(dir(Task))
    for attr in task_cls.__dict__:
        if attr.startswith("_") or attr in options or attr in celery_own:
            continue
        close = difflib.get_close_matches(attr, options, n=1, cutoff=0.8)
        if close or attr.startswith(families):
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"task {name!r}: unknown celery-kv option {attr!r}{hint} "
                f"(options: {', '.join(options)})"
            )


def markdown_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def options_table(features: Iterable[tuple[str, Iterable[Option]]]) -> str:
    """The README's table of task options, one row per option, grouped by feature."""
    rows = []
    for feature, options in features:
        for option in options:
            if option.task_option:
                default = option.shown_default()
                if option.setting:
                    default = f"`{option.setting}` ({default})"
                rows.append((feature, f"`{option.name}`", default, option.doc))
    return markdown_table(rows, ("feature", "option", "default", "meaning"))


def settings_table(options: Iterable[Option]) -> str:
    """The README's table of ``kv_*`` settings."""
    rows = [(f"`{o.setting}`", o.shown_default(), o.doc) for o in options if o.setting]
    return markdown_table(rows, ("setting", "default", "meaning"))


def read_settings(conf: Mapping[str, Any] | Any, options: Iterable[Option]) -> dict[str, Any]:
    """Every declared ``kv_*`` setting from ``app.conf``, checked, by setting name."""
    values: dict[str, Any] = {}
    for option in options:
        if option.setting is None or option.setting in values:
            continue
        value = conf.get(option.setting)
        values[option.setting] = (
            option.default if value is None else option.check(value, Where(option.setting))
        )
    return values
