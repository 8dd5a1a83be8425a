"""The report's figures, each a function from plain numbers or arrays to PNG bytes (matplotlib,
no display needed). They know nothing of files or runs: ``stages.report`` gathers the data."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from strokeray.imaging.overlay import CLASS_NAMES, HEMORRHAGIC, ISCHEMIC, OVERLAY_RGB, paint_overlay  # noqa: E402

LESION_LEGEND = [
    Patch(color="#{:02x}{:02x}{:02x}".format(*OVERLAY_RGB[c]), label=CLASS_NAMES[c]) for c in (HEMORRHAGIC, ISCHEMIC)
]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key``, NaN and missing values left out."""
    pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None and h[key] == h[key]]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def training_curves(history: list[dict], metric: str, metric_label: str, title: str) -> bytes:
    """Loss and ``metric`` per epoch, training and validation (the study's accuracy-vs-epoch plot).

    ``history`` holds one dict per epoch with ``train_loss``, ``val_loss``, ``train_<metric>`` and
    ``val_<metric>``; a repeated epoch (a resumed run) keeps its last report.
    """
    by_epoch = {h["epoch"]: h for h in history}
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, keys, label in (
        (ax_loss, ("train_loss", "val_loss"), "loss"),
        (ax_metric, (f"train_{metric}", f"val_{metric}"), metric_label),
    ):
        for key, style in zip(keys, ("o-", "s--")):
            x, y = _series(rows, key)
            if x:
                ax.plot(
                    x, y, style, label=key.split("_", 1)[0].replace("val", "validation").replace("train", "training")
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_metric.set_ylim(-0.02, 1.02)
    fig.suptitle(title)
    return _png(fig)


def trial_curves(trials: dict[str, list[dict]], key: str, label: str, title: str) -> bytes:
    """The validation metric per epoch of every trial of a search (early-stopped ones end early)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, history in sorted(trials.items()):
        by_epoch = {h["epoch"]: h for h in history}
        x, y = _series([by_epoch[e] for e in sorted(by_epoch)], key)
        if x:
            ax.plot(x, y, "o-", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _png(fig)


def confusion_matrix(
    tp: int, fp: int, tn: int, fn: int, title: str, names: tuple[str, ...] = ("negative", "positive")
) -> bytes:
    """The 2x2 matrix, truth in rows and prediction in columns, with counts and row shares."""
    m = np.array([[tn, fp], [fn, tp]], dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n({share[i, j]:.0%})",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
                fontsize=12,
            )
    ax.set_title(title)
    return _png(fig)


def roc_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    title: str,
    operating_point: tuple[float, float] | None = None,
) -> bytes:
    """ROC curves, ``name -> (false positive rates, true positive rates, AUC)``."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")  # straight segments: ties count one half, as in the AUC
    if operating_point is not None:
        ax.plot(*operating_point, "k*", markersize=11, label="operating point")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    return _png(fig)


def class_scores(iou: dict[str, float], dice: dict[str, float], title: str) -> bytes:
    """IoU and Dice per class as grouped bars (a class absent from the split shows no bar)."""
    names = list(iou)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for offset, (label, values) in zip((-0.2, 0.2), (("IoU", iou), ("Dice", dice))):
        v = np.array([values[n] if values[n] == values[n] else 0.0 for n in names])
        bars = ax.bar(x + offset, v, 0.4, label=label)
        for b, n in zip(bars, names):
            text = f"{values[n]:.2f}" if values[n] == values[n] else "n/a"
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, text, ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _png(fig)


def lesion_examples(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], title: str) -> bytes:
    """One row per slice: the CT (brain window), the ground truth painted, the prediction painted.

    ``examples``: (uint8 greyscale image, truth mask, predicted mask, caption), masks with 1
    ischemic and 2 hemorrhagic, all at the image's size.
    """
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 3, figsize=(8.4, 2.8 * n), squeeze=False)
    for row, (grey, truth, pred, caption) in zip(axes, examples):
        for ax, img, head in zip(
            row,
            (np.stack([grey] * 3, -1), paint_overlay(grey, truth), paint_overlay(grey, pred)),
            ("CT, brain window", "ground truth", "prediction"),
        ):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(head, fontsize=9)
        row[0].set_ylabel(caption, fontsize=8)
    fig.legend(handles=LESION_LEGEND, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return _png(fig)


def probability_histogram(probabilities: np.ndarray, threshold: float, title: str) -> bytes:
    """How the scored slices' stroke probabilities fall around the decision threshold."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(np.asarray(probabilities, dtype=float), bins=[i / 20 for i in range(21)], color="#4c72b0")
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("stroke probability")
    ax.set_ylabel("slices")
    ax.legend()
    ax.set_title(title)
    return _png(fig)
