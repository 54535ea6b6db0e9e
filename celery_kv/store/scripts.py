"""Lua scripts: one ``.lua`` file per operation, loaded once, called by EVALSHA.

Each file declares in its header whether it is safe to run again after a
timeout (``-- retry: safe`` or ``-- retry: unsafe``): a script whose second run
cannot change the outcome is retried on any connection failure; an unsafe one
only when the failure happened before the command was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_RETRY_RE = re.compile(r"^--\s*retry:\s*(safe|unsafe)\b", re.MULTILINE)


@dataclass(frozen=True)
class ScriptSource:
    name: str
    text: str
    retry_safe: bool


@cache
def load(name: str) -> ScriptSource:
    """Read ``scripts/<name>.lua`` and its retry declaration."""
    try:
        folder = resources.files(__package__).joinpath("scripts")
        text = folder.joinpath(f"{name}.lua").read_text("utf-8")
    except FileNotFoundError:
        raise LookupError(f"no Lua script named {name!r}") from None
    match = _RETRY_RE.search(text)
    if match is None:
        raise LookupError(f"script {name!r} does not declare '-- retry: safe|unsafe'")
    return ScriptSource(name, text, match.group(1) == "safe")


def available() -> list[str]:
    folder = resources.files(__package__).joinpath("scripts")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".lua"))
