"""Read debounce bursts for operators: what is pending, what runs, and when.

A burst hash (``task_burst_*.lua``; one per debounced key, and per key of a
``singleton_mode="latest"`` task) is ``keys.key("burst", (task name, key))`` with a
``:fence`` counter beside it. These functions only read it: one HGETALL per hash, and
one TIME per node so every "in" and "ago" is measured on the clock that wrote the
deadlines. Listing uses SCAN (never KEYS), so it needs an operator ACL user (``+scan``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.exceptions as rexc

from . import codec
from .admin import identity_of, name_of, primaries, scan
from .client import is_cluster
from .store import Store

#: a function that renders a task's debounce key from the arguments of one trigger
Render = Callable[[list[Any], dict[str, Any]], str]


@dataclass(frozen=True)
class Arguments:
    """The arguments a burst runs with (the latest trigger's, or those it fired with)."""

    args: list[Any] | None
    kwargs: dict[str, Any] | None
    problem: str | None = None  # set when the stored JSON does not decode


@dataclass(frozen=True)
class PendingBurst:
    """The burst still to run: every trigger since the last run joined it."""

    task_id: str  # the id every caller of the burst got back
    due_in: float  # seconds; negative when overdue (no worker has taken its message yet)
    max_wait_in: float | None  # seconds to the maximum-wait deadline; None: no maximum
    triggers: int
    first_trigger_ago: float
    message_lost_in: float  # past this the message is presumed lost; the next trigger resends
    arguments: Arguments


@dataclass(frozen=True)
class RunningBurst:
    """The burst that fired and has no final outcome yet."""

    task_id: str
    lease_left: float  # seconds; negative: lapsed (a killed worker), the redelivery takes over
    fence: int | None
    triggers: int
    first_trigger_ago: float | None
    status: str  # 'running', 'retrying' (handed back, its message queued again) or 'lapsed'
    arguments: Arguments


@dataclass(frozen=True)
class LeadingWindow:
    """``debounce_edge="leading"``: the run that went at once, absorbing triggers until the end."""

    task_id: str
    ends_in: float
    max_in: float | None
    triggers: int


@dataclass(frozen=True)
class Burst:
    """One burst hash, read at one server time."""

    redis_key: str
    task_name: str | None  # None: a hashed identity nobody could attribute
    key: str | None  # the rendered debounce key
    pending: PendingBurst | None
    running: RunningBurst | None
    window: LeadingWindow | None
    problem: str | None = None  # a record that does not parse: what is wrong with it

    @property
    def state(self) -> str:
        """'pending', 'running', 'both', 'window' (a leading window only), or 'idle'."""
        if self.problem is not None:
            return "malformed"
        if self.pending and self.running:
            return "both"
        if self.pending:
            return "pending"
        if self.running:
            return "running"
        return "window" if self.window and self.window.ends_in > 0 else "idle"


def burst_key(store: Store, task_name: str, key: str) -> str:
    """The burst hash of one rendered key, as the debounce feature names it."""
    return store.keys.key("burst", (task_name, key))


def read_burst(store: Store, task_name: str, key: str) -> Burst | None:
    """The burst of ``task_name`` for one rendered ``key``; None when it has none."""
    redis_key = burst_key(store, task_name, key)
    node = store.client.get_redis_connection(store.client.get_node_from_key(redis_key)) \
        if is_cluster(store.client) else store.client
    (found,) = store.command("burst_read", partial(_read_on, node, [redis_key]),
                             retry_safe=True)
    if found is None:
        return None
    return _with_identity(found, task_name, key)


def list_bursts(store: Store, task_name: str | None = None,
                render: Render | None = None) -> list[Burst]:
    """Every burst under the prefix (SCAN on each primary), or those of ``task_name``.

    A long identity is stored hashed, so its task and key cannot be read from the key
    name; with ``render`` (the task's key from a trigger's arguments) such a burst is
    attributed to ``task_name`` when rendering its stored arguments gives its key back.
    Without a filter, unattributed bursts are listed with ``task_name`` None.
    """
    found: list[Burst] = []
    for burst in _scan_bursts(store):
        if burst.task_name is None and task_name is not None and render is not None:
            burst = _attribute(store, burst, task_name, render)
        if task_name is None or burst.task_name == task_name:
            found.append(burst)
    return sorted(found, key=lambda b: (b.task_name or "", b.key or "", b.redis_key))


def _scan_bursts(store: Store) -> Iterator[Burst]:
    pattern = store.keys.pattern("burst")
    for _name, node in primaries(store.client):
        batches = store.command("burst_scan", partial(_scan_node, node, pattern),
                                retry_safe=True)
        for batch in batches:
            keys = [k for k in batch if k.endswith("}")]  # not the ':fence' counters
            read = store.command("burst_read", partial(_read_on, node, keys), retry_safe=True)
            for redis_key, burst in zip(keys, read, strict=True):
                if burst is not None:
                    yield _with_identity(burst, *_identity(redis_key))


def _scan_node(node: Any, pattern: str, _client: Any) -> list[list[str]]:
    return list(scan(node, pattern))


def _read_on(node: Any, keys: list[str], _client: Any) -> list[Burst | None]:
    return _read_batch(node, keys)


def _identity(redis_key: str) -> tuple[str | None, str | None]:
    """(task name, rendered key) from a burst hash's name; (None, None) when hashed."""
    found = identity_of(redis_key)
    if isinstance(found, tuple) and len(found) == 2 and all(isinstance(p, str) for p in found):
        return str(found[0]), str(found[1])
    return None, None


def _attribute(store: Store, burst: Burst, task_name: str, render: Render) -> Burst:
    for arguments in (burst.pending and burst.pending.arguments,
                      burst.running and burst.running.arguments):
        if not arguments or arguments.args is None or arguments.kwargs is None:
            continue
        try:
            key = render(arguments.args, arguments.kwargs)
        except Exception:  # arguments of another task (or a key that raises): not this one
            continue
        if burst_key(store, task_name, key) == burst.redis_key:
            return _with_identity(burst, task_name, key)
    return burst


def _with_identity(burst: Burst, task_name: str | None, key: str | None) -> Burst:
    return Burst(burst.redis_key, task_name, key, burst.pending, burst.running, burst.window,
                 burst.problem)


def _read_batch(node: Any, keys: list[str]) -> list[Burst | None]:
    """TIME and one HGETALL per key, in one round trip to the node that holds them."""
    if not keys:
        return []
    pipe = node.pipeline(transaction=False)
    pipe.time()
    for key in keys:
        pipe.hgetall(key)
    replies = pipe.execute(raise_on_error=False)
    clock = replies[0]
    if isinstance(clock, Exception):
        raise clock
    now = int(clock[0]) * 1000 + int(clock[1]) // 1000
    found: list[Burst | None] = []
    for key, reply in zip(keys, replies[1:], strict=True):
        if isinstance(reply, rexc.ResponseError) and str(reply).startswith("WRONGTYPE"):
            found.append(_malformed(key, str(reply)))
        elif isinstance(reply, Exception):
            raise reply
        elif not reply:
            found.append(None)  # gone between SCAN and read, or never there
        else:
            found.append(parse_burst(key, {_text(k): _text(v) for k, v in reply.items()}, now))
    return found


def parse_burst(redis_key: str, fields: Mapping[str, str], now_ms: int) -> Burst:
    """One burst hash's fields, read at server time ``now_ms``, as a record.

    A field that is not what the scripts write makes the record ``malformed`` (its
    ``problem`` says which), so one bad hash never ends a listing.
    """
    try:
        return Burst(redis_key, None, None, _pending(fields, now_ms),
                     _running(fields, now_ms), _window(fields, now_ms))
    except (KeyError, ValueError) as exc:
        return _malformed(redis_key, f"{type(exc).__name__}: {exc}")


def _malformed(redis_key: str, why: str) -> Burst:
    return Burst(redis_key, None, None, None, None, None, problem=f"malformed: {why}"[:200])


def _seconds(deadline_ms: str, now_ms: int) -> float:
    return (int(deadline_ms) - now_ms) / 1000.0


def _pending(f: Mapping[str, str], now: int) -> PendingBurst | None:
    if not f.get("pid"):
        return None
    pmax = int(f.get("pmax") or 0)
    return PendingBurst(
        task_id=f["pid"], due_in=_seconds(f["pdue"], now),
        max_wait_in=(pmax - now) / 1000.0 if pmax > 0 else None,
        triggers=int(f["pn"]), first_trigger_ago=-_seconds(f["pfirst"], now),
        message_lost_in=_seconds(f.get("pexp") or "0", now),
        arguments=decode_arguments(f.get("pargs")))


def _running(f: Mapping[str, str], now: int) -> RunningBurst | None:
    if not f.get("rid"):
        return None
    lease_left = _seconds(f["rdl"], now)
    status = "retrying" if f.get("rtok") == "" else "running" if lease_left > 0 else "lapsed"
    fence, first = f.get("rfence"), f.get("rfirst")
    return RunningBurst(
        task_id=f["rid"], lease_left=lease_left, fence=int(fence) if fence else None,
        triggers=int(f.get("rn") or 0),
        first_trigger_ago=-_seconds(first, now) if first else None, status=status,
        arguments=decode_arguments(f.get("rargs")))


def _window(f: Mapping[str, str], now: int) -> LeadingWindow | None:
    if not f.get("wid"):
        return None
    wmax = int(f.get("wmax") or 0)
    return LeadingWindow(task_id=f["wid"], ends_in=_seconds(f["wend"], now),
                         max_in=(wmax - now) / 1000.0 if wmax > 0 else None,
                         triggers=int(f.get("wn") or 0))


def decode_arguments(raw: str | None) -> Arguments:
    """``[args, kwargs]`` as the debounce feature stores them (JSON through the codec)."""
    if raw is None:
        return Arguments(None, None, "no arguments stored")
    try:
        args, kwargs = codec.loads(raw)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("not [args, kwargs]")
    except (ValueError, TypeError) as exc:
        return Arguments(None, None, f"arguments do not decode ({exc}): {raw[:80]!r}")
    return Arguments(args, kwargs)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def display_name(burst: Burst) -> str:
    """(task, key) as ``locks`` shows names: ``('proj.task', 'acme')``, or the hashed form."""
    if burst.task_name is not None and burst.key is not None:
        return repr((burst.task_name, burst.key))
    return name_of(burst.redis_key)


__all__ = ["Arguments", "Burst", "LeadingWindow", "PendingBurst", "Render", "RunningBurst",
           "burst_key", "decode_arguments", "display_name", "list_bursts", "parse_burst",
           "read_burst"]
