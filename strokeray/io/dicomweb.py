"""A small DICOMweb client (PS3.18): QIDO-RS search, WADO-RS instance retrieval, STOW-RS store.

Instances travel as their raw Part 10 bytes, never parsed here, so a broken instance reaches the
tolerant decoder and its quarantine like a broken file would. Errors are split by what a run can
do about them: ``DicomwebUnavailable`` (refused, timed out, 5xx, 429: the server, not the object)
must stop the run so that a re-run resumes; ``FileNotFoundError`` (404) and ``DicomwebError``
(other 4xx, a malformed answer) belong to one object and quarantine it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from strokeray.io.errors import SourceUnavailable

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# DICOM JSON tags (PS3.18 F.2) the listing needs.
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"
PAGE = 1000  # QIDO results per request (servers cap pages; we follow with offsets)


class DicomwebError(OSError):
    """A request the server answered with an error that concerns one object (or a bad answer)."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class DicomwebUnavailable(SourceUnavailable):
    """The server cannot serve now (refused, timed out, overloaded): stop, keep what is done, re-run."""


@dataclass(frozen=True)
class DicomwebTimeouts:
    connect_s: float = 10.0
    read_s: float = 120.0  # one instance of a large multi-frame object can take a while
    retries: int = 2  # per idempotent request, with backoff, before giving up as unavailable


TIMEOUT_ENV = "STROKERAY_DICOMWEB_TIMEOUT_S"


def timeouts_from_env() -> DicomwebTimeouts:
    """Default timeouts; $STROKERAY_DICOMWEB_TIMEOUT_S sets the read timeout (a slow PACS, a test)."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DicomwebTimeouts()
    try:
        read_s = float(value)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be seconds, not {value!r}") from None
    return DicomwebTimeouts(connect_s=min(10.0, read_s), read_s=read_s)


def session(timeouts: DicomwebTimeouts = DicomwebTimeouts()) -> requests.Session:
    """A session that retries idempotent requests on connection errors and 502/503/504."""
    s = requests.Session()
    retry = Retry(
        total=timeouts.retries,
        backoff_factor=0.5,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def _request(s: requests.Session, method: str, url: str, timeouts: DicomwebTimeouts, **kw) -> requests.Response:
    try:
        resp = s.request(method, url, timeout=(timeouts.connect_s, timeouts.read_s), **kw)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DicomwebUnavailable(f"DICOMweb server {url.split('?')[0]} did not answer: {exc}") from exc
    if resp.status_code in (429,) or resp.status_code >= 500:
        raise DicomwebUnavailable(f"DICOMweb server answered {resp.status_code} to {method} {_short(url)}")
    if resp.status_code == 404:
        raise FileNotFoundError(f"DICOMweb: no such resource: {_short(url)}")
    if resp.status_code >= 400:
        raise DicomwebError(f"DICOMweb answered {resp.status_code} to {method} {_short(url)}", resp.status_code)
    return resp


def _short(url: str) -> str:
    return url if len(url) < 200 else url[:200] + "..."


def search(
    s: requests.Session, url: str, params: dict | None = None, timeouts: DicomwebTimeouts = DicomwebTimeouts()
) -> list[dict]:
    """Every QIDO-RS result at ``url`` (``.../studies``, ``.../studies/S/instances``), page by page."""
    out: list[dict] = []
    offset = 0
    while True:
        query = {**(params or {}), "limit": str(PAGE), "offset": str(offset)}
        resp = _request(s, "GET", url, timeouts, params=query, headers={"Accept": DICOM_JSON})
        if resp.status_code == 204 or not resp.content.strip():
            return out
        try:
            page = resp.json()
        except ValueError as exc:
            raise DicomwebError(f"QIDO-RS answer from {_short(url)} is not JSON: {exc}") from exc
        if not isinstance(page, list):
            raise DicomwebError(f"QIDO-RS answer from {_short(url)} is not a list of datasets")
        out.extend(page)
        if len(page) < PAGE:
            return out
        offset += len(page)


def first_value(dataset: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON dataset ('' when absent)."""
    values = (dataset.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def retrieve_instance(
    s: requests.Session,
    url: str,
    max_bytes: int,
    timeouts: DicomwebTimeouts = DicomwebTimeouts(),
) -> bytes:
    """The Part 10 bytes of one instance (``.../studies/S/series/SE/instances/I``), as stored.

    ``transfer-syntax=*`` asks for the stored encoding, so nothing is transcoded on the way; at
    most ``max_bytes + 1`` bytes are read, so the caller can refuse an oversized object.
    """
    accept = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
    resp = _request(s, "GET", url, timeouts, headers={"Accept": accept}, stream=True)
    body = bytearray()
    try:
        for chunk in resp.iter_content(1 << 20):
            body += chunk
            if len(body) > max_bytes + 64 * 1024:  # room for the multipart framing
                break
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DicomwebUnavailable(f"DICOMweb server {_short(url)} broke off: {exc}") from exc
    finally:
        resp.close()
    parts = list(multipart_parts(resp.headers.get("Content-Type", ""), bytes(body)))
    if len(parts) != 1:
        raise DicomwebError(f"WADO-RS answer for one instance held {len(parts)} parts")
    return parts[0][: max_bytes + 1]


def multipart_parts(content_type: str, body: bytes) -> Iterator[bytes]:
    """The payloads of a ``multipart/related`` body (RFC 2046), headers stripped.

    A body that is not multipart (some servers answer one instance as plain application/dicom)
    is its own single part.
    """
    if not content_type.lower().startswith("multipart/"):
        yield body
        return
    boundary = _boundary(content_type)
    if not boundary:
        raise DicomwebError(f"multipart answer without a boundary: {content_type!r}")
    delimiter = b"--" + boundary.encode("ascii")
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            return
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise DicomwebError("multipart part without a header/body separator")
        # The CRLF before the next delimiter belongs to the delimiter, not the payload.
        yield payload[:-2] if payload.endswith(b"\r\n") else payload
    raise DicomwebError("multipart answer cut off before its closing delimiter")


def multipart_body(instances: Iterable[bytes]) -> tuple[str, bytes]:
    """(Content-Type, body) of a ``multipart/related`` message of DICOM instances (STOW-RS)."""
    boundary = f"strokeray-{uuid.uuid4().hex}"
    body = bytearray()
    for data in instances:
        body += f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode("ascii") + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    return f'multipart/related; type="{DICOM}"; boundary={boundary}', bytes(body)


def _boundary(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    return ""


def store_instances(
    s: requests.Session,
    url: str,
    instances: Iterable[bytes],
    timeouts: DicomwebTimeouts = DicomwebTimeouts(),
) -> dict:
    """STOW-RS: POST Part 10 ``instances`` to ``url`` (``.../studies``); the server's answer (DICOM JSON).

    Raises DicomwebError when the server reports any instance as failed (FailedSOPSequence).
    """
    content_type, body = multipart_body(instances)
    headers = {"Content-Type": content_type, "Accept": DICOM_JSON}
    resp = _request(s, "POST", url, timeouts, data=body, headers=headers)
    answer = resp.json() if resp.content.strip() else {}
    failed = (answer.get("00081198") or {}).get("Value") or []  # FailedSOPSequence
    if failed:
        raise DicomwebError(f"STOW-RS: the server refused {len(failed)} instance(s): {failed[:3]}")
    return answer
