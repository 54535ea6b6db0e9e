"""Record every coordination decision of a test, wherever it is made, and assert on them.

A decision is one of celery-kv's signals (``celery_kv.signals``): deduplicated,
replayed, rate-limited, cache hit or miss, lock contended or lost, debounced,
superseded, replaced, and admitted (the body runs next). ``KVEvents`` connects to all
of them in this process: an eager run, Celery's in-process ``start_worker`` and the
client side of ``apply_async`` all send them here.

A worker subprocess sends its signals in its own processes. Started with
``CELERY_KV_EVENTS_JOURNAL=<key>`` in its environment (``KVEvents.worker_env()``), its
``install()`` appends each decision as JSON to that Redis list, on the coordination
Redis, with a TTL; ``KVEvents`` reads the list back and merges it with what it saw
itself. So eager runs, in-process and subprocess workers give the same events.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from celery.utils.dispatch import Signal

from .. import signals

#: The environment variable that turns a worker's journal on (its value: the list's key).
JOURNAL_ENV = "CELERY_KV_EVENTS_JOURNAL"
def journal_key(prefix: str) -> str:
    """The journal list of a test whose keys live under ``prefix`` (removed with them)."""
    return f"{prefix}:events"


#: How long a journal list lives after its last event.
JOURNAL_TTL_MS = 3_600_000

#: Every decision signal, by name (the event's ``name``): each ``Signal`` of
#: ``celery_kv.signals``, so a signal added there is recorded too.
SIGNALS: tuple[str, ...] = tuple(
    name for name in signals.__all__ if isinstance(getattr(signals, name), Signal))

#: How each event reads in an assertion message.
_SAYS = {
    "task_admitted": "admitted (its body ran)",
    "task_deduplicated": "deduplicated",
    "task_replayed": "replayed a stored result",
    "task_rate_limited": "rate-limited",
    "lock_contended": "found its lock held",
    "lock_lost": "lost its lease",
    "cache_hit": "a cache hit",
    "cache_miss": "a cache miss",
    "task_debounced": "debounced",
    "task_superseded": "superseded a running holder",
    "task_replaced": "replaced",
}


@dataclass(frozen=True)
class KVEvent:
    """One coordination decision: which signal, for which task, id and key."""

    name: str
    task: str
    task_id: str
    key: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    at: float = 0.0

    def describe(self) -> str:
        where = f" key {self.key!r}" if self.key is not None else ""
        if self.name == "task_admitted" and self.fields.get("keys"):
            where = " " + ", ".join(f"{what} key {key!r}"
                                    for what, key in self.fields["keys"].items())
        extra = {k: v for k, v in self.fields.items() if k in
                 ("holder", "feature", "stage", "retry_after", "reserved", "superseded")}
        more = "".join(f" {k}={v!r}" for k, v in extra.items())
        return f"{self.name} {self.task}[{self.task_id}]{where}{more}"

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "task": self.task, "task_id": self.task_id,
                           "key": self.key, "fields": self.fields, "pid": self.pid,
                           "at": self.at})

    @classmethod
    def from_json(cls, raw: str | bytes) -> KVEvent:
        data = json.loads(raw)
        return cls(data["name"], data["task"], data["task_id"], data["key"],
                   dict(data.get("fields") or {}), int(data.get("pid") or 0),
                   float(data.get("at") or 0.0))


#: A field's JSON past this many characters is kept as a short summary: a 10 MB result
#: replayed a thousand times must not fill the test's memory or its journal.
FIELD_LIMIT = 2048


def _plain(value: Any) -> Any:
    """A JSON value: what a signal sends, with anything else (a result object) as repr."""
    try:
        raw = json.dumps(value)
    except (TypeError, ValueError):
        raw = json.dumps(repr(value))
    if len(raw) > FIELD_LIMIT:
        return f"<{type(value).__name__} of {len(raw)} characters as JSON>"
    return json.loads(raw)


def event_of(name: str, sender: Any, named: dict[str, Any]) -> KVEvent:
    fields = {k: _plain(v) for k, v in named.items()
              if k not in ("signal", "sender", "task_id", "key")}
    key = named.get("key")
    return KVEvent(name, str(getattr(sender, "name", sender)), str(named.get("task_id")),
                   None if key is None else str(key), fields, os.getpid(), time.time())


class Recorder:
    """Receivers on every decision signal, each handing a ``KVEvent`` to ``sink``."""

    def __init__(self, sink: Callable[[KVEvent], None]) -> None:
        self.sink = sink
        self._receivers: list[tuple[Any, Callable[..., None]]] = []

    def start(self) -> Recorder:
        for name in SIGNALS:
            signal = getattr(signals, name)

            def receive(sender: Any = None, _name: str = name, **named: Any) -> None:
                self.sink(event_of(_name, sender, named))

            signal.connect(receive, weak=False)
            self._receivers.append((signal, receive))
        return self

    def stop(self) -> None:
        for signal, receive in self._receivers:
            signal.disconnect(receive)
        self._receivers.clear()


class Journal:
    """A Redis list of events (JSON), written by worker processes, read by the test."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    def append(self, event: KVEvent) -> None:
        pipe = self.client.pipeline(transaction=False)  # one round trip; never without a TTL
        pipe.rpush(self.key, event.to_json())
        pipe.pexpire(self.key, JOURNAL_TTL_MS)
        pipe.execute()

    def read(self) -> list[KVEvent]:
        return [KVEvent.from_json(raw) for raw in self.client.lrange(self.key, 0, -1)]

    def clear(self) -> None:
        self.client.delete(self.key)


_journal_lock = threading.Lock()
_journal_recorder: Recorder | None = None


def journal_from_environment(kv_of: Callable[[], Any]) -> None:
    """In a worker started with ``CELERY_KV_EVENTS_JOURNAL``: journal every decision of
    this process (and of the pool children it forks) to that list on ``kv_of()``'s Redis.

    Called by ``install()``; does nothing without the variable, and connects once.
    """
    global _journal_recorder
    key = os.environ.get(JOURNAL_ENV)
    if not key or _journal_recorder is not None:
        return
    with _journal_lock:
        if _journal_recorder is None:
            def sink(event: KVEvent) -> None:
                Journal(kv_of().client, key).append(event)

            _journal_recorder = Recorder(sink).start()


class KVEventsAssertion(AssertionError):
    """An assertion on recorded decisions failed; the message says what happened instead."""


class KVEvents:
    """The decisions of one test: ``events``, filters, and ``assert_*`` helpers.

    An ``assert_*`` that does not hold yet waits up to ``wait`` seconds before it fails, as
    a worker records its decisions while it runs; one that holds returns at once.
    """

    def __init__(self, wait: float = 5.0) -> None:
        self.wait = wait
        self._local: list[KVEvent] = []
        self._lock = threading.Lock()
        self._recorder = Recorder(self._keep)
        self.journal: Journal | None = None

    # -- recording ------------------------------------------------------------------------

    def _keep(self, event: KVEvent) -> None:
        with self._lock:
            self._local.append(event)

    def start(self) -> KVEvents:
        self._recorder.start()
        return self

    def stop(self) -> None:
        self._recorder.stop()

    def attach(self, client: Any, key: str) -> None:
        """Read worker processes' events from the Redis list ``key`` too."""
        self.journal = Journal(client, key)

    def worker_env(self) -> dict[str, str]:
        """The environment a worker subprocess needs to journal its decisions here."""
        if self.journal is None:
            raise RuntimeError("kv_events: no journal to send worker events to; use kv_app "
                               "on kv_redis (a worker subprocess needs a real Redis)")
        return {JOURNAL_ENV: self.journal.key}

    def clear(self) -> None:
        with self._lock:
            self._local.clear()
        if self.journal is not None:
            self.journal.clear()

    # -- reading --------------------------------------------------------------------------

    @property
    def events(self) -> list[KVEvent]:
        """Every decision so far, this process's and the workers', in time order."""
        with self._lock:
            found = list(self._local)
        if self.journal is not None:
            found += self.journal.read()
        return sorted(found, key=lambda e: e.at)

    def of(self, name: str | None = None, task: str | None = None, key: Any = None,
           task_id: str | Iterable[str] | None = None) -> list[KVEvent]:
        """The events that match every filter given.

        ``key`` is the key as the signals send it (``"a%3Ab"``), or the one value a key
        template formatted (``"a:b"``, ``7``), encoded the way the template encodes it.
        """
        if name is not None and name not in SIGNALS:
            raise ValueError(f"kv_events: unknown event {name!r}; known: {', '.join(SIGNALS)}")
        ids = {task_id} if isinstance(task_id, str) else set(task_id or ())
        keys = _key_forms(key)
        return [e for e in self.events
                if (name is None or e.name == name) and (task is None or e.task == task)
                and (key is None or e.key in keys) and (not ids or e.task_id in ids)]

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def counts(self, *, admitted: bool = True) -> Counter[tuple[str, str, str | None]]:
        """How many of each (event, task, key): what two ways of running one scenario
        should agree on (ids and times differ from run to run)."""
        return Counter((e.name, e.task, e.key) for e in self.events
                       if admitted or e.name != "task_admitted")

    # -- assertions -----------------------------------------------------------------------

    def assert_deduplicated(self, result: Any, key: Any = None) -> KVEvent:
        """The call that returned ``result`` was a duplicate (at enqueue or execution)."""
        return self._assert_call("task_deduplicated", result, key)

    def assert_not_deduplicated(self, result: Any) -> None:
        """The call that returned ``result`` was not folded into another call."""
        found = self._poll(lambda: self.of("task_deduplicated", task_id=_ids(result)),
                           until=bool, wait=0.0)
        if found:
            raise KVEventsAssertion(
                f"expected the call {_call(result)} not to be deduplicated, but it was: "
                + "; ".join(e.describe() for e in found))

    def assert_replayed(self, result: Any, key: Any = None) -> KVEvent:
        """The run ``result`` stands for replayed a stored result instead of its body."""
        return self._assert_call("task_replayed", result, key)

    def assert_cache_hit(self, result: Any, key: Any = None) -> KVEvent:
        return self._assert_call("cache_hit", result, key)

    def assert_cache_miss(self, result: Any, key: Any = None) -> KVEvent:
        return self._assert_call("cache_miss", result, key)

    def assert_ran(self, result: Any) -> KVEvent:
        """The run ``result`` stands for was admitted: its body ran."""
        return self._assert_call("task_admitted", result, None)

    def assert_rate_limited(self, task: str, times: int | None = None,
                            key: Any = None) -> list[KVEvent]:
        """``task`` was rate-limited (exactly ``times`` times, when given)."""
        return self._assert_task("task_rate_limited", task, times, key)

    def assert_contended(self, task: str, times: int | None = None,
                         key: Any = None) -> list[KVEvent]:
        """A run of ``task`` found its singleton lock or concurrency slot held."""
        return self._assert_task("lock_contended", task, times, key)

    def assert_debounced(self, task: str, times: int | None = None,
                         key: Any = None) -> list[KVEvent]:
        """Triggers of ``task`` were absorbed into a burst (``times`` of them)."""
        return self._assert_task("task_debounced", task, times, key)

    def assert_superseded(self, task: str, times: int | None = None,
                          key: Any = None) -> list[KVEvent]:
        return self._assert_task("task_superseded", task, times, key)

    def assert_replaced(self, task: str, times: int | None = None,
                        key: Any = None) -> list[KVEvent]:
        return self._assert_task("task_replaced", task, times, key)

    def _assert_call(self, name: str, result: Any, key: Any) -> KVEvent:
        ids = _ids(result)
        found = self._poll(lambda: self.of(name, task_id=ids, key=key), until=bool)
        if found:
            return found[0]
        others = self.of(task_id=ids)
        task = next((e.task for e in others), getattr(result, "name", None) or "its task")
        keyed = f" (key {key!r})" if key is not None else ""
        if others:
            instead = "; ".join(f"{_SAYS[e.name]}: {e.describe()}" for e in others)
        else:
            instead = "celery-kv recorded no decision for it"
        state = _state(result)
        raise KVEventsAssertion(
            f"expected {task} call {_call(result)}{keyed} to be {_SAYS[name]}, but it was "
            f"not: {instead}{state}; events of {task}: {self._summary(task)}")

    def _assert_task(self, name: str, task: str, times: int | None,
                     key: Any) -> list[KVEvent]:
        def enough(found: list[KVEvent]) -> bool:
            return len(found) >= (times if times is not None else 1)

        found = self._poll(lambda: self.of(name, task=task, key=key), until=enough)
        if (times is None and found) or (times is not None and len(found) == times):
            return found
        keyed = f" for key {key!r}" if key is not None else ""
        wanted = f"{times} time{'s' * (times != 1)}" if times is not None else "at least once"
        keys = sorted({str(e.key) for e in self.of(name, task=task)})
        seen = (f"{len(found)} time{'s' * (len(found) != 1)}"
                + (f" (keys seen: {', '.join(repr(k) for k in keys)})" if keys else ""))
        raise KVEventsAssertion(
            f"expected {task}{keyed} to be {_SAYS[name]} {wanted}, but it was {seen}; "
            f"events of {task}: {self._summary(task)}")

    def _poll(self, look: Callable[[], list[KVEvent]], until: Callable[[list[KVEvent]], bool],
              wait: float | None = None) -> list[KVEvent]:
        """Look until ``until`` holds, for up to ``wait`` seconds: a worker (a thread of
        this process, or a subprocess) records its decisions as it runs."""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        while True:
            found = look()
            if until(found) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def _summary(self, task: str) -> str:
        mine = [e for e in self.events if e.task == task]
        if not mine:
            return "none"
        return "; ".join(e.describe() for e in mine[-10:]) + (
            f" (last 10 of {len(mine)})" if len(mine) > 10 else "")

    def __iter__(self) -> Iterator[KVEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


def _key_forms(key: Any) -> set[str]:
    """A key as given, and as a key template encodes that one value."""
    if key is None:
        return set()
    from ..celery.keys import encode_value

    forms = {str(key)}
    with contextlib.suppress(TypeError, ValueError):
        forms.add(encode_value(key, "key"))
    return forms


def _ids(result: Any) -> set[str]:
    """The id a call's own decisions carry: the id it would have had when its result is
    a duplicate's (``kv_call_id``; its ``id`` is then the holder's), else its id."""
    if isinstance(result, str):
        return {result}
    return {str(getattr(result, "kv_call_id", None) or result.id)}


def _call(result: Any) -> str:
    if isinstance(result, str):
        return f"[{result}]"
    call_id = getattr(result, "kv_call_id", None)
    return f"[{result.id}]" + (f" (called as {call_id})" if call_id else "")


def _state(result: Any) -> str:
    try:
        state = result.state
    except Exception:  # no backend: nothing more to say
        return ""
    return f"; its state is {state}"


__all__ = [
    "JOURNAL_ENV",
    "SIGNALS",
    "Journal",
    "KVEvent",
    "KVEvents",
    "KVEventsAssertion",
    "Recorder",
    "event_of",
    "journal_from_environment",
    "journal_key",
]
