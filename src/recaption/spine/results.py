"""What a run reports, one type for every step (caption, download, score, judge, filter, export):
per-shard outcomes, the run's summary and progress hooks. Neutral ground: importing it loads no
engine, reader or model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .errors import RecaptionError

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


def error_text(exc: BaseException) -> str:
    """A failed shard's error as reported: ours (RecaptionError) as its message, which says what
    to do; anything else with its type, which may be all it says."""
    return str(exc) if isinstance(exc, RecaptionError) else f"{type(exc).__name__}: {exc}"


@dataclass
class ShardResult:
    name: str
    source: str
    outcome: str  # done | skipped | failed
    rows: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    error: str | None = None
    # Seconds by stage (caption: waiting for the loader, generating, writing), when measured.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # What the step counts beside rows by status (filter: rows_in, rows_kept; judge: judged).
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RunSummary:
    results: list[ShardResult] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # what the step was asked (filter: where, from, to)

    def by_outcome(self, outcome: str) -> list[ShardResult]:
        return [r for r in self.results if r.outcome == outcome]

    @property
    def done(self) -> list[str]:
        return [r.name for r in self.by_outcome(DONE)]

    @property
    def skipped(self) -> list[str]:
        return [r.name for r in self.by_outcome(SKIPPED)]

    @property
    def errors(self) -> dict[str, str]:
        """Failed shard -> why."""
        return {r.name: r.error or "" for r in self.failed}

    def failed_note(self) -> str:
        """`; 2 shards FAILED, their rows not counted (00001, 00007)` for a step's closing line,
        whose totals are those of the shards read; "" when none failed."""
        failed = self.errors
        shards = "1 shard" if len(failed) == 1 else f"{len(failed)} shards"
        return f"; {shards} FAILED, their rows not counted ({', '.join(failed)})" if failed else ""

    def count(self, key: str) -> int:
        """A step's count (`ShardResult.counts`) over every shard, skipped ones included."""
        return sum(r.counts.get(key, 0) for r in self.results)

    @property
    def failed(self) -> list[ShardResult]:
        return self.by_outcome(FAILED)

    @property
    def status_counts(self) -> Counter:
        total: Counter = Counter()
        for r in self.results:
            total.update(r.status_counts)
        return total

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results if r.outcome == DONE)

    @property
    def stage_seconds(self) -> dict[str, float]:
        total: Counter = Counter()
        for r in self.results:
            total.update(r.stage_seconds)
        return dict(total)

    def bound_by(self) -> str | None:
        """Which stage limited the run, from the shards' stage timings, as one sentence (None
        when nothing was timed). The model waiting on the loader for more than a fifth of the
        time means reading and decoding limit it: more loader workers would help."""
        stages = self.stage_seconds
        wait, generate, write = (stages.get(k, 0.0) for k in ("loader_wait", "generate", "write"))
        total = wait + generate + write
        if total <= 0 or generate <= 0:  # no image reached the model: nothing bound it
            return None
        shares = (f"waiting for batches {wait / total:.0%}, generating {generate / total:.0%}, "
                  f"writing {write / total:.0%} of {total:.1f} s")
        if wait / total > 0.2:
            return f"bound by the loader (reading, decoding, preprocessing): {shares}; try more --workers"
        if write / total > 0.2:
            return f"bound by writing the output: {shares}"
        return f"bound by the model: {shares}"


class Progress:
    """Hooks for a progress display; the default shows nothing."""

    def run_started(self, shards: list) -> None: ...
    def shard_started(self, shard) -> None: ...
    def rows_done(self, rows: int, ok: int) -> None: ...
    def shard_finished(self, result: ShardResult) -> None: ...


class ConfigMismatchError(RecaptionError, RuntimeError):
    """OUTDIR already holds shards made with other settings; mixing them would corrupt it."""
