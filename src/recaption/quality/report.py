"""`recap report OUTDIR -o report.html`: one self-contained HTML file.

Plots are matplotlib SVG inlined in the page, thumbnails are JPEG data URLs, the stylesheet is
inline, and there is no script: nothing is fetched when the file is opened, anywhere.
The gallery shows N rows chosen by a seeded hash of their keys, with the image from the shard's
input, the original caption and the recaption side by side.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from ..images import decode_sample
from ..writer import OutputDir
from .outputs import done_shards, input_shard, read_output
from .stats import OutputStats, collect


@dataclass
class GalleryItem:
    key: str
    thumbnail: str | None  # data URL
    org_caption: str | None
    re_caption: str | None
    re_clip_score: float | None
    org_clip_score: float | None
    flags: list[str]


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    figure.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG needs neither


def histogram(values: dict[str, list[float]], title: str, xlabel: str, bins: int = 30) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(values.values()):
        return None
    figure, axes = plt.subplots(figsize=(6, 3.2))
    low = min(min(v) for v in values.values() if v)
    high = max(max(v) for v in values.values() if v)
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    labels = {"re": "recaption", "org": "original"}
    for which, data in values.items():
        if data:
            axes.hist(data, bins=edges, alpha=0.6, label=f"{labels[which]} (n={len(data)})")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("rows")
    axes.legend()
    return _svg(figure)


def bar_chart(counts: dict[str, int], title: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not counts:
        return None
    figure, axes = plt.subplots(figsize=(6, 0.4 * len(counts) + 1))
    names = list(counts)
    axes.barh(names, [counts[n] for n in names])
    axes.invert_yaxis()
    axes.set_title(title)
    return _svg(figure)


def thumbnail(image, size: int = 192) -> str:
    image = image.copy()
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery(output: str, n: int, seed: int = 0) -> list[GalleryItem]:
    """n ok rows with the smallest hash of (seed, key): a stable, spread-out sample."""
    out = OutputDir(output)
    candidates = []
    for name in done_shards(out):
        for row in read_output(out, name).to_pylist():
            if row["status"] == "ok":
                rank = hashlib.sha256(f"{seed}:{name}:{row['key']}".encode()).hexdigest()
                candidates.append((rank, name, row))
    chosen = sorted(candidates, key=lambda c: c[0])[:n]
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
    flags = ("re_truncated", "re_repetition", "re_boilerplate")
    return [
        GalleryItem(
            row["key"],
            thumbs.get((name, row["key"])),
            row["org_caption"],
            row["re_caption"],
            row.get("re_clip_score"),
            row.get("org_clip_score"),
            [f for f in flags if row.get(f)],
        )
        for _, name, row in chosen
    ]


def render_report(
    output: str, gallery_size: int = 24, seed: int = 0, stats: OutputStats | None = None
) -> str:
    import jinja2

    stats = stats or collect(output)
    template = jinja2.Environment(autoescape=True).from_string(
        resources.files("recaption.quality").joinpath("templates/report.html.j2").read_text()
    )
    plots = {
        "status": bar_chart(dict(stats.status_counts.most_common()), "rows by status"),
        "length": histogram(stats.lengths, "caption length", "words"),
        "clip": histogram(stats.clip_scores, "CLIP score (100 x cosine)", "score"),
        "judge": histogram(
            {k: [float(x) for x in v] for k, v in stats.judge_scores.items()},
            "judge rating",
            "rating (1-5)",
            bins=5,
        ),
    }
    return template.render(
        output=output,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        summary=stats.summary(),
        plots=plots,
        common={w: stats.common_words(w) for w in ("re", "org")},
        gallery=gallery(output, gallery_size, seed),
    )


def write_report(output: str, path: str, gallery_size: int = 24, seed: int = 0) -> None:
    import fsspec

    html = render_report(output, gallery_size, seed)
    with fsspec.open(path, "w", encoding="utf-8") as f:
        f.write(html)
