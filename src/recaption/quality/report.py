"""`recap report OUTDIR -o report.html`: one self-contained HTML file (inline SVG plots, JPEG data
URLs, inline CSS, no script: nothing is fetched when it is opened), written atomically; what it
shows: docs/quality.md ("Stats and report").
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import io
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from ..flags import CAPTION_FLAGS, PAPER_FLAG_COLUMNS, is_degenerate
from ..samples.images import decode_sample
from ..spine.contract import write_file_output
from ..spine.errors import RecaptionError
from ..spine.ledger import OutputDir
from .outputs import done_shards, input_shard, read_output
from .stats import FAILED_ROWS_KEPT, PAPER, OutputStats, collect, comparison, count, fmt, model_names, pct

# Most points drawn in the per-image scatter (an SVG of millions of points would be megabytes);
# the share above the diagonal is always computed over every image.
SCATTER_POINTS = 4000
GALLERY_FLAGS = PAPER_FLAG_COLUMNS
FLAG_MEANINGS = {  # the caption flags' meanings are flags.py's
    **{f"re_{flag.name}": flag.meaning for flag in CAPTION_FLAGS},
    "re_clip_truncated": "recaption cut to the CLIP model's text window to score it",
    "org_clip_truncated": "original cut to the CLIP model's text window to score it",
}
# Module -> what pip installs it (the report's only dependencies beyond the core ones).
REPORT_PACKAGES = {"matplotlib": "matplotlib", "jinja2": "jinja2"}


class ReportOptionError(RecaptionError, ValueError):
    """A report option out of range."""


class MissingDependencyError(RecaptionError, ImportError):
    """A package the report needs cannot be imported; the message names the pip command."""


def require_report_dependencies() -> None:
    """Import what the report needs now, so a missing package is one clear line, not a traceback
    halfway through."""
    missing, broken = [], []
    for module, package in REPORT_PACKAGES.items():
        try:
            _pyplot() if module == "matplotlib" else __import__(module)
        except ModuleNotFoundError as exc:
            (missing if exc.name == module else broken).append((package, exc))
        except ImportError as exc:
            broken.append((package, exc))
    if missing:
        packages = [p for p, _ in missing]
        raise MissingDependencyError(f"recap report needs {' and '.join(packages)}: "
                                     f"pip install {' '.join(packages)}")
    if broken:
        package, exc = broken[0]
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingDependencyError(f"recap report cannot import {package} ({reason}): "
                                     f"pip install --force-reinstall {package}")


@dataclass
class GalleryItem:
    key: str
    thumbnail: str | None  # data URL
    org_caption: str | None
    re_caption: str | None
    re_clip_score: float | None
    org_clip_score: float | None
    flags: list[str]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(figure) -> str:
    buf = io.StringIO()
    figure.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(figure)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG needs neither


def histogram(values: dict[str, list[float]], title: str, xlabel: str, bins: int = 30) -> str | None:
    if not any(values.values()):
        return None
    figure, axes = _pyplot().subplots(figsize=(6, 3.2))
    low = min(min(v) for v in values.values() if v)
    high = max(max(v) for v in values.values() if v)
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    labels = {"re": "recaption", "org": "original"}
    for which, data in values.items():
        if data:
            axes.hist(data, bins=edges, alpha=0.6, label=f"{labels[which]} (n={len(data):,})")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("rows")
    axes.legend()
    return _svg(figure)


def bar_chart(counts: dict[str, int], title: str) -> str | None:
    if not counts:
        return None
    figure, axes = _pyplot().subplots(figsize=(6, 0.4 * len(counts) + 1))
    names = list(counts)
    axes.barh(names, [counts[n] for n in names])
    axes.invert_yaxis()
    axes.set_title(title)
    axes.set_xlabel("rows")
    return _svg(figure)


def scatter(pairs: list[tuple[float, float]], model: str, seed: int = 0) -> str | None:
    """Each image's recaption score (y) against its original's (x), with the diagonal y = x:
    points above it are images whose recaption the model scores higher."""
    if not pairs:
        return None
    shown = pairs if len(pairs) <= SCATTER_POINTS else random.Random(seed).sample(pairs, SCATTER_POINTS)
    above = sum(r > o for r, o in pairs)
    figure, axes = _pyplot().subplots(figsize=(5, 5))
    size = 30 if len(shown) <= 200 else 6
    axes.scatter([o for _, o in shown], [r for r, _ in shown], s=size, alpha=0.6, linewidths=0)
    values = [v for pair in shown for v in pair]
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or 1.0
    low, high = low - pad, high + pad
    axes.plot([low, high], [low, high], color="#c0392b", linewidth=1)
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.set_xlabel(f"original caption, CLIP score ({model})")
    axes.set_ylabel(f"recaption, CLIP score ({model})")
    subset = f"; {len(shown):,} drawn at random" if len(shown) < len(pairs) else ""
    axes.set_title(f"recaption scores higher (above the red line y = x):\n{100 * above / len(pairs):.2f}% of "
                   f"{len(pairs):,} images{subset}", fontsize=10)
    return _svg(figure)


def thumbnail(image, size: int = 192) -> str:
    image = image.copy()
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_GALLERY_COLUMNS = ["key", "status", "re_caption", "org_caption", "re_clip_score", "org_clip_score",
                    *GALLERY_FLAGS]


def gallery(output: str, n: int, seed: int = 0) -> list[GalleryItem]:
    """n ok rows with the smallest hash of (seed, key): a stable, spread-out sample."""
    out = OutputDir(output)

    def candidates():
        for name in done_shards(out):
            for row in read_output(out, name, _GALLERY_COLUMNS, present_only=True).to_pylist():
                if row["status"] == "ok":
                    rank = hashlib.sha256(f"{seed}:{name}:{row['key']}".encode()).hexdigest()
                    yield rank, name, row

    chosen = heapq.nsmallest(n, candidates(), key=lambda c: c[0])
    by_shard: dict[str, dict[str, dict]] = {}
    for _, name, row in chosen:
        by_shard.setdefault(name, {})[row["key"]] = row
    thumbs: dict[tuple[str, str], str] = {}
    for name, rows in by_shard.items():
        try:
            shard = input_shard(out, name)
            for sample in shard:
                if sample.key in rows:
                    image = decode_sample(sample, max_side=512).image
                    if image is not None:
                        thumbs[(name, sample.key)] = thumbnail(image)
        except Exception:  # the input moved or is gone: the gallery shows captions without images
            continue
    items = []
    for _, name, row in chosen:
        if "re_degenerate" not in row:  # output of an older version
            row["re_degenerate"] = is_degenerate(row["re_caption"])
        items.append(GalleryItem(row["key"], thumbs.get((name, row["key"])), row["org_caption"],
                                 row["re_caption"], row.get("re_clip_score"), row.get("org_clip_score"),
                                 [f for f in GALLERY_FLAGS if row.get(f)]))
    return items


def render_report(output: str, gallery_size: int = 24, seed: int = 0,
                  stats: OutputStats | None = None) -> str:
    require_report_dependencies()
    import jinja2

    stats = stats or collect(output)
    summary = stats.summary(digits=None)  # exact: the template formats them
    models = summary["models"]
    clip_label, judge_label = (" + ".join(model_names(models[kind])) for kind in ("clip", "judge"))
    environment = jinja2.Environment(autoescape=True)
    environment.filters.update(fmt=fmt, pct=pct, count=count)
    page = resources.files(__package__).joinpath("templates/report.html.j2").read_text()
    template = environment.from_string(page)
    judge_scores = {k: [float(x) for x in v] for k, v in stats.judge_scores.items()}
    plots = {
        "status": (bar_chart(dict(stats.status_counts.most_common()), "rows by status"), "status column"),
        "length": (histogram(stats.lengths, "caption length", "words"),
                   "whitespace word counts of the captioned rows"),
        "clip-scatter": (scatter(stats.clip_pairs, clip_label, seed), f"CLIP scores by {clip_label}"),
        "clip": (histogram(stats.clip_scores, f"CLIP score ({clip_label})", "100 x cosine"),
                 f"CLIP scores by {clip_label}"),
        "judge": (histogram(judge_scores, f"judge rating ({judge_label})", "rating (1-5)", bins=5),
                  f"ratings by {judge_label}"),
    }
    flags = [{"name": f, "meaning": FLAG_MEANINGS.get(f, ""), "rows": stats.flag_counts[f], "rate": rate}
             for f, rate in summary["flag_rates"].items()]
    return template.render(
        output=output, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"), summary=summary,
        models=models, lines=comparison(summary), paper=PAPER, flags=flags, ok_rows=stats.ok_rows,
        failed=summary["failed_rows"], failed_kept=FAILED_ROWS_KEPT,
        plots={name: plot for name, plot in plots.items() if plot[0]},
        common={w: stats.common_words(w) for w in ("re", "org")}, gallery=gallery(output, gallery_size, seed),
        clip_label=clip_label, clip_notes=[u["note"] for u in models["clip"] if u.get("note")],
    )


def write_report(output: str, path: str, gallery_size: int = 24, seed: int = 0) -> None:
    """Render and write the report to a local path or fsspec URL (an .html file), atomically,
    through the output contract's file rules (never over a shard or another kind of file)."""
    if gallery_size < 0:
        raise ReportOptionError(f"--gallery {gallery_size}: must be 0 (no gallery) or more")
    html = render_report(output, gallery_size, seed)
    write_file_output(path, html, what="report", suffixes=(".html", ".htm"), inputs=[output])
