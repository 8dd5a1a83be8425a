"""Small JSON documents (settings, summaries, completion markers) at local paths or fsspec URLs."""

from __future__ import annotations

import json
from typing import Any

import fsspec


def read_json(url: str, default: Any = None) -> Any:
    """The document at ``url``, or ``default`` when there is none."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return default
    with fs.open(path, "r") as fh:
        return json.load(fh)


def write_json(url: str, doc: Any, indent: int | None = 2) -> None:
    """Write ``doc`` (values JSON cannot hold as their text) to ``url``; a local folder is created."""
    with fsspec.open(url, "w") as fh:
        json.dump(doc, fh, indent=indent, default=str)
