"""Connect to Ray: the cluster named by RAY_ADDRESS, else a local Ray started in-process."""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process; local runs get ``num_cpus`` (default: all cores)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # The dashboard serves the State API, through which Ray Train's placement-group cleaner
        # learns that a run's controller died (a Tune trial stopped early): without it those
        # placement groups leak and later trials wait for CPUs forever.
        ray.init(num_cpus=num_cpus, include_dashboard=True, log_to_driver=True, configure_logging=False)


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem over fsspec for ``uri`` (so s3://, gs://, zip:: all resolve one way)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def absolute(uri: str) -> str:
    """A local path made absolute (URLs unchanged): Ray workers and Tune trials may run elsewhere."""
    return uri if "://" in uri else os.path.abspath(uri)
