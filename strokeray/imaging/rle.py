"""Run-length encoding of label masks, for storing predicted lesions in a table cell.

Format: ``"<rows>x<cols>;<class> <start> <length> ..."`` over the row-major flattened mask,
0-based starts, background (0) omitted; an empty mask is ``"<rows>x<cols>;"``.
"""

from __future__ import annotations

import numpy as np


def encode_rle(mask: np.ndarray) -> str:
    """A 2-D integer mask as run-length text."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    flat = m.reshape(-1).astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    values = flat[starts]
    keep = values != 0
    runs = " ".join(f"{v} {s} {n}" for v, s, n in zip(values[keep], starts[keep], lengths[keep]))
    return f"{m.shape[0]}x{m.shape[1]};{runs}"


def decode_rle(text: str) -> np.ndarray:
    """The uint8 mask that ``encode_rle`` encoded."""
    shape_part, _, runs = text.partition(";")
    rows, cols = (int(x) for x in shape_part.split("x"))
    flat = np.zeros(rows * cols, np.uint8)
    numbers = [int(x) for x in runs.split()]
    if len(numbers) % 3:
        raise ValueError("run-length text must hold (class, start, length) triples")
    for i in range(0, len(numbers), 3):
        value, start, length = numbers[i : i + 3]
        flat[start : start + length] = value
    return flat.reshape(rows, cols)
