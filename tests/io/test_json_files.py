"""Small JSON documents: whole or absent, never cut short."""

from __future__ import annotations

import json
import os

import fsspec
import pytest

from strokeray.io.json_files import read_marker, scratch_of, write_json, write_json_at


def test_a_write_that_fails_leaves_the_old_document_whole(tmp_path, monkeypatch):
    path = tmp_path / "state" / "done.json"
    write_json(str(path), {"digest": "old"})
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        write_json(str(path), {"digest": "new"})
    assert json.loads(path.read_text()) == {"digest": "old"}
    assert os.listdir(path.parent) == ["done.json"]  # no partial file left beside it


def test_markers_read_whole_or_not_at_all(tmp_path):
    fs = fsspec.filesystem("file")
    write_json_at(fs, str(tmp_path / "a.json"), {"digest": "x"}, indent=None)
    (tmp_path / "cut.json").write_text('{"digest": "x"')
    (tmp_path / "empty.json").write_bytes(b"")
    (tmp_path / "list.json").write_text("[1]")
    assert read_marker(fs, str(tmp_path / "a.json")) == {"digest": "x"}
    for name in ("cut.json", "empty.json", "list.json", "missing.json"):
        assert read_marker(fs, str(tmp_path / name)) is None, name


def test_object_stores_are_written_directly():
    fs = fsspec.filesystem("memory")
    write_json_at(fs, "/bucket/s.json", {"a": 1})
    assert json.loads(fs.cat_file("/bucket/s.json")) == {"a": 1} and fs.ls("/bucket", detail=False) == [
        "/bucket/s.json"
    ]


def test_a_scratch_file_names_the_document_it_was_for(tmp_path, monkeypatch):
    seen: list[str] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b)))
    write_json(str(tmp_path / "done.json"), {})
    assert [scratch_of(n) for n in seen] == ["done.json"]  # the name write_json_at really uses
    assert scratch_of("done.json") is None and scratch_of("done.json.xyz.partial") is None
