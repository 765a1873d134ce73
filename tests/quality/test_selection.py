"""`recap filter` (recaption.filter_output): a SQL condition over caption output, evaluated by DuckDB
with file access off, into a folder that is itself caption output."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recaption
from recaption.captioning.writer import OutputDir
from recaption.quality.outputs import done_shards, input_shard, read_output
from recaption.schema import METADATA_KEY, output_schema
from recaption.spine.contract import ForeignOutputError, OutputAmongInputsError
from recaption.spine.errors import RecaptionError
from recaption.spine.results import ConfigMismatchError
from recaption.steps.filter import FilterExpressionError, filter_lines

CAPTIONER = {"model": "acme/llava-test-8b", "max_new_tokens": 128, "conditional": False, "seed": 0}


def write_output(out, name: str, rows: list[dict], source=None, conditional: bool = False,
                 columns: dict | None = None) -> None:
    """One finished shard as `recap caption` leaves it: rows (missing columns null) in the output
    schema with the run's provenance as metadata, {name}_stats.json naming its input, {name}.done."""
    out.mkdir(parents=True, exist_ok=True)
    schema = output_schema(conditional).with_metadata({METADATA_KEY: json.dumps(CAPTIONER).encode()})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / f"{name}.parquet")
    stats = {"shard": name, "source": str(source or out / f"{name}-gone.tar"), "columns": columns,
             "rows": len(rows), "tokens_generated": 1234}
    (out / f"{name}_stats.json").write_text(json.dumps(stats))
    (out / f"{name}.done").write_text(json.dumps(CAPTIONER))


def row(key, score=None, degenerate=False, status="ok", re_caption="a red circle on white", **more) -> dict:
    failed = status != "ok"
    return {
        "key": key,
        "url": f"https://example.org/{key}.jpg",
        "org_caption": f"alt text {key}",
        "re_caption": None if failed else re_caption,
        "re_clip_score": None if failed else score,
        "re_length": None if failed else len(re_caption.split()),
        "re_degenerate": None if failed else degenerate,
        "status": status,
        "error": "OSError: truncated" if failed else None,
        **more,
    }


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "out"
    write_output(out, "00000", [
        row("a", 30.0),
        row("b", 20.0),
        row("c", None),  # not scored: the comparison is NULL, the row is dropped
        row("d", 31.0, degenerate=True),
        row("e", status="decode_error"),  # re_degenerate NULL: dropped
        row("f", 26.5),
    ])
    write_output(out, "00001", [row("g", 10.0), row("h", 24.9)])  # keeps nothing
    return out


def keys(folder, name) -> list[str]:
    return pq.read_table(folder / f"{name}.parquet").column("key").to_pylist()


def test_filter_keeps_matching_rows_into_a_caption_output_folder(output, tmp_path):
    dest = tmp_path / "filtered"
    where = "re_clip_score > 25 and not re_degenerate"
    summary = recaption.filter_output(output, where, dest)

    assert keys(dest, "00000") == ["a", "f"]  # in source order
    assert keys(dest, "00001") == []  # 0 rows: still a finished shard
    for name in ("00000", "00001"):
        source, kept = pq.read_table(output / f"{name}.parquet"), pq.read_table(dest / f"{name}.parquet")
        assert kept.schema.equals(source.schema, check_metadata=True)
    assert pq.read_table(dest / "00000.parquet").to_pylist() == [
        r for r in pq.read_table(output / "00000.parquet").to_pylist() if r["key"] in ("a", "f")
    ]
    assert [(s.name, s.outcome, s.counts["rows_in"], s.counts["rows_kept"]) for s in summary.results] == [
        ("00000", "done", 6, 2), ("00001", "done", 2, 0)
    ]
    assert (summary.count("rows_in"), summary.count("rows_kept")) == (8, 2)
    assert filter_lines(summary)[0] == "00000: kept 2 of 6 rows"
    assert filter_lines(summary)[-1].startswith("kept 2 of 8 rows (25.0%) in 2 shards where " + where)

    stats = json.loads((dest / "00000_stats.json").read_text())
    assert stats["source"] == str(output / "00000-gone.tar") and stats["tokens_generated"] == 1234
    assert stats["rows"] == 2 and stats["status_counts"] == {"ok": 2}
    record = stats["filter"]
    assert (record["where"], record["rows_in"], record["rows_kept"]) == (where, 6, 2)
    assert record["from"] == str(output) and record["status_counts_in"] == {"decode_error": 1, "ok": 5}
    done = json.loads((dest / "00000.done").read_text())
    assert done == {**CAPTIONER, "filter": {"where": where, "from": str(output)}}

    # The destination is caption output: what score / report / stats / export read works on it.
    out = OutputDir(str(dest))
    assert done_shards(out) == ["00000", "00001"]
    assert read_output(out, "00000", ["key"]).num_rows == 2
    assert recaption.stats(dest)["rows"] == 2
    assert recaption.stats(dest)["models"]["captioner"][0]["shards"] == 2  # one captioner, not one per shard
    assert input_shard(out, "00000").source == str(output / "00000-gone.tar")
    assert not list(dest.glob("*.tmp"))


def test_null_conditions_drop_rows_as_sql_does(output, tmp_path):
    recaption.filter_output(output, "re_clip_score < 25 or re_clip_score >= 25", tmp_path / "f")
    assert keys(tmp_path / "f", "00000") == ["a", "b", "d", "f"]  # c (null score) and e (failed) dropped
    recaption.filter_output(output, "status <> 'ok' or re_clip_score is null", tmp_path / "g")
    assert keys(tmp_path / "g", "00000") == ["c", "e"]
    where = "regexp_matches(re_caption, 'circle') and length(key) = 1"
    recaption.filter_output(output, where, tmp_path / "h")
    assert keys(tmp_path / "h", "00001") == ["g", "h"]


@pytest.mark.parametrize(
    "where,says",
    [
        ("re_clip_scor > 25", "re_clip_scor"),  # a typo
        ("re_clip_score >", "Parser Error"),
        ("re_clip_score > 25; drop table x", "';' is not allowed"),
        ("   ", "--where is empty"),
        ("re_clip_score > 25 order by key", "Parser Error"),
        ("re_clip_score > 1) or (true", "Parser Error"),
        ("re_clip_score > (select count(*) from read_csv('/etc/passwd'))", "a subquery is not taken"),
        ("key in (select file from glob('/etc/*'))", "a subquery is not taken"),
        ("(select count(*) from 'out/00000.parquet') > 0", "a subquery is not taken"),
        ("len(range(0, 300000000)) > 0", "range() is not taken"),  # one value of 15 GB
        ("lpad(key, 1000000000, 'x') is not null", "lpad() is not taken"),
        ("key", "a VARCHAR value, not a condition"),
        ("re_clip_score", "a DOUBLE value, not a condition"),  # (kept nothing, silently, before)
        ("re_clip_score > 25 and key::INT > 0", "Could not convert"),  # fails while evaluating
    ],
)
def test_bad_conditions_are_refused_in_one_line_naming_the_columns(output, tmp_path, where, says):
    dest = tmp_path / "filtered"
    with pytest.raises(FilterExpressionError) as caught:
        recaption.filter_output(output, where, dest)
    message = str(caught.value)
    assert isinstance(caught.value, RecaptionError)
    assert "\n" not in message and says in message, message
    assert "columns: url, re_caption, org_caption, sha256, key, re_clip_score" in message
    assert "__recap_row__" not in message
    assert not list(dest.glob("*.parquet")) and not list(dest.glob("*.done"))


def test_reruns_skip_shards_filtered_alike_and_refuse_another_condition(output, tmp_path):
    dest = tmp_path / "filtered"
    recaption.filter_output(output, "re_clip_score > 25", dest)
    stamps = {p.name: p.stat().st_mtime_ns for p in dest.glob("0*")}

    again = recaption.filter_output(output, " re_clip_score > 25 ", dest)  # the same, spaced
    assert again.skipped == ["00000", "00001"] and again.done == []
    assert (again.count("rows_in"), again.count("rows_kept")) == (8, 3)
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("0*")} == stamps

    with pytest.raises(ConfigMismatchError, match="--overwrite") as caught:
        recaption.filter_output(output, "re_clip_score > 30", dest)
    assert "re_clip_score > 25" in str(caught.value) and "\n" not in str(caught.value)
    assert keys(dest, "00000") == ["a", "d", "f"]  # untouched

    redone = recaption.filter_output(output, "re_clip_score > 30", dest, overwrite=True)
    assert redone.done == ["00000", "00001"] and keys(dest, "00000") == ["d"]

    # A new shard in the source: only it is filtered on the next run.
    write_output(output, "00002", [row("i", 40.0)])
    more = recaption.filter_output(output, "re_clip_score > 30", dest)
    assert more.done == ["00002"] and more.skipped == ["00000", "00001"]


def test_destination_must_be_another_folder_and_filters_chain(output, tmp_path):
    with pytest.raises(OutputAmongInputsError, match="is the input"):
        recaption.filter_output(output, "true", output)
    with pytest.raises(OutputAmongInputsError, match="is the input"):
        recaption.filter_output(output, "true", str(output) + "/")
    with pytest.raises(OutputAmongInputsError, match="lies inside the input"):
        recaption.filter_output(output, "true", output / "kept")
    # A caption output folder is not overwritten by a filter, not even with --overwrite.
    other = tmp_path / "other"
    write_output(other, "00000", [row("z", 1.0)])
    for overwrite in (False, True):
        with pytest.raises(ForeignOutputError, match="another recaption step, not of `recap filter`"):
            recaption.filter_output(output, "true", other, overwrite=overwrite)

    first, second = tmp_path / "first", tmp_path / "second"
    recaption.filter_output(output, "re_clip_score > 25", first)
    recaption.filter_output(first, "not re_degenerate", second)
    assert keys(second, "00000") == ["a", "f"]
    record = json.loads((second / "00000.done").read_text())["filter"]
    assert record == {
        "where": "not re_degenerate",
        "from": str(first),
        "previous": {"where": "re_clip_score > 25", "from": str(output)},
    }


def test_filter_of_real_caption_output(tmp_path, captioner):
    """Caption output of the tiny model on a shapes shard: filtered, then read like the original."""
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.readers import discover_shards
    from recaption.shapes import write_shapes_shards

    shards = write_shapes_shards(tmp_path / "in", count=5, shard_size=5)
    out, dest = tmp_path / "out", tmp_path / "filtered"
    CaptionPipeline(captioner.config, RunConfig(output=str(out)), captioner).run(
        discover_shards([str(p) for p in shards])
    )
    rows = pq.read_table(out / "00000.parquet").to_pylist()
    median = sorted(r["re_length"] for r in rows)[2]
    summary = recaption.filter_output(out, f"status = 'ok' and re_length >= {median}", dest)
    expected = [r["key"] for r in rows if r["re_length"] >= median]
    assert keys(dest, "00000") == expected and summary.count("rows_kept") == len(expected) >= 3
    samples = [s.key for s in input_shard(OutputDir(str(dest)), "00000")]  # the images are found
    assert set(expected) <= set(samples)
    assert recaption.stats(dest)["rows"] == len(expected)


@pytest.mark.parametrize("damage", ["fifo", "list", "gone"])
def test_a_shard_whose_stats_file_is_a_fifo_or_damaged_fails_alone(output, tmp_path, damage):
    """A FIFO dropped in place of a shard's stats file is refused, never waited on (the ledger opens
    an output's own files as the readers open inputs); filter and export fail that shard alone."""
    import os

    stats = output / "00000_stats.json"
    stats.unlink()
    if damage == "fifo":
        os.mkfifo(stats)
    elif damage == "list":
        stats.write_text("[1, 2]")
    filtered = recaption.filter_output(output, "re_clip_score > 25", tmp_path / "filtered")
    assert [r.name for r in filtered.failed] == ["00000"] and filtered.done == ["00001"]
    assert "00000's stats file cannot be read" in filtered.errors["00000"]
    assert not (tmp_path / "filtered" / "00000.done").exists()
    exported = recaption.export(output, tmp_path / "tars")
    assert "00000" in exported.errors
    if damage == "fifo":
        assert "FIFO" in filtered.errors["00000"] and "FIFO" in exported.errors["00000"]


@pytest.mark.parametrize("damage", ["fifo", "truncated", "dev-zero"])
def test_a_first_shard_whose_parquet_is_a_fifo_or_damaged_fails_alone(output, tmp_path, damage):
    """The first shard's parquet, which filter and export check their settings against, broken or
    a special file: never waited on, never a traceback; that shard fails and the other is done."""
    import os

    from recaption.quality.outputs import BrokenShardError

    parquet = output / "00000.parquet"
    if damage == "truncated":
        parquet.write_bytes(parquet.read_bytes()[:100])
    else:
        parquet.unlink()
        os.mkfifo(parquet) if damage == "fifo" else os.symlink("/dev/zero", parquet)
    filtered = recaption.filter_output(output, "re_clip_score > 25", tmp_path / "filtered")
    assert [r.name for r in filtered.failed] == ["00000"] and filtered.done == ["00001"]
    exported = recaption.export(output, tmp_path / "tars")
    assert "00000" in exported.errors  # (this output's images are not there: 00001 fails too)
    for errors in (filtered.errors, exported.errors):
        assert "caption it again" in errors["00000"] and "delete 00000.done" in errors["00000"]
    if damage != "truncated":
        assert ("FIFO" if damage == "fifo" else "character device") in filtered.errors["00000"]
    with pytest.raises(BrokenShardError, match="00000 is marked finished but its parquet cannot be read"):
        recaption.stats(output)


@pytest.mark.parametrize("stats", ["[1, 2]", "null", '{"source": 5}'])
def test_score_and_export_name_a_stats_file_that_names_no_input(output, stats):
    (output / "00000_stats.json").write_text(stats)
    exported = recaption.export(output, output.parent / "tars")
    scored = recaption.score(output, clip_model="tiny-clip-random")
    for summary in (exported, scored):
        assert summary.errors["00000"].endswith(
            "shard 00000's stats file cannot be read (not a JSON object naming its source); caption it again "
            "or delete 00000.done")
