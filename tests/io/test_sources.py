import io
import tarfile
import zipfile

import pytest

from strokeray.io.sources import SourceLimits, list_inputs, read_bytes, unsafe_member_name


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
    _zip(tmp_path / "a b.zip", {"dir/one.dcm": b"ONE", "../evil.dcm": b"x", "/abs.dcm": b"y",
                                "dir/bomb.dcm": big, "dir/readme.md": b"doc"})
    listing = list_inputs(str(tmp_path), SourceLimits(max_ratio=100))
    assert [e.name for e in listing.entries] == ["a b.zip/dir/one.dcm"]
    assert read_bytes(listing.entries[0].uri) == b"ONE"
    reasons = {p.source.split("::")[0]: p.reason for p in listing.problems}
    assert reasons == {"zip://../evil.dcm": "unsafe_member", "zip:///abs.dcm": "unsafe_member",
                       "zip://dir/bomb.dcm": "oversized_member"}
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
