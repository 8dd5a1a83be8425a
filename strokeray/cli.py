"""The ``strokeray`` command: one subcommand per stage, plus ``pipeline`` for all of them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from strokeray import __version__

TASK_NAMES = ("classify", "segment")  # learn.tasks.TASKS' names (importing it would load torch for --help)
PATIENT_POOLS = ("max", "mean", "top")  # learn.metrics.PATIENT_POOLS (importing it would load OpenCV for --help)
CONFIG_DEFAULTS = "Options left out take the stage config's defaults (see the README)."


def _given(args, **fields: str) -> dict:
    """Config fields the user set: ``field="arg_name"`` pairs whose argument is not None, so that
    every default comes from the config dataclass, written once."""
    return {f: getattr(args, a) for f, a in fields.items() if getattr(args, a) is not None}


class _Deprecated(argparse.Action):
    """An old spelling that still works: stores into ``dest`` and says on stderr what to use now."""

    def __init__(self, option_strings, dest, use: str = "", **kwargs) -> None:
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated; {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _shards_argument(p) -> None:
    """SHARDS, the ingest output a stage reads, as the positional after TASK / BUNDLE (``--data`` still works)."""
    p.add_argument("shards", nargs="?", help="an ingest output folder (with shards/ and card.json)")
    p.add_argument(
        "--data",
        dest="data_old",
        action=_Deprecated,
        use="pass SHARDS as a positional argument",
        help=argparse.SUPPRESS,
    )


def _shards_of(args) -> str:
    shards = args.shards or args.data_old
    if not shards:
        raise ValueError("SHARDS (an ingest output folder) is required")
    return shards


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic head-CT phantoms in the TEKNOFEST layout",
        description="Generate phantom patients (DICOM + PNG exports + overlays + masks) in the "
        "TEKNOFEST layout <split>/<class>/DICOM|PNG|OVERLAY|MASK. Deterministic by seed. " + CONFIG_DEFAULTS,
    )
    p.add_argument("out", help="output folder or fsspec URL")
    p.add_argument("--patients", type=int, help="number of phantom patients")
    p.add_argument("--slices", type=int, help="slices per patient")
    p.add_argument("--size", type=int, help="image rows and columns")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--test-fraction", type=float, help="share of patients in Test")
    p.add_argument("--bad-files", action="store_true", help="also plant odd and corrupt files")
    p.add_argument("--no-png", action="store_true", help="skip the PNG exports")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a phantom archive made with other settings (only strokeray's own files)",
    )
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    from strokeray.datasets.phantom import PhantomConfig
    from strokeray.datasets.synth import SynthConfig
    from strokeray.stages.synth import run_synth

    cfg = SynthConfig(
        **_given(args, patients="patients", seed="seed", test_fraction="test_fraction"),
        phantom=PhantomConfig(**_given(args, size="size", slices="slices")),
        png=not args.no_png,
        bad_files=args.bad_files,
    )
    s = run_synth(args.out, cfg, overwrite=args.overwrite)
    if s is None:
        print(json.dumps({"out": args.out, "reused": True}))
        return 0
    print(
        json.dumps(
            {
                "out": args.out,
                "slices": s.slices,
                "patients": s.patients,
                "per_class": s.per_class,
                "per_split": s.per_split,
                "planted": len(s.planted),
            }
        )
    )
    return 0


def _add_decode(sub) -> None:
    p = sub.add_parser(
        "decode",
        help="decode files and print their metadata or quarantine reason (no pixels, no PHI)",
        description="Decode DICOM or PNG/JPG files as strokeray does and print one JSON line per "
        "slice (pseudonymous keys only) or per failure with its reason code. Exit status 1 when "
        "any file failed.",
    )
    p.add_argument("files", nargs="+", help="files or fsspec URLs")
    p.set_defaults(func=_cmd_decode)


def _cmd_decode(args) -> int:
    import fsspec

    from strokeray.io.decode import decode_slices
    from strokeray.io.errors import DecodeError

    failed = 0
    for path in args.files:
        try:
            with fsspec.open(path, "rb") as fh:
                data = fh.read()
            for ct in decode_slices(data, path):
                print(json.dumps({"source": path, **ct.describe()}, default=str))
        except DecodeError as err:
            failed += 1
            print(json.dumps({"source": path, "reason": err.reason.value, "detail": err.detail}))
        except FileNotFoundError as err:
            failed += 1
            print(json.dumps({"source": path, "reason": "missing", "detail": str(err)}))
    return 1 if failed else 0


def _add_preview(sub) -> None:
    p = sub.add_parser(
        "preview",
        help="preprocess every slice in a folder and draw the model views as PNGs",
        description="Decode and preprocess each file under SRC; write OUT/slices/*.png (source | "
        "classification view | segmentation view with mask), OUT/quarantine.csv, OUT/summary.json.",
    )
    p.add_argument("src", help="folder, file or fsspec URL")
    p.add_argument("out", help="output folder or fsspec URL")
    p.add_argument("--limit", type=int, default=None, help="preview at most this many files")
    p.set_defaults(func=_cmd_preview)


def _cmd_preview(args) -> int:
    from strokeray.stages.preview import PreviewConfig, run_preview

    s = run_preview(args.src, args.out, PreviewConfig(limit=args.limit))
    print(json.dumps(dataclasses.asdict(s)))
    return 0


def _labels_arguments(p, what: str) -> None:
    p.add_argument("--labels", help=what)
    p.add_argument("--labels-path-col", help="path column of the labels CSV (default path)")
    p.add_argument("--labels-label-col", help="label column: 0/1, normal/stroke, ich/no_ich, ... (default label)")
    p.add_argument("--labels-patient-col", help="patient column, the split group (default patient)")


def _labels_table(args):
    """The LabelsTable that the --labels-*-col arguments name (those a command has)."""
    from strokeray.datasets.layouts import LabelsTable

    names = {
        "path_col": "labels_path_col",
        "label_col": "labels_label_col",
        "lesion_col": "labels_lesion_col",
        "patient_col": "labels_patient_col",
    }
    return LabelsTable(**_given(args, **{f: a for f, a in names.items() if hasattr(args, a)}))


def _add_synth_lesions(sub) -> None:
    p = sub.add_parser(
        "synth-lesions",
        help="draw synthetic lesions into the lesion-free slices of a real archive (TEKNOFEST layout)",
        description="For every slice of SRC labelled lesion-free (label 0 by its class folder or --labels) "
        "with enough brain, write OUT/Hemorrhagic (a hemorrhage drawn in: intraparenchymal, subdural, "
        "epidural or intraventricular), OUT/Ischemic (an infarct drawn in) and OUT/Non-Stroke (the slice "
        "unchanged), each as PNG/<patient>_<slice>.png with MASK/ beside, and OUT/provenance.csv. "
        "Deterministic by seed. " + CONFIG_DEFAULTS,
    )
    p.add_argument("src", help="input folder, archive or URL")
    p.add_argument("out", help="output folder or URL (outside SRC)")
    _labels_arguments(p, "labels CSV; its label 0 rows are the lesion-free slices")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--limit", type=int, help="use at most this many source slices (in name order)")
    p.add_argument("--pixel-mm", type=float, help="pixel size assumed where files carry none (default 0.34)")
    p.add_argument("--workers", type=int, help="processes (default: all CPUs)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a lesion synthesis made with other settings (only strokeray's own files)",
    )
    p.set_defaults(func=_cmd_synth_lesions)


def _cmd_synth_lesions(args) -> int:
    from strokeray.datasets.lesion_synth import LesionSynthConfig
    from strokeray.stages.synth import run_lesion_synth

    cfg = LesionSynthConfig(
        labels=args.labels,
        labels_table=_labels_table(args),
        **_given(args, seed="seed", limit="limit", pixel_mm="pixel_mm", workers="workers"),
    )
    s = run_lesion_synth(args.src, args.out, cfg, overwrite=args.overwrite)
    print(json.dumps({"out": args.out, "reused": True} if s is None else dataclasses.asdict(s)))
    return 0


def _add_ingest(sub) -> None:
    from strokeray.imaging.windows import DEFAULT_WINDOWS, NAMED_WINDOWS

    p = sub.add_parser(
        "ingest",
        help="decode and preprocess an archive into Parquet shards with Ray Data",
        description="List SRC (folder, zip/tar archive, folder of archives, s3://... prefix), label it "
        "by its layout (TEKNOFEST, class folders, unlabelled), split by patient, then decode and "
        "preprocess in parallel with Ray Data into OUT/shards/*.parquet, OUT/quarantine.parquet and "
        "OUT/card.json. Re-running continues an interrupted ingest and never duplicates rows. Uses "
        "the cluster at $RAY_ADDRESS when set, else a local Ray. " + CONFIG_DEFAULTS,
    )
    p.add_argument("src", help="input folder, archive, URL, or a PACS as dicomweb+http(s)://HOST/dicom-web")
    p.add_argument("out", help="output folder or URL")
    _add_pacs_filters(p)
    _labels_arguments(p, "labels CSV (columns path, label, lesion, patient; see --labels-*-col)")
    p.add_argument("--labels-lesion-col", help="lesion column: 0/1/2 (default lesion)")
    p.add_argument(
        "--mask-lesion",
        choices=("ischemic", "hemorrhagic"),
        help="lesion class of binary masks in a mask folder beside the images (masks/, Masks_subset/)",
    )
    p.add_argument("--split", help="train,val,test ratios, e.g. 0.7,0.15,0.15")
    p.add_argument(
        "--split-mode",
        choices=("hash", "stratified"),
        help="hash (default): stable when files are added; stratified: exact class balance per split",
    )
    p.add_argument("--split-seed", type=int, help="seed of the split hash")
    p.add_argument(
        "--ignore-layout-splits", action="store_true", help="split anew even if the layout has Training/Test folders"
    )
    default_windows = ",".join(w.name for w in DEFAULT_WINDOWS)
    p.add_argument(
        "--windows",
        help="HU windows, one model input channel each: named (" + ", ".join(NAMED_WINDOWS) + ") or "
        f"name:level:width, comma-separated (default {default_windows})",
    )
    p.add_argument(
        "--keep-skull",
        action="store_true",
        help="keep skull and scalp in both views (air only outside the head; default: outside the brain)",
    )
    p.add_argument("--files-per-chunk", type=int, help="files per resumable chunk")
    p.add_argument(
        "--files-per-task", type=int, help="files one Ray task decodes and writes as one shard (~17 MB at 128)"
    )
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an ingest in OUT made with other inputs or settings (only strokeray's own files)",
    )
    p.set_defaults(func=_cmd_ingest)


def ingest_config(args):
    """The IngestConfig that `strokeray ingest` arguments describe."""
    import dataclasses

    from strokeray.datasets.slice_records import RecordConfig
    from strokeray.datasets.splits import SplitConfig
    from strokeray.imaging.overlay import HEMORRHAGIC, ISCHEMIC
    from strokeray.imaging.views import PreprocessConfig
    from strokeray.imaging.windows import parse_window
    from strokeray.stages.ingest import IngestConfig
    from strokeray.stages.manifest import ManifestConfig

    split = _given(args, mode="split_mode", seed="split_seed")
    if args.split:
        split["ratios"] = tuple(float(x) for x in args.split.split(","))
    preprocess = {}
    if args.windows is not None:
        preprocess["windows"] = tuple(parse_window(spec.strip()) for spec in args.windows.split(",") if spec.strip())
        if not preprocess["windows"]:
            raise ValueError("--windows names no window")
    if args.keep_skull:
        views = PreprocessConfig()
        preprocess["classification"] = dataclasses.replace(views.classification, strip_skull=False)
        preprocess["segmentation"] = dataclasses.replace(views.segmentation, strip_skull=False)
    return IngestConfig(
        manifest=ManifestConfig(
            labels=args.labels,
            labels_table=_labels_table(args),
            split=SplitConfig(**split, use_layout_splits=not args.ignore_layout_splits),
            mask_lesion={"ischemic": ISCHEMIC, "hemorrhagic": HEMORRHAGIC}.get(args.mask_lesion or ""),
        ),
        records=RecordConfig(preprocess=PreprocessConfig(**preprocess)),
        **_given(args, files_per_chunk="files_per_chunk", files_per_task="files_per_task", num_cpus="num_cpus"),
        overwrite=args.overwrite,
    )


def _cmd_ingest(args) -> int:
    from strokeray.stages.ingest import run_ingest

    s = run_ingest(source_of(args), args.out, ingest_config(args))
    print(json.dumps(dataclasses.asdict(s)))
    return 0


def _add_benchmark(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="measure a stage against its baselines in one run and print the ratios",
        description="ingest: slices/s of (a) pydicom decode alone, (b) the original study's per-file "
        "path, (c) strokeray ingest at 1 and 2 CPUs, plus peak RSS at N and 4N slices. "
        "train: images/s of the Ray Train loop (1 worker) against a plain PyTorch loop with the same "
        "model, batch and data in memory, for both tasks; then both models trained on phantom shards "
        "and scored on their test split against the quality targets. score: slices/s of (a) the models' "
        "batched forward passes on views in memory, (b) the original study's per-file scoring loop, "
        "(c) strokeray score, plus peak memory at N and 4N slices. demo: the demo's classifier path (phantom "
        "archive, stratified shards, the demo's search, test split) on several seeds side by side, against "
        "test slice AUC >= 0.95 on every seed. gpu: the one-command GPU check (both models trained with AMP and DDP, "
        "a two-trial search on GPU fractions, scoring with GPU actors, CPU vs GPU decisions, host-device syncs), "
        "a pass/fail table; exits 1 without a CUDA device or when a step fails.",
    )
    p.add_argument("which", choices=("ingest", "train", "score", "demo", "gpu"), help="the stage to benchmark")
    p.add_argument("--workdir", help="where archives and runs are generated and kept (default runs/benchmark[-train])")
    p.add_argument("--slices", type=int, help="ingest, score: synthetic 512x512 slices (default 1024, 512)")
    p.add_argument("--no-memory", action="store_true", help="ingest, score: skip the peak-memory comparison")
    p.add_argument(
        "--scale",
        type=int,
        default=4,
        help="score: the throughput run scores an archive this many times --slices, in 1,000-file chunks (0: none)",
    )
    p.add_argument("--epochs", type=int, default=4, help="train: epochs per throughput run, the first is warm-up")
    p.add_argument("--no-quality", action="store_true", help="train: skip the phantom quality runs")
    p.add_argument("--seeds", default="0,1,2", help="demo: the seeds, comma-separated (default 0,1,2)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd_benchmark)


def _cmd_benchmark(args) -> int:
    from strokeray.stages.stage_dir import StageDir

    workdir = (
        args.workdir
        or {
            "ingest": "runs/benchmark",
            "train": "runs/benchmark-train",
            "score": "runs/benchmark-score",
            "demo": "runs/benchmark-demo",
            "gpu": "runs/benchmark-gpu",
        }[args.which]
    )
    if args.which == "gpu":
        from strokeray.benchmarks.gpu import NoGpuError, cuda_device

        try:
            cuda_device()
        except NoGpuError as err:  # before anything is written
            print(f"strokeray benchmark gpu: {err}", file=sys.stderr)
            return 1
    # The benchmarks reuse and replace what they generated there: never in a folder of the user's.
    StageDir(workdir, f"benchmark-{args.which}", ()).claim()
    bench: Any
    if args.which == "gpu":
        from strokeray.benchmarks.gpu import run_gpu_check, table

        bench = run_gpu_check(workdir, epochs=min(args.epochs, 3))
        print(table(bench))
    elif args.which == "score":
        from strokeray.benchmarks.score import run_score_benchmark

        bench = run_score_benchmark(workdir, args.slices or 512, memory=not args.no_memory, scale=args.scale)
    elif args.which == "demo":
        from strokeray.benchmarks.demo import run_demo_benchmark

        bench = run_demo_benchmark(workdir, tuple(int(s) for s in args.seeds.split(",")))
    elif args.which == "train":
        from strokeray.benchmarks.train import run_train_benchmark

        bench = run_train_benchmark(workdir, epochs=args.epochs, quality_runs=not args.no_quality)
    else:
        from strokeray.benchmarks.ingest import run_ingest_benchmark

        bench = run_ingest_benchmark(workdir, args.slices or 1024, memory=not args.no_memory)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dataclasses.asdict(bench), fh, indent=2, default=str)
    return 1 if args.which == "gpu" and not bench.passed else 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the classifier or the segmenter on ingest shards with Ray Train",
        description="TorchTrainer (DDP, one worker per GPU, CPU workers otherwise) over the shards of "
        "an ingest. Checkpoints go to OUT/NAME; running again with the same OUT and NAME resumes. "
        "The best checkpoint (by the task's validation metric) is exported to OUT/NAME/bundle. " + CONFIG_DEFAULTS,
    )
    p.add_argument("task", choices=TASK_NAMES)
    _shards_argument(p)
    p.add_argument("--out", default="runs/train", help="storage path for runs (local or s3://; default runs/train)")
    p.add_argument("--name", help="run name (default TASK-BACKBONE); reuse it to resume")
    _train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _train_arguments(p) -> None:
    """The model and training options `train` and `crossval` share."""
    p.add_argument(
        "--backbone",
        help="classifier backbone (vgg16, vgg_small, resnet18/34/50, efficientnet_b0, densenet121) "
        "or segmenter encoder (resnet34, vgg16, densenet201, efficientnet-b0); default vgg16 / resnet34",
    )
    p.add_argument(
        "--arch", choices=("unet", "unetplusplus", "deeplabv3plus"), help="segmenter architecture (default unet)"
    )
    p.add_argument("--weights", help="pretrained weights: a torchvision weights name or a local .safetensors file")
    p.add_argument("--freeze-features", action="store_true", help="train the classifier head only")
    p.add_argument(
        "--head",
        choices=("study", "linear"),
        help="classifier head: the study's dense stack (default) or one linear layer",
    )
    p.add_argument("--dropout", type=float, help="dropout in the classifier head (default the study's 0.5)")
    p.add_argument(
        "--input-norm",
        action="store_true",
        help="standardise each input channel by the training set's mean and std (classifier; default: grey / 255)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=("constant", "cosine"), help="learning rate per epoch (default constant)")
    p.add_argument("--no-class-weights", action="store_true", help="unweighted cross-entropy for the classifier")
    p.add_argument(
        "--objective",
        choices=("slice", "patient"),
        help="the classifier's loss: per slice (default), or per patient by the top quarter of its slices "
        "(multiple-instance learning, for labels given per patient; --batch-size then counts patients)",
    )
    p.add_argument("--bag-slices", type=int, help="with --objective patient: slices drawn per patient a step (16)")
    p.add_argument(
        "--context-slices",
        type=int,
        help="2.5-D classifier input: this many neighbouring slices a side of the series as extra channels "
        "(default 0; order from slice position, instance number or file name)",
    )
    p.add_argument("--input-size", type=int, help="resize the views to this size (default: as ingested)")
    p.add_argument("--augment", type=float, help="augmentation strength (0 turns it off)")
    p.add_argument(
        "--augment-preset",
        choices=("full", "flips"),
        default="full",
        help="full: every transform (default); flips: left-right mirror only",
    )
    p.add_argument("--workers", type=int, help="training workers (one per GPU)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, AMP and pinned memory")
    p.add_argument("--seed", type=int, help="seed of weights, augmentation and shuffling (default 0)")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="the same command gives the same weights: every worker reads the splits in one order "
        "(each reads the whole split) and torch uses deterministic algorithms",
    )
    p.add_argument(
        "--metric",
        help="validation metric that picks the best checkpoint (default val_accuracy / "
        "val_competition_iou; e.g. val_auc, val_patient_auc, val_mean_lesion_iou, val_loss)",
    )


def train_config(args):
    """The TrainConfig that `strokeray train` arguments describe."""
    from strokeray.learn.augment import AugmentConfig
    from strokeray.learn.models import ModelConfig
    from strokeray.learn.tasks import get_task
    from strokeray.stages.train import TrainConfig

    model = ModelConfig(
        backbone=args.backbone or get_task(args.task).default_backbone,
        **_given(args, arch="arch", weights="weights", dropout="dropout", head="head"),
        freeze_features=args.freeze_features,
        input_norm=args.input_norm,
    )
    return TrainConfig(
        task=args.task,
        model=model,
        augment=AugmentConfig.preset(args.augment_preset, **_given(args, strength="augment")),
        **_given(
            args,
            epochs="epochs",
            batch_size="batch_size",
            lr="lr",
            weight_decay="weight_decay",
            input_size="input_size",
            num_workers="workers",
            score_metric="metric",
            schedule="schedule",
            objective="objective",
            bag_slices="bag_slices",
            context_slices="context_slices",
            seed="seed",
        ),
        balance_classes=not args.no_class_weights,
        use_gpu=args.gpu,
        deterministic=args.deterministic,
    )


def _cmd_train(args) -> int:
    from strokeray.stages.train import run_train

    r = run_train(_shards_of(args), args.out, train_config(args), args.name)
    print(json.dumps({"bundle": r.bundle, "best": r.best_metrics}, default=str))
    return 0


def _add_crossval(sub) -> None:
    p = sub.add_parser(
        "crossval",
        help="patient-grouped, stratified K-fold cross-validation of a training recipe",
        description="Each fold is a Ray Train run on SHARDS with its patients as the test split and a "
        "stratified share of the others as validation; folds run side by side where resources allow. "
        "Pooled out-of-fold predictions give slice and patient AUC, sensitivity and specificity with 95 % "
        "intervals from resampling patients (the segmenter: each fold's IoU and their mean). Writes "
        "OUT/NAME/crossval.json last; running again resumes unfinished folds. " + CONFIG_DEFAULTS,
    )
    p.add_argument("task", choices=TASK_NAMES)
    _shards_argument(p)
    p.add_argument("--out", default="runs/crossval", help="where cross-validations go (default runs/crossval)")
    p.add_argument("--name", help="its name (default TASK-BACKBONE-Kfold); reuse it to resume")
    p.add_argument("--folds", type=int, help="K (default 5)")
    p.add_argument("--val-share", type=float, help="validation share of each fold's training patients (default 0.15)")
    p.add_argument("--fold-seed", type=int, help="seed of the fold assignment (default 0)")
    p.add_argument("--parallel", type=int, help="folds at once (default: what the cluster holds)")
    p.add_argument(
        "--patient-pool",
        choices=PATIENT_POOLS,
        help="a patient's score from its slices': max (default), mean, or top: the mean of its top quarter "
        "(mean and top for labels given per patient; top is what --objective patient trains)",
    )
    p.add_argument("--overwrite", action="store_true", help="discard a cross-validation of other settings under NAME")
    _train_arguments(p)
    p.set_defaults(func=_cmd_crossval)


def crossval_config(args):
    """The CrossvalConfig that `strokeray crossval` arguments describe."""
    from strokeray.stages.crossval import CrossvalConfig

    return CrossvalConfig(
        train=train_config(args),
        **_given(
            args,
            folds="folds",
            val_share="val_share",
            seed="fold_seed",
            parallel="parallel",
            patient_pool="patient_pool",
        ),
    )


def _cmd_crossval(args) -> int:
    from strokeray.stages.crossval import run_crossval

    r = run_crossval(_shards_of(args), args.out, crossval_config(args), args.name, overwrite=args.overwrite)
    print(json.dumps({"path": r.path, "pooled": r.pooled, "intervals": r.intervals}, default=str))
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="paired comparison of two classifier cross-validations on the same slices",
        description="Slice and patient AUC of each of two finished cross-validations (OUT/NAME folders of "
        "`strokeray crossval`), B minus A with a 95 % interval from resampling patients, the same patients "
        "for both runs in every draw, and the share of draws in which B does not beat A.",
    )
    p.add_argument("a", help="the reference cross-validation (e.g. the plain baseline)")
    p.add_argument("b", help="the cross-validation compared with it")
    p.add_argument("--pool-a", choices=PATIENT_POOLS, help="A's patient pool (default: the one its run declared)")
    p.add_argument("--pool-b", choices=PATIENT_POOLS, help="B's patient pool (default: the one its run declared)")
    p.add_argument("--rounds", type=int, default=2000, help="patient resamples (default 2000)")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from strokeray.stages.crossval import compare_crossvals

    c = compare_crossvals(args.a, args.b, args.pool_a, args.pool_b, rounds=args.rounds)
    print(f"{c.slices} slices of {c.patients} patients; patient pools {c.pools[0]} (A) and {c.pools[1]} (B)")
    for k, (va, vb, d) in c.values.items():
        low, high = c.intervals[k]
        print(f"{k}: A {va:.3f}  B {vb:.3f}  B-A {d:+.3f} [{low:+.3f}, {high:+.3f}]  P(B-A <= 0) {c.below_zero[k]:.3f}")
    return 0


def _workers_argument(p, help: str) -> None:
    p.add_argument("--workers", type=int, help=help)
    p.add_argument(
        "--workers-per-trial", type=int, dest="workers", action=_Deprecated, use="use --workers", help=argparse.SUPPRESS
    )


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Ray Tune (ASHA) and publish the best model to the registry",
        description="Each trial trains with Ray Train (a TorchTrainer per trial); ASHA stops weak trials "
        "early on the validation metric. The best trial's best checkpoint becomes a new registry "
        "version (with the search's results table) and, when it beats the current one, the current "
        "best. Running again with the same OUT and NAME resumes an interrupted search. " + CONFIG_DEFAULTS,
    )
    p.add_argument("task", choices=TASK_NAMES)
    _shards_argument(p)
    p.add_argument("--out", default="runs/tune", help="storage path of searches (local or s3://; default runs/tune)")
    p.add_argument("--name", help="search name (default TASK-search); reuse it to resume")
    p.add_argument("--registry", default="runs/registry", help="model registry folder or URL (default runs/registry)")
    p.add_argument(
        "--space",
        help="search-space overrides as a JSON file or inline JSON: backbones, lr [lo, hi], "
        "weight_decay, batch_size, augment, input_size, seg_loss [[dice, ce, focal], ...]",
    )
    p.add_argument("--backbones", help="comma-separated backbones / encoders to compare (overrides --space)")
    p.add_argument("--samples", type=int, help="trials per backbone")
    p.add_argument("--max-epochs", type=int, help="epochs of a trial that is never stopped")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--reduction-factor", type=int, help="ASHA: keep 1/N of the trials at each rung")
    p.add_argument(
        "--metric",
        help="validation metric to maximise (default val_accuracy / val_competition_iou; "
        "e.g. val_auc, val_patient_auc, val_mean_lesion_iou)",
    )
    _workers_argument(p, "Ray Train workers per trial (GPUs per trial with --gpu)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="with --gpu: GPUs a trial reserves (default one per worker); "
        "a fraction such as 0.25 packs small one-worker trials onto one GPU",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="every trial reads its splits in one order (each worker the whole split) and torch uses "
        "deterministic algorithms: trials differ by their settings only, and the search repeats itself",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="discard a search of the same name made with other settings"
    )
    p.set_defaults(func=_cmd_tune)


def search_config(args):
    """The SearchConfig that `strokeray tune` arguments describe."""
    from strokeray.stages.tune import SearchConfig, SearchSpace

    space = SearchSpace()
    if args.space:
        if args.space.lstrip().startswith("{"):
            space = SearchSpace.from_json(args.space)
        else:
            with open(args.space) as fh:
                space = SearchSpace.from_json(fh.read())
    if args.backbones:
        space = dataclasses.replace(space, backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()))
    return SearchConfig(
        task=args.task,
        space=space,
        use_gpu=args.gpu,
        deterministic=args.deterministic,
        **_given(
            args,
            samples="samples",
            max_epochs="max_epochs",
            grace_period="grace_period",
            reduction_factor="reduction_factor",
            metric="metric",
            workers_per_trial="workers",
            gpus_per_trial="gpus_per_trial",
            seed="seed",
        ),
    )


def _cmd_tune(args) -> int:
    from strokeray.stages.tune import run_search

    r = run_search(
        _shards_of(args), args.out, search_config(args), args.name, registry=args.registry, overwrite=args.overwrite
    )
    print(
        json.dumps(
            {
                "search": r.path,
                "version": r.version,
                "bundle": r.bundle,
                "current": r.current,
                "resumed": r.resumed,
                "reused": r.reused,
                "best": r.best,
            },
            default=str,
        )
    )
    return 0


def _add_pacs_filters(p) -> None:
    p.add_argument(
        "--study", action="append", metavar="UID", help="DICOMweb source: only this StudyInstanceUID (repeatable)"
    )
    p.add_argument("--since", metavar="YYYYMMDD", help="DICOMweb source: only studies from this date on")
    p.add_argument(
        "--modality", default="CT", help="DICOMweb source: only studies and instances of this modality (default CT)"
    )


def source_of(args) -> str:
    """SRC with the DICOMweb filters (--study, --since, --modality) as its QIDO-RS query."""
    from strokeray.io.dicomweb_fs import with_filters

    return with_filters(args.src, args.study, args.since, args.modality or None)


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score a whole archive: stroke probability per slice, lesions, per-study volumes",
        description="Decode and preprocess SRC (folder, zip/tar, s3://...) with Ray Data, run the classifier "
        "on every slice and the segmenter on the positive ones in an actor pool, and write "
        "OUT/slices.parquet, studies.parquet, submission.csv, quarantine.parquet, summary.json (and "
        "overlays/ with --overlays). Models default to the registry's current best. Re-running the same "
        "command continues an interrupted run and rewrites nothing once it is complete. " + CONFIG_DEFAULTS,
    )
    p.add_argument(
        "src", help="archive: folder, zip/tar, folder of archives, URL, or a PACS as dicomweb+http(s)://HOST/dicom-web"
    )
    p.add_argument("out", nargs="?", help="output folder or URL")
    _add_pacs_filters(p)
    p.add_argument(
        "--out",
        dest="out_old",
        action=_Deprecated,
        use="pass OUT as the second positional argument",
        help=argparse.SUPPRESS,
    )
    p.add_argument("--classifier", help="classifier bundle (default: the registry's current best)")
    p.add_argument("--segmenter", help="segmenter bundle (default: the registry's current best)")
    p.add_argument("--no-segmenter", action="store_true", help="classify only")
    p.add_argument("--registry", default="runs/registry", help="model registry (default runs/registry)")
    p.add_argument(
        "--threshold",
        type=float,
        help="stroke probability threshold (default: the classifier bundle's, chosen on validation)",
    )
    p.add_argument("--batch-size", type=int, help="slices per model call (default 16 on CPUs, by free memory on a GPU)")
    p.add_argument(
        "--actors",
        type=int,
        help="scoring actors (default with --gpu: one per chunk of files, up to one per GPU the cluster can hold; else 1)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per scoring actor")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs each scoring actor reserves")
    p.add_argument("--threads-per-actor", type=int, help="torch threads of a CPU actor (default: the CPUs / actors)")
    p.add_argument("--overlays", action="store_true", help="write PNG overlays of positive slices")
    p.add_argument(
        "--source-masks",
        action="store_true",
        help="write each positive slice's predicted classes (0/1/2) on its source pixel grid as PNG",
    )
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="write a DICOM SEG (lesions on the source pixels) and SR (probability, decision, volumes, model "
        "versions) per positive series here; they hold the source's real UIDs, so DIR must be the hospital's",
    )
    p.add_argument(
        "--dicom-store",
        metavar="URL",
        help="store the SEG and SR in a PACS with STOW-RS (its DICOMweb root, http(s)://HOST/dicom-web)",
    )
    p.add_argument("--files-per-chunk", type=int, help="files per resumable chunk")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard scores in OUT made with other inputs, models or settings (only strokeray's own files)",
    )
    p.set_defaults(func=_cmd_score)


def score_config(args):
    """The ScoreConfig that `strokeray score` arguments describe."""
    from strokeray.stages.score import ScoreConfig

    return ScoreConfig(
        **_given(
            args,
            threshold="threshold",
            batch_size="batch_size",
            actors="actors",
            cpus_per_actor="cpus_per_actor",
            threads_per_actor="threads_per_actor",
            files_per_chunk="files_per_chunk",
            num_cpus="num_cpus",
            dicom_out="dicom_out",
            dicom_store="dicom_store",
        ),
        use_gpu=args.gpu,
        overlays=args.overlays,
        source_masks=args.source_masks,
        overwrite=args.overwrite,
    )


def _cmd_score(args) -> int:
    from strokeray.stages.score import run_score

    out = args.out or args.out_old
    if not out:
        raise ValueError("OUT (the output folder) is required")
    s = run_score(
        source_of(args),
        out,
        args.classifier,
        args.segmenter,
        args.registry,
        score_config(args),
        segment=not args.no_segmenter,
    )
    print(json.dumps(dataclasses.asdict(s)))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics of a model bundle on one split of ingest shards (test by default)",
        description="Classifier: slice- and patient-level accuracy, sensitivity, specificity, F1, "
        "ROC AUC. Segmenter: per-class IoU and Dice, mean lesion IoU, competition IoU, and the pooled "
        "IoU and Dice with 95 % patient-bootstrap intervals.",
    )
    p.add_argument(
        "bundle",
        help="a model bundle folder, or density:<HU> (a training-free segmenter: hemorrhage "
        "wherever the brain reads at least HU)",
    )
    _shards_argument(p)
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="all: every split, for shards no model was trained on (external data)",
    )
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--predictions", help="also write one row per slice to this Parquet file")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from strokeray.stages.evaluate import run_evaluate

    r = run_evaluate(args.bundle, _shards_of(args), args.split, out=args.out, predictions=args.predictions)
    print(
        json.dumps(
            {"task": r.task, "split": r.split, "slices": r.slices, "metrics": r.metrics, "intervals": r.intervals}
        )
    )
    return 0


def _add_pipeline(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="ingest, tune both models, evaluate, score and report, in one run folder",
        description="With no arguments: generate a demo archive of phantoms (with planted bad files) and "
        "run every stage on it with a local Ray, in minutes on a laptop. Work already done is reused, so a "
        "re-run or a resumed run pays only for what is missing.",
    )
    p.add_argument("--out", default="runs/demo", help="run folder, local or s3:// (default runs/demo)")
    p.add_argument("--src", help="ingest this archive instead of generating the demo (folder, zip/tar, s3://...)")
    p.add_argument("--score-src", help="score this archive (default: the ingested one)")
    p.add_argument("--patients", type=int, help="phantom patients in the demo archive (default 24)")
    p.add_argument("--seed", type=int, help="random seed of the demo archive")
    p.add_argument("--samples", type=int, help="trials per backbone in each search (default 2)")
    p.add_argument(
        "--max-epochs", type=int, help="epochs per trial (default 16 for the classifier search, 8 for the segmenter)"
    )
    p.add_argument("--backbones", help="classifier backbones to search, comma-separated (default resnet18)")
    p.add_argument("--encoders", help="segmenter encoders to search, comma-separated (default resnet18)")
    p.add_argument("--input-size", type=int, help="model input size in pixels (default 128)")
    p.add_argument("--gpu", action="store_true", help="train and score on GPUs (one per trial worker / actor)")
    _workers_argument(p, "Ray Train workers per trial (default 1)")
    p.add_argument("--no-preview", action="store_true", help="skip the preview images")
    p.add_argument("--no-report", action="store_true", help="skip the report")
    p.set_defaults(func=_cmd_pipeline)


def _pipeline_search(base, args, backbones: str | None):
    space = base.space
    if backbones:
        space = dataclasses.replace(space, backbones=tuple(b.strip() for b in backbones.split(",") if b.strip()))
    if args.input_size:
        space = dataclasses.replace(space, input_size=(args.input_size,))
    cfg = dataclasses.replace(base, space=space, use_gpu=args.gpu, **_given(args, workers_per_trial="workers"))
    if args.samples:
        cfg = dataclasses.replace(cfg, samples=args.samples)
    if args.max_epochs:
        cfg = dataclasses.replace(cfg, max_epochs=args.max_epochs, grace_period=min(cfg.grace_period, args.max_epochs))
    return cfg


def pipeline_config(args):
    """The PipelineConfig that `strokeray pipeline` arguments describe."""
    from strokeray.stages.pipeline import PipelineConfig
    from strokeray.stages.score import ScoreConfig

    base = PipelineConfig()
    return PipelineConfig(
        out=args.out,
        src=args.src,
        score_src=args.score_src,
        synth=dataclasses.replace(base.synth, **_given(args, patients="patients", seed="seed")),
        preview=None if args.no_preview else base.preview,
        classify=_pipeline_search(base.classify, args, args.backbones),
        segment=_pipeline_search(base.segment, args, args.encoders),
        score=ScoreConfig(overlays=True, use_gpu=args.gpu),
        report=not args.no_report,
    )


def _cmd_pipeline(args) -> int:
    from strokeray.stages.pipeline import run_pipeline

    r = run_pipeline(pipeline_config(args))
    print(
        json.dumps(
            {"out": r.out, "bundles": r.bundles, "evaluation": r.evaluation, "report": r.report, "seconds": r.seconds},
            default=str,
        )
    )
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="PNG figures and one self-contained HTML page of a pipeline run",
        description="Training curves, the classifier's confusion matrix and ROC, the segmenter's per-class "
        "IoU/Dice and example overlays beside the ground truth, the model-search tables and the scoring "
        "summary, from what the stages left in RUN_DIR. Writes RUN_DIR/report/index.html and figures/*.png.",
    )
    p.add_argument("run_dir", help="a pipeline run folder (e.g. runs/demo)")
    p.add_argument("--out", help="report folder (default RUN_DIR/report)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from strokeray.stages.report import run_report

    r = run_report(args.run_dir, args.out)
    print(json.dumps(dataclasses.asdict(r)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strokeray",
        description="Stroke detection and lesion segmentation on brain CT at archive scale.",
    )
    parser.add_argument("--version", action="version", version=f"strokeray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_synth,
        _add_synth_lesions,
        _add_decode,
        _add_preview,
        _add_ingest,
        _add_train,
        _add_crossval,
        _add_compare,
        _add_tune,
        _add_evaluate,
        _add_score,
        _add_pipeline,
        _add_report,
        _add_benchmark,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a bad argument, input or output folder prints one line and exits 2, a
    source that stopped answering exits 3 (set STROKERAY_DEBUG=1 for the traceback)."""
    import os

    from strokeray.io.sources import SourceUnavailable
    from strokeray.stages.stage_dir import OutputError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OutputError, ValueError, FileNotFoundError) as err:
        if os.environ.get("STROKERAY_DEBUG"):
            raise
        print(f"strokeray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except SourceUnavailable as err:  # a PACS or server down: nothing is wrong with the run, re-run it
        if os.environ.get("STROKERAY_DEBUG"):
            raise
        print(f"strokeray {args.command}: server unavailable: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
