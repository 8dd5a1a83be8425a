"""Which tasks the pipeline trains, from the dataset card (the full run is tested in tests/jobs)."""

import json

import pytest

from strokeray.learn.tasks import CLASSIFY, SEGMENT
from strokeray.stages.pipeline import trainable_tasks


def _card(folder, labels: dict, with_mask: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps({"with_mask": with_mask, "per_split": {"train": {"label": labels}}}))
    return str(folder)


def test_masks_decide_whether_the_segmenter_is_trained(tmp_path):
    assert trainable_tasks(_card(tmp_path / "a", {"0": 5, "1": 3}, with_mask=2)) == [CLASSIFY, SEGMENT]
    assert trainable_tasks(_card(tmp_path / "b", {"0": 5, "1": 3}, with_mask=0)) == [CLASSIFY]


def test_an_unlabelled_archive_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="no labelled training slices.*strokeray score"):
        trainable_tasks(_card(tmp_path / "c", {"-1": 20}, with_mask=0))


@pytest.mark.ray
def test_the_whole_pipeline_reads_and_writes_object_storage(ray_local, s3_endpoint):
    """Archive, shards, Tune experiments and Train checkpoints, registry, scores and report all on
    S3 (a moto server): nothing in the pipeline assumes a local disk."""
    import s3fs

    from strokeray.cli import build_parser, pipeline_config
    from strokeray.stages.pipeline import run_pipeline

    fs = s3fs.S3FileSystem()
    fs.mkdir("pipeline-bucket")
    args = [
        "pipeline",
        "--out",
        "s3://pipeline-bucket/run",
        "--patients",
        "6",
        "--samples",
        "1",
        "--max-epochs",
        "1",
        "--input-size",
        "64",
        "--no-preview",
    ]
    lines: list[str] = []
    result = run_pipeline(pipeline_config(build_parser().parse_args(args)), log=lines.append)
    assert result.report == "s3://pipeline-bucket/run/report/index.html"
    assert set(result.bundles) == {"classify", "segment"}
    for task in ("classify", "segment"):
        assert fs.exists(f"pipeline-bucket/run/registry/{task}/current.json")
        assert fs.exists(f"pipeline-bucket/run/evaluation/{task}.json")
        assert fs.glob(f"pipeline-bucket/run/tune/{task}-search/train/trial-*/checkpoint_*/model.safetensors")
    summary = json.loads(fs.cat("pipeline-bucket/run/score/summary.json"))
    card = json.loads(fs.cat("pipeline-bucket/run/shards/card.json"))
    assert summary["slices"] == card["slices"] > 0
    page = fs.cat("pipeline-bucket/run/report/index.html").decode()
    assert page.count("data:image/png;base64,") == len(fs.glob("pipeline-bucket/run/report/figures/*.png")) >= 7
