"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin on 127.0.0.1, all state in a temp folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from strokeray.stages.runtime import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class OrthancServer:
    http: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    folder: Path

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root as strokeray addresses it."""
        return f"dicomweb+{self.http}/dicom-web"

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    @property
    def stow(self) -> str:
        return f"{self.http}/dicom-web/studies"

    def clear(self) -> None:
        """Delete every study (Orthanc's REST API), so a test starts from an empty PACS."""
        for study in requests.get(f"{self.http}/studies", timeout=30).json():
            requests.delete(f"{self.http}/studies/{study}", timeout=30).raise_for_status()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open but nothing answers, as a hung PACS."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def orthanc_available() -> bool:
    return os.access(ORTHANC, os.X_OK) and DICOMWEB_PLUGIN.is_file()


def start_orthanc(folder: Path, port: int | None = None) -> OrthancServer:
    """Start Orthanc with its own config and storage under ``folder`` (a restart on the same folder
    and port serves what was stored); skips (fails under CI) without it."""
    if not orthanc_available():
        why = f"Orthanc and its DICOMweb plugin are not installed ({ORTHANC}, {DICOMWEB_PLUGIN}): make pacs"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = {
        "Name": "strokeray-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpTimeout": 60,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - the server's lifetime, closed with it
    proc = subprocess.Popen(
        [ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    http = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}): {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{http}/dicom-web/studies", timeout=2).status_code == 200:
                return OrthancServer(http, proc, folder)
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"Orthanc did not answer within 60 s: {(folder / 'orthanc.log').read_text()[-2000:]}")


def as_stored(path: Path) -> bytes:
    """A file as a PACS would hold it: these anonymised RSNA slices lack the SOP Class UID in their
    dataset (it is only in the file meta), and a PACS refuses an instance without one."""
    import io
    import warnings

    import pydicom

    buf = io.BytesIO()
    with warnings.catch_warnings():  # their anonymised UIDs ('ID_...') are not valid UIDs: kept as they are
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path)
        if "SOPClassUID" not in ds:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
