"""``celery kv limits set|unset|list``: per-identity overrides from the command line (and
the old ``limits TASK [IDENTITY]`` form, which is ``limits show``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from celery_kv import KV, RateLimitExceeded

from .conftest import keys_under
from .test_cli import app_kv, assert_clean_error, invoke, make_app, out_json  # noqa: F401


def test_set_list_unset_an_override_of_a_running_tasks_limit(
    make_app: Callable[..., str], app_kv: KV  # noqa: F811
) -> None:
    name = make_app(tasks=True)
    module = importlib.import_module(name)
    for invoice in range(5):
        module.push.apply(("acme", invoice)).get()  # 5/m per tenant: used up
    assert isinstance(module.push.apply(("acme", 5)).result, RateLimitExceeded)

    row = out_json(invoke("-A", name, "kv", "limits", "set", "proj.push", "acme", "100/m",
                          "--json"))
    assert row["limit"] == "per-key" and row["rate"] == "100/m" and row["ttl"] is None
    assert module.push.apply(("acme", 6)).get() == 6, "applied at the next admission"
    assert isinstance(module.push.apply(("globex", 0)).get(), int)

    text = invoke("-A", name, "kv", "limits", "list").output
    assert "proj.push" in text and "100/m" in text and "never" in text
    (listed,) = out_json(invoke("-A", name, "kv", "limits", "list", "proj.push", "--json"))
    assert listed["key"] == row["key"] and listed["rate"] == "100/m"

    timed = out_json(invoke("-A", name, "kv", "limits", "set", "proj.ping_all", "", "20/m",
                            "--ttl", "30", "--json"))
    assert timed["ttl"] == 30.0 and timed["identity"] == ""
    (listed,) = out_json(invoke("-A", name, "kv", "limits", "list", "proj.ping_all", "--json"))
    assert 0 < listed["ttl"] <= 30

    gone = out_json(invoke("-A", name, "kv", "limits", "unset", "proj.push", "acme", "--json"))
    assert gone["removed"] is True
    assert "no override" in invoke("-A", name, "kv", "limits", "unset", "proj.push",
                                   "acme").output
    assert out_json(invoke("-A", name, "kv", "limits", "list", "proj.push", "--json")) == []


def test_the_old_form_is_show(make_app: Callable[..., str], app_kv: KV) -> None:  # noqa: F811
    name = make_app(tasks=True)
    old = out_json(invoke("-A", name, "kv", "limits", "proj.push", "acme", "--json"))
    new = out_json(invoke("-A", name, "kv", "limits", "show", "proj.push", "acme", "--json"))
    assert old == new and old[0]["limit"] == "per-key"
    assert "show" in invoke("-A", name, "kv", "limits", "--help").output


def test_bad_overrides_are_named_and_write_nothing(
    make_app: Callable[..., str], app_kv: KV  # noqa: F811
) -> None:
    name = make_app(tasks=True)
    for rate in ("0/s", "fast", "3.5/m", "5/w"):
        result = invoke("-A", name, "kv", "limits", "set", "proj.push", "acme", rate)
        assert result.exit_code == 2 and repr(rate) in result.output, result.output
        assert "Traceback" not in result.output
    bad = invoke("-A", name, "kv", "limits", "set", "proj.push", "acme", "5/s", "--limit",
                 "nope")
    assert bad.exit_code == 2 and "no rate limit named 'nope'" in bad.output
    bad = invoke("-A", name, "kv", "limits", "set", "proj.push", "acme", "5/s", "--ttl", "-1")
    assert bad.exit_code == 2 and "ttl -1" in bad.output
    assert_clean_error(invoke("-A", name, "kv", "limits", "set", "proj.plain", "x", "5/s"),
                       "task 'proj.plain' has no global_rate_limit or rate_limits")
    assert_clean_error(invoke("-A", name, "kv", "limits", "unset", "proj.nope", "x"),
                       "no task named 'proj.nope'")
    assert keys_under(app_kv) == []
