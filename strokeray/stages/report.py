"""`strokeray report RUN_DIR`: PNG figures and one self-contained HTML page of a pipeline run.

Reads what the stages left in ``RunLayout(RUN_DIR)``: the dataset card, each task's search
(published.json, the trials' checkpoints) and its bundle (training history), the test-split
evaluation and predictions, the scoring outputs. A stage that has not run gives a section that
says so. Only pseudonymous ids appear; source paths (which can carry names) are left out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow.parquet as pq

from strokeray.datasets.shard_set import CARD, ShardSet
from strokeray.imaging.rle import decode_rle
from strokeray.io.json_files import read_json
from strokeray.io.shard_schema import tensor_array
from strokeray.learn.metrics import binary_report, operating_threshold, patient_level, roc_auc, roc_curve
from strokeray.learn.tasks import CLASSIFY, LESION_NAMES, SEGMENT, TASKS, Task
from strokeray.report import figures
from strokeray.report.page import Figure, Section, Table, cell, render_page
from strokeray.stages import score, tune
from strokeray.stages.run_layout import RunLayout
from strokeray.stages.stage_dir import StageDir


@dataclass
class ReportResult:
    html: str
    figures: list[str] = field(default_factory=list)  # PNG files written
    missing: list[str] = field(default_factory=list)  # sections without data


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _parquet(url: str, columns=None):
    with fsspec.open(url, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def data_section(layout: RunLayout) -> Section:
    s = Section("Data")
    if not _exists(f"{layout.shards}/{CARD}"):
        s.missing = f"No ingest found ({layout.shards}/card.json): run `strokeray ingest` or the pipeline."
        return s
    card = ShardSet.open(layout.shards).card
    s.paragraphs.append(
        f"{card['objects']} objects ingested ({card.get('layout', '?')} layout): {card['slices']} slices of "
        f"{card['patients']} patients, {card.get('with_mask', 0)} with lesion masks; {card['quarantined']} files "
        f"quarantined. Splits are by patient. Dataset digest {card['config_digest']}."
    )
    rows = []
    for split in ("train", "val", "test"):
        d = card["per_split"].get(split, {})
        rows.append(
            [
                split,
                d.get("patients", 0),
                d.get("slices", 0),
                d.get("label", {}).get("1", 0),
                d.get("lesion", {}).get("1", 0),
                d.get("lesion", {}).get("2", 0),
            ]
        )
    s.tables.append(Table(["split", "patients", "slices", "stroke slices", "ischemic", "hemorrhagic"], rows))
    if card.get("quarantine_reasons"):
        s.tables.append(Table(["quarantine reason", "files"], sorted(card["quarantine_reasons"].items())))
    return s


def published(layout: RunLayout, task: Task) -> tuple[dict, str] | None:
    """(what the task's search published, its bundle in this run's registry), or None."""
    doc = tune.published(layout.search(task))
    return None if doc is None else (doc, layout.bundle(task, doc["version"]))


def training_section(layout: RunLayout, task: Task) -> tuple[Section, dict | None]:
    from strokeray.learn.bundle import read_bundle_doc

    name = task.title
    s = Section(f"{name}: training")
    found = published(layout, task)
    if found is None or not _exists(f"{found[1]}/model.json"):
        s.missing = f"No {task.name} model: run `strokeray tune {task.name}` or the pipeline."
        return s, None
    doc = read_bundle_doc(found[1])
    metric, label = task.fit_metric, task.fit_metric.replace("_", " ").replace("iou", "IoU")
    best = doc["metrics"]
    model = doc["model"]
    s.paragraphs.append(
        f"Best trial of the search: {(model.get('arch', '') + ' ') if task.dense else ''}{model['backbone']} "
        f"at {doc['input_size']} px, registry "
        f"version {found[0]['version']}; checkpoint chosen by {doc['score_metric']} = "
        f"{cell(best.get(doc['score_metric']))} at epoch {best.get('epoch')}."
        + (
            f" Decision threshold {doc['threshold']:.3f} (Youden's J on the validation split)."
            if "threshold" in doc
            else ""
        )
    )
    s.figures.append(
        Figure(
            f"{task.name}-training",
            figures.training_curves(doc["history"], metric, label, f"{name}: loss and {label} per epoch"),
            f"{name}: training and validation loss and {label} per epoch (training values on augmented batches).",
        )
    )
    return s, doc


def classifier_test_section(layout: RunLayout, doc: dict | None) -> Section:
    s = Section("Classifier: test split")
    if doc is None or not _exists(layout.predictions(CLASSIFY)):
        s.missing = (
            "No test-split evaluation of the classifier: run the pipeline (or `strokeray evaluate --predictions`)."
        )
        return s
    t = _parquet(layout.predictions(CLASSIFY))
    lab, prob, pat = (np.asarray(t[c]) for c in ("label", "probability", "patient"))
    threshold = float(doc.get("threshold", 0.5))
    sl = binary_report(lab, prob, threshold)
    plab, pprob = patient_level(pat, lab, prob)
    pr = binary_report(plab, pprob, threshold)
    s.paragraphs.append(
        f"{sl.n} slices of {pr.n} patients; a slice is called stroke when its probability is at "
        f"least {threshold:.3f}; a patient by its most suspicious slice."
    )
    s.tables.append(
        Table(
            ["level", "n", "accuracy", "sensitivity", "specificity", "precision", "F1", "ROC AUC"],
            [
                [name, r.n, r.accuracy, r.sensitivity, r.specificity, r.precision, r.f1, r.auc]
                for name, r in (("slice", sl), ("patient", pr))
            ],
        )
    )
    s.figures.append(
        Figure(
            "classify-confusion",
            figures.confusion_matrix(
                sl.tp, sl.fp, sl.tn, sl.fn, f"slices, threshold {threshold:.2f}", CLASSIFY.class_names
            ),
            "Confusion matrix of the test slices (counts and share of each true class).",
        )
    )
    curves = {}
    for name, y, p in (("slices", lab, prob), ("patients", plab, pprob)):
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            curves[name] = (fpr, tpr, roc_auc(y, p))
    if curves:
        point = (1 - sl.specificity, sl.sensitivity) if sl.specificity == sl.specificity else None
        s.figures.append(
            Figure(
                "classify-roc",
                figures.roc_curves(curves, "ROC, test split", point),
                "ROC curves of the test split, slice and patient level; the star is the operating point.",
            )
        )
        best = operating_threshold(lab, prob)
        s.paragraphs.append(
            f"For reference, the threshold the test split itself would choose is {best:.3f} "
            "(not used: thresholds come from validation)."
        )
    return s


def _examples(layout: RunLayout, predictions, per_class: int = 2) -> list[tuple]:
    """Test slices with lesions (the largest per class) with their views and masks from the shards."""
    chosen = []
    for name in LESION_NAMES.values():
        area = np.asarray(predictions[f"true_{name}_pixels"])
        for i in np.argsort(-area, kind="stable")[:per_class]:
            if area[i] > 0:
                chosen.append(int(i))
    if not chosen:
        return []
    ids = [predictions["id"][i].as_py() for i in chosen]
    found = {}
    data = ShardSet.open(layout.shards)
    channels = len(data.preprocess.windows)
    for t in data.tables(["id", "seg_image", "seg_mask"], filters=[("id", "in", ids)]):
        for j in range(t.num_rows):
            found[t["id"][j].as_py()] = t.slice(j, 1)
    out = []
    for i, sid in zip(chosen, ids):
        if sid not in found:
            continue
        row = found[sid]
        pred = decode_rle(predictions["mask_rle"][i].as_py())
        size = pred.shape[0]
        image = tensor_array(row["seg_image"], (channels, size, size))[0, 0]  # brain window
        truth = tensor_array(row["seg_mask"], (size, size))[0]
        lesion = truth > 0
        iou = ((pred > 0) & lesion & (pred == truth)).sum() / max(1, ((pred > 0) | lesion).sum())
        kind = LESION_NAMES[int(np.bincount(truth[lesion]).argmax())]
        out.append((image, truth, pred, f"{kind}, slice IoU {iou:.2f}\n{sid[:10]}"))
    return out


def segmenter_test_section(layout: RunLayout, doc: dict | None) -> Section:
    s = Section("Segmenter: test split")
    if doc is None or not _exists(layout.evaluation(SEGMENT)):
        s.missing = (
            "No test-split evaluation of the segmenter: run the pipeline (or `strokeray evaluate --predictions`)."
        )
        return s
    ev = read_json(layout.evaluation(SEGMENT))
    m = ev["metrics"]
    names = SEGMENT.class_names
    s.paragraphs.append(
        f"{ev['slices']} test slices (annotated, or known to hold no lesion). Mean lesion IoU "
        f"{cell(m['mean_lesion_iou'])}, competition IoU {cell(m['competition_iou'])} "
        "(the study's 71.04 % IoU is of this kind)."
    )
    s.tables.append(Table(["class", "IoU", "Dice"], [[n, m[f"iou_{n}"], m[f"dice_{n}"]] for n in names]))
    s.figures.append(
        Figure(
            "segment-classes",
            figures.class_scores(
                {n: m[f"iou_{n}"] for n in names},
                {n: m[f"dice_{n}"] for n in names},
                "per-class IoU and Dice, test split",
            ),
            "Per-class IoU and Dice over all test pixels.",
        )
    )
    if _exists(layout.predictions(SEGMENT)):
        examples = _examples(layout, _parquet(layout.predictions(SEGMENT)))
        if examples:
            s.figures.append(
                Figure(
                    "segment-examples",
                    figures.lesion_examples(examples, "test slices: truth and prediction"),
                    "Test slices with the largest lesions of each class: the CT in the brain window, the "
                    "annotated lesion and the predicted one (hemorrhagic red, ischemic blue).",
                )
            )
    return s


def _trials_table(rows: list[dict], params: list[str], metric: str) -> Table:
    """One row per trial: its sampled parameters, status, epochs and best score."""
    head = ["trial", *[p[len("param_") :] for p in params], "status", "epochs", f"best {metric}", "at epoch"]
    body = [
        [r["trial_id"], *[_param(r.get(p)) for p in params], r["status"], r["epochs_run"], r["best_score"]]
        + [r["best_epoch"], round(float(r.get("time_s") or 0.0))]
        for r in sorted(rows, key=lambda r: r["trial_id"])
    ]
    return Table([*head, "seconds"], body, text_columns=1 + len(params) + 1)


def _trial_curves(layout: RunLayout, task: Task, rows: list[dict], metric: str) -> Figure | None:
    """Every trial's validation metric per epoch, from its last checkpoint's history."""
    trials = {}
    for r in rows:
        ckpts = tune.trial_checkpoints(f"{layout.search(task)}/train", r["trial_id"])
        if ckpts:
            trials[r["trial_id"]] = ckpts[-1]["history"]
    if not trials:
        return None
    label = metric.replace("val_", "validation ").replace("_", " ")
    return Figure(
        f"{task.name}-search",
        figures.trial_curves(trials, metric, label, f"{task.title}: every trial"),
        f"Validation {metric} per epoch of each trial; lines that end early were stopped by ASHA.",
    )


def search_section(layout: RunLayout, task: Task) -> Section:
    name = task.title
    s = Section(f"{name}: model search")
    found = published(layout, task)
    if found is None:
        s.missing = f"No finished {task} search under {layout.search(task)}."
        return s
    doc, _ = found
    metric = (tune.settings_of(layout.search(task)).get("config") or {}).get("metric") or task.score_metric
    rows = doc["rows"]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    s.paragraphs.append(
        f"{len(rows)} trials, ASHA on {metric}; best: trial {doc['best']['trial_id']} "
        f"({metric} {cell(doc['best']['best_score'])}), published as registry version "
        f"{doc['version']}" + (" (the registry's current best)." if doc.get("current") else ".")
    )
    if "param_seg_loss" in params:
        s.paragraphs.append("seg_loss: the weights of the dice, cross-entropy and focal terms.")
    s.tables.append(_trials_table(rows, params, metric))
    curves = _trial_curves(layout, task, rows, metric)
    if curves is not None:
        s.figures.append(curves)
    return s


def _interval(doc: dict, key: str) -> str:
    value, iv = doc["pooled"].get(key), doc["intervals"].get(key)
    return cell(value) + (f" [{cell(iv[0])}, {cell(iv[1])}]" if iv else "")


CROSSVAL_COLUMNS = ["name", "task", "recipe", "folds", "patients", "slice AUC", "patient AUC"]
CROSSVAL_COLUMNS += ["patient sensitivity", "patient specificity"]


def _crossval_row(layout: RunLayout, name: str) -> tuple[list, tuple | None]:
    """A cross-validation's row of the report's table, and its pooled slice ROC (classifier)."""
    from strokeray.stages.crossval import PREDICTIONS, SUMMARY

    doc = read_json(f"{layout.crossval}/{name}/{SUMMARY}")
    train = doc["config"]["train"]
    recipe = f"{train['model']['backbone']} {train['input_size'] or ''}px, {train['epochs']} epochs"
    classify = doc["task"] == CLASSIFY.name
    if classify:  # crossval.json files made before --patient-pool pooled by the max
        recipe += f"; a patient by the {doc['config'].get('patient_pool', 'max')} of its slices"
    row = [name, doc["task"], recipe, len(doc["folds"]), sum(f["test_patients"] for f in doc["folds"])]
    if not classify:
        iou = f"mean lesion IoU {_interval(doc, 'mean_lesion_iou')}; competition IoU "
        return row + ["", "", "", iou + f"{cell(doc['pooled'].get('competition_iou'))} (fold mean)"], None
    row += [_interval(doc, k) for k in ("slice_auc", "patient_auc", "patient_sensitivity", "patient_specificity")]
    t = _parquet(f"{layout.crossval}/{name}/{PREDICTIONS}", ["label", "probability"])
    lab, prob = np.asarray(t["label"]), np.asarray(t["probability"])
    if not 0 < lab.sum() < len(lab):
        return row, None
    fpr, tpr, _ = roc_curve(lab, prob)
    return row, (fpr, tpr, roc_auc(lab, prob))


def crossval_section(layout: RunLayout) -> Section | None:
    """Every cross-validation under RUN_DIR/crossval: pooled out-of-fold metrics with their
    intervals. None when there is none: cross-validation is not a pipeline stage, so it is no gap."""
    from strokeray.stages.crossval import SUMMARY

    s = Section("Cross-validation")
    fs, base = fsspec.core.url_to_fs(layout.crossval)
    names = sorted(p.rstrip("/").split("/")[-2] for p in fs.glob(f"{base}/*/{SUMMARY}"))
    if not names:
        return None
    s.paragraphs.append(
        "Patient-grouped, stratified folds; every patient is tested once, by the model of the fold "
        "that held it out. Intervals: 95 %, resampling patients."
    )
    rows, curves = [], {}
    for name in names:
        row, curve = _crossval_row(layout, name)
        rows.append(row)
        if curve is not None:
            curves[name] = curve
    s.tables.append(Table(CROSSVAL_COLUMNS, rows, text_columns=3))
    if curves:
        s.figures.append(
            Figure(
                "crossval-roc",
                figures.roc_curves(curves, "ROC, out-of-fold slices"),
                "Slice-level ROC of the pooled out-of-fold predictions of each cross-validation.",
            )
        )
    return s


def _param(v):
    if isinstance(v, float):
        return f"{v:.1e}" if abs(v) < 0.01 else f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "/".join(f"{x:g}" for x in v)
    return v


def scoring_section(layout: RunLayout) -> Section:
    s = Section("Scoring the archive")
    if not _exists(f"{layout.score}/{score.SUMMARY}"):
        s.missing = f"No finished scoring run under {layout.score}."
        return s
    summary = read_json(f"{layout.score}/{score.SUMMARY}")
    s.paragraphs.append(
        f"{summary['objects']} objects: {summary['slices']} slices scored ({summary['positive_slices']} positive) in "
        f"{summary['studies']} studies ({summary['positive_studies']} positive); {summary['quarantined']} objects "
        f"quarantined; {summary['seconds']:.0f} s. Models: classifier {summary['models'].get('classifier_version')}, "
        f"segmenter {summary['models'].get('segmenter_version') or 'none'}; threshold {summary['threshold']:.3f}."
    )
    if summary.get("reasons"):
        s.tables.append(Table(["quarantine reason", "objects"], sorted(summary["reasons"].items())))
    if _exists(f"{layout.score}/slices.parquet"):
        slices = _parquet(f"{layout.score}/slices.parquet", columns=["stroke_probability"])
        if slices.num_rows:
            s.figures.append(
                Figure(
                    "score-probabilities",
                    figures.probability_histogram(
                        np.asarray(slices["stroke_probability"]), summary["threshold"], "scored slices"
                    ),
                    "Stroke probability of every scored slice, with the decision threshold.",
                )
            )
    if _exists(f"{layout.score}/studies.parquet"):
        studies = _parquet(f"{layout.score}/studies.parquet").to_pylist()
        studies.sort(key=lambda r: -r["max_probability"])
        s.tables.append(
            Table(
                [
                    "study (pseudonym)",
                    "slices",
                    "positive slices",
                    "max probability",
                    "decision",
                    "ischemia mL",
                    "hemorrhage mL",
                ],
                [
                    [
                        r["study"][:16],
                        r["slices"],
                        r["positive_slices"],
                        r["max_probability"],
                        r["decision"],
                        r["ischemia_ml"],
                        r["hemorrhage_ml"],
                    ]
                    for r in studies[:15]
                ],
            )
        )
        if len(studies) > 15:
            s.paragraphs.append(
                f"The 15 most suspicious of {len(studies)} studies are listed; all are in studies.parquet."
            )
    return s


def run_report(run_dir: str, out: str | None = None, log=print) -> ReportResult:
    """Write ``out`` (default RUN_DIR/report): index.html and figures/*.png."""
    started = time.perf_counter()
    layout = RunLayout(run_dir)
    out = out or layout.report
    sections = [data_section(layout)]
    test_sections = {CLASSIFY: classifier_test_section, SEGMENT: segmenter_test_section}
    for task in TASKS.values():
        train_section, doc = training_section(layout, task)
        sections += [train_section, test_sections[task](layout, doc), search_section(layout, task)]
    crossval = crossval_section(layout)
    sections += [crossval] if crossval else []
    sections.append(scoring_section(layout))
    from strokeray import __version__

    intro = [
        f"Run {run_dir}, reported {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by strokeray {__version__}.",
        "Stage one classifies slices stroke / non-stroke; stage two segments the lesion ("
        f"{', '.join(SEGMENT.class_names)}). Identifiers are keyed pseudonyms; no names, raw patient IDs or source paths appear here.",
    ]
    html = render_page("strokeray report", intro, sections)
    stage = StageDir(out, "report", ("index.html", "figures"))
    stage.claim()
    fs, base = stage.fs, stage.base
    fs.makedirs(f"{base}/figures", exist_ok=True)
    written = []
    for s in sections:
        for f in s.figures:
            with fs.open(f"{base}/figures/{f.name}.png", "wb") as fh:
                fh.write(f.png)
            written.append(f"{out.rstrip('/')}/figures/{f.name}.png")
    page = f"{out.rstrip('/')}/index.html"
    with fs.open(f"{base}/index.html", "w") as fh:
        fh.write(html)
    missing = [s.title for s in sections if s.missing]
    log(
        f"[report] {len(written)} figures, {len(sections) - len(missing)} of {len(sections)} sections"
        + (f" (no data: {', '.join(missing)})" if missing else "")
        + f" -> {page} in {time.perf_counter() - started:.1f}s"
    )
    return ReportResult(html=page, figures=written, missing=missing)
