"""The one owner of a stage's output folder: claim it, refuse what is not ours, clear only our files.

Before a stage writes anything it claims OUT: refused when OUT is, lies inside or holds one of the
stage's inputs, when it is a file, or when it is a non-empty folder that strokeray did not make
(no marker). The marker (``.strokeray.json``) is written first and names the stage and the digest
of its settings; a later run with other settings is refused unless it asks to overwrite, and
overwriting removes only the entries the stage names as its own outputs, never the folder itself
nor anything a user put beside them. A stage that names a ``done`` document writes it last
(``finish``): a run is finished exactly when ``finished()`` returns it, so an interrupted run is
resumed or redone, never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec

from strokeray import __version__
from strokeray.io.json_files import read_marker, scratch_of, write_json, write_json_at

MARKER = ".strokeray.json"


def settings_digest(settings) -> str:
    """16 hex digits naming a stage's inputs and settings (sorted JSON, other values by str)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OutputError(ValueError):
    """An output location that must not be written to, with what to do instead."""


def _location(url: str) -> tuple[str, str]:
    """(protocol, normalised absolute path) of a URL or local path, symlinks resolved locally."""
    fs, path = fsspec.core.url_to_fs(url)
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local"):
        return "file", os.path.realpath(path)
    return proto, "/" + path.strip("/")


def overlap(a: str, b: str) -> str | None:
    """How locations ``a`` and ``b`` overlap ("is", "is inside", "contains"), or None."""
    (pa, xa), (pb, xb) = _location(a), _location(b)
    if pa != pb:
        return None
    if xa == xb:
        return "is"
    if xa.startswith(xb.rstrip("/") + "/"):
        return "is inside"
    if xb.startswith(xa.rstrip("/") + "/"):
        return "contains"
    return None


@dataclass(frozen=True)
class StageDir:
    """A stage's output folder (local path or fsspec URL) and the entries the stage writes in it."""

    url: str
    stage: str
    outputs: tuple[str, ...]
    done: str | None = None  # the JSON document written last, whose presence means finished

    @property
    def fs(self):
        return fsspec.core.url_to_fs(self.url)[0]

    @property
    def base(self) -> str:
        """The folder's path on its filesystem."""
        return fsspec.core.url_to_fs(self.url)[1].rstrip("/")

    def path(self, *parts: str) -> str:
        """A path under the folder, on its filesystem."""
        return "/".join([self.base, *parts])

    def url_of(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])

    def marker(self) -> dict | None:
        doc = read_marker(self.fs, self.path(MARKER))
        return doc if doc is not None and "stage" in doc else None

    def claim(
        self, inputs: tuple[str, ...] | list[str] = (), digest: str | None = None, overwrite: bool = False
    ) -> bool:
        """Make the folder this stage's, or raise OutputError saying why not; True when it already
        held this stage's work with the same digest (a run to resume or reuse)."""
        for src in inputs:
            how = overlap(self.url, src)
            if how:
                raise OutputError(
                    f"output {self.url} {how} the input {src}: choose an output folder outside"
                    " the input, so that nothing of it can be overwritten or deleted"
                )
        fs, base = self.fs, self.base
        if fs.exists(base) and not fs.isdir(base):
            raise OutputError(f"output {self.url} is a file, not a folder")
        marker = self.marker()
        same = False
        if marker is None:
            entries = fs.ls(base, detail=False) if fs.exists(base) else []
            stale = [e for e in entries if scratch_of(e.rstrip("/").rsplit("/", 1)[-1]) == MARKER]
            if len(stale) < len(entries):
                raise OutputError(
                    f"output {self.url} is not empty and was not made by strokeray: it is never written"
                    " into or cleared; choose a new or empty folder"
                )
            for entry in stale:  # a first claim killed while writing its marker: nothing else was written
                fs.rm(entry)
        elif marker["stage"] != self.stage:
            raise OutputError(
                f"output {self.url} holds a strokeray {marker['stage']} output, not a {self.stage}"
                " one; choose another folder"
            )
        else:
            same = digest is None or marker.get("digest") == digest
            if not same and not overwrite:
                raise OutputError(
                    f"{self.url} holds a {self.stage} made with other inputs or settings; use a new"
                    " output folder or --overwrite (which removes only strokeray's own files there)"
                )
            if not same:  # --overwrite discards other work only: the same work is resumed or reused
                self.clear()
        fs.makedirs(base, exist_ok=True)
        if marker is None or marker.get("digest") != digest:
            write_json_at(fs, self.path(MARKER), self._marker_doc(digest), indent=1)
        return same

    def finished(self) -> dict | None:
        """The done document of a finished run here, else None (also for one cut short by a
        killed process of an older version, which wrote it in place: the run is then redone)."""
        return read_marker(self.fs, self.path(self.done)) if self.done else None

    def finish(self, doc: dict) -> None:
        """Write the done document: the stage's last write, after every output is in place."""
        if not self.done:
            raise ValueError(f"the {self.stage} stage names no done document")
        write_json(self.url_of(self.done), doc)

    def adopt(self, legacy: str, digest: str) -> None:
        """Mark as this stage's a folder it made before markers existed, recognised by the file
        ``legacy`` it always wrote first; a folder with a marker, or without that file, is left as is."""
        if self.marker() is None and self.fs.exists(self.path(legacy)):
            write_json_at(self.fs, self.path(MARKER), {**self._marker_doc(digest), "adopted": legacy}, indent=1)

    def _marker_doc(self, digest: str | None) -> dict:
        return {
            "stage": self.stage,
            "digest": digest,
            "strokeray_version": __version__,
            "claimed": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def clear(self) -> list[str]:
        """Remove this stage's own outputs (never the folder, never other entries); returns what went.
        An output with ``*`` is a pattern for entries a library names (Tune's state files)."""
        fs, removed = self.fs, []
        for name in self.outputs:
            paths = fs.glob(self.path(name)) if "*" in name else [self.path(name)]
            for path in paths:
                if fs.exists(path):
                    fs.rm(path, recursive=True)
                    removed.append(path.rsplit("/", 1)[-1])
        return removed
