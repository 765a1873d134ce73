"""The tar writer writes what tarfile writes: the same bytes for the same members, so every tar
reader (tarfile, webdataset, GNU tar, the tar index) reads it as before."""

from __future__ import annotations

import io
import tarfile
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from recaption.samples.tar_index import scan
from recaption.samples.tars import TarShardWriter

NAMES = st.one_of(
    st.from_regex(r"[0-9a-z_]{1,20}\.(jpg|txt|json)", fullmatch=True),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1,
            max_size=140).map(lambda s: f"{s}.jpg"),  # long and non-ASCII names: pax records
)


def by_tarfile(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o444
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def by_writer(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    buf = io.BytesIO()
    with mock.patch("recaption.samples.tars.time.time", return_value=mtime):
        writer = TarShardWriter.into(buf)
        for name, data in members:
            writer.add_member(name, data)
        writer.close()
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(members=st.lists(st.tuples(NAMES, st.binary(max_size=1500)), max_size=6))
def test_the_same_bytes_as_tarfile(members):
    assert by_writer(members, 1_700_000_000) == by_tarfile(members, 1_700_000_000)


def test_members_copied_from_another_tar_keep_their_pax_records(tmp_path):
    source = tmp_path / "old.tar"
    members = [("k\u00e9y.jpg", b"\xff\xd8 image"), ("k\u00e9y.json", b"{}"), ("plain.txt", b"x" * 700)]
    source.write_bytes(by_tarfile(members, 1_600_000_000))
    buf = io.BytesIO()
    copy = TarShardWriter.into(buf)
    with tarfile.open(source, "r|") as old:
        for member in old:
            copy.copy_member(member, old.extractfile(member).read())
    copy.close()
    assert buf.getvalue() == source.read_bytes()
    (tmp_path / "copy.tar").write_bytes(buf.getvalue())
    index = scan(str(tmp_path / "copy.tar"))
    assert index.column("member").to_pylist() == [name for name, _ in members]
