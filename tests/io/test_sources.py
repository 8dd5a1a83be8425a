import io
import os
import tarfile
import zipfile

import pytest

from strokeray.io.sources import SourceError, SourceLimits, list_inputs, read_bytes, unsafe_member_name

from ..conftest import corrupt_zip_member


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_folder_with_spaces_and_parentheses(tmp_path):
    d = tmp_path / "My Scans (2021)"
    d.mkdir()
    (d / "100 (1).jpg").write_bytes(b"a")
    (d / "notes.txt").write_text("x")
    listing = list_inputs(str(tmp_path))
    assert [e.name for e in listing.entries] == ["My Scans (2021)/100 (1).jpg"]
    assert listing.skipped == ["My Scans (2021)/notes.txt"]
    assert read_bytes(listing.entries[0].uri) == b"a"


def test_zip_members_read_in_place_and_unsafe_ones_reported(tmp_path):
    big = b"\x00" * (3 << 20)  # compresses ~1000:1
    _zip(
        tmp_path / "a b.zip",
        {"dir/one.dcm": b"ONE", "../evil.dcm": b"x", "/abs.dcm": b"y", "dir/bomb.dcm": big, "dir/readme.md": b"doc"},
    )
    listing = list_inputs(str(tmp_path), SourceLimits(max_ratio=100))
    assert [e.name for e in listing.entries] == ["a b.zip/dir/one.dcm"]
    assert read_bytes(listing.entries[0].uri) == b"ONE"
    reasons = {p.source.split("::")[0]: p.reason for p in listing.problems}
    assert reasons == {
        "zip://../evil.dcm": "unsafe_member",
        "zip:///abs.dcm": "unsafe_member",
        "zip://dir/bomb.dcm": "oversized_member",
    }
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path.parent / "evil.dcm").exists()


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_tar_members_and_links(tmp_path, mode, suffix):
    path = tmp_path / f"scans{suffix}"
    with tarfile.open(path, mode) as tf:
        for name, data in {"s/one.dcm": b"ONE", "s/../../up.dcm": b"x"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("s/link.dcm")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    listing = list_inputs(str(path))
    assert [e.name for e in listing.entries] == [f"scans{suffix}/s/one.dcm"]
    assert read_bytes(listing.entries[0].uri) == b"ONE"
    assert sorted(p.reason for p in listing.problems) == ["unsafe_member", "unsafe_member"]


def test_folder_of_archives_and_corrupt_archive(tmp_path):
    _zip(tmp_path / "a.zip", {"x.dcm": b"1"})
    _zip(tmp_path / "b.zip", {"y.dcm": b"2"})
    (tmp_path / "c.zip").write_bytes(b"not a zip at all")
    listing = list_inputs(str(tmp_path))
    assert [e.name for e in listing.entries] == ["a.zip/x.dcm", "b.zip/y.dcm"]
    assert [p.reason for p in listing.problems] == ["corrupt_archive"]


def test_missing_input_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_inputs(str(tmp_path / "nope"))


def test_unsafe_names():
    assert unsafe_member_name("a/b.dcm") is None
    assert unsafe_member_name("a/../../b") and unsafe_member_name("C:\\x") and unsafe_member_name("/x")


def test_only_regular_files_are_listed(tmp_path):
    """A FIFO would hang a reader forever and /dev/zero never ends: both are problems, never read."""
    (tmp_path / "ok.dcm").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.dcm")
    (tmp_path / "zero.dcm").symlink_to("/dev/zero")
    (tmp_path / "dangling.dcm").symlink_to(tmp_path / "gone")
    listing = list_inputs(str(tmp_path))
    assert [e.name for e in listing.entries] == ["ok.dcm"]
    assert sorted((p.source.rsplit("/", 1)[-1], p.reason) for p in listing.problems) == [
        ("dangling.dcm", "not_regular_file"),
        ("pipe.dcm", "not_regular_file"),
        ("zero.dcm", "not_regular_file"),
    ]


def test_names_that_are_not_utf8_are_problems_shown_escaped(tmp_path):
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.dcm"), "wb") as fh:
        fh.write(b"x")
    with tarfile.open(tmp_path / "t.tar", "w") as tf:
        info = tarfile.TarInfo(b"in\xfe.dcm".decode("utf-8", "surrogateescape"))
        info.size = 1
        tf.addfile(info, io.BytesIO(b"y"))
    listing = list_inputs(str(tmp_path))
    assert listing.entries == []
    reasons = {p.reason: p.source for p in listing.problems}
    assert reasons["unsafe_name"].endswith("/bad\\xff.dcm")
    assert reasons["unsafe_member"].startswith("tar://in\\xfe.dcm::")
    for p in listing.problems:
        p.source.encode("utf-8")  # printable anywhere (Parquet, JSON, HTML)


def test_member_names_cannot_chain_to_another_file(tmp_path):
    """``secret.dcm::/elsewhere/other.zip`` must not make the reader open a file outside the source."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _zip(outside / "other.zip", {"secret.dcm": b"SECRET"})
    src = tmp_path / "src"
    src.mkdir()
    _zip(
        src / "a.zip",
        {f"secret.dcm::{outside / 'other.zip'}": b"decoy", "ok.dcm": b"OK", "s3://bucket/x.dcm": b"decoy"},
    )
    listing = list_inputs(str(src))
    assert [read_bytes(e.uri) for e in listing.entries] == [b"OK"]
    assert sorted(p.reason for p in listing.problems) == ["unsafe_member", "unsafe_member"]
    # A local file whose name holds "::" would be split by fsspec the same way.
    (src / "x::y.dcm").write_bytes(b"z")
    assert "unsafe_name" in {p.reason for p in list_inputs(str(src)).problems}


def test_corrupt_members_raise_a_source_error_with_a_reason(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("stored.dcm"), b"A" * 4096)
        zf.writestr(zipfile.ZipInfo("deflated.dcm"), os.urandom(64) * 64, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("fine.dcm", b"fine")
    corrupt_zip_member(path, "stored.dcm")
    corrupt_zip_member(path, "deflated.dcm")
    listing = list_inputs(str(path))
    by_name = {e.name.rsplit("/", 1)[-1]: e.uri for e in listing.entries}
    assert read_bytes(by_name["fine.dcm"]) == b"fine"
    for name in ("stored.dcm", "deflated.dcm"):
        with pytest.raises(SourceError) as err:
            read_bytes(by_name[name])
        assert err.value.reason == "corrupt_archive"


def test_reads_are_bounded(tmp_path):
    (tmp_path / "big.dcm").write_bytes(b"x" * 2048)
    listing = list_inputs(str(tmp_path), SourceLimits(max_member_bytes=1024))
    assert listing.entries == [] and listing.problems[0].reason == "oversized_member"
    with pytest.raises(SourceError) as err:
        read_bytes(str(tmp_path / "big.dcm"), limit=1024)
    assert err.value.reason == "oversized_member"
