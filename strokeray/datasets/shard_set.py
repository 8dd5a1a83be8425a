"""An ingest output as one typed object: the dataset card and the shard files it lists (the way
nnU-Net's plans manager wraps its plans file), so no reader globs ``shards/*.parquet`` or digs
``card["config"]...`` by hand."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strokeray.imaging.views import PreprocessConfig
from strokeray.io.json_files import read_json

CARD = "card.json"  # the dataset card, written last by ingest: the shards are complete


def apply_splits(table: pa.Table, splits: dict[str, str] | None) -> pa.Table:
    """``table`` with its ``split`` column replaced by each patient's split in ``splits`` ("" for a
    patient it leaves out); unchanged when ``splits`` is None."""
    if splits is None or "split" not in table.column_names:
        return table
    keys = pa.array(list(splits), pa.string())
    values = pa.array([*splits.values(), ""], pa.string())  # the last: patients the override leaves out
    index = pc.fill_null(pc.index_in(table["patient"], value_set=keys), len(keys))
    return table.set_column(table.column_names.index("split"), "split", values.take(index))


@dataclass(frozen=True)
class ShardSet:
    url: str
    card: dict
    # patient -> split replacing the ingest's splits (a cross-validation fold); None: the ingest's
    splits: dict[str, str] | None = field(default=None, compare=False)

    @classmethod
    def open(cls, url: str) -> ShardSet:
        """The ingest output at ``url``; a clear error when it holds no finished ingest."""
        url = str(url).rstrip("/")
        card = read_json(f"{url}/{CARD}")
        if card is None:
            raise FileNotFoundError(f"{url} holds no {CARD}: not a finished ingest output (run `strokeray ingest`)")
        return cls(url, card)

    @classmethod
    def of(cls, shards: str | ShardSet) -> ShardSet:
        """``shards`` itself, or the ingest output at that URL."""
        return shards if isinstance(shards, ShardSet) else cls.open(shards)

    def read_columns(self, columns: list[str]) -> list[str]:
        """The shard columns reading ``columns`` takes: the patient too when a split override applies."""
        if self.splits is not None and "split" in columns and "patient" not in columns:
            return [*columns, "patient"]
        return list(columns)

    def with_splits(self, splits: dict[str, str]) -> ShardSet:
        """These shards with the patients' splits replaced by ``splits`` (patients left out are in none)."""
        return replace(self, splits=dict(splits))

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess_dict)

    @property
    def preprocess_dict(self) -> dict:
        """The preprocessing as recorded (what bundles carry)."""
        return self.card["config"]["records"]["preprocess"]

    @property
    def version(self) -> str:
        """A digest of the shard files the card lists (names, rows, bytes) and of any split override:
        changes when ingest adds or redoes any."""
        doc = [self.card["shards"], self.splits] if self.splits is not None else self.card["shards"]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def view_size(self, view: str) -> int:
        """Side in pixels of the ``classification`` or ``segmentation`` view."""
        return getattr(self.preprocess, view).size

    def files(self) -> list[str]:
        """The shard files, as URLs, in the card's order."""
        return [f"{self.url}/shards/{entry['file']}" for entry in self.card["shards"]]

    def tables(self, columns: list[str], filters=None) -> Iterator[pa.Table]:
        """Each shard file's ``columns``, one table at a time (memory stays one shard), with the split
        override applied (its patient column then comes along); images read with ``tensor_array``."""
        for url in self.files():
            with fsspec.open(url, "rb") as fh:
                yield apply_splits(pq.read_table(fh, columns=self.read_columns(columns), filters=filters), self.splits)

    def rows(self, split: str, task, columns: list[str] | None = None) -> pa.Table:
        """The rows of ``split`` with a truth for ``task`` (a ``learn.tasks.Task``), in memory."""
        parts = [task.rows(t, split) for t in self.tables(columns or list(task.columns))]
        return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns or task.columns})

    def column_bytes(self, columns: list[str]) -> int:
        """Uncompressed bytes of ``columns`` over all shards, from the Parquet footers alone."""
        total = 0
        for url in self.files():
            with fsspec.open(url, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
            for g in range(meta.num_row_groups):
                rg = meta.row_group(g)
                total += sum(
                    rg.column(c).total_uncompressed_size
                    for c in range(rg.num_columns)
                    if rg.column(c).path_in_schema.split(".", 1)[0] in columns
                )
        return total

    def num_rows(self) -> int:
        """Rows over all shards, from the Parquet footers alone."""
        total = 0
        for url in self.files():
            with fsspec.open(url, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def patient_strata(self, column: str = "label") -> dict[str, int]:
        """Each patient's highest ``column`` value (label or lesion; unknown counts as 0): the class
        stratum that splits and cross-validation folds balance."""
        out: dict[str, int] = {}
        for t in self.tables(["patient", column]):
            for p, v in zip(t["patient"].to_pylist(), t[column].to_pylist()):
                out[p] = max(out.get(p, 0), v or 0)
        return out

    def patient_label_counts(self, split: str = "train") -> np.ndarray:
        """Patients of ``split`` whose highest label is 0 and 1 (unlabelled slices left out)."""
        labels: dict[str, int] = {}
        for t in self.tables(["patient", "label", "split"]):
            t = t.filter(pc.and_(pc.equal(t["split"], split), pc.greater_equal(t["label"], 0)))
            for p, v in zip(t["patient"].to_pylist(), t["label"].to_pylist()):
                labels[p] = max(labels.get(p, 0), v)
        values = np.asarray(list(labels.values()), np.int64)
        return np.asarray([(values == 0).sum(), (values == 1).sum()], np.int64)

    def label_counts(self, split: str = "train") -> np.ndarray:
        """Slices labelled 0 and 1 in ``split``."""
        counts = np.zeros(2, np.int64)
        for t in self.tables(["label", "split"]):
            labels = np.asarray(t.filter(pc.equal(t["split"], split))["label"])
            counts += [(labels == 0).sum(), (labels == 1).sum()]
        return counts
