"""The tar index (samples/tar_index.py): offsets that read each member's exact bytes, built once
and kept, rebuilt when the tar changes, keyed as the tar reader keys rows."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from recaption.samples.shards import write_webdataset_shard
from recaption.samples.tar_index import TarIndex, TarIndexError, index_file, scan

from ..conftest import make_records


def members_of(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_every_member_is_read_back_exactly_by_its_offset(tmp_path):
    tar = tmp_path / "00000.tar"
    keys = write_webdataset_shard(tar, make_records(5))
    index = TarIndex.load(str(tar))
    expected = members_of(tar)
    assert len(index) == 5 and index.rows == len(expected)
    for key in keys:
        found = index.members(key)
        assert {m.ext for m in found} == {"jpg", "json", "txt"}
        for member in found:
            assert member.read() == expected[member.name]
    assert index.members("nope") == [] and "nope" not in index


def test_the_index_is_kept_beside_the_output_and_used_again(tmp_path, monkeypatch):
    import recaption.samples.tar_index as tar_index

    tar = tmp_path / "00000.tar"
    write_webdataset_shard(tar, make_records(3))
    folder = str(tmp_path / "out" / ".recap-index")
    first = TarIndex.load(str(tar), folder)
    assert os.path.exists(index_file(folder, str(tar)))
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]  # written through a temporary name

    def no_scan(path):
        raise AssertionError("scanned again")

    monkeypatch.setattr(tar_index, "scan", no_scan)
    again = TarIndex.load(str(tar), folder)
    assert again._by_key == first._by_key


def test_a_changed_tar_is_indexed_again(tmp_path):
    tar = tmp_path / "00000.tar"
    write_webdataset_shard(tar, make_records(2))
    folder = str(tmp_path / "index")
    TarIndex.load(str(tar), folder)
    keys = write_webdataset_shard(tar, make_records(4, seed=3))
    os.utime(tar, ns=(1, 1))  # whatever the clock: another modification time
    index = TarIndex.load(str(tar), folder)
    assert len(index) == 4
    expected = members_of(tar)
    assert all(m.read() == expected[m.name] for k in keys for m in index.members(k))


def test_keys_are_those_the_json_records_as_the_reader_keys_rows(tmp_path):
    """A member named `dir/x.jpg` whose json says key `abc` is the row `abc`; without a json the
    key is the member's name without folder and extension."""
    tar = tmp_path / "odd.tar"
    with tarfile.open(tar, "w") as archive:
        for name, data in [("dir/x.jpg", b"jpeg"), ("dir/x.json", b'{"key": "abc"}'), ("./y.seg.png", b"png"),
                           ("z.json", b"not json")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("w.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    table = scan(str(tar))
    assert table.column("key").to_pylist() == ["abc", "abc", "y", "z"]
    assert table.column("member").to_pylist() == ["dir/x.jpg", "dir/x.json", "y.seg.png", "z.json"]
    index = TarIndex(str(tar), table)
    assert [m.read() for m in index.members("abc")] == [b"jpeg", b'{"key": "abc"}']
    assert "w" not in index  # links are never followed


def test_a_compressed_tar_cannot_be_indexed_and_says_so(tmp_path):
    tar = tmp_path / "00000.tar"
    write_webdataset_shard(tar, make_records(1))
    packed = tmp_path / "00000.tar.gz"
    packed.write_bytes(gzip.compress(tar.read_bytes()))
    with pytest.raises(TarIndexError, match="a compressed tar; only plain .tar shards are indexed"):
        scan(str(packed))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:700])
    with pytest.raises(TarIndexError, match="truncated or corrupt tar"):
        scan(str(cut))


def test_a_tar_rewritten_with_its_old_size_and_time_is_indexed_again_and_never_misread(tmp_path):
    tar = tmp_path / "00000.tar"
    write_webdataset_shard(tar, make_records(3))
    folder = str(tmp_path / "index")
    old = TarIndex.load(str(tar), folder)
    stat = os.stat(tar)
    with tarfile.open(tar) as archive:  # the same members in reverse order: same size
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(tar, "w") as archive:
        for member, data in reversed(members):
            archive.addfile(member, io.BytesIO(data))
    os.truncate(tar, stat.st_size)
    os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    expected = members_of(tar)
    key = next(iter(old._by_key))
    with pytest.raises(TarIndexError, match="not where its index says"):
        [m.read() for m in old.members(key)]  # an index taken before the rewrite
    again = TarIndex.load(str(tar), folder)  # the change time differs: indexed again
    assert [m.read() for m in again.members(key)] == [expected[m.name] for m in again.members(key)]


def test_an_index_folder_that_cannot_be_written_keeps_the_index_in_memory(tmp_path, caplog):
    tar = tmp_path / "00000.tar"
    write_webdataset_shard(tar, make_records(2))
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    index = TarIndex.load(str(tar), str(blocked / "index"))
    assert len(index) == 2 and "kept in memory only" in caplog.text


def test_an_index_folder_that_is_a_link_is_not_followed(tmp_path, caplog):
    """A `.recap-index` planted as a link to elsewhere: nothing is written (or read) there."""
    tar = tmp_path / "00000.tar"
    write_webdataset_shard(tar, make_records(2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".recap-index").symlink_to(elsewhere)
    index = TarIndex.load(str(tar), str(tmp_path / ".recap-index"))
    assert len(index) == 2 and "is a link, not followed" in caplog.text
    assert list(elsewhere.iterdir()) == []


def test_the_index_of_a_tar_that_moved_away_is_removed_when_its_new_one_is_written(tmp_path):
    first, second = tmp_path / "a" / "00000.tar", tmp_path / "b" / "00000.tar"
    for tar in (first, second):
        tar.parent.mkdir()
        write_webdataset_shard(tar, make_records(2))
    folder = str(tmp_path / "index")
    TarIndex.load(str(first), folder)
    TarIndex.load(str(second), folder)  # two tars of one name: both indexes stay
    def indexes_of(*tars):
        return sorted(os.path.basename(index_file(folder, str(t))) for t in tars)

    assert sorted(os.listdir(folder)) == indexes_of(first, second)
    moved = tmp_path / "c" / "00000.tar"
    moved.parent.mkdir()
    first.rename(moved)
    TarIndex.load(str(moved), folder)
    assert sorted(os.listdir(folder)) == indexes_of(second, moved)


def test_members_with_non_ascii_names_are_read_from_a_pax_tar(tmp_path):
    """Python writes PAX tars: the plain header keeps `caf?.jpg`, the PAX header the real name."""
    tar = tmp_path / "00000.tar"
    with tarfile.open(tar, "w") as archive:
        for name, data in (("café.jpg", b"jpeg"), ("café.json", b'{"key": "caf\\u00e9"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    index = TarIndex.load(str(tar), str(tmp_path / "index"))
    assert sorted(m.read() for m in index.members("café")) == [b"jpeg", b'{"key": "caf\\u00e9"}']
