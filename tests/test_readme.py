"""Every code block in README.md runs here, or is marked as a fragment that says where it runs."""

from __future__ import annotations

import pathlib
import re

import pytest
from celery import _state as celery_state

from celery_kv.testing import RedisServer

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.DOTALL)
FRAGMENT = re.compile(r"<!-- fragment: .+ -->")


def blocks() -> list[tuple[int, str, str, str]]:
    text = README.read_text("utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text[: match.start("code")].count("\n") + 1
        found.append((line, match["lang"], match["code"], match["before"]))
    return found


def test_every_block_is_python_or_a_marked_fragment() -> None:
    for line, lang, _code, before in blocks():
        if lang != "python":
            assert FRAGMENT.fullmatch(before.strip()), (
                f"README.md:{line}: a {lang or 'plain'} block must follow a "
                "'<!-- fragment: where it runs -->' line"
            )


PYTHON = [(line, code) for line, lang, code, before in blocks()
          if lang == "python" and not FRAGMENT.fullmatch(before.strip())]


@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"line{line}" for line, _ in PYTHON])
def test_python_block_runs(line: int, code: str, redis_srv: RedisServer) -> None:
    # The README shows the usual local URL; the test points it at the session's own server.
    code = code.replace("redis://127.0.0.1:6379/0", redis_srv.url)
    namespace: dict[str, object] = {"__name__": f"readme_line_{line}"}
    # A block's @app.task is shared (Celery's default): Celery keeps its constructor for
    # every app made later in this process, and a block that shows a refused definition
    # would make each of them fail. Each block is a program of its own: forget them after.
    finalizers = set(celery_state._on_app_finalizers)
    try:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
    finally:
        celery_state._on_app_finalizers.intersection_update(finalizers)
