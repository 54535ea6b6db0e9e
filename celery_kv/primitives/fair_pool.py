"""A fair pool of concurrency slots: ``limit`` per key, ``total`` across keys, parked waiters.

State (``task_concurrency_*.lua``, moves in ``fair_pool.lua``): every key of one pool is
under one ``{hash tag}``, so one script sees all of its keys' waiters; a busy pool lives on
one cluster node. Holders keep their slot on a lease. A run that finds no slot is parked:
its message (the JSON a caller publishes to run it later) waits in Redis, not in the
broker. A slot that frees goes to the next waiter as a *grant* (a holder entry on a short
lease) and the waiter's message is handed back to be published; the run it starts turns
the grant into its own lease. A grant that is never used lapses and its waiter takes its
place in line again. Across keys the order is stride scheduling (each waiting key has a
pass; the smallest goes next and moves on by ``1 / weight``); within a key, first come,
first served.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import unquote

from ..store import Step, Store
from ..store.keys import identity
from ._arguments import short, text

#: the pool's keys, in the order the scripts take them (see fair_pool.lua)
PARTS = ("holders", "running", "waiters", "messages", "ready", "meta", "weights", "spent",
         "passes")
MAX_WEIGHT = 1e6


def key_id(key: str) -> str:
    """A key's id inside the pool: percent-encoded (never ``|`` or ``}``), hashed when long."""
    return identity(key)


def key_of(kid: str) -> str:
    """The key a key id stands for (a hashed id stays as it is)."""
    if kid == "!":
        return ""
    return kid if kid.startswith("#") else unquote(kid)


def check_weight(weight: Any, what: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
        math.isfinite(weight) and 0 < weight <= MAX_WEIGHT
    ):
        raise ValueError(f"{what}: weight {short(weight)} must be a number > 0 and at most "
                         f"{MAX_WEIGHT:.0e}")
    return float(weight)


class FairPool:
    """One pool's keys and its calls that are not a run's own steps (weights, pump, state)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        base = store.keys.key("conc", name)
        self.keys = tuple(f"{base}:{part}" for part in PARTS)

    def args(self, *, token: str = "", kid: str = "", lease_ms: int = 0, limit: int = 1,
             total: int = 0, queued_ms: int, grant_ms: int, mode: str, ticket: str = "",
             message: str = "", max_waiting: int = 0, new_ticket: str = ""
             ) -> tuple[Any, ...]:
        return (token, kid, lease_ms, limit, total, queued_ms, grant_ms, mode, ticket,
                message, max_waiting, new_ticket)

    def pump(self, limit: int, total: int, queued_ms: int, grant_ms: int) -> list[str]:
        """Hand lapsed and free slots to waiters: the granted waiters' messages."""
        args = self.args(limit=limit, total=total, queued_ms=queued_ms, grant_ms=grant_ms,
                         mode="pump")
        reply = self.store.run_phase("concurrency pump",
                                     [Step("task_concurrency_pump", self.keys, args)])
        return [text(m) for m in reply.replies[0][1:]]

    def set_weight(self, key: str, weight: Any) -> float:
        """Give ``key`` this share of the pool (default 1): a key of weight 3 starts three
        runs for each run of a key of weight 1 while both have waiters."""
        if not isinstance(key, str):
            raise TypeError(f"pool {self.name!r}: key {short(key)} must be a str")
        value = check_weight(weight, f"pool {self.name!r}, key {key!r}")
        self.store.command("set weight", lambda c: c.hset(
            self.keys[6], key_id(key), repr(value)), retry_safe=True)
        return value

    def clear_weight(self, key: str) -> bool:
        return bool(self.store.command("clear weight", lambda c: c.hdel(
            self.keys[6], key_id(key)), retry_safe=True))

    def weights(self) -> dict[str, float]:
        raw = self.store.command("read weights", lambda c: c.hgetall(self.keys[6]),
                                 retry_safe=True)
        return {key_of(text(k)): float(text(v)) for k, v in raw.items()}

    def state(self) -> dict[str, dict[str, int]]:
        """Per key: ``running`` (slots held, grants included) and ``waiting`` (parked)."""
        def read(client: Any) -> tuple[Any, Any]:
            return (client.hgetall(self.keys[1]),
                    client.zrangebylex(self.keys[2], "-", "+"))

        running, waiters = self.store.command("read pool", read, retry_safe=True)
        out: dict[str, dict[str, int]] = {}
        for kid, n in running.items():
            out.setdefault(key_of(text(kid)), {"running": 0, "waiting": 0})["running"] = \
                int(text(n))
        for member in waiters:
            kid = text(member).split("|", 1)[0]
            out.setdefault(key_of(kid), {"running": 0, "waiting": 0})["waiting"] += 1
        return out
