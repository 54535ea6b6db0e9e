"""Debounce and keep-latest: collapse a burst of triggers for one key into one run.

A burst hash per ``(task name, key)`` (``task_burst_*.lua``) holds at most one pending
burst and one running burst. Every trigger of a pending burst gets the burst's task id,
and the burst runs once, with the latest trigger's arguments (kept in Redis as JSON):

- ``debounce=S`` (``debounce_edge="trailing"``): ``S`` seconds after the last trigger,
  never later than ``debounce_max_wait`` after the first;
- ``debounce_edge="leading"``: at once, and triggers within ``S`` of the last one are
  absorbed into that run (their arguments dropped);
- ``singleton=True, singleton_mode="latest"``: at once when the key is free; a trigger
  while it runs becomes the one pending run, later ones replace its arguments.

A burst fires only when the previous run of its key is over, so two never run at once.
The timer is the burst's own message, published with a countdown: one that comes early
(a later trigger moved the due time) is published again for the new time, so nothing
depends on Celery's revoke. A trigger that skipped ``apply_async`` (``send_task``) joins
at the worker; one whose id a caller or canvas holds follows the burst it joined and
ends with that run's result (read from the result backend).
"""

from __future__ import annotations

import logging
from typing import Any

from ... import signals
from ...errors import LockNotAcquired
from ...primitives._arguments import text, to_ms
from ...primitives.lock import DEFAULT_FENCE_TTL
from ...store import Step, codec
from ..context import Context, Enqueue, Run
from ..delays import DEFERRED
from ..keys import KeySpec
from ..options import Option, TaskDefinition, choice, key_spec, seconds
from .base import Drop, Duplicate, Feature, Outcome, Skip, Wait
from .singleton import ENABLED as SINGLETON
from .singleton import KEY as SINGLETON_KEY
from .singleton import LOCK_TTL, MODE

log = logging.getLogger("celery_kv.celery")

FENCE_MS = to_ms(DEFAULT_FENCE_TTL)
#: the largest arguments a burst keeps in Redis (their JSON), refused at ``apply_async``
MAX_ARGUMENTS = 512 * 1024

DEBOUNCE = Option("debounce", "run once, this many seconds after the last trigger of a "
                  "burst for its key, with the last trigger's arguments", seconds)
KEY = Option("debounce_key", "template (`\"{user_id}\"`) or callable; default: all "
             "arguments", key_spec)
MAX_WAIT = Option("debounce_max_wait", "a burst runs at most this long after its first "
                  "trigger, however long the triggers go on (>= `debounce`)", seconds)
EDGE = Option("debounce_edge", "`\"trailing\"`: run after the burst; `\"leading\"`: run "
              "the first trigger at once and absorb the rest of the burst",
              choice("trailing", "leading"), "trailing")


def _ms(seconds: float) -> int:
    """Whole milliseconds, 0 included (0: no debounce, no maximum wait, no countdown)."""
    return round(seconds * 1000)


class Debounce(Feature):
    name = "debounce"
    counts = {
        "task_burst_arm": "deny>deduplicated",
        "task_burst_fire": "ok>admitted",
        "task_burst_renew": "deny>lost",
    }
    options = (DEBOUNCE, KEY, MAX_WAIT, EDGE)
    header_fields = ("debounce_key", "burst_msg", "follow_for")
    claims_at_enqueue = True
    claims_when_eager = False

    def __init__(self, task: TaskDefinition, latest: bool) -> None:
        self.task_name = task.name
        self.lease = task.get(LOCK_TTL)
        if latest:
            self.key: KeySpec | None = task.get(SINGLETON_KEY)
            self.wait, self.max_wait, self.edge = 0.0, 0.0, "latest"
        else:
            self.key = task.get(KEY)
            self.wait = float(task.get(DEBOUNCE))
            self.max_wait = float(task.get(MAX_WAIT) or 0.0)
            self.edge = task.get(EDGE)
            if self.max_wait and self.max_wait < self.wait:
                raise ValueError(f"{task.where(MAX_WAIT)(self.max_wait)} must be >= "
                                 f"debounce={self.wait!r}")
        self.max_defer = self.wait  # an early timer message comes back at most this late

    @classmethod
    def configure(cls, task: TaskDefinition) -> Debounce | None:
        debounce = task.get(DEBOUNCE)
        for option in (KEY, MAX_WAIT, EDGE):
            task.needs(option, debounce is not None, "debounce")
        latest = bool(task.get(SINGLETON)) and task.get(MODE) == "latest"
        if debounce is not None and task.get(SINGLETON):
            raise ValueError(f"{task.where(DEBOUNCE)(debounce)}: a debounced task already "
                             "runs one at a time per debounce_key; drop singleton=True")
        if debounce is not None or latest:
            mine = f"debounce={debounce!r}" if debounce is not None else \
                "singleton_mode='latest'"
            for name in ("idempotent", "cached", "cache_ttl"):
                value = task.raw(name)
                if value is not None and value is not False:
                    raise ValueError(f"task {task.name!r}: {name}={value!r} cannot be "
                                     f"combined with {mine}: a burst runs with the latest "
                                     "call's arguments, not each call's")
        if debounce is None and not latest:
            return None
        return cls(task, latest)

    # -- keys ---------------------------------------------------------------------------

    def fill_header(self, ctx: Context) -> None:
        if not isinstance(ctx.header.get("debounce_key"), str):
            call = ctx.call
            ctx.header["debounce_key"] = (call.fingerprint if self.key is None
                                          else self.key.render(call))

    def describe(self, ctx: Context) -> dict[str, Any]:
        return {"debounce": ctx.header["debounce_key"]}

    def _keys(self, ctx: Context) -> tuple[str, str]:
        found: tuple[str, str] | None = ctx.state.get("burst_keys")
        if found is None:
            burst = ctx.kv.store.keys.key("burst", (self.task_name, ctx.header["debounce_key"]))
            found = ctx.state["burst_keys"] = (burst, burst + ":fence")
        return found

    def _arguments(self, ctx: Context) -> str:
        key = ctx.header["debounce_key"]
        what = f"arguments of task {self.task_name!r} (debounce key {key!r})"
        raw = codec.dumps([list(ctx.args), ctx.kwargs], what=what)
        if len(raw) > MAX_ARGUMENTS:
            raise ValueError(f"{what} are {len(raw):,} bytes as JSON; a burst keeps at most "
                             f"{MAX_ARGUMENTS:,} in Redis: pass a reference (an id, a URL) "
                             "instead")
        return raw

    @property
    def _timing(self) -> tuple[int, int, str]:
        return _ms(self.wait), _ms(self.max_wait), self.edge

    # -- enqueue ------------------------------------------------------------------------

    def claim(self, ctx: Enqueue) -> Step:
        burst, _ = self._keys(ctx)
        wait, max_wait, edge = self._timing
        return Step("task_burst_arm", (burst,), (
            ctx.task_id, ctx.nonce, wait, max_wait, edge, self._arguments(ctx),
            to_ms(ctx.policy.enqueue_claim_ttl), _ms(ctx.delay),
            to_ms(ctx.policy.queued_ttl), "1" if ctx.state.get("id_held") else ""))

    def claimed(self, ctx: Enqueue, reply: list[Any]) -> None:
        """Publish the burst's message: under its task id (an adopted burst keeps its own),
        with its nonce, due when the burst is."""
        ctx.task_id = text(reply[2])
        ctx.header["burst_msg"] = text(reply[3])
        ctx.overrides["countdown"] = int(reply[1]) / 1000.0
        ctx.overrides["eta"] = None
        ctx.overrides[DEFERRED] = True  # a timer: through the delay store (kv_delay_store)

    def confirm(self, ctx: Enqueue) -> Step:
        burst, _ = self._keys(ctx)
        queued = to_ms(ctx.policy.queued_ttl)
        return Step("task_burst_confirm", (burst,),
                    (ctx.task_id, ctx.header["burst_msg"], queued, queued))

    def duplicate(self, ctx: Enqueue, reply: list[Any]) -> Duplicate:
        key, holder = ctx.header["debounce_key"], text(reply[1])
        signals.emit(signals.task_debounced, ctx.task, task_id=holder, key=key,
                     trigger=ctx.task_id, triggers=int(reply[3]),
                     due_in=int(reply[2]) / 1000.0)
        return Duplicate(self.name, key, holder)

    # -- execution ----------------------------------------------------------------------

    def _run_args(self, run: Run, hold: float) -> tuple[Any, ...]:
        assert self.lease is not None
        wait, max_wait, edge = self._timing
        header = run.header
        follows = header.get("duplicate_of") if header.get("published_duplicate") else None
        return (run.token, run.task_id, to_ms(self.lease), FENCE_MS,
                str(header.get("burst_msg") or ""), str(follows or ""),
                self._arguments(run), wait, max_wait, edge, to_ms(run.policy.queued_ttl),
                to_ms(hold), "1" if run.eager else "", to_ms(run.policy.enqueue_claim_ttl))

    def start(self, run: Run) -> Step:
        return Step("task_burst_fire", self._keys(run),
                    self._run_args(run, run.policy.undo_hold))

    def started(self, run: Run, reply: list[Any]) -> None:
        """The burst fired: the body runs with the latest trigger's arguments."""
        run.request.kv_fence = int(text(reply[1]))
        args, kwargs = codec.loads(text(reply[2]))
        run.args, run.kwargs = tuple(args), dict(kwargs)
        if not run.eager:  # a retry from the body re-publishes these arguments
            run.request.args, run.request.kwargs = list(args), dict(kwargs)
        run.request.kv_triggers = int(reply[3])

    def denied(self, run: Run, reply: list[Any]) -> Wait | Skip | Drop:
        why, ms, holder, armed = text(reply[1]), int(reply[2]), text(reply[3]), text(reply[4])
        key = run.header["debounce_key"]
        busy = LockNotAcquired(key, holder or None, self.task_name)
        marks: dict[str, Any] = {"burst_msg": armed} if armed else {}
        if why == "stale":
            return Drop(f"a newer message of burst {holder} for key {key!r} replaced it")
        if why == "early":  # not due yet: come back at the due time, writing no state
            return Wait(busy, countdown=ms / 1000.0, quiet=True, marks=marks)
        if why == "followed":
            return self._resolve(run, holder)
        if why == "follow":
            marks.update(published_duplicate=True, duplicate_of=holder)
        hint = ms / 1000.0 if ms > 0 else None
        return Wait(busy, hint=hint, quiet=True, marks=marks)

    def _resolve(self, run: Run, holder: str) -> Skip | Wait:
        """A follower whose burst is over ends with that run's result, read from the result
        backend (which a redelivered run may still be writing: wait, for at most the
        queued TTL)."""
        if run.task.ignore_result:
            log.warning("task %s[%s]: the run %s it joined is over, but the task keeps no "
                        "results: ending with None", self.task_name, run.task_id, holder)
            return Skip()
        result = run.task.AsyncResult(holder)
        try:
            ready = result.ready()
        except NotImplementedError:  # no result backend: nothing to hand on
            return Skip()
        if not ready:
            key = run.header["debounce_key"]
            return Wait(LockNotAcquired(key, holder, self.task_name), quiet=True,
                        budget="follow_for", max_total=run.policy.queued_ttl)
        if result.successful():
            return Skip(result.result)
        if isinstance(result.result, BaseException):
            raise result.result
        raise RuntimeError(f"task {self.task_name!r}: run {holder}, which this call joined, "
                           f"ended {result.state}: {result.result!r}")

    def renew(self, run: Run) -> Step:
        burst, _ = self._keys(run)
        assert self.lease is not None
        return Step("task_burst_renew", (burst,),
                    (run.token, to_ms(self.lease), to_ms(run.policy.queued_ttl)))

    def hand_back(self, run: Run, hold: float) -> Step:
        return Step("task_burst_hand_back", self._keys(run), self._run_args(run, hold))

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step:
        burst, _ = self._keys(run)
        return Step("task_burst_finish", (burst,), (
            "" if revoke else run.token, run.task_id, "1" if revoke == "terminated" else "",
            to_ms(run.policy.queued_ttl)))
