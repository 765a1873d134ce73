"""Numbers about an output folder: statuses, lengths, CLIP and judge scores, vocabulary, flags, and
the models that made them, beside the paper's (docs/quality.md, "Stats and report", says each
measure). Reads only the columns it needs, one parquet file at a time; recaption and original are
compared over the captioned (status ok) rows, each side over those that have it (counts shown).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..flags import PAPER_FLAG_COLUMNS, is_degenerate
from ..schema import (
    INPUT_FINGERPRINT,
    JUDGE_METADATA_KEY,
    METADATA_KEY,
    SCORES_METADATA_KEY,
    schema_stamp,
    stamp_identity,
)
from ..spine.ledger import OutputDir
from .outputs import done_shards, read_output

FLAGS = [*PAPER_FLAG_COLUMNS, "re_clip_truncated", "org_clip_truncated"]  # flags.py, and scoring's
COLUMNS = ["key", "status", "error", "re_caption", "org_caption", "re_length", "org_length", "re_clip_score",
           "org_clip_score", "re_gpt4v_score", "org_gpt4v_score", *FLAGS]
FAILED_ROWS_KEPT = 100  # failed rows listed by key; all are counted
STOPWORDS = set("a an the of and or in on at to with for from by is are was were be been it its this that "
                "these those as into near over under has have there their his her s".split())
_WORD = re.compile(r"[a-z0-9']+")

# The paper's figures (Recap-DataComp-1B, arXiv 2406.08478), beside which ours are shown.
PAPER = {
    "source": "Recap-DataComp-1B (arXiv 2406.08478)",
    "length_mean": {"re": 49.43, "org": 10.22},  # words
    # per-image preference, % of 180K image pairs where each caption scores higher
    "clip_preference_pct": {"CLIP ViT-L": {"re": 49.57, "org": 50.43},
                            "LongCLIP-L": {"re": 89.91, "org": 10.09}},
    "judge_mean": {"re": 4.14, "org": 3.71},  # GPT-4V rating 1-5, mean over 10K images
    "judge_model": "GPT-4V",
    "re_share_of_combined_vocabulary_pct": 82.86,
}

CAPTIONER_NOTES = {
    "tiny": "the built-in tiny captioner, trained on the synthetic shapes world: it describes shapes, "
    "not photos",
    "tiny-random": "the built-in tiny captioner with random weights: its captions are word salad",
}


def words(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


def clip_note(stamp: dict) -> str | None:
    """What a reader must know next to the numbers of the CLIP model a file's stamp names (None:
    nothing): the note recorded with the scores, else the built-in model's note when the version
    matches (an older built-in tiny-clip had random weights)."""
    from ..models.tiny_clip import builtin_clip_facts

    model = stamp.get("clip_model")
    if model is None:
        return "the CLIP model was not recorded (files scored during `recap caption --score`)"
    if stamp.get("clip_model_note"):
        return stamp["clip_model_note"]
    facts = builtin_clip_facts(model)
    if facts is None:
        return None
    version, note = facts
    if stamp.get("clip_model_version") != version:
        recorded = stamp.get("clip_model_version") or "v1, random weights"
        return f"{model}: scored by an older built-in version ({recorded}); its scores mean nothing"
    return note


def decoding(settings: dict) -> str:
    """The captioner's decoding, in words, from its recorded settings."""
    if "max_new_tokens" not in settings:
        return "not recorded"
    text = f"greedy, at most {settings['max_new_tokens']} new tokens"
    if settings.get("min_new_tokens"):
        text += f", at least {settings['min_new_tokens']}"
    if settings.get("conditional"):
        top_k = settings.get("top_k") or 0
        text += "; conditional caption: " + (f"top-k {top_k} sampling, seed {settings.get('seed')}"
                                             if top_k > 0 else "greedy")
    return text


def rounded(value, digits: int = 4):
    """Every float in a nested dict / list rounded (for JSON; displays format the exact values)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def describe(values: list) -> dict | None:
    if not values:
        return None
    return {"n": len(values), "mean": statistics.fmean(values), "median": float(statistics.median(values)),
            "min": min(values), "max": max(values)}


def preference(pairs: list[tuple[float, float]], left_out: int = 0) -> dict | None:
    """Per image: does the recaption score higher than the original, lower, or the same?
    `left_out`: images with both scores whose recaption is degenerate (",,,," scores higher
    than many alt-texts: counting it would call junk a win), said beside the shares (also when
    they leave no image to compare: shares None). None: no image with both scores."""
    if not pairs and not left_out:
        return None
    n = len(pairs)
    re_higher = sum(r > o for r, o in pairs)
    org_higher = sum(o > r for r, o in pairs)
    share = (lambda k: k / n) if n else (lambda k: None)
    return {"n": n, "re_higher": re_higher, "org_higher": org_higher, "ties": n - re_higher - org_higher,
            "re_higher_share": share(re_higher), "org_higher_share": share(org_higher),
            "left_out_degenerate": left_out}


@dataclass
class ModelUse:
    """One model (with its settings) and the shards whose numbers it made."""

    settings: dict
    shards: list[str] = field(default_factory=list)
    rows: int = 0  # rows it scored or rated (captioner: rows captioned)


@dataclass
class OutputStats:
    shards: int = 0
    rows: int = 0
    status_counts: Counter = field(default_factory=Counter)
    lengths: dict[str, list[int]] = field(default_factory=lambda: {"re": [], "org": []})
    clip_scores: dict[str, list[float]] = field(default_factory=lambda: {"re": [], "org": []})
    judge_scores: dict[str, list[int]] = field(default_factory=lambda: {"re": [], "org": []})
    clip_pairs: list[tuple[float, float]] = field(default_factory=list)  # (re, org) per image
    judge_pairs: list[tuple[int, int]] = field(default_factory=list)
    # Scored pairs left out of the preferences because the recaption is degenerate, by measure.
    degenerate_pairs: Counter = field(default_factory=Counter)
    vocab: dict[str, Counter] = field(default_factory=lambda: {"re": Counter(), "org": Counter()})
    flag_counts: Counter = field(default_factory=Counter)
    ok_rows: int = 0
    failed_rows: list[dict] = field(default_factory=list)  # the first FAILED_ROWS_KEPT
    captioners: dict[str, ModelUse] = field(default_factory=dict)
    clip_models: dict[tuple, ModelUse] = field(default_factory=dict)  # by (name, version)
    judges: dict[str, ModelUse] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.rows - self.ok_rows

    @property
    def vocabulary_overlap(self) -> dict[str, float | int | None]:
        re_vocab, org_vocab = set(self.vocab["re"]), set(self.vocab["org"])
        union = re_vocab | org_vocab
        return {"re_vocabulary": len(re_vocab), "org_vocabulary": len(org_vocab),
                "shared": len(re_vocab & org_vocab),
                "re_share_of_combined": len(re_vocab) / len(union) if union else None,
                "org_share_of_combined": len(org_vocab) / len(union) if union else None}

    def flag_rates(self) -> dict[str, float | None]:
        return {f: (self.flag_counts[f] / self.ok_rows if self.ok_rows else None) for f in FLAGS}

    def common_words(self, which: str, n: int = 20) -> list[tuple[str, int]]:
        return [(w, c) for w, c in self.vocab[which].most_common() if w not in STOPWORDS][:n]

    def models(self) -> dict[str, list[dict]]:
        """Which model made which numbers, with the settings that matter and how many shards."""
        def made(use: ModelUse, facts: dict, **note) -> dict:
            return {**facts, "shards": len(use.shards), "rows": use.rows, **note}

        captioners = [made(u, {**u.settings, "decoding": decoding(u.settings)},
                           note=CAPTIONER_NOTES.get(u.settings.get("model")))
                      for u in self.captioners.values()]
        clip = [made(u, {"model": u.settings.get("clip_model"),
                         **{k: u.settings.get(f"clip_model_{k}") for k in ("version", "revision")}},
                     note=clip_note(u.settings)) for u in self.clip_models.values()]
        judges = [made(u, {k: u.settings.get(k) for k in ("model", "fraction", "seed")})
                  for u in self.judges.values()]
        return {"captioner": captioners, "clip": clip, "judge": judges}

    def summary(self, digits: int | None = 4) -> dict:
        """Everything as a dict; floats rounded to `digits` (None: exact, for formatting)."""
        summary = {
            "shards": self.shards,
            "rows": self.rows,
            "status_counts": dict(sorted(self.status_counts.items())),
            "models": self.models(),
            "length": {k: describe(v) for k, v in self.lengths.items()},
            "clip_score": {k: describe(v) for k, v in self.clip_scores.items()},
            "clip_preference": preference(self.clip_pairs, self.degenerate_pairs["clip_score"]),
            "judge_score": {k: describe(v) for k, v in self.judge_scores.items()},
            "judge_preference": preference(self.judge_pairs, self.degenerate_pairs["gpt4v_score"]),
            "vocabulary": self.vocabulary_overlap,
            "flag_rates": self.flag_rates(),
            "failed_rows": {"count": self.failed, "listed": self.failed_rows},
        }
        return summary if digits is None else rounded(summary, digits)


def _count_use(uses: dict, key, settings: dict, shard: str, rows: int) -> None:
    """Shard `shard`'s `rows` made by the model of `settings` (one ModelUse per `key`)."""
    use = uses.setdefault(key, ModelUse(settings))
    use.shards.append(shard)
    use.rows += rows


def collect(output: str) -> OutputStats:
    out = OutputDir(output)
    stats = OutputStats()
    for name in done_shards(out):
        table = read_output(out, name, COLUMNS, present_only=True)
        schema = table.schema
        stats.shards += 1
        rows = table.to_pylist()
        ok = [r for r in rows if r["status"] == "ok"]
        # Which models made this file's numbers.
        captioner = out.done_provenance(name) or schema_stamp(schema, METADATA_KEY)
        # The model and its settings; not what the shard's input covered (a folder slice's files).
        settings = {k: v for k, v in captioner.items() if k not in ("recaption_version", INPUT_FINGERPRINT)}
        _count_use(stats.captioners, json.dumps(settings, sort_keys=True), settings, name, len(ok))
        scored = sum(r.get("re_clip_score") is not None or r.get("org_clip_score") is not None for r in rows)
        if scored:
            stamp = schema_stamp(schema, SCORES_METADATA_KEY)
            key = (stamp.get("clip_model"), stamp.get("clip_model_version"))
            _count_use(stats.clip_models, key, stamp, name, scored)
        rated = sum(r.get("re_gpt4v_score") is not None or r.get("org_gpt4v_score") is not None for r in rows)
        judge = schema_stamp(schema, JUDGE_METADATA_KEY)
        if rated or judge:
            settings = {k: v for k, v in stamp_identity(judge).items() if k != "prompt"}
            _count_use(stats.judges, json.dumps(settings, sort_keys=True), settings, name, rated)
        # The rows.
        stats.rows += len(rows)
        for row in rows:
            stats.status_counts[row["status"]] += 1
            if row["status"] != "ok" and len(stats.failed_rows) < FAILED_ROWS_KEPT:
                stats.failed_rows.append({"shard": name, "key": row["key"], "status": row["status"],
                                          "error": row.get("error")})
        for row in ok:
            stats.ok_rows += 1
            if "re_degenerate" not in schema.names:  # output of an older version: flag it here
                row["re_degenerate"] = is_degenerate(row.get("re_caption"))
            stats.flag_counts.update(f for f in FLAGS if row.get(f))
            for which in ("re", "org"):
                stats.vocab[which].update(words(row.get(f"{which}_caption")))
            for column, values, pairs in (("length", stats.lengths, None),
                                          ("clip_score", stats.clip_scores, stats.clip_pairs),
                                          ("gpt4v_score", stats.judge_scores, stats.judge_pairs)):
                both = (row.get(f"re_{column}"), row.get(f"org_{column}"))
                for which, value in zip(("re", "org"), both, strict=True):
                    if value is not None:
                        values[which].append(value)
                if pairs is not None and None not in both:
                    if row.get("re_degenerate"):
                        stats.degenerate_pairs[column] += 1
                    else:
                        pairs.append(both)
    return stats


# -- display: the same lines in `recap stats` and `recap report` --------------------------------------


def fmt(value, digits: int = 2) -> str:
    """A number for display: ints with thousands separators, floats to `digits` decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def count(n: int, noun: str) -> str:
    """'1 shard', '2 shards', '1,000 rows'."""
    return f"{fmt(n)} {noun if n == 1 else noun + 's'}"


def pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f}%"


@dataclass
class Line:
    """One measure, ours beside the paper's, and what made ours."""

    measure: str
    re: str
    org: str
    paper: str
    made_by: str
    note: str | None = None  # a warning that belongs next to these numbers


def model_names(uses: list[dict]) -> list[str]:
    return [str(u["model"]) if u.get("model") is not None else "an unrecorded model" for u in uses]


def _models_text(uses: list[dict], unit: str) -> tuple[str, str | None]:
    """("tiny-clip", note) for one model; a mix is named as such, with shards per model."""
    if not uses:
        return "", None
    names = model_names(uses)
    if len(set(names)) < len(names):  # one name, several versions (an older built-in tiny-clip)
        names = [f"{n} {u['version']}" if u.get("version") else n for n, u in zip(names, uses, strict=True)]
    notes = [u["note"] for u in uses if u.get("note")]
    if len(uses) == 1:
        return names[0], (notes[0] if notes else None)
    mixed = ", ".join(f"{n} ({count(u['shards'], 'shard')})" for n, u in zip(names, uses, strict=True))
    note = f"{len(uses)} {unit} made these numbers, pooled here: " + "; ".join([mixed, *notes])
    return mixed, note


def mean_median(d: dict | None, digits: int = 2) -> str:
    return "-" if d is None else f"{fmt(d['mean'], digits)} (median {fmt(d['median'], digits)})"


def counted(stats: dict, what: str) -> str:
    """How many values each side's numbers come from (the original is often missing)."""
    re_n, org_n = ((stats[k] or {}).get("n", 0) for k in ("re", "org"))
    return f"{fmt(re_n)} recaptions and {fmt(org_n)} original captions{what}"


def _scorer_lines(scores: dict, pref: dict | None, note: str | None, mean: tuple[str, str, str],
                  prefers: tuple[str, str, Callable[[str, str], str]]) -> list[Line]:
    """A scorer's rows of the comparison (CLIP's, the judge's): its mean score of each caption,
    then the share of images where it prefers each; none when nothing was scored. `mean` and
    `prefers` are each row's (measure, the paper's figure, what made ours); the latter's is
    made from how many images were compared and how many ties."""
    lines = []
    if pref or any(scores.values()):
        lines.append(Line(mean[0], mean_median(scores["re"]), mean_median(scores["org"]), *mean[1:], note))
    if pref:
        made_by = prefers[2](fmt(pref["n"]), count(pref["ties"], "tie"))
        if pref.get("left_out_degenerate"):
            made_by += (f"; {count(pref['left_out_degenerate'], 'image')} whose recaption is degenerate "
                        "left out")
        share = pct(pref["re_higher_share"]), pct(pref["org_higher_share"])
        lines.append(Line(prefers[0], *share, prefers[1], made_by, note))
    return lines


def comparison(summary: dict) -> list[Line]:
    """Ours beside the paper's figures; every number says what made it."""
    captioner, captioner_note = _models_text(summary["models"]["captioner"], "captioners")
    clip, clip_warning = _models_text(summary["models"]["clip"], "CLIP models")
    judge, judge_warning = _models_text(summary["models"]["judge"], "judges")
    ok = summary["status_counts"].get("ok", 0)
    length = summary["length"]
    lines = [Line("caption length, words (mean)", mean_median(length["re"]), mean_median(length["org"]),
                  f"{fmt(PAPER['length_mean']['re'])} / {fmt(PAPER['length_mean']['org'])}",
                  f"whitespace word count of {counted(length, ' (captioned rows)')}; "
                  f"recaptions by {captioner}", captioner_note)]
    clip_scores = summary["clip_score"]
    truncated = summary["flag_rates"].get("re_clip_truncated")
    truncation = f"; {pct(truncated)} of recaptions cut to its text window" if truncated else ""
    lines += _scorer_lines(
        clip_scores, summary["clip_preference"], clip_warning,
        ("CLIP score, 100 x cosine (mean)", "not published (only preferences)",
         f"{clip} on {counted(clip_scores, '')}{truncation}"),
        ("CLIP prefers this caption (share of images)",
         "; ".join(f"{name} {v['re']}% / {v['org']}%" for name, v in PAPER["clip_preference_pct"].items()),
         lambda n, ties: f"{clip}: per image, which caption scores higher, over {n} images with both "
         f"scores ({ties})"),
    )
    judged = max((d["n"] for d in summary["judge_score"].values() if d), default=0)
    lines += _scorer_lines(
        summary["judge_score"], summary["judge_preference"], judge_warning,
        ("judge rating 1-5 (mean)",
         f"{PAPER['judge_mean']['re']} / {PAPER['judge_mean']['org']} ({PAPER['judge_model']}, 10K images)",
         f"{judge} on {fmt(judged)} images"),
        ("judge rates this caption higher (share of images)", "not published",
         lambda n, ties: f"{judge}: per image, over {n} images rated twice ({ties})"),
    )
    vocab = summary["vocabulary"]
    lines.append(Line("vocabulary, distinct words", fmt(vocab["re_vocabulary"]), fmt(vocab["org_vocabulary"]),
                      "not published",
                      f"lower-cased words of {fmt(ok)} captioned rows ({fmt(vocab['shared'])} in both)"))
    lines.append(Line("share of the combined vocabulary", pct(vocab["re_share_of_combined"]),
                      pct(vocab["org_share_of_combined"]),
                      f"{PAPER['re_share_of_combined_vocabulary_pct']}% / -",
                      "|V| / |V_re U V_org| over the captioned rows"))
    return lines
