"""The demo's admissions plot: a rate-limited task's admissions per second against its limit.

The series comes from the journal the task bodies wrote (``admitted_at``: the Redis
server time of the limiter's decision), one per key of the limit (the partner API's
tenants), counted in whole seconds from the first admission. Drawing needs matplotlib
(``pip install celery-kv[plot]``); counting does not, so the demo's checks and the
tests use ``per_second`` without it.

GCRA admits at most ``burst + rate x t`` over any interval ``t``: a key that was idle
takes its burst at once, so its first second can hold up to ``burst + rate`` (the
dotted line), and every second of steady traffic at most ``rate`` (the limit line).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_kv.primitives.ratelimit import parse_rate

#: What the demo says when matplotlib is missing.
SKIPPED = "plot skipped: pip install celery-kv[plot]"


@dataclass(frozen=True)
class Admissions:
    """Admissions per second of one task, by key, with the limit they ran under."""

    task: str
    limit: str  # Celery's notation, as the task declares it ("5/s")
    per_key: Mapping[str, list[int]]  # key -> admissions in second 0, 1, ... of the run
    burst: int  # GCRA's burst (the limit, unless the task sets another)
    by: str = "key"  # what the keys are ("tenant")

    @property
    def rate(self) -> float:
        """The limit in admissions per second."""
        parsed = parse_rate(self.limit)
        return parsed.limit / parsed.period

    def exceeding(self) -> list[str]:
        """The seconds whose admissions GCRA could not have allowed: more than ``burst``
        plus ``rate`` x the seconds so far, counted from the first admission."""
        found = []
        for key, series in self.per_key.items():
            total = 0
            for second, count in enumerate(series):
                total += count
                if total > self.burst + self.rate * (second + 1) + 1e-6:
                    found.append(f"{key}: {total} admitted in the first {second + 1} s")
                    break
        return found


def per_second(times: Iterable[float], start: float) -> list[int]:
    """How many of ``times`` fall in each whole second ``[start + i, start + i + 1)``."""
    counts: list[int] = []
    for t in sorted(times):
        second = math.floor(t - start)
        if second < 0:
            raise ValueError(f"admission time {t} is before the start {start}")
        counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1
    return counts


def admissions(events: Iterable[Mapping[str, Any]], task: str, limit: str, key: str,
               burst: int | None = None) -> Admissions:
    """The series of journal ``events`` (each with ``admitted_at`` and a ``key`` field),
    per key, all counted from the first admission of any key."""
    times: dict[str, list[float]] = defaultdict(list)
    for event in events:
        times[str(event[key])].append(float(event["admitted_at"]))
    start = min((t for ts in times.values() for t in ts), default=0.0)
    length = max((len(per_second(ts, start)) for ts in times.values()), default=0)
    per_key = {}
    for name in sorted(times):
        series = per_second(times[name], start)
        per_key[name] = series + [0] * (length - len(series))
    return Admissions(task, limit, per_key, parse_rate(limit).limit if burst is None else burst,
                      by=key)


def write_png(data: Admissions, path: Path) -> Path:
    """Draw ``data`` as grouped bars per second, with the limit line, into ``path`` (a PNG).

    Raises ImportError when matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, for this figure only: no display, no pyplot state
    ax = fig.add_subplot()
    keys = list(data.per_key)
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        series = data.per_key[key]
        ax.bar([s + (i - (len(keys) - 1) / 2) * width for s in range(len(series))], series,
               width=width, label=key)
    ax.axhline(data.rate, color="crimson", linewidth=2, label=f"limit {data.limit}")
    ax.axhline(data.burst + data.rate, color="crimson", linestyle=":", linewidth=1.5,
               label=f"first second after idle: burst {data.burst} + {data.limit}")
    ax.set_xlabel("second of the run (from the first admission)")
    ax.set_ylabel("admissions per second")
    ax.set_title(f"{data.task}: admissions per second per {data.by}, limit {data.limit} "
                 f"(GCRA, burst {data.burst})")
    length = max((len(s) for s in data.per_key.values()), default=0)
    ax.set_xticks(range(length))
    ax.set_ylim(0, data.burst + data.rate + 2)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
