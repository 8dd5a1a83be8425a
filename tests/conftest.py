"""Shared fixtures: the real-data folder beside the checkout and small phantom archives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from strokeray.stages.runtime import free_port as _free_port

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; skips the test when absent (fails under CI, where it must exist)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data {path} is missing under CI")
        pytest.skip(f"real data {path} is absent (tests on real CT need ../shared/data)")
    return path


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> tuple[Path, object]:
    """A small TEKNOFEST-layout phantom archive with planted bad files (built once per session)."""
    from strokeray.datasets.phantom import PhantomConfig
    from strokeray.datasets.synth import SynthConfig, write_archive

    root = tmp_path_factory.mktemp("phantoms") / "archive"
    summary = write_archive(
        str(root), SynthConfig(patients=6, seed=3, phantom=PhantomConfig(size=256, slices=4), bad_files=True)
    )
    return root, summary


def zip_folder(folder: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Zip ``folder`` (plus ``extra`` members, e.g. a zip-slip name) into ``target``."""
    import zipfile

    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return target


@pytest.fixture(scope="session")
def planted_zip(phantom_archive, tmp_path_factory):
    """The phantom archive as a zip, with an unsafe member added."""
    root, summary = phantom_archive
    target = tmp_path_factory.mktemp("zips") / "phantoms (planted).zip"
    zip_folder(root, target, {"../../escape.dcm": b"zip slip"})
    return target, summary


def corrupt_zip_member(path: Path, name: str) -> None:
    """Flip bytes inside one member's stored data (a bad CRC, or a broken deflate stream)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 4
    raw[start : start + 8] = bytes(b ^ 0x5A for b in raw[start : start + 8])
    path.write_bytes(bytes(raw))


def ray_processes() -> list:
    """The processes of the local Ray this test process started (its descendants: Ray's daemons
    and workers): a test that kills a worker must not reach another Ray on the same machine."""
    import psutil

    return psutil.Process().children(recursive=True)


def ray_head_command(temp_dir: str, *extra: str) -> list[str]:
    """`ray start --head` for a test's own head: in its own temp dir (so ``stop_processes_naming``
    stops exactly it) and on free ports, beside the session's local Ray."""
    import sys

    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    cmd += [f"--ray-client-server-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    return cmd + [f"--metrics-export-port={_free_port()}", *extra]


def stop_processes_naming(temp_dir: str) -> None:
    """Stop exactly the Ray a test started with ``--temp-dir`` (`ray stop` would also stop the
    session's own local Ray): every process whose command line names that folder."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in (p.info["cmdline"] or []))]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()


def kill_after_first_chunk(cmd: list[str], out: Path, **popen) -> dict:
    """Start ``cmd`` (a chunked stage's CLI) in its own process group, SIGKILL the whole group as
    soon as OUT/_state/done/chunk-00000.json appears; returns the environment it ran with."""
    import signal
    import subprocess
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **popen
    )
    marker = out / "_state" / "done" / "chunk-00000.json"
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the first chunk never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return env


def score_command(src: str, out: Path, bundles: tuple[str, str], files_per_chunk: int) -> list[str]:
    """`strokeray score` in a subprocess with both bundles, every slice positive (threshold 0), 2 CPUs."""
    import sys

    return [
        *(sys.executable, "-m", "strokeray.cli", "score", src, str(out)),
        *("--classifier", bundles[0], "--segmenter", bundles[1], "--threshold", "0"),
        *("--files-per-chunk", str(files_per_chunk), "--num-cpus", "2"),
    ]


def phantom_shards(root: Path, seed: int, patients: int = 16) -> str:
    """Ingested phantom shards (128 px, 6 slices a patient, stratified patient split) under ``root``."""
    from strokeray.datasets.phantom import PhantomConfig
    from strokeray.datasets.splits import SplitConfig
    from strokeray.datasets.synth import SynthConfig, write_archive
    from strokeray.stages.ingest import IngestConfig, run_ingest
    from strokeray.stages.manifest import ManifestConfig

    write_archive(
        str(root / "archive"),
        SynthConfig(patients=patients, seed=seed, png=False, phantom=PhantomConfig(size=128, slices=6)),
    )
    split = SplitConfig(mode="stratified", use_layout_splits=False)
    run_ingest(
        str(root / "archive"),
        str(root / "shards"),
        IngestConfig(manifest=ManifestConfig(split=split)),
        log=lambda *_: None,
    )
    return str(root / "shards")


def tiny_bundle(path: Path, task: str) -> str:
    """A small untrained model as a bundle: plumbing that scores does not depend on its skill."""
    import torch

    from strokeray.imaging.views import PreprocessConfig
    from strokeray.learn.bundle import save_bundle
    from strokeray.learn.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(task=task, backbone="resnet18", num_classes=2 if task == "classify" else 3)
    save_bundle(
        str(path),
        build_model(cfg),
        cfg,
        {
            "task": task,
            "input_size": 64,
            "windows": [w.__dict__ for w in PreprocessConfig().windows],
            "preprocess": PreprocessConfig().to_dict(),
        },
    )
    return str(path)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 server (moto) on 127.0.0.1 for this session; fsspec's s3 points at it.

    Set before Ray starts, so Ray's worker processes inherit the endpoint and credentials.
    """
    import fsspec.config
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL": endpoint,  # for pyarrow's S3 (Ray Train and Tune storage) and boto
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray (2 CPUs) shared by every Ray test of the session."""
    import ray

    from strokeray.stages.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@dataclass
class PacsArchive:
    """A real PACS holding the 20 RSNA slices, a phantom series and one broken instance, and the same
    bytes as files."""

    server: object  # tests.orthanc.OrthancServer
    folder: Path  # the stored instances as files, to score the same bytes from a folder
    uids: set[str]  # every Study, Series and SOP Instance UID stored: none may reach an output


def uids_of(data: bytes) -> set[str]:
    import io
    import warnings

    import pydicom

    with warnings.catch_warnings():  # the RSNA slices' anonymised UIDs ('ID_...') are not valid UIDs
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}


def truncated_pixels(data: bytes) -> bytes:
    """A copy of a CT instance (a new SOP Instance UID) whose pixel data stops after 1,000 bytes:
    a valid header that a PACS stores, and pixels no decoder can use."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_compressed:  # a PACS refuses cut-off fragments; short native pixels it keeps
        ds.decompress()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=["truncated", data[-64:].hex()]
    )
    ds.PixelData = ds.PixelData[:1000]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="session")
def pacs(tmp_path_factory) -> PacsArchive:
    """Orthanc on 127.0.0.1 for the session, loaded over STOW-RS; stopped after."""
    from strokeray.datasets.phantom import PhantomConfig
    from strokeray.datasets.synth import SynthConfig, write_archive
    from strokeray.io.dicomweb import session, store_instances

    from .orthanc import as_stored, start_orthanc

    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        datas = [as_stored(p) for p in sorted(shared_data("rsna-ich-dicom-20").rglob("*.dcm"))]
        phantoms = tmp_path_factory.mktemp("pacs-phantoms")
        write_archive(
            str(phantoms), SynthConfig(patients=2, seed=5, png=False, phantom=PhantomConfig(size=128, slices=6))
        )
        datas += [p.read_bytes() for p in sorted(phantoms.rglob("*.dcm"))]
        datas.append(truncated_pixels(datas[-1]))  # one broken instance: quarantined, never lost
        folder = tmp_path_factory.mktemp("pacs-as-files")
        for i, data in enumerate(datas):
            (folder / f"{i:03d}.dcm").write_bytes(data)
        store_instances(session(), server.stow, datas)
        yield PacsArchive(server, folder, set().union(*map(uids_of, datas)))
    finally:
        server.stop()
