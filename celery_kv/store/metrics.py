"""Decision counters kept by the decision scripts themselves.

A lifecycle phase is one script (``scripts.compose``); when a step carries a *tally*, the
same script counts what it decided in a hash per server minute,
``<prefix>:metrics:{<tag>}:<minute>``, fields ``task|feature|event`` (and
``task|feature|event|identity`` for the identities an operator listed). Counting costs no
round trip, uses server time, and every hash lives ``counters_ttl`` seconds.

On one server every decision counts into the one hash of the minute. On Redis Cluster a
script may only touch its own slot, so each decision counts into the hash of its first
key's slot (``{<tag>}`` is a short string of that slot): at most one hash per slot in use
and minute, which ``read_counts`` finds with SCAN on each primary.

A script retried after a lost reply (``retry: safe``) may count its decision twice; the
counters are for operators, and the decision itself stays exact.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store

EVENTS = ("admitted", "denied", "deferred", "deduplicated", "replayed", "cache_hit",
          "cache_miss", "contended", "lost")
SLOTS = 16384
KIND = "metrics"


@dataclass(frozen=True)
class Count:
    """One counter: ``value`` decisions of one kind in one server minute."""

    minute: int  # epoch seconds // 60, server time
    task: str
    feature: str
    event: str
    identity: str | None
    value: int


def tally(task: str, feature: str, rules: str, identity: str | None = None) -> str:
    """A step's tally for the phase script: what to count for which reply (``scripts``).

    ``|``, tabs and newlines in names would make fields ambiguous; task names and
    identities carrying them are counted with those characters replaced by ``_``.
    """
    return f"{_clean(task)}|{feature}\t{rules}\t{_clean(identity or '')}"


def events_for(rules: str, reply: list[Any]) -> list[str]:
    """The events the phase script counts for ``reply`` under ``rules`` (its matcher)."""
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    for rule in filter(None, rules.split(";")):
        cond, _, events = rule.partition(">")
        verdict, _, test = cond.partition(":")
        if not reply or text(reply[0]) != verdict:
            continue
        if test:
            if test.endswith("?"):
                index, op, value = test[:-1], "?", ""
            else:
                index, op, value = test.partition("=")
            got = reply[int(index) - 1] if len(reply) >= int(index) else None
            if op == "?" and got is None:
                continue
            if op == "=" and ("" if got is None else text(got)) != value:
                continue
        return [e for e in events.split(",") if e and e != "-"]
    return []


def taken_back(tally_: str, reply: list[Any]) -> str:
    """The tally of an undo: take back what ``tally_`` counted for ``reply``."""
    if not tally_:
        return ""
    label, rules, who = tally_.split("\t", 2)
    events = [e for e in events_for(rules, reply) if not e.startswith("-")]
    return f"{label}\tok>{','.join('-' + e for e in events)}\t{who}" if events else ""


def _clean(text: str) -> str:
    return text.translate({ord("|"): "_", ord("\t"): "_", ord("\n"): "_", ord("\r"): "_"})


def _slot(key: str) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag, as Redis Cluster computes it)."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return binascii.crc_hqx(raw, 0) % SLOTS


@cache
def _slot_tags() -> tuple[str, ...]:
    """A short hash tag for every slot (computed once: about 0.1 s)."""
    tags: list[str | None] = [None] * SLOTS
    left, n = SLOTS, 0
    while left:
        tag = f"m{n:x}"
        slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            left -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def counters_base(store: Store, first_key: str) -> str:
    """The counters' base key for a phase whose first key is ``first_key``."""
    tag = _slot_tags()[_slot(first_key)] if store.cluster and first_key else "m"
    return f"{store.prefix}:{KIND}:{{{tag}}}"


def parse(minute: int, fields: Mapping[Any, Any]) -> list[Count]:
    """The counts of one minute's hash (fields we cannot read are skipped)."""
    found: list[Count] = []
    for raw_field, raw_value in fields.items():
        field = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
        parts = field.split("|", 3)
        if len(parts) < 3:
            continue
        try:
            value = int(raw_value)
        except (TypeError, ValueError):
            continue
        identity = parts[3] if len(parts) == 4 else None
        found.append(Count(minute, parts[0], parts[1], parts[2], identity, value))
    return found


def read_counts(store: Store, minutes: int = 60) -> tuple[float, list[Count]]:
    """(server time in seconds, the counts of the last ``minutes`` minutes, this one
    included). One round trip on one server (TIME and the minutes' HGETALLs in one
    pipeline); on Cluster a SCAN of the counters on each primary."""
    if minutes < 1:
        raise ValueError(f"minutes={minutes!r} must be at least 1")
    if store.cluster:
        return _read_cluster(store, minutes)
    base = f"{store.prefix}:{KIND}:{{m}}"

    def read(client: Any) -> tuple[float, list[Count]]:
        seconds, micros = client.time()
        now = seconds + micros / 1e6
        current = int(now // 60)
        wanted = list(range(current - minutes + 1, current + 1))
        pipe = client.pipeline(transaction=False)
        for minute in wanted:
            pipe.hgetall(f"{base}:{minute}")
        counts: list[Count] = []
        for minute, fields in zip(wanted, pipe.execute(), strict=True):
            counts += parse(minute, fields)
        return now, counts

    return store.command("read counters", read, retry_safe=True)


def _read_cluster(store: Store, minutes: int) -> tuple[float, list[Count]]:
    from . import admin  # admin imports the store, which imports this module

    def read(client: Any) -> tuple[float, list[Count]]:
        seconds, micros = client.time(target_nodes=client.get_primaries()[0])
        now = seconds + micros / 1e6
        oldest = int(now // 60) - minutes + 1
        pattern = store.keys.pattern(KIND)
        counts: list[Count] = []
        for _, node in admin.primaries(client):
            for batch in admin.scan(node, pattern):
                for key in batch:
                    minute = _minute_of(key)
                    if minute is not None and minute >= oldest:
                        counts += parse(minute, client.hgetall(key))
        return now, counts

    return store.command("read counters", read, retry_safe=True)


def _minute_of(key: str) -> int | None:
    tail = key.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def totals(counts: Iterable[Count]) -> dict[tuple[str, str, str, str | None], int]:
    """The counts summed over minutes, by (task, feature, event, identity); series that sum
    to nothing (a Cluster's step counted, then taken back by its undo) left out."""
    summed: dict[tuple[str, str, str, str | None], int] = {}
    for c in counts:
        key = (c.task, c.feature, c.event, c.identity)
        summed[key] = summed.get(key, 0) + c.value
    return {key: value for key, value in summed.items() if value}
