import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.readers import ColumnConfig, InputError, ShardError, discover_shards, open_shard
from recaption.readers.webdataset import split_member_name
from recaption.samples.shards import img2dataset_key

from ..conftest import image_bytes, make_records, write_shards


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_split_member_name_like_webdataset():
    assert split_member_name("000010001.jpg") == ("000010001", "jpg")
    assert split_member_name("dir/a.seg.PNG") == ("dir/a", "seg.png")


def test_img2dataset_keys():
    assert img2dataset_key(42, 7) == "000420007"


def test_tar_reads_img2dataset_layout(tmp_path):
    (path,) = write_shards(tmp_path, 1, 3)
    samples = list(open_shard(path))
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002"]
    assert samples[1].org_caption == "alt text number 1 of shard 0"
    assert samples[1].url == "https://example.org/0/1.jpg"
    assert len(samples[1].sha256) == 64 and samples[1].image_bytes[:2] == b"\xff\xd8"


def test_tar_members_in_any_order(tmp_path):
    path = tmp_path / "mixed.tar"
    img_a, img_b = image_bytes(seed=1), image_bytes(seed=2, fmt="PNG")
    with tarfile.open(path, "w") as tar:
        _add(tar, "b.json", json.dumps({"url": "http://b", "key": "b"}).encode())
        _add(tar, "a.txt", b"caption a")
        _add(tar, "b.png", img_b)
        _add(tar, "a.jpg", img_a)
        _add(tar, "b.txt", b"caption b")
        _add(tar, "a.json", json.dumps({"url": "http://a", "sha256": "given"}).encode())
    samples = {s.key: s for s in open_shard(str(path))}
    assert samples["a"].org_caption == "caption a" and samples["a"].image_bytes == img_a
    assert samples["a"].sha256 == "given"  # carried over, not recomputed
    assert samples["b"].url == "http://b" and samples["b"].image_bytes == img_b


def test_named_caption_field_wins_over_txt(tmp_path):
    path = tmp_path / "named.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "a.jpg", image_bytes())
        _add(tar, "a.txt", b"short alt")
        _add(tar, "a.json", json.dumps({"long_caption": "a longer human caption"}).encode())
    (default,) = list(open_shard(str(path)))
    (named,) = list(open_shard(str(path), ColumnConfig(caption="long_caption")))
    assert default.org_caption == "short alt"
    assert named.org_caption == "a longer human caption"


def test_tar_sample_without_image_is_kept(tmp_path):
    path = tmp_path / "noimg.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "x.txt", b"orphan caption")
    (sample,) = list(open_shard(str(path)))
    assert sample.image_bytes is None and sample.org_caption == "orphan caption"


def test_tar_json_that_is_not_an_object_is_ignored_saying_so(tmp_path, caplog):
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "a.jpg", image_bytes())
        _add(tar, "a.json", b"[1, 2, 3]")
        _add(tar, "b.jpg", image_bytes())
        _add(tar, "b.json", json.dumps({"url": 12345}).encode())
        _add(tar, "c.jpg", image_bytes())
        _add(tar, "c.json", b"{not json")
    with caplog.at_level("WARNING"):
        a, b, c = list(open_shard(str(path)))
    assert (a.key, a.url) == ("a", None) and c.key == "c"
    assert b.url == "12345"  # the output's url column is text
    warned = [r.getMessage() for r in caplog.records]  # once per read of the tar, not per sample
    assert warned == [f"{path}: 2 .json member(s) are not JSON objects (first: a.json): their fields "
                      "(url, key, sha256, caption) are not read"]


def test_truncated_tar_is_a_shard_error_naming_the_file(tmp_path):
    (path,) = write_shards(tmp_path, 1, 4)
    data = open(path, "rb").read()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError) as info:
        list(open_shard(str(broken)))
    assert "broken.tar" in str(info.value)


def _parquet(path, table):
    pq.write_table(table, path)
    return str(path)


def test_parquet_raw_bytes_and_hf_image_struct(tmp_path):
    imgs = [image_bytes(seed=i) for i in range(3)]
    raw = _parquet(tmp_path / "raw.parquet", pa.table(
        {"jpg": imgs, "caption": ["c0", "c1", None], "url": ["u0", "u1", "u2"]}))
    struct = _parquet(tmp_path / "hf.parquet", pa.table({
        "image": [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(imgs)],
        "text": ["t0", "t1", "t2"],
    }))
    a = list(open_shard(raw))
    assert [s.image_bytes for s in a] == imgs and a[2].org_caption is None and a[0].url == "u0"
    assert a[0].key == "raw_000000000"
    b = list(open_shard(struct))
    assert [s.image_bytes for s in b] == imgs and [s.org_caption for s in b] == ["t0", "t1", "t2"]


def test_parquet_named_columns(tmp_path):
    path = _parquet(tmp_path / "x.parquet", pa.table({"pixels": [image_bytes()], "alt": ["hello"],
                                                      "id": ["k1"]}))
    (s,) = list(open_shard(path, ColumnConfig(image="pixels", caption="alt", key="id")))
    assert s.org_caption == "hello" and s.key == "k1"


def test_parquet_numeric_identity_columns_become_text(tmp_path):
    path = _parquet(tmp_path / "n.parquet", pa.table({"jpg": [image_bytes()], "url": [7], "key": [42]}))
    (s,) = list(open_shard(path))
    assert (s.url, s.key) == ("7", "42")


def test_parquet_without_image_column_names_shard_and_columns(tmp_path):
    path = _parquet(tmp_path / "meta.parquet", pa.table({"url": ["u"], "caption": ["c"]}))
    with pytest.raises(ShardError) as info:
        list(open_shard(path))
    assert "meta.parquet" in str(info.value) and "url, caption" in str(info.value)


def test_folder_with_sidecar_captions(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "cat.jpg").write_bytes(image_bytes())
    (tmp_path / "imgs" / "cat.txt").write_text("a cat\n")
    (tmp_path / "imgs" / "sub" / "dog.png").write_bytes(image_bytes(fmt="PNG"))
    (tmp_path / "imgs" / "notes.md").write_text("ignored")
    (shard,) = discover_shards([str(tmp_path / "imgs")])
    samples = list(shard)
    assert shard.name == "imgs-00000"
    assert [s.key for s in samples] == ["cat", "sub/dog"]
    assert samples[0].org_caption == "a cat" and samples[1].org_caption is None


def test_folder_is_split_into_stable_shards(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    shards = discover_shards([str(tmp_path)], folder_shard_size=2)
    assert [s.name for s in shards] == [f"{tmp_path.name}-0000{i}" for i in range(3)]
    assert sum(len(list(s)) for s in shards) == 5


def test_discover_globs_braces_and_img2dataset_folders(tmp_path):
    write_shards(tmp_path, 3, 1)
    (tmp_path / "00000.parquet").write_bytes(b"metadata written by img2dataset beside the tar")
    assert [s.name for s in discover_shards([str(tmp_path)])] == ["00000", "00001", "00002"]
    assert [s.name for s in discover_shards([str(tmp_path / "0000{1..2}.tar")])] == ["00001", "00002"]
    assert [s.name for s in discover_shards([str(tmp_path / "*.tar")])] == ["00000", "00001", "00002"]
    assert [s.name for s in discover_shards([f"file://{tmp_path}/00001.tar"])] == ["00001"]


def test_discover_rejects_missing_inputs_and_name_collisions(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        discover_shards([str(tmp_path / "nope.tar")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_shards(tmp_path / "a", 1, 1)
    write_shards(tmp_path / "b", 1, 1)
    with pytest.raises(InputError, match="same output 00000.parquet"):
        discover_shards([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(InputError, match="given twice .*; name it once"):  # not: separate folders
        discover_shards([str(tmp_path / "a"), str(tmp_path / "a" / ".." / "a")])


def test_an_image_file_or_a_glob_of_images_is_pointed_to_its_folder(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(image_bytes())
    (tmp_path / "dog.JPG").write_bytes(image_bytes(seed=2))
    with pytest.raises(InputError, match="cat.jpg: one image, not a shard: give the folder"):
        discover_shards([str(tmp_path / "cat.jpg")])
    with pytest.raises(InputError, match=r"no .tar or .parquet files match \(2 images do: give their folder"):
        discover_shards([str(tmp_path / "*")])
    with pytest.raises(InputError, match=r"no .tar or .parquet files match$"):
        discover_shards([str(tmp_path / "*.png")])


def test_records_helper_is_deterministic():
    assert [r.image for r in make_records(2)] == [r.image for r in make_records(2)]


def test_member_names_lose_a_leading_dot_slash_or_slash():
    assert split_member_name("./000001.jpg") == ("000001", "jpg")
    assert split_member_name("./dir/a.seg.png") == ("dir/a", "seg.png")
    assert split_member_name("/abs/x.JPG") == ("abs/x", "jpg")


def test_tar_hidden_files_in_subfolders_are_skipped_and_keys_come_from_normalised_names(tmp_path):
    path = tmp_path / "h.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "./sub/.DS_Store", b"finder data")
        _add(tar, "./sub/._a.jpg", b"resource fork")
        _add(tar, "./sub/a.jpg", image_bytes())
        _add(tar, "/b.jpg", image_bytes(seed=1))
    assert [(s.key, s.status) for s in open_shard(str(path))] == [("a", "ok"), ("b", "ok")]


def test_parquet_exact_column_names_win_over_ones_of_another_case(tmp_path):
    path = _parquet(tmp_path / "c.parquet", pa.table(
        {"Caption": ["upper"], "text": ["exact"], "IMAGE": [image_bytes()], "Key": ["k9"]}))
    (s,) = list(open_shard(path))
    assert (s.org_caption, s.key) == ("exact", "k9")


def test_a_url_list_given_as_images_is_sent_to_download(tmp_path):
    urls = _parquet(tmp_path / "urls.parquet",
                    pa.table({"URL": ["http://example.org/a.jpg"], "caption": ["a"]}))
    with pytest.raises(ShardError, match=r"no image column .*--image-col; or, if it lists image URLs, fetch "
                                         r"them first with `recap download`"):
        list(open_shard(urls))
    other = _parquet(tmp_path / "o.parquet", pa.table({"caption": ["a"]}))
    with pytest.raises(ShardError, match=r"name it with --image-col\Z"):  # no URLs: no such advice
        list(open_shard(other))


def test_parquet_named_sha256_or_caption_column_that_is_missing_names_the_columns(tmp_path):
    path = _parquet(tmp_path / "s.parquet", pa.table({"jpg": [image_bytes()], "hash": ["h"]}))
    with pytest.raises(ShardError, match=r"no sha256 column 'sha' \(columns: jpg, hash\)"):
        list(open_shard(path, ColumnConfig(sha256="sha")))
    with pytest.raises(ShardError, match=r"no caption column 'alt' \(columns: jpg, hash\); name it with --c"):
        list(open_shard(path, ColumnConfig(caption="alt")))
    (s,) = list(open_shard(path, ColumnConfig(sha256="hash")))
    assert s.sha256 == "h"


def test_folder_of_only_unreadable_files_says_what_it_holds(tmp_path):
    (tmp_path / "a.docx").write_bytes(b"x")
    (tmp_path / "b.docx").write_bytes(b"x")
    with pytest.raises(InputError, match=r"no images \(it has \.docx x2\)"):
        discover_shards([str(tmp_path)])


def test_folder_skips_hidden_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(image_bytes())
    (tmp_path / "._a.jpg").write_bytes(b"\0\5\26\7 resource fork")
    (shard,) = discover_shards([str(tmp_path)])
    assert [s.key for s in shard] == ["a"]


def test_tar_link_members_are_rows_saying_so_not_dropped(tmp_path):
    import io
    import tarfile

    from recaption.readers import open_shard

    from ..conftest import image_bytes

    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        data = image_bytes()
        info = tarfile.TarInfo("a.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    samples = list(open_shard(str(path)))
    assert [(s.key, s.status) for s in samples] == [("a", "ok"), ("b", "missing_image")]
    assert "is a link to /etc/passwd; links are not read" in samples[1].error
