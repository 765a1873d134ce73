"""Read -> decode -> caption -> write, one shard at a time, resumable. A shard is the unit of
work and of failure (a broken one is reported and skipped, its output never appears); broken
images inside a good shard become rows with a status."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..config import CaptionConfig, RunConfig
from ..engines import make_engine, make_text_engines
from ..engines.base import Engine
from ..passes import CONDITIONAL, FLAGS, CaptionPass, Decoding, PassError
from ..readers import Shard
from ..readers.changes import input_change, input_provenance
from ..samples.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from ..samples.placeholders import list_provenance
from ..samples.sample import CAPTION_ERROR, OK, Sample
from ..schema import SCORES_METADATA_KEY
from ..spine import __version__
from ..spine.contract import Step, marker_has
from ..spine.ledger import OutputDir, plan
from ..spine.results import DONE, FAILED, SKIPPED, Progress, RunSummary, ShardResult
from .carry import attach_carry
from .writer import ShardWriter

if TYPE_CHECKING:
    from .batching import Batch

log = logging.getLogger(__name__)

# What `recap caption` writes (spine/contract.py): known by its markers recording the model;
# settings recorded only since later versions compare equal to the value older output had.
CAPTION = Step(
    "caption",
    recognise=marker_has("model", without=("filter",)),
    added_later={"engine": "transformers", "dtype": "auto", "max_pixels": DEFAULT_MAX_PIXELS,
                 "max_side": DEFAULT_MAX_SIDE, "placeholders": None},
)


class _ShardInProgress:
    """Counts, stage timings and the open writer of the shard being captioned."""

    def __init__(self, shard: Shard, writer: ShardWriter, passes: list[CaptionPass]):
        self.shard = shard
        self.writer = writer
        self.flag_columns = [p.flag_column(f) for p in passes for f in FLAGS if p.flag_prefix]
        self.counts: Counter = Counter()
        self.flags: Counter = Counter()  # flag column -> captioned (ok) rows where it is true
        self.stages: Counter = Counter()  # seconds: loader_wait, prepare, generate, write
        self.tokens = 0
        self.kept = 0  # rows kept from an earlier output of the same images (carry.py)
        self.first_caption_error: str | None = None
        self.started = time.perf_counter()

    def add(self, batch: Batch, tokens: int, generate_seconds: float) -> None:
        started = time.perf_counter()
        rows = self.writer.write(batch.samples)  # flags computed once, in the row
        self.kept += sum(s.carried is not None for s in batch.samples)
        self.stages["write"] += time.perf_counter() - started
        self.stages["generate"] += generate_seconds
        self.stages["prepare"] += batch.decode_seconds
        self.counts.update(s.status for s in batch.samples)
        self.tokens += tokens
        self.flags.update(c for row in rows if row["status"] == OK for c in self.flag_columns if row[c])
        failed = (s.error for s in batch.samples if s.status == CAPTION_ERROR)
        self.first_caption_error = self.first_caption_error or next(failed, None)

    def _columns(self) -> dict | None:
        """How the input was read (--key-col, ...; a folder slice: its read limit), for `recap score`."""
        columns = getattr(self.shard, "columns", None)
        if is_dataclass(columns):
            return asdict(columns)
        limit = getattr(self.shard, "max_image_bytes", None)
        return None if limit is None else {"max_image_bytes": limit}

    def finish(self, error: str | None, provenance: dict) -> ShardResult:
        seconds = time.perf_counter() - self.started
        name, source = self.shard.name, self.shard.source
        if error is None and self.counts.get(CAPTION_ERROR) and not self.counts.get(OK, 0) - self.kept:
            # Not one caption came back: the engine failed, not the data. Left to do for a rerun.
            error = (f"every caption failed ({self.counts[CAPTION_ERROR]} rows), so the shard is left to "
                     f"redo; first error: {self.first_caption_error}")
        if error is not None:
            self.writer.abort()
            return ShardResult(name, source, FAILED, error=error, seconds=seconds)
        rows = sum(self.counts.values())
        ok = self.counts.get(OK, 0)
        started = time.perf_counter()
        self.writer.commit({
            "shard": name,
            "source": source,
            "columns": self._columns(),
            "rows": rows,
            "status_counts": dict(sorted(self.counts.items())),
            "seconds": round(seconds, 3),
            "images_per_second": round((ok - self.kept) / seconds, 3) if seconds else None,  # captioned
            "tokens_generated": self.tokens,
            "rows_kept": self.kept,  # ok rows of unchanged images kept from the earlier output
            "truncated": self.flags["re_truncated"],
            "flag_rates": {  # over captioned (ok) rows
                column: round(self.flags[column] / ok, 4) if ok else None for column in self.flag_columns
            },
            # Loader waits, preparing (in loader workers: overlapping generation), generating, writing.
            "stage_seconds": {k: round(v, 3) for k, v in sorted(self.stages.items())},
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **provenance,
        })
        self.stages["write"] += time.perf_counter() - started
        return ShardResult(name, source, DONE, rows, dict(self.counts), seconds, self.tokens,
                           stage_seconds=dict(self.stages), counts=dict(self.flags))


def plan_shards(shards: list[Shard], caption: CaptionConfig,
                run: RunConfig) -> tuple[list[Shard], list[Shard]]:
    """(to do, already done) by the markers in run.output (ledger.plan: ConfigMismatchError for a
    done shard made with other settings). A done shard is redone when its input changed, or with
    --retry-failed when it holds caption_error rows."""
    out = OutputDir(run.output)
    by_name = {s.name: s for s in shards}

    def redo(name: str, marker: dict) -> str | None:
        change = input_change(by_name[name], marker)
        if change:
            return f"{change}; captioning what changed (unchanged images keep their rows)"
        failed_rows = _caption_errors(out, name) if run.retry_failed else 0
        if not failed_rows:
            return None
        return f"{failed_rows} row(s) with caption_error (--retry-failed): captioning them again"

    todo, done = plan(out, by_name, run_provenance(caption, run), added_later=CAPTION.added_later,
                      overwrite=run.overwrite, redo=redo)
    todo_shards = [by_name[n] for n in todo]
    if not run.overwrite:  # --overwrite means caption everything again
        attach_carry(out, todo_shards, shards)
    return todo_shards, [by_name[n] for n in done]


def run_provenance(caption: CaptionConfig, run: RunConfig) -> dict:
    """Every setting that changes a shard's rows, as its .done marker records them: the
    captioner's and the image limits (--max-side, --max-pixels)."""
    return {**caption.provenance(), "max_pixels": run.max_pixels, "max_side": run.max_side,
            "placeholders": list_provenance(run.placeholder_digests)}


def _caption_errors(out: OutputDir, name: str) -> int:
    """caption_error rows of a complete shard, from its stats."""
    try:
        with out.open(out.stats(name), "r") as f:
            return int(json.load(f).get("status_counts", {}).get(CAPTION_ERROR, 0))
    except (OSError, ValueError, AttributeError, TypeError):  # gone, damaged, a FIFO: none counted
        return 0


def batch_seed(seed: int, shard: str, batch_index: int) -> int:
    """A seed from the shard and position only: a resumed shard samples as an uninterrupted one."""
    digest = hashlib.sha256(f"{seed}:{shard}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class CaptionPipeline:
    """Captions planned shards on one engine: `run(shards)` plans then runs; executors that
    planned already call `run_planned(todo)`."""

    def __init__(self, caption: CaptionConfig, run: RunConfig, captioner: Engine | None = None,
                 progress: Progress | None = None):
        self.caption = caption
        self.run_config = run
        self.captioner = captioner or make_engine(caption)
        # The text LLMs of text-only passes (by pass name; passes on one model share one engine).
        self.text_engines = make_text_engines(caption)
        self.progress = progress or Progress()
        self.out = OutputDir(run.output)
        self.passes = caption.caption_passes
        self._loader_wait: Counter = Counter()  # shard -> seconds the loop waited for its items
        self.provenance = {**run_provenance(caption, run), "recaption_version": __version__}

    def run(self, shards: list[Shard]) -> RunSummary:
        todo, done = plan_shards(shards, self.caption, self.run_config)
        self.progress.run_started(todo)
        summary = self.run_planned(todo)
        summary.results[:0] = [ShardResult(s.name, s.source, SKIPPED) for s in done]
        return summary

    def run_planned(self, todo: list[Shard]) -> RunSummary:
        """Caption shards already planned (plan_shards) as to do."""
        summary = RunSummary()
        if not todo:
            return summary
        from .batching import BatchStream  # torch: only here

        owns_engine = not self.captioner.ready
        if owns_engine:
            self.captioner.setup()
        try:
            self._consume(BatchStream(todo, *self._stream_settings()), summary.results.append)
        finally:
            if owns_engine:
                self.captioner.teardown()
        return summary

    def serve(self, feed, on_result) -> None:
        """Caption the shards put on `feed` (a queue; one None per loader worker ends it) with one
        loader for the whole time, calling `on_result(ShardResult)` per shard. The engine must
        be set up (a long-lived worker owns it)."""
        from .batching import FedBatchStream

        self._consume(FedBatchStream(feed, *self._stream_settings()), on_result)

    def loader_workers(self) -> int:
        from .batching import default_workers

        workers = self.run_config.workers
        return default_workers(str(self.captioner.device)) if workers is None else workers

    def _stream_settings(self) -> tuple:
        run = self.run_config
        score_pixels = None
        if run.clip_model:
            from ..quality.scorers import make_scorer

            self.scorer = make_scorer(run.clip_model, device=self.caption.device,
                                      long_text=run.clip_long_text)
            self.scorer.setup()
            score_pixels = self.scorer.image_processor_call
        return (self.captioner.preparer, self.captioner.batch_size, self.passes, run.max_pixels,
                run.max_side, score_pixels, run.placeholder_digests)

    def _consume(self, stream, on_result) -> None:
        """Caption and write every item of the stream's loader, in order, until it ends."""
        from .batching import Batch, batch_loader

        device = str(self.captioner.device)
        loader = batch_loader(stream, self.loader_workers(), self.run_config.prefetch_batches,
                              pin_memory=device.startswith("cuda"))
        in_progress: dict[str, _ShardInProgress] = {}
        # Engines that serve many requests at once (a server) take several batches in flight;
        # items still leave the window in input order, so rows are written in order.
        window = max(1, self.captioner.batches_in_flight)
        pool = ThreadPoolExecutor(window, thread_name_prefix="recap-batch") if window > 1 else None
        in_flight: deque[tuple[object, Future]] = deque()
        items, caption = iter(loader), self._caption_batch
        owned = [e for e in dict.fromkeys(self.text_engines.values()) if not e.ready]
        try:
            for engine in owned:
                engine.setup()
            self._check_prompts_fit()
            while True:
                waited = time.perf_counter()
                item = next(items, None)
                waited = time.perf_counter() - waited  # the loader kept the model waiting
                if item is None:
                    break
                self._loader_wait[item.shard if isinstance(item.shard, str) else item.shard.name] += waited
                work = _done(None)  # a shard's start or end: nothing to wait for
                if isinstance(item, Batch):
                    work = pool.submit(caption, item) if pool else _done(caption(item))
                in_flight.append((item, work))
                while in_flight and (len(in_flight) > window or in_flight[0][1].done()):
                    self._finish_item(*in_flight.popleft(), in_progress, on_result)
            while in_flight:
                self._finish_item(*in_flight.popleft(), in_progress, on_result)
        except BaseException:
            for shard in in_progress.values():
                shard.writer.abort()
            raise
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
            for engine in owned:
                if engine.ready:
                    engine.teardown()

    def _check_prompts_fit(self) -> None:
        """Each pass's prompt and new tokens within its model's context, before any row (a prompt
        over it would fail every row, and might take the machine's memory first)."""
        for p in self.passes:
            engine = self.text_engines.get(p.name, self.captioner)
            new_tokens = p.decoding(self.caption.max_new_tokens).max_new_tokens
            why = engine.prompt_overflow(p.instruction("", {}), new_tokens)
            if why:
                raise PassError(f"pass {p.name}: {why}; shorten its prompt (or its max_new_tokens)")

    def _finish_item(self, item, work: Future, in_progress: dict, on_result) -> None:
        """Consume one stream item in order: open a shard, write a captioned batch, or close a shard."""
        from .batching import Batch, ShardStart

        if isinstance(item, ShardStart):
            self.progress.shard_started(item.shard)
            shard = _ShardInProgress(item.shard, self._open_writer(item.shard), self.passes)
            in_progress[item.shard.name] = shard
        elif isinstance(item, Batch):
            tokens, seconds = work.result()
            shard = in_progress[item.shard]
            shard.add(item, tokens, seconds)
            self.progress.rows_done(len(item.samples), len(item.ok_samples))
        else:
            shard = in_progress.pop(item.shard)
            shard.stages["loader_wait"] += self._loader_wait.pop(item.shard, 0.0)
            result = shard.finish(item.error, self.provenance)
            on_result(result)
            self.progress.shard_finished(result)

    def _open_writer(self, shard: Shard) -> ShardWriter:
        # A previous output stays until the new one commits over it: a failed redo loses nothing.
        provenance = {**self.provenance, **input_provenance(shard)}
        stamps = {}
        if self.run_config.clip_model:  # scored in this pass: record which CLIP, as `recap score` does
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            stamps[SCORES_METADATA_KEY] = {**self.scorer.provenance(), "scored_at": now}
        carry, keep = getattr(shard, "carry", None), None
        if carry is not None:  # rows of unchanged images are kept, with the stamps they share
            targets = carry.targets(stamps.get(SCORES_METADATA_KEY))
            stamps = carry.metadata(targets, scoring=bool(stamps))
            keep = lambda sample: carry.row(sample, targets)  # noqa: E731
        metadata = {key: json.dumps(stamp).encode() for key, stamp in stamps.items()}
        rows = self.run_config.row_group_rows
        return ShardWriter(self.out, shard.name, self.passes, provenance, rows, metadata, keep)

    def _caption_batch(self, batch: Batch) -> tuple[int, float]:
        """Caption the batch's ok samples in place, pass by pass: (tokens generated, seconds)."""
        started = time.perf_counter()
        ok = batch.ok_samples
        if not ok:
            return 0, 0.0
        tokens = 0
        for p in self.passes:  # in dependency order (passes.check_dependencies)
            # A seed fixed by shard, pass and batch (the conditional pass keeps its old seeds).
            salt = batch.shard if p.name == CONDITIONAL else f"{batch.shard}/{p.name}"
            seed = batch_seed(self.caption.seed, salt, batch.index)
            decoding = p.decoding(self.caption.max_new_tokens, seed)
            if p.name in batch.inputs:
                tokens += self._generate_into(ok, batch.inputs[p.name], p.column, decoding)
                continue
            ready = self._can_read(p, ok)
            if ready:
                engine = self.text_engines.get(p.name, self.captioner)
                tokens += self._generate_into(ready, self._late_inputs(p, ready, engine), p.column, decoding,
                                              engine)
        for s in ok:
            s.image = None  # kept only for the passes that read earlier outputs
        if batch.score_inputs is not None:
            from ..quality.score import score_samples

            score_samples(self.scorer, ok, batch.score_inputs)  # after captioning: rows that failed stay null
        return tokens, time.perf_counter() - started

    @staticmethod
    def _can_read(p: CaptionPass, samples: list[Sample]) -> list[Sample]:
        """The samples whose outputs `p` reads are all there; the others keep `p`'s column null,
        saying why in `error`."""
        ready = []
        for s in samples:
            if not s.ok:
                continue
            empty = [c for c in p.reads if not (s.captions.get(c) or "").strip()]
            if not empty:
                ready.append(s)
                continue
            note = f"pass {p.name} not run: {', '.join(empty)} is empty"
            s.error = note if s.error is None else f"{s.error}; {note}"
        return ready

    def _late_inputs(self, p: CaptionPass, samples: list[Sample], engine: Engine):
        """Inputs of a pass that reads earlier outputs: text alone for a text LLM, else with the
        batch's images (kept for this)."""
        prompts = [engine.preparer.render(p.instruction(s.org_caption, s.captions)) for s in samples]
        if p.text_only:
            return engine.preparer.prepare_text(prompts)
        return engine.preparer.prepare([s.image for s in samples], prompts)

    def _generate_into(self, samples: list[Sample], inputs, column: str, decoding: Decoding,
                       engine: Engine | None = None) -> int:
        engine = engine or self.captioner
        try:
            generations = engine.generate(inputs, decoding)
        except (RuntimeError, ValueError) as exc:
            # One failing sample (or memory) must not sink the batch: retry one by one.
            if len(samples) == 1:
                samples[0].fail(CAPTION_ERROR, f"{type(exc).__name__}: {exc}")
                return 0
            log.warning("batch of %d failed (%s); retrying one by one", len(samples), exc)
            one_by_one = (self._generate_into([s], engine.rows(inputs, i, i + 1), column, decoding, engine)
                          for i, s in enumerate(samples))
            return sum(one_by_one)
        for s, g in zip(samples, generations, strict=True):
            if g.error is not None:
                s.fail(CAPTION_ERROR, g.error)
            elif s.ok:  # a sample an earlier pass failed keeps its error
                s.captions[column], s.truncated[column] = g.text, g.truncated
        return sum(g.num_tokens for g in generations)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
