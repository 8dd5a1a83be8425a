"""List every input object under a URI: local folders, zip/tar archives, object storage.

Archive members are never extracted: each is addressed by an fsspec chained URL
(``zip://member::/path/a.zip``, ``tar://member::s3://bucket/a.tar``) and read in place. Only
names that parse back to exactly the same member and archive are addressed; members that could
escape a folder if extracted (``..``, absolute paths, links), names that would chain to another
file (``::``), names that are not UTF-8, special files (FIFOs, devices, dangling links) and
absurd sizes are reported as problems instead of entries. Every read is bounded.
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

import fsspec
import fsspec.core

from strokeray.io.errors import SourceUnavailable

# A PACS as a source. Registered by import path, so requests is imported only where one is read.
for _proto in ("dicomweb+http", "dicomweb+https"):
    fsspec.register_implementation(_proto, "strokeray.io.dicomweb_fs.DicomwebFileSystem", clobber=True)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Files that are documentation or tables, never images: listed as skipped, not quarantined.
SIDECAR_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".md", ".html", ".xml", ".yaml", ".yml", ".pdf", ".py")
# Errors of reading an archive member: a bad CRC or deflate stream, a cut-off tar.
_ARCHIVE_READ_ERRORS = (zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, ValueError, KeyError)


@dataclass(frozen=True)
class SourceEntry:
    """One readable input object."""

    uri: str  # what to hand to fsspec.open
    name: str  # path relative to the listed root (archive members: archive path + "/" + member)
    size: int
    stamp: str = ""  # what changes when the object does (mtime, ETag, member CRC): finds stale manifests


@dataclass(frozen=True)
class SourceProblem:
    """An object that was listed but must not be read."""

    source: str
    reason: str  # unsafe_member, unsafe_name, not_regular_file, oversized_member, corrupt_archive
    detail: str


@dataclass
class Listing:
    entries: list[SourceEntry]
    problems: list[SourceProblem]
    skipped: list[str]  # sidecar files (csv, txt, ...) that are not inputs


@dataclass(frozen=True)
class SourceLimits:
    """Guards against archive bombs and endless files."""

    max_member_bytes: int = 1 << 30  # no single CT object is a gigabyte (files and archive members)
    max_ratio: float = 500.0  # uncompressed / compressed; DICOM rarely passes 20


class SourceError(OSError):
    """An object that cannot be read; ``reason`` is its quarantine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _protocol(fs) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if proto in ("file", "local") else proto


def _full_uri(fs, path: str) -> str:
    if hasattr(fs, "full_uri"):  # filesystems with several schemes (dicomweb+http/https) say which
        return fs.full_uri(path)
    proto = _protocol(fs)
    return f"{proto}://{path}" if proto else path


def printable(name: str) -> str:
    """A name that can be written anywhere (bytes that are not UTF-8 shown as \\xNN escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unsafe_name(name: str) -> str | None:
    """Why a file name cannot be addressed safely, or None (also applies to archive members)."""
    if not name or "\x00" in name:
        return "empty or NUL in name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if "::" in name or "://" in name:
        return "name contains '::' or '://', which would address another file"
    return None


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name is unsafe to use as a path, or None."""
    why = unsafe_name(name)
    if why:
        return why
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute member path"
    if ".." in norm.split("/"):
        return "member path climbs out of the archive ('..')"
    return None


def member_uri(kind: str, name: str, archive_uri: str) -> str | None:
    """The chained URL of an archive member, or None when it would not parse back to exactly
    this member of this archive (so no name can make fsspec open another file)."""
    uri = f"{kind}://{name}::{archive_uri}"
    try:
        chain = fsspec.core._un_chain(uri, {})
        outer = fsspec.core._un_chain(archive_uri, {})
    except Exception:  # noqa: BLE001 - any parse failure means "not addressable"
        return None
    return uri if len(chain) == len(outer) + 1 and chain[0][:2] == (name, kind) and chain[1:] == outer else None


def _stamp(info: dict) -> str:
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key) not in (None, ""):
            return f"{info.get('size')}:{info[key]}"
    return str(info.get("size"))


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
                        (i.filename, i.file_size, i.compress_size, i.is_dir(), False, f"crc:{i.CRC:08x}")
                        for i in zf.infolist()
                    ]
            else:
                with tarfile.open(fileobj=fh, mode="r:*") as tf:
                    members = [
                        (
                            m.name,
                            m.size,
                            m.size,
                            m.isdir(),
                            m.issym() or m.islnk() or not (m.isfile() or m.isdir()),
                            f"tar:{m.size}:{m.mtime}:{m.chksum}",
                        )
                        for m in tf.getmembers()
                    ]
    except (*_ARCHIVE_READ_ERRORS, OSError) as exc:
        return [], [SourceProblem(uri, "corrupt_archive", f"{kind} archive cannot be read: {exc}")]
    for name, size, packed, is_dir, is_link, stamp in members:
        if is_dir:
            continue
        why = unsafe_member_name(name)
        if why is None and is_link:
            why = "link or special file member"
        address = member_uri(kind, name, uri) if why is None else None
        if why is None and address is None:
            why = "member name does not address this member unambiguously"
        if why or address is None:
            problems.append(SourceProblem(f"{kind}://{printable(name)}::{uri}", "unsafe_member", str(why)))
            continue
        if size > limits.max_member_bytes or (packed > 0 and size / packed > limits.max_ratio and size > 1 << 20):
            problems.append(
                SourceProblem(address, "oversized_member", f"{size} bytes uncompressed from {packed} compressed")
            )
            continue
        if name.lower().endswith(SIDECAR_SUFFIXES):
            continue
        entries.append(SourceEntry(address, posixpath.join(posixpath.basename(path), name), int(size), stamp))
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
        kind = info.get("type")
        if kind == "directory":
            continue
        # Filesystems that address objects by identifiers (DICOMweb UIDs) name them pseudonymously.
        rel = fs.entry_name(path) if hasattr(fs, "entry_name") else posixpath.relpath(path, base) if base else path
        shown = _full_uri(fs, printable(path))
        why = unsafe_name(path)
        if why:
            problems.append(SourceProblem(shown, "unsafe_name", why))
        elif kind != "file":  # FIFOs, sockets, devices, links to them or to nothing: reading could hang
            problems.append(SourceProblem(shown, "not_regular_file", f"not a regular file (type {kind})"))
        elif is_archive(path):
            got, bad = _archive_members(fs, path, limits)
            prefix = posixpath.dirname(rel)
            entries.extend(
                SourceEntry(e.uri, posixpath.join(prefix, e.name) if prefix else e.name, e.size, e.stamp) for e in got
            )
            problems.extend(bad)
        elif path.lower().endswith(SIDECAR_SUFFIXES):
            skipped.append(rel)
        elif int(info.get("size") or 0) > limits.max_member_bytes:
            problems.append(SourceProblem(shown, "oversized_member", f"{info.get('size')} bytes"))
        else:
            entries.append(SourceEntry(_full_uri(fs, path), rel, int(info.get("size") or 0), _stamp(info)))
    entries.sort(key=lambda e: e.name)
    return Listing(entries, problems, skipped)


def read_bytes(uri: str, limit: int = SourceLimits.max_member_bytes) -> bytes:
    """The bytes of one listed object (archive members are read in place), at most ``limit``.

    Raises SourceError: ``oversized_member`` past the limit (a file that grew since listing),
    ``corrupt_archive`` for a bad member stream, ``unreadable`` for any other I/O failure.
    """
    data = read_head(uri, limit + 1)
    if len(data) > limit:
        raise SourceError("oversized_member", f"more than {limit} bytes")
    return data


def read_head(uri: str, n: int) -> bytes:
    """The first ``n`` bytes of an object (enough for a DICOM header without its pixels)."""
    try:
        with fsspec.open(uri, "rb") as fh:
            return fh.read(n)
    except _ARCHIVE_READ_ERRORS as exc:
        raise SourceError("corrupt_archive", f"archive member cannot be read: {type(exc).__name__}: {exc}") from exc
    except (SourceError, SourceUnavailable):
        raise
    except ConnectionError as exc:  # before OSError, which it is: the server, not this object
        raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise SourceError("unreadable", f"{type(exc).__name__}: {exc}") from exc
