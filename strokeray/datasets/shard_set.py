"""An ingest output as one typed object: the dataset card and the shard files it lists (the way
nnU-Net's plans manager wraps its plans file), so no reader globs ``shards/*.parquet`` or digs
``card["config"]...`` by hand."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strokeray.imaging.views import PreprocessConfig
from strokeray.io.json_files import read_json


@dataclass(frozen=True)
class ShardSet:
    url: str
    card: dict

    @classmethod
    def open(cls, url: str) -> ShardSet:
        """The ingest output at ``url``; a clear error when it holds no finished ingest."""
        url = str(url).rstrip("/")
        card = read_json(f"{url}/card.json")
        if card is None:
            raise FileNotFoundError(f"{url} holds no card.json: not a finished ingest output (run `strokeray ingest`)")
        return cls(url, card)

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess_dict)

    @property
    def preprocess_dict(self) -> dict:
        """The preprocessing as recorded (what bundles carry)."""
        return self.card["config"]["records"]["preprocess"]

    @property
    def version(self) -> str:
        """A digest of the shard files the card lists (names, rows, bytes): changes when ingest adds or redoes any."""
        return hashlib.sha256(json.dumps(self.card["shards"], sort_keys=True).encode()).hexdigest()[:16]

    def view_size(self, view: str) -> int:
        """Side in pixels of the ``classification`` or ``segmentation`` view."""
        return getattr(self.preprocess, view).size

    def files(self) -> list[str]:
        """The shard files, as URLs, in the card's order."""
        return [f"{self.url}/shards/{entry['file']}" for entry in self.card["shards"]]

    def tables(self, columns: list[str], filters=None) -> Iterator[pa.Table]:
        """Each shard file's ``columns``, one table at a time (memory stays one shard)."""
        for url in self.files():
            with fsspec.open(url, "rb") as fh:
                yield pq.read_table(fh, columns=columns, filters=filters)

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
                total += sum(rg.column(c).total_uncompressed_size for c in range(rg.num_columns)
                             if rg.column(c).path_in_schema.split(".", 1)[0] in columns)
        return total

    def label_counts(self, split: str = "train") -> np.ndarray:
        """Slices labelled 0 and 1 in ``split``."""
        counts = np.zeros(2, np.int64)
        for t in self.tables(["label", "split"]):
            labels = np.asarray(t.filter(pc.equal(t["split"], split))["label"])
            counts += [(labels == 0).sum(), (labels == 1).sum()]
        return counts
