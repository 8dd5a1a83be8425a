"""2.5-D inputs: each slice's view with its neighbours' views stacked as extra channels.

A slice's neighbours are the slices above and below it in its series: the rows of one patient and
series, ordered by position along the patient axis (``z_mm``) where every slice has one, else by
``instance_number``, else by the numbers in the file name (exports such as CT-ICH's ``125 (20).jpg``
carry their order nowhere else). At the ends of a series the edge slice stands in for the missing
neighbour, so every slice gets the same channel layout: ``[below_k .. below_1, slice, above_1 ..
above_k]``, each the view's C windows.
"""

from __future__ import annotations

import re

import numpy as np

# the columns ``series_order`` reads besides the image
ORDER_COLUMNS = ("patient", "series", "z_mm", "instance_number", "source")


def natural_key(name: str) -> tuple:
    """Sort key reading digit runs as numbers: ``125 (9).jpg`` before ``125 (10).jpg``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def series_order(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row order, series number of each ordered row): rows grouped by (patient, series), each
    series ordered along the patient axis as the module says."""
    patients = np.asarray(batch["patient"]).astype(str)
    series = np.asarray(batch["series"]).astype(str) if "series" in batch else np.full(len(patients), "")
    keys = np.char.add(np.char.add(patients, "\x00"), series)
    _, group = np.unique(keys, return_inverse=True)
    z = np.asarray(batch["z_mm"], np.float64) if "z_mm" in batch else np.full(len(keys), np.nan)
    inst = np.asarray(batch["instance_number"], np.int64) if "instance_number" in batch else np.full(len(keys), -1)
    sources = np.asarray(batch["source"]).astype(str)
    by_group = np.argsort(group, kind="stable")
    members = np.split(by_group, np.cumsum(np.bincount(group))[:-1]) if len(group) else []
    order: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    for g, rows in enumerate(members):  # one pass per series, not a scan of all rows per series
        if np.isfinite(z[rows]).all():
            rank = np.lexsort((inst[rows], z[rows]))
        elif (inst[rows] >= 0).all():
            rank = np.argsort(inst[rows], kind="stable")
        else:
            rank = np.asarray(sorted(range(len(rows)), key=lambda i: natural_key(str(sources[rows[i]]))), np.int64)
        order.append(rows[rank])
        groups.append(np.full(len(rows), g))
    if not order:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(order), np.concatenate(groups)


def neighbour_index(groups: np.ndarray, k: int) -> np.ndarray:
    """(N, 2k + 1) row numbers: each row's k neighbours below, itself, k above, within its own
    series (``groups`` numbers the series of rows in series order; the edge row stands in for a
    missing neighbour)."""
    groups = np.asarray(groups)
    if np.any(np.diff(groups) < 0):
        raise ValueError("2.5-D stacking needs the rows grouped by series (series_order's order)")
    index = np.arange(len(groups))
    starts = np.searchsorted(groups, groups, side="left")
    ends = np.searchsorted(groups, groups, side="right") - 1
    return np.stack([np.clip(index + d, starts, ends) for d in range(-k, k + 1)], axis=1)


def stack_neighbours(images: np.ndarray, groups: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(N, C, H, W) views in series order -> (len(rows), C * (2k + 1), H, W): each of ``rows``
    (default all) with the k slices below and above it in its own series as extra channels."""
    if k == 0:
        return images if rows is None else images[rows]
    index = neighbour_index(groups, k)
    if rows is not None:
        index = index[rows]
    return images[index].reshape(len(index), -1, *images.shape[2:])


def with_context(batch: dict[str, np.ndarray], image_column: str, k: int) -> dict[str, np.ndarray]:
    """``batch`` (numpy columns, whole series) in series order, its ``image_column`` replaced by
    the 2.5-D stack of ``k`` neighbours a side."""
    order, groups = series_order(batch)
    out = {name: np.asarray(col)[order] for name, col in batch.items()}
    out[image_column] = stack_neighbours(out[image_column], groups, k)
    return out
