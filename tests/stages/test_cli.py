import argparse
import json

import pytest

from strokeray.cli import build_parser, main

SUBCOMMANDS = [
    "synth",
    "synth-lesions",
    "decode",
    "preview",
    "ingest",
    "train",
    "crossval",
    "compare",
    "tune",
    "evaluate",
    "score",
    "pipeline",
    "report",
    "benchmark",
]


def test_the_list_above_is_every_subcommand():
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("cmd", [[], *[[c] for c in SUBCOMMANDS]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: strokeray" in out
    # argparse %-formats argument help but prints descriptions as written: "%%" there shows doubled
    assert "%%" not in out and "%(" not in out


def test_parser_knows_every_subcommand():
    text = build_parser().format_help()
    for c in SUBCOMMANDS:
        assert c in text


def test_synth_decode_and_pipeline(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--patients", "3", "--slices", "2", "--size", "128", "--bad-files"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slices"] == 6 and out["planted"] == 8
    files = sorted(str(p) for p in (tmp_path / "a").rglob("*.dcm"))
    assert main(["decode", *files]) == 1  # the planted bad files fail
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sum("reason" in x for x in lines) == 6
    assert all("Phantom" not in json.dumps(x) for x in lines)  # no patient names, ever


def test_pipeline_arguments_shape_every_stage():
    from strokeray.cli import pipeline_config

    cfg = pipeline_config(
        build_parser().parse_args(
            [
                "pipeline",
                "--out",
                "s3://b/run",
                "--src",
                "s3://b/archive",
                "--backbones",
                "vgg16, resnet50",
                "--input-size",
                "224",
                "--max-epochs",
                "3",
                "--samples",
                "4",
                "--gpu",
                "--workers-per-trial",
                "2",
                "--no-preview",
            ]
        )
    )
    assert cfg.out == "s3://b/run" and cfg.src == "s3://b/archive" and cfg.preview is None and cfg.report
    assert cfg.classify.space.backbones == ("vgg16", "resnet50") and cfg.segment.space.backbones == ("resnet18",)
    for search in (cfg.classify, cfg.segment):
        assert search.space.input_size == (224,) and search.max_epochs == 3 and search.grace_period == 3
        assert search.samples == 4 and search.use_gpu and search.workers_per_trial == 2
    assert cfg.score.use_gpu and cfg.score.overlays
    default = pipeline_config(build_parser().parse_args(["pipeline"]))
    assert default.out == "runs/demo" and default.src is None and default.synth.patients == 24
    assert default.classify.max_epochs == 16 and default.segment.max_epochs == 8 and not default.classify.use_gpu
    assert default.classify.space.schedule == ("cosine",) and default.segment.space.schedule == ("constant",)
    assert default.classify.space.input_size == (128,) and default.segment.space.input_size == (96,)


def test_options_left_out_take_the_config_defaults():
    """The CLI repeats no default: with no options each stage gets its config's defaults."""
    from strokeray.cli import crossval_config, ingest_config, score_config, search_config, train_config
    from strokeray.learn.augment import AugmentConfig
    from strokeray.learn.models import ModelConfig
    from strokeray.stages.crossval import CrossvalConfig
    from strokeray.stages.ingest import IngestConfig
    from strokeray.stages.score import ScoreConfig
    from strokeray.stages.train import TrainConfig
    from strokeray.stages.tune import SearchConfig

    parse = build_parser().parse_args
    assert train_config(parse(["train", "classify", "S"])) == TrainConfig(task="classify")
    assert train_config(parse(["train", "segment", "S"])) == TrainConfig(
        task="segment", model=ModelConfig(backbone="resnet34")
    )
    assert search_config(parse(["tune", "segment", "S"])) == SearchConfig(task="segment")
    assert search_config(parse(["tune", "classify", "S", "--deterministic"])).deterministic
    assert score_config(parse(["score", "SRC", "OUT"])) == ScoreConfig()
    assert ingest_config(parse(["ingest", "SRC", "OUT"])) == IngestConfig()
    assert ingest_config(parse(["ingest", "SRC", "OUT", "--mask-lesion", "hemorrhagic"])).manifest.mask_lesion == 2
    kept = ingest_config(parse(["ingest", "SRC", "OUT", "--keep-skull"])).records.preprocess
    assert not kept.classification.strip_skull and not kept.segmentation.strip_skull
    assert kept.classification.size == 224 and IngestConfig().records.preprocess.classification.strip_skull
    assert score_config(parse(["score", "SRC", "OUT", "--source-masks"])).source_masks
    given = train_config(parse(["train", "segment", "S", "--epochs", "3", "--augment", "0", "--workers", "1"]))
    assert (given.epochs, given.augment.strength, given.num_workers, given.batch_size) == (3, 0.0, 1, 16)
    assert crossval_config(parse(["crossval", "classify", "S"])) == CrossvalConfig(train=TrainConfig(task="classify"))
    cv = crossval_config(
        parse(
            [
                "crossval",
                "classify",
                "S",
                "--folds",
                "3",
                "--head",
                "linear",
                "--schedule",
                "cosine",
                "--no-class-weights",
                "--fold-seed",
                "2",
                "--augment-preset",
                "flips",
                "--patient-pool",
                "top",
                "--objective",
                "patient",
                "--bag-slices",
                "24",
                "--input-norm",
                "--backbone",
                "vgg_small",
            ]
        )
    )
    assert cv.train.augment == AugmentConfig.preset("flips")
    assert cv.train.model.input_norm and cv.train.model.backbone == "vgg_small"
    assert train_config(parse(["train", "classify", "S", "--context-slices", "1"])).context_slices == 1
    assert (
        cv.folds,
        cv.seed,
        cv.val_share,
        cv.train.model.head,
        cv.train.schedule,
        cv.train.balance_classes,
        cv.patient_pool,
        cv.train.objective,
        cv.train.bag_slices,
    ) == (3, 2, 0.15, "linear", "cosine", False, "top", "patient", 24)
    with pytest.raises(ValueError, match="classifier's"):
        train_config(parse(["train", "segment", "S", "--objective", "patient"]))
    with pytest.raises(ValueError, match="2.5-D"):
        train_config(parse(["train", "segment", "S", "--context-slices", "1"]))


def test_the_cli_offers_exactly_the_tasks_and_patient_pools_there_are():
    from strokeray.cli import PATIENT_POOLS, TASK_NAMES
    from strokeray.learn import metrics
    from strokeray.learn.tasks import TASKS

    assert TASK_NAMES == tuple(TASKS)
    assert PATIENT_POOLS == metrics.PATIENT_POOLS


def test_old_spellings_still_work_and_say_what_to_use(capsys):
    """Scripts written for the earlier arguments keep working: --data, score --out, --workers-per-trial."""
    args = build_parser().parse_args(["train", "classify", "--data", "S", "--epochs", "2"])
    assert "--data is deprecated" in capsys.readouterr().err
    from strokeray.cli import _shards_of

    assert _shards_of(args) == "S"
    args = build_parser().parse_args(["score", "SRC", "--out", "O"])
    assert args.out_old == "O" and "--out is deprecated" in capsys.readouterr().err
    args = build_parser().parse_args(["tune", "classify", "S", "--workers-per-trial", "2"])
    assert args.workers == 2 and "use --workers" in capsys.readouterr().err
    assert main(["train", "classify"]) == 2 and "SHARDS" in capsys.readouterr().err


def test_ingest_windows_are_the_model_channels(tmp_path, ray_local, capsys):
    import numpy as np
    import pyarrow.parquet as pq

    from strokeray.io.shard_schema import stored_layout

    src, out = tmp_path / "a", tmp_path / "o"
    assert main(["synth", str(src), "--patients", "2", "--slices", "1", "--size", "64"]) == 0
    assert main(["ingest", str(src), str(out), "--windows", "brain, edge:50:100", "--num-cpus", "2"]) == 0
    card = json.loads((out / "card.json").read_text())
    windows = card["config"]["records"]["preprocess"]["windows"]
    assert windows == [{"name": "brain", "level": 40.0, "width": 80.0}, {"name": "edge", "level": 50.0, "width": 100.0}]
    image = pq.read_table(sorted((out / "shards").glob("*.parquet"))[0], columns=["cls_image"])
    assert stored_layout(image.schema.field("cls_image")) == ((2, 224, 224), np.uint8)
    capsys.readouterr()
    assert main(["ingest", str(src), str(tmp_path / "o2"), "--windows", "brain,nope"]) == 2
    assert "unknown window 'nope'" in capsys.readouterr().err
