"""Idempotency keys (Stripe / IETF Idempotency-Key semantics) as one Lua state machine.

Each key is one hash at ``prefix:idem:{(namespace, key)}`` that moves through

    absent -> in_progress(owner, fingerprint, lease deadline) -> completed(result, fingerprint)
                 `-- lease lapsed: unknown ("ran, result unknown") --'

each kept for ``ttl``, one script per transition, so two concurrent requests can never
both run. A runner renews its lease with a heartbeat. A runner whose lease lapses (killed
with SIGKILL, or cut off from Redis as its body ended) leaves the key "unknown": its
effects may have happened, so callers get ``IdempotencyOutcomeUnknown`` instead of a second
run, until ``forget`` (an operator who checked) or the ttl. The runner itself can still
renew or complete a lapsed claim: nobody else can have taken it.

``run`` is the whole protocol for one call; ``begin``/``complete``/``abandon``/``renew``
are its steps, for callers whose owner is an id that can come back (a retry re-enters its
own claim).

Fingerprints: ``run(..., fingerprint=None)`` derives one from ``compute``'s arguments (their
canonical JSON, hashed); a string is used as given. The same key with a different
fingerprint raises ``IdempotencyKeyReused``. An empty fingerprint (``begin`` without one) is
never compared.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from ..errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
)
from ..store import Store, codec
from ..store import fingerprint as digest
from ..store.keys import validate_namespace
from ..store.retry import keep_trying
from ._arguments import positive_seconds, short, text, to_ms
from .heartbeat import Heartbeat

log = logging.getLogger("celery_kv.idempotency")

MAX_KEY_LENGTH = 255  # Stripe's limit for an Idempotency-Key
MAX_FINGERPRINT_LENGTH = 1024

ClaimStatus = Literal["acquired", "reentered", "completed", "in_progress", "unknown"]
StateStatus = Literal["absent", "in_progress", "completed", "unknown"]


@dataclass(frozen=True)
class Claim:
    """What ``begin`` found: the claim is ours (acquired/reentered), done, or someone else's.

    ``owner`` holds or completed the key; ``result`` is the stored result when completed;
    ``lease_left`` is the claim's remaining lease in seconds while in progress.
    """

    status: ClaimStatus
    owner: str | None
    result: Any = None
    lease_left: float | None = None

    @property
    def ours(self) -> bool:
        return self.status in ("acquired", "reentered")


@dataclass(frozen=True)
class IdempotencyState:
    """A snapshot of one key, for inspection (``celery kv``, tests, operators)."""

    status: StateStatus
    owner: str | None = None
    lease_left: float | None = None
    fingerprint: str | None = None
    ttl_left: float | None = None
    result: Any = None


def fingerprint_of(args: tuple[Any, ...], kwargs: dict[str, Any], *, what: str) -> str:
    """A digest of the arguments' canonical JSON: key order does not matter, values do."""
    encoded = codec.dumps([list(args), kwargs], what=what)
    canonical = json.dumps(json.loads(encoded), sort_keys=True, separators=(",", ":"))
    return digest(canonical.encode("utf-8"))


_NO_ARGUMENTS = fingerprint_of((), {}, what="no arguments")  # the common case, computed once


class Idempotency:
    """Idempotency keys in one namespace: results kept ``ttl`` s, claims leased ``lease`` s."""

    def __init__(
        self, store: Store, namespace: str, ttl: float = 86400.0, lease: float = 60.0,
        completion_deadline: float = 30.0,
    ) -> None:
        self.store = store
        self.namespace = validate_namespace(namespace)
        self.ttl = positive_seconds(f"idempotency {namespace!r} ttl", ttl)
        self.completion_deadline = positive_seconds(
            f"idempotency {namespace!r} completion_deadline", completion_deadline)
        self.lease = self._lease(lease)
        if self.lease > self.ttl:
            raise ValueError(
                f"idempotency {namespace!r} lease {lease!r} must not exceed ttl {ttl!r}"
            )

    # -- the whole protocol --------------------------------------------------------------------

    def run(
        self,
        key: str,
        compute: Callable[..., Any],
        *args: Any,
        fingerprint: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``compute(*args, **kwargs)`` once per key and return its (stored) result.

        Raises ``IdempotencyInProgress`` while another caller runs the key and
        ``IdempotencyKeyReused`` for a different fingerprint. The result is returned as it
        round-trips through JSON, the same value every later caller gets.
        """
        self._check_key(key)
        if fingerprint is None:
            fingerprint = (
                fingerprint_of(args, kwargs, what=f"arguments for {self._what(key)}")
                if args or kwargs else _NO_ARGUMENTS
            )
        owner = secrets.token_hex(16)
        claim = self.begin(key, owner, fingerprint)
        if claim.status == "completed":
            return claim.result
        if claim.status == "in_progress":
            raise IdempotencyInProgress(key=key, holder=claim.owner)
        if claim.status == "unknown":
            raise IdempotencyOutcomeUnknown(key=key, holder=claim.owner)
        raw, beat = self._run_leased(key, owner, compute, args, kwargs)
        try:
            stored = self._store_outcome(key, owner, raw, fingerprint)
        finally:
            beat.stop()
        if not stored:
            log.warning("idempotency claim on %s was lost before completion; result not stored",
                        self._what(key))
        return codec.loads(raw)

    def _store_outcome(self, key: str, owner: str, raw: str, fingerprint: str) -> int:
        """Complete the record of a body that ran, through an outage as it ended.

        Lost, the outcome would let a duplicate run the body again; so the completion is
        retried for up to ``completion_deadline`` while the heartbeat keeps the lease (and
        a lease that lapsed meanwhile is completed all the same if nobody took the key).
        """
        args = [owner, raw, to_ms(self.ttl), fingerprint]
        stored = int(keep_trying(
            lambda: self.store.run("idempotency_complete", [self._record(key)], args),
            self.completion_deadline, f"the outcome of {self._what(key)}, whose body ran"))
        if stored == 2:
            log.warning("%s: stored the outcome after its lease had lapsed", self._what(key))
        return stored

    def _run_leased(
        self,
        key: str,
        owner: str,
        compute: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[str, Heartbeat]:
        """Run compute under a renewed lease; release the claim if it fails or is not JSON.

        The heartbeat is returned still running: it holds the lease until the outcome is
        stored."""
        beat = Heartbeat(
            f"idem:{self.namespace}:{key[:40]}",
            self.lease,
            renew=lambda: self.renew(key, owner),
            on_lost=lambda: log.warning("idempotency lease lost on %s", self._what(key)),
        ).start()
        try:
            result = compute(*args, **kwargs)
        except BaseException:
            beat.stop()
            self._abandon_quietly(key, owner)
            raise
        try:
            return codec.dumps(result, what=f"result for {self._what(key)}"), beat
        except TypeError:
            beat.stop()
            self._abandon_quietly(key, owner)
            raise

    # -- the steps -----------------------------------------------------------------------------

    def begin(
        self,
        key: str,
        owner: str,
        fingerprint: str | None = None,
        lease: float | None = None,
        *,
        takeover: str | None = None,
    ) -> Claim:
        """Claim ``key`` for ``owner``, or say who holds or completed it (one script).

        ``takeover``: when exactly that owner holds the key in progress, hand the claim to
        ``owner`` in the same script ("reentered"): a Celery task's queued claim, held by
        its task id, becoming the claim of its running execution.
        """
        self._check_key(key)
        self._check_owner(owner)
        if takeover is not None:
            self._check_owner(takeover)
        fp = self._check_fingerprint(key, fingerprint)
        ms = to_ms(self.lease if lease is None else self._lease(lease, key))
        status, holder, raw, left = self.store.run(
            "idempotency_begin", [self._record(key)],
            [owner, fp, ms, takeover or "", to_ms(self.ttl)],
        )
        found = text(status)
        if found == "reused":
            raise IdempotencyKeyReused(key=key)
        if found == "completed":
            return Claim("completed", text(holder) or None, codec.loads(raw))
        lease_left = None if found == "unknown" else int(left) / 1000.0
        return Claim(cast(ClaimStatus, found), text(holder), None, lease_left)

    def complete(self, key: str, owner: str, result: Any) -> bool:
        """Store ``result`` for ``owner``'s claim; False when the claim was lost."""
        self._check_key(key)
        raw = codec.dumps(result, what=f"result for {self._what(key)}")
        return self.complete_raw(key, owner, raw)

    def complete_raw(self, key: str, owner: str, raw: str) -> bool:
        """``complete`` with a result already encoded as JSON text."""
        self._check_key(key)
        self._check_owner(owner)
        done = self.store.run(
            "idempotency_complete", [self._record(key)], [owner, raw, to_ms(self.ttl), ""]
        )
        return bool(done)

    def abandon(self, key: str, owner: str) -> bool:
        """Release ``owner``'s in-progress claim so a retry can run."""
        self._check_key(key)
        self._check_owner(owner)
        return bool(self.store.run("idempotency_abandon", [self._record(key)], [owner]))

    def renew(self, key: str, owner: str, lease: float | None = None) -> bool:
        """Set the remaining lease of ``owner``'s claim to ``lease`` seconds (default: lease)."""
        self._check_key(key)
        self._check_owner(owner)
        ms = to_ms(self.lease if lease is None else self._lease(lease, key))
        return bool(self.store.run("idempotency_renew", [self._record(key)], [owner, ms]))

    def state(self, key: str) -> IdempotencyState:
        """Read the record of ``key`` (one script)."""
        self._check_key(key)
        status, owner, fp, raw, left = self.store.run("idempotency_state", [self._record(key)])
        found, seconds = text(status), int(left) / 1000.0
        if found == "":
            return IdempotencyState("absent")
        if found == "p":
            return IdempotencyState(
                "in_progress", text(owner), seconds, text(fp) or None, None, None
            )
        if found == "u":
            return IdempotencyState("unknown", text(owner), None, text(fp) or None, seconds)
        return IdempotencyState(
            "completed", text(owner) or None, None, text(fp) or None, seconds, codec.loads(raw)
        )

    def forget(self, key: str) -> bool:
        """Drop the record of ``key`` whatever its state; True when there was one."""
        self._check_key(key)
        return bool(self.store.run("idempotency_forget", [self._record(key)]))

    # -- helpers -------------------------------------------------------------------------------

    def _abandon_quietly(self, key: str, owner: str) -> None:
        try:
            self.abandon(key, owner)
        except Exception as exc:  # the lease lapses into "unknown"; keep the caller's exception
            log.warning("could not release the claim on %s: %s", self._what(key), exc)

    def _record(self, key: str) -> str:
        return self.store.keys.key("idem", (self.namespace, key))

    def _lease(self, lease: float, key: str | None = None) -> float:
        where = "" if key is None else f" key {short(key)}:"
        return positive_seconds(f"idempotency {self.namespace!r}{where} lease", lease)

    def _what(self, key: str) -> str:
        return f"idempotency key {short(key)} in namespace {self.namespace!r}"

    def _check_key(self, key: Any) -> None:
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"idempotency key {short(key)} in namespace {self.namespace!r} must be a str "
                f"of at most {MAX_KEY_LENGTH} characters"
            )

    def _check_owner(self, owner: Any) -> None:
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"idempotency owner {short(owner)} must be a non-empty str")

    def _check_fingerprint(self, key: str, fingerprint: Any) -> str:
        if fingerprint is None:
            return ""
        if not isinstance(fingerprint, str) or len(fingerprint) > MAX_FINGERPRINT_LENGTH:
            raise ValueError(
                f"fingerprint {short(fingerprint)} for {self._what(key)} must be a str of at "
                f"most {MAX_FINGERPRINT_LENGTH} characters"
            )
        return fingerprint

    def __repr__(self) -> str:
        return f"Idempotency(namespace={self.namespace!r}, ttl={self.ttl!r}, lease={self.lease!r})"
