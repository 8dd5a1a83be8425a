"""List every input object under a URI: local folders, zip/tar archives, object storage.

Archive members are never extracted: each is addressed by an fsspec chained URL
(``zip://member::/path/a.zip``, ``tar://member::s3://bucket/a.tar``) and read in place. Members
that could escape a folder if extracted (``..``, absolute paths, links) or that claim absurd sizes
are reported as problems instead of entries.
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
from dataclasses import dataclass

import fsspec

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Files that are documentation or tables, never images: listed as skipped, not quarantined.
SIDECAR_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".md", ".html", ".xml", ".yaml", ".yml", ".pdf", ".py")


@dataclass(frozen=True)
class SourceEntry:
    """One readable input object."""

    uri: str  # what to hand to fsspec.open
    name: str  # path relative to the listed root (archive members: archive path + "/" + member)
    size: int


@dataclass(frozen=True)
class SourceProblem:
    """An object that was listed but must not be read."""

    source: str
    reason: str  # unsafe_member, oversized_member, corrupt_archive
    detail: str


@dataclass
class Listing:
    entries: list[SourceEntry]
    problems: list[SourceProblem]
    skipped: list[str]  # sidecar files (csv, txt, ...) that are not inputs


@dataclass(frozen=True)
class SourceLimits:
    """Guards against archive bombs."""

    max_member_bytes: int = 1 << 30  # no single CT object is a gigabyte
    max_ratio: float = 500.0  # uncompressed / compressed; DICOM rarely passes 20


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _protocol(fs) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if proto in ("file", "local") else proto


def _full_uri(fs, path: str) -> str:
    proto = _protocol(fs)
    return f"{proto}://{path}" if proto else path


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe to use as a path, or None."""
    if not name or "\x00" in name:
        return "empty or NUL in member name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute member path"
    if ".." in norm.split("/"):
        return "member path climbs out of the archive ('..')"
    return None


def _archive_members(fs, path: str, limits: SourceLimits) -> tuple[list[SourceEntry], list[SourceProblem]]:
    uri = _full_uri(fs, path)
    entries: list[SourceEntry] = []
    problems: list[SourceProblem] = []
    kind = "zip" if path.lower().endswith(".zip") else "tar"
    try:
        with fs.open(path, "rb") as fh:
            if kind == "zip":
                with zipfile.ZipFile(fh) as zf:
                    members = [
                        (i.filename, i.file_size, i.compress_size, i.is_dir(), False) for i in zf.infolist()
                    ]
            else:
                with tarfile.open(fileobj=fh, mode="r:*") as tf:
                    members = [
                        (m.name, m.size, m.size, m.isdir(), m.issym() or m.islnk() or not (m.isfile() or m.isdir()))
                        for m in tf.getmembers()
                    ]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        return [], [SourceProblem(uri, "corrupt_archive", f"{kind} archive cannot be read: {exc}")]
    for name, size, packed, is_dir, is_link in members:
        if is_dir:
            continue
        member_uri = f"{kind}://{name}::{uri}"
        why = unsafe_member_name(name)
        if why is None and is_link:
            why = "link or special file member"
        if why:
            problems.append(SourceProblem(member_uri, "unsafe_member", why))
            continue
        if size > limits.max_member_bytes or (packed > 0 and size / packed > limits.max_ratio and size > 1 << 20):
            problems.append(
                SourceProblem(member_uri, "oversized_member", f"{size} bytes uncompressed from {packed} compressed")
            )
            continue
        if name.lower().endswith(SIDECAR_SUFFIXES):
            continue
        entries.append(SourceEntry(member_uri, posixpath.join(posixpath.basename(path), name), int(size)))
    return entries, problems


def list_inputs(uri: str, limits: SourceLimits = SourceLimits()) -> Listing:
    """Every input object under ``uri`` (a file, folder, archive or bucket prefix), sorted by name."""
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/") or root
    if fs.isdir(root):
        files = fs.find(root, detail=True)
    elif fs.exists(root):
        files = {root: fs.info(root)}
    else:
        raise FileNotFoundError(f"no such input: {uri}")
    entries: list[SourceEntry] = []
    problems: list[SourceProblem] = []
    skipped: list[str] = []
    base = root if fs.isdir(root) else posixpath.dirname(root)
    for path, info in sorted(files.items()):
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(path, base) if base else path
        if is_archive(path):
            got, bad = _archive_members(fs, path, limits)
            prefix = posixpath.dirname(rel)
            entries.extend(SourceEntry(e.uri, posixpath.join(prefix, e.name) if prefix else e.name, e.size) for e in got)
            problems.extend(bad)
        elif path.lower().endswith(SIDECAR_SUFFIXES):
            skipped.append(rel)
        else:
            entries.append(SourceEntry(_full_uri(fs, path), rel, int(info.get("size") or 0)))
    entries.sort(key=lambda e: e.name)
    return Listing(entries, problems, skipped)


def read_bytes(uri: str) -> bytes:
    """The bytes of one listed object (archive members are read in place)."""
    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def read_head(uri: str, n: int) -> bytes:
    """The first ``n`` bytes of an object (enough for a DICOM header without its pixels)."""
    with fsspec.open(uri, "rb") as fh:
        return fh.read(n)
