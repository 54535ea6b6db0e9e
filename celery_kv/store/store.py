"""The coordination module: one client, one prefix, scripts run under one retry policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.commands.core import Script
from redis.exceptions import NoScriptError

from . import metrics, scripts
from .client import AnyRedis, connect, is_cluster
from .keys import KeySpace
from .retry import RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    """One step of a lifecycle phase: a step script (see ``scripts``) and its keys and args."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...] = ()
    #: how the phase's script counts this step's decision (``metrics.tally``); '' for not
    tally: str = ""


@dataclass(frozen=True)
class PhaseReply:
    """What a phase answered: the server time, and the reply of each step that ran."""

    now: float
    replies: list[Any]


class Store:
    """Runs each coordination decision as one EVALSHA of one script.

    A missing script (NOSCRIPT after a restart or failover) is loaded again and
    the call retried once, as redis-py's ``Script`` does; the call goes straight to
    ``execute_command`` so a warm call pays for no more than the command itself
    (RedisCluster routes EVALSHA by its first key all the same).
    """

    def __init__(
        self, client: AnyRedis, prefix: str, retry: RetryPolicy | None = None
    ) -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self.retry = retry or RetryPolicy()
        self._scripts: dict[str | tuple[str, ...], tuple[Script, bool]] = {}

    @classmethod
    def from_url(
        cls, url: str, prefix: str, retry: RetryPolicy | None = None, **options: Any
    ) -> Store:
        return cls(connect(url, **options), prefix, retry)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    @property
    def cluster(self) -> bool:
        return is_cluster(self.client)

    def _script(self, name: str) -> tuple[Script, bool]:
        return self._register(name, scripts.standalone)

    def _composite(self, names: tuple[str, ...]) -> tuple[Script, bool]:
        return self._register(names, scripts.compose)

    def _register(self, key: Any, source: Callable[[Any], scripts.ScriptSource]
                  ) -> tuple[Script, bool]:
        found = self._scripts.get(key)
        if found is None:
            loaded = source(key)
            found = (self.client.register_script(loaded.text), loaded.retry_safe)
            self._scripts[key] = found
        return found

    def run_phase(self, operation: str, steps: Sequence[Step], counters_ttl: float = 0.0
                  ) -> PhaseReply:
        """Run a lifecycle phase: its steps in order, stopping at the first that does not
        answer 'ok' (a 'deny' first undoes the earlier steps).

        ``counters_ttl`` (seconds, 0 for none): the same script counts the decisions of the
        steps that carry a ``tally`` in per-minute counters living that long (``metrics``).

        On one server the whole phase is one composed script, one round trip: the steps'
        keys may sit in different slots, which a single server allows. Redis Cluster
        refuses a script across slots, so there each step is its own call (one per slot),
        and a denial runs the earlier steps' undo scripts as calls of their own.
        """
        if not self.cluster:
            return self._run_composite(operation, steps, counters_ttl)
        replies: list[Any] = []
        now = 0.0
        for index, step in enumerate(steps):
            answer = self._run_composite(operation, [step], counters_ttl)
            now = now or answer.now
            reply = answer.replies[0]
            replies.append(reply)
            verdict = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if verdict == "deny":
                for earlier, counted in zip(reversed(steps[:index]), reversed(replies[:index]),
                                            strict=True):
                    undo = scripts.load(earlier.script).undo
                    if undo is not None:
                        step = Step(undo, earlier.keys, earlier.args,
                                    metrics.taken_back(earlier.tally, counted))
                        self._run_composite(operation, [step], counters_ttl)
            if verdict != "ok":
                break
        return PhaseReply(now, replies)

    def _run_composite(self, operation: str, steps: Sequence[Step], counters_ttl: float = 0.0
                       ) -> PhaseReply:
        names = tuple(step.script for step in steps)
        script, retry_safe = self._scripts.get(names) or self._composite(names)
        keys: list[str] = []
        args: list[Any] = [len(steps)]
        for step in steps:
            args += (len(step.keys), len(step.args))
        for step in steps:
            keys += step.keys
            args += step.args
        if counters_ttl > 0 and any(step.tally for step in steps):
            keys.append(metrics.counters_base(self, steps[0].keys[0] if steps[0].keys else ""))
            args.append(max(int(counters_ttl * 1000), 1))
            args += (step.tally for step in steps)
        reply = self.retry.call(
            operation, lambda: self._evalsha(script, keys, args), retry_safe=retry_safe
        )
        return PhaseReply(int(reply[0]) + int(reply[1]) / 1e6, reply[2:])

    def run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any] = (),
        *,
        read_only: bool = False,
    ) -> Any:
        """Run script ``name`` once (EVALSHA), under the retry policy.

        ``read_only``: this call's arguments make the script change nothing (a
        peek mode), so it is safe to retry whatever its file declares.
        """
        script, retry_safe = self._scripts.get(name) or self._script(name)
        return self.retry.call(
            name,
            lambda: self._evalsha(script, keys, args),
            retry_safe=retry_safe or read_only,
        )

    def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One EVALSHA; on NOSCRIPT, load the script and run it once more."""
        execute = self.client.execute_command
        try:
            return execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = self.client.script_load(script.script)
            return execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def command(self, operation: str, fn: Callable[[AnyRedis], T], *, retry_safe: bool) -> T:
        """Run one plain command (a read, a DEL) under the retry policy."""
        return self.retry.call(operation, lambda: fn(self.client), retry_safe=retry_safe)
