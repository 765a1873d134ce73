"""Numbers about an output folder: statuses, lengths, CLIP and judge scores, vocabulary, flags.

Reads only the columns it needs, one parquet file at a time. `vocabulary overlap` follows the
paper's statistic (recaptions cover 82.86% of the combined vocabulary of both caption sets):
|V_re| / |V_re U V_org|, words lower-cased, split on anything not a letter, digit or apostrophe.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from ..writer import OutputDir
from .outputs import done_shards

COLUMNS = [
    "key",
    "status",
    "re_caption",
    "org_caption",
    "re_length",
    "org_length",
    "re_clip_score",
    "org_clip_score",
    "re_gpt4v_score",
    "org_gpt4v_score",
    "re_truncated",
    "re_repetition",
    "re_boilerplate",
    "re_clip_truncated",
    "org_clip_truncated",
]
FLAGS = ["re_truncated", "re_repetition", "re_boilerplate", "re_clip_truncated", "org_clip_truncated"]
STOPWORDS = set(
    "a an the of and or in on at to with for from by is are was were be been it its this that these those "
    "as into near over under has have there their his her s".split()
)
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


@dataclass
class OutputStats:
    shards: int = 0
    rows: int = 0
    status_counts: Counter = field(default_factory=Counter)
    lengths: dict[str, list[int]] = field(default_factory=lambda: {"re": [], "org": []})
    clip_scores: dict[str, list[float]] = field(default_factory=lambda: {"re": [], "org": []})
    judge_scores: dict[str, list[int]] = field(default_factory=lambda: {"re": [], "org": []})
    vocab: dict[str, Counter] = field(default_factory=lambda: {"re": Counter(), "org": Counter()})
    flag_counts: Counter = field(default_factory=Counter)
    ok_rows: int = 0

    @property
    def vocabulary_overlap(self) -> dict[str, float | int | None]:
        re_vocab, org_vocab = set(self.vocab["re"]), set(self.vocab["org"])
        union = re_vocab | org_vocab
        return {
            "re_vocabulary": len(re_vocab),
            "org_vocabulary": len(org_vocab),
            "shared": len(re_vocab & org_vocab),
            "re_share_of_combined": len(re_vocab) / len(union) if union else None,
            "org_share_of_combined": len(org_vocab) / len(union) if union else None,
        }

    def flag_rates(self) -> dict[str, float | None]:
        return {f: (self.flag_counts[f] / self.ok_rows if self.ok_rows else None) for f in FLAGS}

    def common_words(self, which: str, n: int = 20) -> list[tuple[str, int]]:
        return [(w, c) for w, c in self.vocab[which].most_common() if w not in STOPWORDS][:n]

    def summary(self) -> dict:
        def describe(values):
            if not values:
                return None
            return {
                "n": len(values),
                "mean": round(statistics.fmean(values), 3),
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }

        return {
            "shards": self.shards,
            "rows": self.rows,
            "status_counts": dict(sorted(self.status_counts.items())),
            "length": {k: describe(v) for k, v in self.lengths.items()},
            "clip_score": {k: describe(v) for k, v in self.clip_scores.items()},
            "judge_score": {k: describe(v) for k, v in self.judge_scores.items()},
            "vocabulary": self.vocabulary_overlap,
            "flag_rates": self.flag_rates(),
        }


def collect(output: str) -> OutputStats:
    out = OutputDir(output)
    stats = OutputStats()
    for name in done_shards(out):
        with out.fs.open(out.parquet(name), "rb") as f:
            table = pq.read_table(f, columns=[c for c in COLUMNS if c in pq.read_schema(f).names])
        stats.shards += 1
        for row in table.to_pylist():
            stats.rows += 1
            stats.status_counts[row["status"]] += 1
            for which in ("re", "org"):
                if row.get(f"{which}_length") is not None:
                    stats.lengths[which].append(row[f"{which}_length"])
                if row.get(f"{which}_clip_score") is not None:
                    stats.clip_scores[which].append(row[f"{which}_clip_score"])
                if row.get(f"{which}_gpt4v_score") is not None:
                    stats.judge_scores[which].append(row[f"{which}_gpt4v_score"])
                stats.vocab[which].update(words(row.get(f"{which}_caption")))
            if row["status"] == "ok":
                stats.ok_rows += 1
                stats.flag_counts.update(f for f in FLAGS if row.get(f))
    return stats
