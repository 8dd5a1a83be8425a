"""Which tasks the pipeline trains, from the dataset card (the full run is tested in tests/jobs)."""

import json

import pytest

from strokeray.stages.pipeline import trainable_tasks


def _card(folder, labels: dict, with_mask: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps({"with_mask": with_mask, "per_split": {"train": {"label": labels}}}))
    return str(folder)


def test_masks_decide_whether_the_segmenter_is_trained(tmp_path):
    assert trainable_tasks(_card(tmp_path / "a", {"0": 5, "1": 3}, with_mask=2)) == ["classify", "segment"]
    assert trainable_tasks(_card(tmp_path / "b", {"0": 5, "1": 3}, with_mask=0)) == ["classify"]


def test_an_unlabelled_archive_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="no labelled training slices.*strokeray score"):
        trainable_tasks(_card(tmp_path / "c", {"-1": 20}, with_mask=0))
