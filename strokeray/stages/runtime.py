"""Connect to Ray: the cluster named by RAY_ADDRESS, else a local Ray started in-process."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs

from strokeray.io.shard_schema import binary_rows, stored_layout


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process; local runs get ``num_cpus`` (default: all cores).

    Every worker process of the run is told where its cluster's State API is: Ray Train's
    placement-group cleaner otherwise finds it by scanning this machine's processes, which fails
    where two Rays run on one machine (a test suite beside a run, two runs on a workstation), and
    then the CPUs of every stopped Tune trial stay reserved and later stages wait forever."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    else:
        # The dashboard serves the State API, through which the cleaner learns that a run's
        # controller died (a Tune trial stopped early). address="local": a new Ray of this run's
        # own, as documented (only RAY_ADDRESS joins a cluster). Ray's default would join the last
        # `ray start` cluster of this machine, and fail if that one is gone but left its address file.
        port = free_port()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_port=port,
            runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
            log_to_driver=True,
            configure_logging=False,
        )


def _import_modules(modules: tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)


def warm_workers(*modules: str) -> list:
    """Have one task worker per CPU that is free now import ``modules``, without waiting for it.

    A stage's first tasks otherwise pay the imports (Ray Data, the decoders: about a second a
    worker here) after the driver's own first work; started before it, the two overlap, and Ray's
    worker pool keeps the warmed workers for the run's tasks. Only CPUs already up are asked for,
    so an autoscaling cluster starts no node for this. Returns the tasks' refs (nothing needs them)."""
    import ray

    task = ray.remote(num_cpus=1)(_import_modules)
    return [task.remote(modules) for _ in range(int(ray.available_resources().get("CPU", 0)))]


def with_tensors(table: pa.Table) -> pa.Table:
    """``table`` with its stored image columns (``io.shard_schema``) as Ray's tensor type: what
    Ray Data hands a function as an (N, *shape) array; other columns unchanged."""
    from ray.data.extensions import ArrowTensorArray

    for i, field in enumerate(table.schema):
        layout = stored_layout(field)
        if layout is not None:
            table = table.set_column(i, field.name, ArrowTensorArray.from_numpy(binary_rows(table.column(i), *layout)))
    return table


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem over fsspec for ``uri`` (so s3://, gs://, zip:: all resolve one way)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def absolute(uri: str) -> str:
    """A local path made absolute (URLs unchanged): Ray workers and Tune trials may run elsewhere."""
    return uri if "://" in uri else os.path.abspath(uri)


def capacity(now: dict, autoscaler_max: dict | None) -> dict[str, float]:
    """Per resource, the most the cluster can hold: what is up now, or what its autoscaler's node
    types can add, whichever is larger. Sizing GPU work from ``now`` alone finds 0 GPUs on a
    cluster whose GPU group scales from zero, and then refuses or under-sizes the work."""
    most = autoscaler_max or {}
    return {k: float(max(now.get(k, 0), most.get(k, 0))) for k in {*now, *most}}


def cluster_capacity() -> dict[str, float]:
    """``capacity`` of the connected cluster. The autoscaler's maxima come from the node types it
    reports to the GCS (read through Ray's own state API, as Ray Data's autoscaler reads them);
    a cluster without an autoscaler has only what is up."""
    import ray

    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: if it moves, size from what is up
        most = None
    return capacity(ray.cluster_resources(), most)


def need_gpus(capacity: dict, per_unit: float, what: str) -> int:
    """How many ``what`` (each holding ``per_unit`` GPUs) ``capacity`` holds at once; a clear
    error where it holds none, instead of work that waits forever for a GPU no node can have."""
    gpus = float(capacity.get("GPU", 0))
    if gpus < per_unit:
        raise RuntimeError(
            f"a {what} needs {per_unit:g} GPU(s); the cluster has {gpus:g}, counting what its "
            "autoscaler can add (none reports a GPU node type): run without --gpu, or on a "
            "cluster with GPU nodes"
        )
    return int(gpus // per_unit + 1e-9)
