"""What a new user hands `recap generate`, `recap eval-t2i` and `recap shapes`, as they hand it:
each mistake is one line and exit code 2 naming the fix, nothing is silently dropped or
overwritten, and every prompt and sample is accounted for."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recaption.spine.contract import ForeignOutputError

pytest.importorskip("diffusers")

from recaption.cli import app  # noqa: E402
from recaption.dit.eval import eval_shapes, eval_t2i  # noqa: E402
from recaption.dit.generate import check_guidance, generate, load_prompts, looks_like_prompt_file  # noqa: E402
from recaption.dit.train import DitTrainConfig, train_dit  # noqa: E402
from recaption.shapes import write_shapes_shards  # noqa: E402
from recaption.training.inputs import TrainingInputError  # noqa: E402

from ..conftest import image_bytes, write_shards  # noqa: E402

TINY = dict(layers=1, heads=2, head_dim=16, patch_size=8, batch_size=8, lr=1e-3, device="cpu", workers=0)
FAST = dict(steps=2, device="cpu")

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i-shapes")
    write_shapes_shards(root / "shapes", 8, shard_size=8)
    return root / "shapes"


@pytest.fixture(scope="module")
def model(shapes, tmp_path_factory):
    """A DiT trained 2 steps: enough to generate from."""
    out = tmp_path_factory.mktemp("t2i-dit") / "dit"
    train_dit(
        DitTrainConfig(
            data=[str(shapes)],
            output=str(out),
            recaption_field="description",
            steps=2,
            save_every=100,
            **TINY,
        )
    )
    return out


@pytest.fixture(scope="module")
def gen(model, tmp_path_factory):
    """One generate output of two images."""
    out = tmp_path_factory.mktemp("t2i-gen") / "gen"
    generate(model, ["a red circle", "a blue square"], out, **FAST)
    return out


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def only_error_line(result, *pieces: str) -> str:
    """Exit code 2 and the whole output one `error:` line holding every piece: no traceback, no
    blank line or progress bar before it."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and result.output.startswith("error: "), (
        result.output
    )
    for piece in pieces:
        assert piece in lines[0], result.output
    return lines[0]


def members(folder) -> dict[str, bytes]:
    out = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                out[f"{path.name}/{m.name}"] = tar.extractfile(m).read()
    return out


def metas(folder) -> list[dict]:
    return [json.loads(v) for k, v in members(folder).items() if k.endswith(".json")]


# -- 1, 2: --output ----------------------------------------------------------------------------


def test_overwrite_never_replaces_a_folder_generate_did_not_write(model, tmp_path):
    write_shards(tmp_path / "data", 2, 2)
    before = members(tmp_path / "data")
    result = invoke("generate", model, "a red circle", "-o", tmp_path / "data", "--overwrite", "--steps", 2)
    only_error_line(
        result, f"{tmp_path / 'data'} holds files recaption did not write", "00000.tar",
        "new or empty output folder",
    )
    assert members(tmp_path / "data") == before  # their shards untouched
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("mine")
    only_error_line(
        invoke("generate", model, "a red circle", "-o", tmp_path / "notes", "--steps", 2), "readme.md"
    )


def test_overwrite_replaces_a_folder_generate_wrote(model, tmp_path):
    out = tmp_path / "g"
    generate(model, ["a", "b", "c"], out, shard_size=1, **FAST)
    refused = invoke("generate", model, "a red circle", "-o", out, "--steps", 2)
    only_error_line(refused, "already holds 3 shard(s)", "--overwrite")
    done = invoke("generate", model, "a red circle", "-o", out, "--steps", 2, "--overwrite")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar"]
    assert json.loads((out / "generate.json").read_text())["images"] == 1


def test_a_run_that_fails_while_sampling_leaves_no_folder(model, tmp_path, monkeypatch):
    import recaption.dit.generate as generate_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(generate_module, "sample", broken)
    with pytest.raises(RuntimeError):
        generate(model, ["a red circle"], tmp_path / "new" / "g", **FAST)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["generate", "shapes"])
def test_an_output_that_is_or_lies_under_a_file_is_one_line(model, tmp_path, command):
    (tmp_path / "afile").write_text("x")
    for output, said in (
        (tmp_path / "afile" / "sub", f"lies under {tmp_path / 'afile'}, which is a file, not a folder"),
        (tmp_path / "afile", "is a file, not a folder"),
    ):
        args = ["generate", model, "a red circle", "--steps", 2] if command == "generate" else ["shapes"]
        only_error_line(invoke(*args, "-o", output), f"the output folder {output} ", said)
    assert (tmp_path / "afile").read_text() == "x"


# -- 3: --guidance -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e39"])
def test_guidance_that_is_not_a_number_from_0_to_100_is_refused(model, tmp_path, value):
    result = invoke(
        "generate", model, "a red circle", "-o", tmp_path / "g", "--steps", 2, "--guidance", value
    )
    only_error_line(result, f"--guidance {float(value)}", "from 0 to 100", "1 = no guidance")
    assert not (tmp_path / "g").exists()


def test_guidance_0_and_1_are_allowed():
    assert check_guidance(0) == 0.0 and check_guidance(1) == 1.0 and check_guidance(10) == 10.0
    with pytest.raises(TrainingInputError, match="from 0 to 100"):
        check_guidance(-0.5)


# -- 4: the EMA weights ------------------------------------------------------------------------


def test_a_model_without_ema_weights_says_so_once_and_records_what_was_used(model, tmp_path, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    shutil.rmtree(bare / "transformer_ema")
    with caplog.at_level(logging.WARNING):
        summary = generate(bare, ["a red circle", "a blue square"], tmp_path / "g", batch_size=1, **FAST)
    warned = [r.getMessage() for r in caplog.records if "transformer_ema" in r.getMessage()]
    assert len(warned) == 1 and "non-EMA" in warned[0], warned
    assert summary["use_ema"] is False
    assert json.loads((tmp_path / "g" / "generate.json").read_text())["use_ema"] is False
    assert generate(model, ["a red circle"], tmp_path / "h", **FAST)["use_ema"] is True


# -- 5: prompts from a parquet column with null rows --------------------------------------------


def test_parquet_prompts_keep_their_source_row_and_the_notice_names_the_column(model, tmp_path, caplog):
    table = pa.table(
        {"key": ["k0", "k1", "k2", "k3"], "re_caption": ["a red circle", None, "  ", "a blue square"]}
    )
    pq.write_table(table, tmp_path / "caps.parquet")
    with caplog.at_level(logging.WARNING):
        summary = generate(model, str(tmp_path / "caps.parquet"), tmp_path / "g", column="re_caption", **FAST)
    notice = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(notice) == 1 and "'re_caption'" in notice[0] and "'prompt'" not in notice[0], notice
    assert "2 of 4 rows" in notice[0] and "row 1" in notice[0]
    assert summary["prompts"] == 2 and summary["skipped_prompts"] == 2
    rows = sorted(
        (m["source_row"], m["source_key"], m["source_file"], m["caption"]) for m in metas(tmp_path / "g")
    )
    assert rows == [(0, "k0", "caps.parquet", "a red circle"), (3, "k3", "caps.parquet", "a blue square")]


def test_a_prompt_field_named_like_generates_own_is_kept_apart(model, tmp_path):
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": "x", "key": "mine", "seed": 5, "style": "s"}) + "\n"
    )
    assert load_prompts(tmp_path / "p.jsonl") == [
        {"prompt": "x", "source_key": "mine", "source_seed": 5, "style": "s"}
    ]
    generate(model, str(tmp_path / "p.jsonl"), tmp_path / "g", seed=3, **FAST)
    [meta] = metas(tmp_path / "g")
    assert meta["key"] == "000000000" and meta["seed"] == 3 and meta["url"] == "generated://3/0"
    assert meta["source_key"] == "mine" and meta["source_seed"] == 5 and meta["source_line"] == 1


# -- 6: prompt files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, pieces",
    [
        (
            "bad.jsonl",
            '{"prompt": "a red circle"}\n{"prompt": "a blue sq\n',
            ["bad.jsonl line 2", "not valid JSON"],
        ),
        ("list.jsonl", '{"prompt": "a"}\n\n["x"]\n', ["list.jsonl line 3", "not a list"]),
        (
            "nokey.jsonl",
            '{"prompt": "a"}\n{"text": "b"}\n',
            ["nokey.jsonl line 2", "no 'prompt'", "has: text", "--column"],
        ),
        (
            "number.jsonl",
            '{"prompt": "a"}\n{"prompt": 42}\n',
            ["number.jsonl line 2", "a number 42, not text"],
        ),
        (
            "latin1.txt",
            "a red circle\ncaf\u00e9 blue\n".encode("latin-1"),
            ["latin1.txt line 2", "not UTF-8", "save it as UTF-8"],
        ),
        ("prompts.csv", "prompt\na red circle\n", ["a .csv file is not read as prompts"]),
    ],
)
def test_a_bad_prompt_file_names_the_file_the_line_and_the_fix(tmp_path, name, content, pieces):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TrainingInputError) as caught:
        load_prompts(str(path))
    message = str(caught.value)
    assert "\n" not in message and f"prompts {path}" in message, message
    for piece in pieces:
        assert piece in message, message


def test_a_bad_prompt_file_on_the_command_line_is_one_line(model, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": "a blue sq\n')
    only_error_line(
        invoke("generate", model, tmp_path / "bad.jsonl", "-o", tmp_path / "g"), "bad.jsonl line 2"
    )


def test_a_bom_is_not_part_of_the_first_prompt_and_lines_are_kept(model, tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffa red circle\r\n\r\nblue square\r\n".encode())
    assert load_prompts(tmp_path / "bom.txt") == [{"prompt": "a red circle"}, {"prompt": "blue square"}]
    generate(model, str(tmp_path / "bom.txt"), tmp_path / "g", **FAST)
    assert sorted((m["source_line"], m["caption"]) for m in metas(tmp_path / "g")) == [
        (1, "a red circle"),
        (3, "blue square"),
    ]
    (tmp_path / "bom.jsonl").write_bytes(("\ufeff" + json.dumps({"prompt": "x"}) + "\n").encode())
    assert load_prompts(tmp_path / "bom.jsonl") == [{"prompt": "x"}]


def test_column_with_a_text_prompt_file_or_a_quoted_prompt_is_refused(model, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n")
    only_error_line(
        invoke("generate", model, tmp_path / "p.txt", "-o", tmp_path / "g", "--column", "re_caption"),
        "--column re_caption",
        "p.txt",
        "leave --column out",
    )
    only_error_line(
        invoke("generate", model, "a red circle", "-o", tmp_path / "g", "--column", "re_caption"),
        "--column re_caption",
        "leave --column out",
    )
    assert not (tmp_path / "g").exists()


# -- 7: a prompt with a "/" ----------------------------------------------------------------------


def test_what_is_taken_as_a_prompt_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "here.txt").write_text("x\n")
    assert looks_like_prompt_file("here.txt") and looks_like_prompt_file("missing.jsonl")
    assert looks_like_prompt_file("runs/") and looks_like_prompt_file("runs/typo")
    assert not looks_like_prompt_file("draw a circle/square")
    assert not looks_like_prompt_file("circle/square")
    assert not looks_like_prompt_file("a red circle.txt")  # words: a prompt


def test_a_prompt_with_a_slash_is_drawn_and_a_missing_file_is_one_line(model, tmp_path):
    done = invoke("generate", model, "draw a circle/square", "-o", tmp_path / "g", "--steps", 2)
    assert done.exit_code == 0, done.output
    assert [m["caption"] for m in metas(tmp_path / "g")] == ["draw a circle/square"]
    only_error_line(
        invoke("generate", model, tmp_path / "missing.txt", "-o", tmp_path / "h"),
        f"prompts {tmp_path / 'missing.txt'}: no such file",
    )


# -- 8: error texts name what the user typed -------------------------------------------------


@pytest.mark.parametrize(
    "args, pieces",
    [
        (["--steps", "0"], ["--steps 0: must be at least 1"]),
        (["--images-per-prompt", "0"], ["--images-per-prompt 0: must be at least 1"]),
        (["--batch-size", "-1"], ["--batch-size -1: must be at least 1"]),
        (["--steps", "2000"], ["--steps 2000", "trained with 1000 timesteps", "at most 1000"]),
        (["--sampler", "euler"], ["--sampler euler", "ddim"]),
    ],
)
def test_option_errors_name_only_the_option_given(model, tmp_path, args, pieces):
    line = only_error_line(invoke("generate", model, "a red circle", "-o", tmp_path / "g", *args), *pieces)
    assert "shard-size" not in line
    assert not (tmp_path / "g").exists()


def test_model_and_prompts_errors_name_the_arguments_as_typed(tmp_path):
    (tmp_path / "afile").write_text("x")
    only_error_line(
        invoke("generate", tmp_path / "afile", "a red circle", "-o", tmp_path / "g"),
        f"model {tmp_path / 'afile'}: is a file, not a folder",
    )
    only_error_line(
        invoke("generate", tmp_path / "none", "a red circle", "-o", tmp_path / "g"),
        f"model {tmp_path / 'none'}: no such folder",
    )
    line = only_error_line(
        invoke("generate", tmp_path / "none", tmp_path / "p.txt", "-o", tmp_path / "g"),
        f"prompts {tmp_path / 'p.txt'}",
    )
    assert "--prompts" not in line


# -- 9, 10, 11, 12: eval-t2i -------------------------------------------------------------------


def write_tar(path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_unreadable_samples_are_counted_and_warned_about(tmp_path, caplog):
    good = image_bytes(32, 32, fmt="PNG")
    write_tar(
        tmp_path / "00000.tar",
        {
            "a": {"png": good, "txt": b"a red circle"},
            "b": {"png": b"not an image", "txt": b"a blue square"},
            "c": {"png": image_bytes(32, 32, fmt="PNG", seed=1), "txt": b"a green diamond"},
            "d": {"txt": b"no image at all"},
        },
    )
    with caplog.at_level(logging.WARNING):
        report = eval_t2i([str(tmp_path)], device="cpu")
    assert report["images"] == 2 and report["unreadable"] == 2
    assert report["unreadable_samples"]["by_status"] == {"decode_error": 1, "missing_image": 1}
    assert report["unreadable_samples"]["first"].endswith(
        "b: cannot identify image file (not an image, or a format Pillow cannot read)"
    )
    warned = [r.getMessage() for r in caplog.records if "not scored" in r.getMessage()]
    assert len(warned) == 1 and "2 sample(s)" in warned[0] and "00000.tar b" in warned[0], warned
    result = invoke("eval-t2i", tmp_path, "--device", "cpu", "--json")
    assert result.exit_code == 0 and '"unreadable": 2' in result.output, result.output


def test_images_without_generate_metadata_are_counted_and_warned_about(gen, shapes, caplog):
    with caplog.at_level(logging.WARNING):
        mixed = eval_t2i([str(gen), str(shapes / "00000.tar")], device="cpu")
    assert mixed["images"] == 10 and mixed["with_generate_metadata"] == 2
    assert mixed["without_generate_metadata"]["count"] == 8
    assert any("8 of 10 images carry no recap generate metadata" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        world = eval_shapes([str(shapes)])
        own = eval_t2i([str(shapes)], device="cpu")
    assert world["unreadable"] == 0
    assert own["with_generate_metadata"] == 0 and own["shapes"]["overall"]["all"] == 1.0
    assert any("not recap generate output" in r.getMessage() for r in caplog.records)
    assert eval_t2i([str(gen)], device="cpu")["with_generate_metadata"] == 2


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_images_below_1_is_refused(gen, value):
    only_error_line(
        invoke("eval-t2i", gen, "--max-images", value), f"--max-images {value}: must be at least 1"
    )


def test_two_generate_folders_with_the_same_shard_names_are_read_together(model, gen, tmp_path):
    generate(model, ["a green diamond"], tmp_path / "g2", **FAST)
    result = invoke("eval-t2i", gen, tmp_path / "g2", "--device", "cpu", "--json")
    assert result.exit_code == 0 and '"images": 3' in result.output, result.output
    only_error_line(invoke("eval-t2i", gen / "00000.tar", gen / "00000.tar"), "given twice")


# -- 13: recap shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, piece",
    [
        (["--images", "0"], "--images 0: must be at least 1"),
        (["--images", "-5"], "--images -5: must be at least 1"),
        (["--image-size", "0"], "--image-size 0: must be at least 8"),
        (["--shard-size", "0"], "--shard-size 0: must be at least 1"),
        (["--start", "-1"], "--start -1: must be at least 0"),
        (["--image-size", "100000000"], "--image-size 100000000: must be at most 2048"),
    ],
)
def test_shapes_counts_below_their_least_are_one_line(tmp_path, args, piece):
    only_error_line(invoke("shapes", "-o", tmp_path / "s", *args), piece)
    assert not (tmp_path / "s").exists()


def test_shapes_refuses_a_used_folder_and_overwrite_leaves_no_old_shard(tmp_path):
    out = tmp_path / "s"
    assert invoke("shapes", "-o", out, "--images", 4, "--shard-size", 2).exit_code == 0
    first = members(out)
    only_error_line(
        invoke("shapes", "-o", out, "--images", 4), "already holds 2 shapes-world shard(s)", "--overwrite"
    )
    assert members(out) == first
    done = invoke("shapes", "-o", out, "--images", 2, "--seed", 1, "--overwrite")
    assert done.exit_code == 0, done.output
    assert [p.name for p in out.glob("*.tar")] == ["00000.tar"]  # the old 00001.tar is gone
    assert {m["url"] for m in metas(out)} == {"shapes://1/0", "shapes://1/1"}
    write_shards(tmp_path / "data", 1, 1)
    only_error_line(
        invoke("shapes", "-o", tmp_path / "data", "--images", 1, "--overwrite"), "did not write", "00000.tar"
    )


def test_overwrite_refuses_a_generate_folder_holding_a_shard_it_did_not_list(model, tmp_path):
    out = tmp_path / "g"
    generate(model, ["a red circle"], out, **FAST)
    (out / "00007.tar").write_bytes(b"someone else's shard")
    with pytest.raises(ForeignOutputError, match="did not write beside its own"):
        generate(model, ["a red circle"], out, overwrite=True, **FAST)
    assert (out / "00007.tar").read_bytes() == b"someone else's shard"


def test_a_prompt_holding_a_line_separator_character_stays_one_prompt(tmp_path):
    text = "a red circle\u2028in the center"
    line = json.dumps({"prompt": text}, ensure_ascii=False)
    (tmp_path / "p.jsonl").write_text(line + "\n", encoding="utf-8")
    (tmp_path / "p.txt").write_text(f"{text}\r\nblue square\n", encoding="utf-8")
    assert [p["prompt"] for p in load_prompts(str(tmp_path / "p.jsonl"))] == [text]
    assert [p["prompt"] for p in load_prompts(str(tmp_path / "p.txt"))] == [text, "blue square"]


def test_a_feature_model_without_reference_images_is_one_line(gen):
    result = runner.invoke(app, ["eval-t2i", str(gen), "--feature-model", "tiny-clip"])
    assert result.exit_code == 2
    assert "needs --reference" in result.output and len(result.output.strip().splitlines()) == 1
