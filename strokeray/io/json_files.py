"""Small JSON documents (settings, summaries, completion markers) at local paths or fsspec URLs."""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def read_json(url: str, default: Any = None) -> Any:
    """The document at ``url``, or ``default`` when there is none."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return default
    with fs.open(path, "r") as fh:
        return json.load(fh)


def write_json(url: str, doc: Any, indent: int | None = 2) -> None:
    """Write ``doc`` (values JSON cannot hold as their text) to ``url``; a local folder is created."""
    fs, path = fsspec.core.url_to_fs(url)
    write_json_at(fs, path, doc, indent)


_SCRATCH = re.compile(r"(?P<name>.+)\.[0-9a-f]{8}\.partial")  # write_json_at's name beside the document


def scratch_of(name: str) -> str | None:
    """The document a ``write_json_at`` scratch file called ``name`` was being written for (one a
    killed process left behind), else None."""
    match = _SCRATCH.fullmatch(name)
    return match["name"] if match else None


def write_json_at(fs, path: str, doc: Any, indent: int | None = 2) -> None:
    """``write_json`` on a filesystem. A local file is written beside its name and renamed over it, so
    a process killed mid-write leaves the old document or the new one, never a truncated one that
    would stop the rerun meant to resume it (an object store shows an object only once uploaded)."""
    text = json.dumps(doc, indent=indent, default=str)
    if not isinstance(fs, LocalFileSystem):
        with fs.open(path, "w") as fh:
            fh.write(text)
        return
    path = fs._strip_protocol(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.{uuid.uuid4().hex[:8]}.partial"  # never matches a *.json listing; see scratch_of
    try:
        with open(partial, "w") as fh:
            fh.write(text)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def read_marker(fs, path: str) -> dict | None:
    """A completion marker's document; None when there is none, or when it is not a whole JSON
    object (one cut short by a killed process before markers were written whole): the work it
    would mark is redone."""
    if not fs.exists(path):
        return None
    try:
        doc = json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
