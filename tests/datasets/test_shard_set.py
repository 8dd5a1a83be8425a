"""ShardSet over a hand-made ingest output: the split override that cross-validation folds use."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from strokeray.datasets.shard_set import ShardSet, apply_splits
from strokeray.learn.tasks import CLASSIFY, SEGMENT


@pytest.fixture
def shards(tmp_path):
    (tmp_path / "shards").mkdir()
    parts = [
        {"patient": ["a", "a", "b"], "label": [1, 1, 0], "lesion": [2, 0, 0], "split": ["train"] * 3},
        {"patient": ["c", "d", "d"], "label": [0, -1, 1], "lesion": [0, 1, -1], "split": ["test", "val", "val"]},
    ]
    for i, part in enumerate(parts):
        pq.write_table(pa.table(part), tmp_path / "shards" / f"part-{i}.parquet")
    card = {"shards": [{"file": f"part-{i}.parquet", "rows": 3} for i in range(2)]}
    (tmp_path / "card.json").write_text(json.dumps(card))
    return ShardSet.open(str(tmp_path))


def test_patient_strata_take_each_patients_highest_value(shards):
    assert shards.patient_strata("label") == {"a": 1, "b": 0, "c": 0, "d": 1}
    assert shards.patient_strata(SEGMENT.stratum_column) == {"a": 2, "b": 0, "c": 0, "d": 1}


def test_a_split_override_moves_patients_and_leaves_out_the_unnamed(shards):
    fold = shards.with_splits({"a": "test", "b": "val", "c": "train"})
    assert shards.splits is None and fold.version != shards.version
    assert fold.with_splits({"a": "test", "b": "val", "c": "train"}).version == fold.version
    split_of = {}
    for t in fold.tables(["split"]):  # patient comes along to apply the override
        split_of.update(zip(t["patient"].to_pylist(), t["split"].to_pylist()))
    assert split_of == {"a": "test", "b": "val", "c": "train", "d": ""}
    assert fold.rows("test", CLASSIFY, ["label", "patient", "split"])["patient"].to_pylist() == ["a", "a"]
    assert fold.label_counts("train").tolist() == [1, 0] and shards.label_counts("train").tolist() == [1, 2]
    # the ingest's own splits are untouched without an override
    t = pa.table({"patient": ["a"], "split": ["train"]})
    assert apply_splits(t, None) is t


def test_rows_and_column_bytes_come_from_the_footers(shards):
    assert shards.num_rows() == 6
    label = shards.column_bytes(["label"])
    assert 0 < label < shards.column_bytes(["label", "patient"])
    assert shards.column_bytes(["missing"]) == 0
