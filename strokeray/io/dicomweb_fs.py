"""A DICOMweb server as an fsspec filesystem: ``dicomweb+http://HOST:PORT/dicom-web``.

Listing is QIDO-RS, reading an instance is WADO-RS, so every stage that reads sources (listing,
chunking, resume, quarantine) reads a PACS unchanged. The root may narrow the search:

    dicomweb+http://pacs:8042/dicom-web                               every study
    dicomweb+http://pacs:8042/dicom-web/studies/1.2.3                 one study
    dicomweb+http://pacs:8042/dicom-web?StudyInstanceUID=1.2.3,1.2.4&ModalitiesInStudy=CT&StudyDate=20260101-

(the query is QIDO-RS study-level matching, passed through; with one modality, instances of other
modalities in those studies are left out too, and SEG, SR and other non-image objects always are).
Instances are addressed by their real UIDs (``.../studies/S/series/SE/instances/I``), which stay
in the manifest that re-runs read; ``entry_name`` gives each a pseudonymous name, which is all
that reaches the outputs.
"""

from __future__ import annotations

import posixpath
from urllib.parse import parse_qsl, urlsplit

from fsspec.implementations.memory import MemoryFile
from fsspec.spec import AbstractFileSystem

from strokeray.io.dicomweb import (
    MODALITY,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    DicomwebError,
    DicomwebTimeouts,
    first_value,
    retrieve_instance,
    search,
    session,
    timeouts_from_env,
)
from strokeray.io.pseudonym import pseudonym

PROTOCOLS = ("dicomweb+http", "dicomweb+https")
# Objects that are never images to score: results stored beside the CT (ours among them), reports,
# presentation states. Not listed at all, so a re-run does not quarantine last run's SEG and SR.
NOT_IMAGES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "DOC", "REG", "PLAN"})
MAX_INSTANCE_BYTES = 1 << 30


def is_dicomweb(uri: str) -> bool:
    return uri.split("://", 1)[0] in PROTOCOLS


class DicomwebFileSystem(AbstractFileSystem):
    """Studies and series as folders, instances as files; read-only."""

    protocol = PROTOCOLS
    root_marker = ""

    def __init__(self, scheme: str = "http", timeouts: DicomwebTimeouts | None = None, **kw) -> None:
        super().__init__(**kw)
        self.scheme = scheme
        self.timeouts = timeouts or timeouts_from_env()
        self._session = None

    @classmethod
    def _strip_protocol(cls, path):
        path = path if isinstance(path, str) else str(path)
        for proto in PROTOCOLS:
            if path.startswith(proto + "://"):
                path = path[len(proto) + 3 :]
        return path.rstrip("/")

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {"scheme": "https"} if str(path).startswith("dicomweb+https://") else {}

    @property
    def http(self):
        if self._session is None:
            self._session = session(self.timeouts)
        return self._session

    def full_uri(self, path: str) -> str:
        return f"dicomweb+{self.scheme}://{self._strip_protocol(path)}"

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    # -- addressing ------------------------------------------------------------------------------
    @staticmethod
    def _split(path: str) -> tuple[str, dict[str, str], list[str]]:
        """(service root ``host/prefix``, query, the UIDs after it: [study, series, instance])."""
        parts = urlsplit("//" + path)
        segs = [s for s in parts.path.split("/") if s]
        uids: list[str] = []
        base = segs
        for i, seg in enumerate(segs):
            if seg == "studies":
                base, rest = segs[:i], segs[i + 1 :]
                uids = [rest[j] for j in range(0, len(rest), 2) if j < len(rest)]
                names = rest[1::2]
                if names and names != ["series", "instances"][: len(names)]:
                    raise ValueError(f"not a DICOMweb resource path: {path}")
                break
        root = parts.netloc + ("/" + "/".join(base) if base else "")
        return root, dict(parse_qsl(parts.query)), uids

    @staticmethod
    def instance_path(root: str, study: str, series: str, sop: str) -> str:
        return f"{root}/studies/{study}/series/{series}/instances/{sop}"

    def entry_name(self, path: str) -> str:
        """The name an instance goes by in every output: pseudonyms of its UIDs, never the UIDs."""
        _, _, uids = self._split(self._strip_protocol(path))
        study, series, sop = (uids + ["", "", ""])[:3]
        return posixpath.join(
            pseudonym(study, "study"), pseudonym(series, "series"), pseudonym(sop, "instance") + ".dcm"
        )

    # -- listing ---------------------------------------------------------------------------------
    def _studies(self, root: str, query: dict[str, str]) -> list[str]:
        wanted = [u for u in query.pop("StudyInstanceUID", "").split(",") if u]
        found = search(self.http, self._url(f"{root}/studies"), query, self.timeouts)
        uids = [first_value(d, STUDY_UID) for d in found]
        return [u for u in uids if u and (not wanted or u in wanted)]

    def _instances(self, root: str, study: str, series: str | None, modality: str | None) -> dict[str, dict]:
        where = f"{root}/studies/{study}" + (f"/series/{series}" if series else "")
        params = {"includefield": f"{SERIES_UID},{MODALITY}"}
        out: dict[str, dict] = {}
        for d in search(self.http, self._url(f"{where}/instances"), params, self.timeouts):
            se, sop = series or first_value(d, SERIES_UID), first_value(d, SOP_UID)
            if not (se and sop):
                raise DicomwebError(f"QIDO-RS instance without series or SOP instance UID in study {study}")
            kind = first_value(d, MODALITY)
            if kind in NOT_IMAGES or (modality and kind not in ("", modality)):
                continue
            path = self.instance_path(root, study, se, sop)
            out[path] = {"name": path, "size": 0, "type": "file", "stamp": sop}
        return out

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        root, query, uids = self._split(self._strip_protocol(path))
        # One modality asked for: instances of others in the same study (a SEG or SR stored back
        # beside the CT, a scout) are not listed.
        modalities = [m for m in query.get("ModalitiesInStudy", "").split(",") if m]
        modality = modalities[0] if len(modalities) == 1 else None
        if len(uids) >= 3:
            found = {self.instance_path(root, *uids[:3]): self.info(path)}
        elif uids:
            found = self._instances(root, uids[0], uids[1] if len(uids) > 1 else None, modality)
        else:
            found = {}
            for study in self._studies(root, dict(query)):
                found.update(self._instances(root, study, None, modality))
        found = dict(sorted(found.items()))
        return found if detail else list(found)

    def ls(self, path, detail=True, **kwargs):
        found = self.find(path, detail=True)
        return list(found.values()) if detail else list(found)

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        root, query, uids = self._split(path)
        if len(uids) >= 3:
            return {"name": path, "size": 0, "type": "file", "stamp": uids[2]}
        # A folder exists when the server answers its search (a study must also match).
        if uids:
            search(self.http, self._url(f"{root}/studies/{uids[0]}/series"), None, self.timeouts)
        else:
            search(self.http, self._url(f"{root}/studies"), {"limit": "1"}, self.timeouts)
        return {"name": path, "size": 0, "type": "directory"}

    def exists(self, path, **kwargs):
        """Whether the root answers; an unreachable server raises instead of reading as 'no such input'."""
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def isdir(self, path):
        return len(self._split(self._strip_protocol(path))[2]) < 3 and self.exists(path)

    def isfile(self, path):
        return len(self._split(self._strip_protocol(path))[2]) >= 3

    # -- reading ---------------------------------------------------------------------------------
    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise PermissionError(f"{path}: a DICOMweb source is read-only (results go back with --dicom-store)")
        path = self._strip_protocol(path)
        if not self.isfile(path):
            raise IsADirectoryError(path)
        data = retrieve_instance(self.http, self._url(path), MAX_INSTANCE_BYTES, self.timeouts)
        return MemoryFile(fs=self, path=path, data=data)

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._open(path) as fh:
            return fh.read()[start:end]


def with_filters(
    src: str, studies: list[str] | None = None, since: str | None = None, modality: str | None = "CT"
) -> str:
    """``src`` narrowed by QIDO-RS study matching: these StudyInstanceUIDs, studies on or after
    ``since`` (YYYYMMDD), only ``modality`` (None: all). Other sources take no filters."""
    if not is_dicomweb(src):
        if studies or since:
            raise ValueError(f"--study and --since filter a DICOMweb source (dicomweb+http://...), not {src}")
        return src
    if since and not (len(since) == 8 and since.isdigit()):
        raise ValueError(f"--since takes a date as YYYYMMDD, not {since!r}")
    query = {}
    if studies:
        query["StudyInstanceUID"] = ",".join(studies)
    if since:
        query["StudyDate"] = f"{since}-"
    if modality:
        query["ModalitiesInStudy"] = modality
    if not query:
        return src
    base, _, existing = src.partition("?")
    merged = {**dict(parse_qsl(existing)), **query}
    return base + "?" + "&".join(f"{k}={v}" for k, v in merged.items())
