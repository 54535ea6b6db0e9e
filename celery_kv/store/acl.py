"""The Redis ACL rules that confine a user to one prefix and still run every feature.

One place for the rule set: README, ``celery kv doctor`` and the tests all read it here.

- ``~<prefix>:*``: only keys under the prefix (every celery-kv key is);
- ``+@read +@write +@scripting``: the scripts and the few plain reads and deletes;
- ``+ping +time +select``: health checks, server time, a ``/db`` in the URL;
- ``-@dangerous -@admin``: no FLUSHALL, FLUSHDB, SWAPDB, KEYS, CONFIG, DEBUG...;
- ``-function -script|flush -script|kill``: no FUNCTION FLUSH, SCRIPT FLUSH or KILL;
- ``-scan -randomkey -dbsize``: no listing or counting key names outside the prefix
  (key patterns do not filter SCAN);
- ``+info``: ``celery kv doctor`` reads INFO (taken away with @dangerous).

The commands that list keys (``celery kv locks``, ``purge``, and doctor's key count) need
SCAN, which would let the user list every key name: run them as an operator user, the same
rules with ``+scan`` (``acl_rules(prefix, operator=True)``).

Redis >= 7.0: Redis 6.2 has no FUNCTION command and refuses ``-script|flush`` (6.2 can
only add a subcommand, not remove one): there, drop ``-function`` and write
``-script +script|load +script|exists`` instead of the two ``-script|...`` rules.
"""

from __future__ import annotations

from .keys import validate_prefix

_GRANTS = "+@read +@write +@scripting +ping +time +select"
_DENIALS = "-@dangerous -@admin -function -script|flush -script|kill -scan -randomkey -dbsize"
_DOCTOR = "+info"


def acl_rules(prefix: str, *, operator: bool = False) -> str:
    """The ``ACL SETUSER`` rules for a user that works only under ``prefix``.

    ``operator=True`` adds ``+scan`` for the commands that list the prefix's keys.
    """
    rules = f"~{validate_prefix(prefix)}:* {_GRANTS} {_DENIALS} {_DOCTOR}"
    return f"{rules} +scan" if operator else rules


__all__ = ["acl_rules"]
