"""``Feature``: what one coordination feature declares and does at each lifecycle phase.

A feature is a thin policy over a primitive, like a dramatiq middleware: it declares its
task options once (``options``), owns its message-header fields (``header_fields``), and
answers the engine's hooks with ``Step``s, one step script each. The engine
(``enqueue``, ``execution``) joins the steps of all of a task's features into one
script per phase and names no feature; the phases are:

- enqueue: ``claim`` (phase one, before publish; its script's undo runs when a later
  feature denies or the publish fails) and ``confirm`` (phase two, after publish);
- execution: ``start`` (its reply goes to ``started``, ``stopped`` or ``denied``),
  ``renew`` (the heartbeat), ``hand_back`` (a retry or deferral: the task id is queued
  again for ``hold`` seconds), and ``finish`` (the final outcome, or a revoke).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ...store import Step
from ..options import Option, TaskDefinition

if TYPE_CHECKING:
    from ..context import Context, Enqueue, Run


@dataclass(frozen=True)
class Outcome:
    """A final outcome: ``done`` with a result (``raw``: its JSON, ``error``: why it has
    none), or ``failed`` (an exception, a revoke, a reject)."""

    done: bool
    result: Any = None
    raw: str = "null"
    error: str = ""


FAILED = Outcome(False)


@dataclass(frozen=True)
class Duplicate:
    """A claim another task id holds: the holder's id, and its stored outcome when done."""

    feature: str
    key: str
    holder: str
    completed: bool = False
    result: Any = None
    error: str = ""
    refuse: Exception | None = None  # raise this rather than hand the holder back


@dataclass
class Wait:
    """Defer the task: re-publish its id after ``countdown`` (or a backoff bounded by
    ``hint``, the seconds until the holder's lease ends), holding nothing meanwhile.

    ``budget`` names a header field that sums this kind of delay; past ``max_total``
    seconds in all the task fails with ``reason`` instead. ``quiet``: the id is being run
    by an earlier delivery, so this one writes no RETRY state over that run's result.
    """

    reason: Exception
    hint: float | None = None
    countdown: float | None = None
    budget: str | None = None
    max_total: float = math.inf
    quiet: bool = False
    marks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Block:
    """Wait in the worker (``until`` blocks, bounded), then run the start phase again."""

    until: Callable[[], None]


@dataclass
class Skip:
    """End the run as a success with ``value``, without the body (``on_locked="skip"``,
    or a follower handed the result of the run it joined)."""

    value: Any = None


@dataclass
class Drop:
    """End this delivery without the body and without an outcome: its task id lives on in
    another message (a stale timer, a replaced message). Nothing is written for it."""

    why: str


class Feature:
    """One feature of one task, configured from its options when the task is defined."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    header_fields: ClassVar[tuple[str, ...]] = ()
    call_options: ClassVar[tuple[str, ...]] = ()  # per-call apply_async options it takes
    stores_result: ClassVar[bool] = False  # its final outcome needs the result as JSON
    #: a body that ran must not lose its outcome to a short outage: the engine keeps the
    #: leases renewed and retries the final phase for up to ``kv_completion_deadline``
    outcome_must_land: ClassVar[bool] = False
    final_phase: ClassVar[bool] = True  # it holds something until the final outcome
    on_unavailable: ClassVar[str] = "retry"  # default of kv_on_unavailable for this feature
    #: the worker's maintenance thread calls ``tick`` on every poll (``maintenance``)
    periodic: ClassVar[bool] = False

    #: seconds this feature's running lease lasts (renewed by the heartbeat); None: none
    lease: float | None = None
    #: True when the feature claims keys at ``apply_async``
    claims_at_enqueue: bool = False
    #: False when its enqueue claim expects a later message (a debounce timer), which an
    #: eager run, run at once, never sends: run eagerly, its execution guard alone decides
    claims_when_eager: ClassVar[bool] = True
    #: the longest single deferral this feature asks for, in seconds
    max_defer: float = 0.0
    #: what the phase scripts count of this feature's steps, by step script: rules of
    #: ``celery_kv.store.scripts`` (``"ok>admitted;deny>denied"``) that mirror the signals
    #: the feature sends for the same reply (``celery_kv.celery.counting``)
    counts: ClassVar[Mapping[str, str]] = {}
    #: a run this feature learns was superseded (its renew step answers 'superseded') is
    #: terminated through Celery's revoke, not only told (``supersede_terminate``)
    terminate_when_superseded: bool = False

    @classmethod
    def configure(cls, task: TaskDefinition) -> Feature | None:
        """This feature for ``task``, or None when its options leave it off."""
        raise NotImplementedError

    def count_rules(self, step: Step, ctx: Any) -> str:
        """The counting rules of ``step`` for this call (default: ``counts``)."""
        return self.counts.get(step.script, "")

    # -- keys ---------------------------------------------------------------------------

    def call_option(self, header: dict[str, Any], name: str, value: Any) -> None:
        """Take a per-call option (one of ``call_options``) into the header."""

    def fill_header(self, ctx: Context) -> None:
        """Set this feature's header fields that ``ctx.header`` lacks, from the call."""

    def describe(self, ctx: Context) -> dict[str, Any]:
        """What this feature would hold for a call, for tools (``kv_keys``, the CLI)."""
        return {}

    # -- enqueue ------------------------------------------------------------------------

    def claim(self, ctx: Enqueue) -> Step | None:
        return None

    def confirm(self, ctx: Enqueue) -> Step | None:
        return None

    def claimed(self, ctx: Enqueue, reply: list[Any]) -> None:
        """The claim phase answered 'ok': adjust the publish (``ctx.task_id``,
        ``ctx.header``, ``ctx.overrides``) from this feature's reply."""

    def duplicate(self, ctx: Enqueue, reply: list[Any]) -> Duplicate:
        raise NotImplementedError

    # -- execution ----------------------------------------------------------------------

    def start(self, run: Run) -> Step | None:
        return None

    def started(self, run: Run, reply: list[Any]) -> None:
        """The start step answered 'ok': this run holds what the feature guards."""

    def stopped(self, run: Run, reply: list[Any]) -> Any:
        """The start step answered 'stop': the value that ends the run without the body."""
        raise NotImplementedError

    def denied(self, run: Run, reply: list[Any]) -> Wait | Block | Skip | Drop:
        """The start step answered 'deny' (nothing is held): how the run waits, or raise."""
        raise NotImplementedError

    def renew(self, run: Run) -> Step | None:
        return None

    def hand_back(self, run: Run, hold: float) -> Step | None:
        return None

    def finish(self, run: Run, outcome: Outcome, revoke: str = "") -> Step | None:
        """The final outcome. On a revoke (``revoke`` "queued" or "terminated") the run
        token is not known: free what the bare task id holds, and a run's only when the
        revoke terminated it."""
        return None

    def finished(self, run: Run, reply: list[Any], outcome: Outcome) -> None:
        """After the final outcome's phase: signals and warnings (a lost claim)."""

    # -- maintenance --------------------------------------------------------------------

    def tick(self, kv: Any, app: Any) -> None:
        """Called by the worker's maintenance thread every poll for features with
        ``periodic=True`` (in the worker's main process, once per feature object; an
        exception is logged and the next poll calls it again). Keep it one round trip."""
