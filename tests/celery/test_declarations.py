"""The options are declared once, by their feature: the task attributes, the typo check and
the README's tables are made from the declarations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_kv import KVTask, install
from celery_kv.celery.config import ENGINE_OPTIONS, all_options, readme_tables
from celery_kv.celery.features import FEATURES

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("table", ["options", "settings"])
def test_the_readme_tables_are_the_declarations(table: str) -> None:
    text = README.read_text()
    found = re.search(rf"<!-- {table}:start -->\n(.*?)\n<!-- {table}:end -->", text, re.S)
    assert found, f"README has no {table} table markers"
    assert found.group(1) == readme_tables()[table], (
        "README and declarations disagree: paste `python -m celery_kv.celery.features`")


def test_every_declared_task_option_is_a_task_attribute() -> None:
    for option in all_options():
        assert hasattr(KVTask, option.name) == option.task_option, option.name


def test_each_option_is_declared_once_and_each_setting_named_for_it() -> None:
    names = [o.name for o in ENGINE_OPTIONS] + [o.name for f in FEATURES for o in f.options]
    shared = {n for n in names if names.count(n) > 1}
    assert shared == {"lock_ttl"}, "only lock_ttl is shared (singleton and concurrency)"
    for option in all_options():
        assert option.setting in (None, f"kv_{option.name}"), option


@pytest.mark.parametrize(("typo", "meant"), [
    ("singelton", "singleton"), ("concurency_limit", "concurrency_limit"),
    ("idempotnt", "idempotent"), ("cache_tll", "cache_ttl"), ("lock_tl", "lock_ttl"),
])
def test_a_mistyped_option_is_refused_with_the_close_name(typo: str, meant: str) -> None:
    app = Celery("typos", broker="memory://", set_as_current=False)
    app.conf.kv_redis_url = "redis://127.0.0.1:1/0"
    install(app)
    options: dict[str, Any] = {typo: True if "ton" in typo or "nt" in typo else 2}
    with pytest.raises(ValueError) as caught:
        @app.task(base=KVTask, shared=False, name=f"typo.{typo}", **options)
        def task(x: int) -> int:
            return x
    assert typo in str(caught.value) and repr(meant) in str(caught.value)
    assert f"typo.{typo}" not in app.tasks


def test_every_header_field_written_is_declared_by_its_owner() -> None:
    from celery_kv.celery.context import ENGINE_FIELDS, HEADER, Context

    app = Celery("fields", broker="memory://", set_as_current=False)
    app.conf.kv_redis_url = "redis://127.0.0.1:1/0"
    install(app)

    @app.task(base=KVTask, shared=False, name="fields.all", singleton=True, idempotent=True,
              global_rate_limit="1/s", concurrency_limit=1, cache_ttl=5)
    def everything(x: int) -> int:
        return x

    ctx = Context(everything, "id-1", (1,), {}, {})
    written = set(ctx.fill_header())
    declared = {f for feature in FEATURES for f in feature.header_fields}
    assert written <= declared, written - declared
    assert not declared & set(ENGINE_FIELDS)
    assert HEADER == "celery_kv"
