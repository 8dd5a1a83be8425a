"""The model registry: versioned bundles per task, each with the search that chose it, and a
pointer to the current best. A folder on local disk or any fsspec URL (s3://...)::

    REGISTRY/<task>/v0001/model.safetensors, model.json   the bundle
                         /search.json                      the search: config, results table, best trial
                         /results.csv                      one row per trial
    REGISTRY/<task>/current.json                           {"version", "bundle", "metric", "value", ...}

A new version becomes current when there is none, when it was trained on other data or scored
with another metric (the newest search wins), or when its validation score beats the current one.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass

import fsspec

from strokeray.io.json_files import read_json, write_json

_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass
class Published:
    version: str
    bundle: str
    current: bool  # whether this version is now the task's current best


def _fs(registry: str):
    fs, base = fsspec.core.url_to_fs(registry)
    return fs, base.rstrip("/")


def _url(registry: str, *parts: str) -> str:
    return "/".join([registry.rstrip("/"), *parts])


def versions(registry: str, task: str) -> list[str]:
    """The task's versions, oldest first (only complete ones: their model.json exists)."""
    fs, base = _fs(registry)
    if not fs.exists(f"{base}/{task}"):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{base}/{task}", detail=False)]
    found = sorted((n for n in names if _VERSION.match(n)), key=lambda n: int(n[1:]))
    return [n for n in found if fs.exists(f"{base}/{task}/{n}/model.json")]


def current(registry: str, task: str) -> dict | None:
    """The task's current-best pointer, or None when nothing was published."""
    return read_json(_url(registry, task, "current.json"))


def best_bundle(registry: str, task: str) -> str:
    """The bundle URL of the task's current best; raises when the registry has none."""
    pointer = current(registry, task)
    if pointer is None:
        raise FileNotFoundError(
            f"no {task} model in the registry {registry}: run `strokeray tune {task}` or pass a bundle explicitly"
        )
    return _url(registry, task, pointer["version"])


def _becomes_current(old: dict | None, new: dict) -> bool:
    if old is None:
        return True
    if old.get("dataset") != new["dataset"] or old.get("metric") != new["metric"]:
        return True
    return float(new["value"]) > float(old["value"])


def publish(registry: str, task: str, write_bundle, search: dict, rows: list[dict], summary: dict) -> Published:
    """Add a version: ``write_bundle(url)`` writes the bundle there; the search and its results table
    go beside it; ``summary`` (metric, value, dataset, ...) feeds the current-best pointer."""
    fs, base = _fs(registry)
    existing = [int(v[1:]) for v in versions(registry, task)]
    # Versions whose bundle never completed are skipped, never overwritten.
    partial = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{base}/{task}/v*")]
    taken = existing + [int(n[1:]) for n in partial if _VERSION.match(n)]
    version = f"v{(max(taken) + 1) if taken else 1:04d}"
    folder = _url(registry, task, version)
    fs.makedirs(f"{base}/{task}/{version}", exist_ok=True)
    write_json(f"{folder}/search.json", search)
    with fs.open(f"{base}/{task}/{version}/results.csv", "w") as fh:
        fh.write(results_csv(rows))
    write_bundle(folder)  # model.json last: the version counts from here on
    pointer = {
        "version": version,
        "bundle": folder,
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **summary,
    }
    promote = _becomes_current(current(registry, task), pointer)
    if promote:
        write_json(_url(registry, task, "current.json"), pointer)
    return Published(version=version, bundle=folder, current=promote)


def results_csv(rows: list[dict]) -> str:
    """The results table as CSV (columns: the union of the rows' keys, in first-seen order)."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in columns})
    return buf.getvalue()
