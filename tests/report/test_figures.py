"""The report's figures: valid PNGs whose pixels show what they were given."""

import io

import numpy as np
from PIL import Image

from strokeray.imaging.overlay import OVERLAY_RGB
from strokeray.learn.metrics import roc_curve
from strokeray.report import figures


def _image(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _has_colour(img: np.ndarray, rgb, tol: int = 30) -> int:
    return int((np.abs(img.astype(int) - np.asarray(rgb)).max(-1) <= tol).sum())


def test_training_curves_draw_both_series_and_keep_the_last_report_of_a_repeated_epoch():
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.5 + e / 20,
            "val_accuracy": 0.4 + e / 20,
        }
        for e in range(1, 6)
    ]
    history.append({**history[-1], "val_loss": None})  # a resumed run repeats epoch 5; None is left out
    img = _image(figures.training_curves(history, "accuracy", "accuracy", "t"))
    assert img.shape[1] > img.shape[0] > 200  # two panels side by side
    # matplotlib's first two colours: training (blue) and validation (orange) lines
    assert _has_colour(img, (31, 119, 180)) > 200 and _has_colour(img, (255, 127, 14)) > 200


def test_confusion_matrix_and_roc_render():
    img = _image(figures.confusion_matrix(tp=5, fp=1, tn=10, fn=2, title="m"))
    assert img.shape[0] > 200
    y = np.array([0, 0, 1, 1, 1])
    fpr, tpr, _ = roc_curve(y, np.array([0.1, 0.6, 0.4, 0.8, 0.9]))
    img = _image(figures.roc_curves({"slices": (fpr, tpr, 0.83)}, "roc", (0.5, 0.67)))
    assert _has_colour(img, (31, 119, 180)) > 100


def test_lesion_examples_paint_truth_and_prediction_in_their_class_colours():
    grey = np.full((64, 64), 90, np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    truth[10:40, 10:40] = 2  # hemorrhagic
    pred = np.zeros((64, 64), np.uint8)
    pred[20:50, 20:50] = 1  # ischemic
    img = _image(figures.lesion_examples([(grey, truth, pred, "case")], "examples"))
    painted = lambda c: tuple(int(round(0.5 * 90 + 0.5 * v)) for v in OVERLAY_RGB[c])  # noqa: E731
    red, blue = _has_colour(img, painted(2), 6), _has_colour(img, painted(1), 6)
    assert red > 500 and blue > 500
    empty = _image(figures.lesion_examples([(grey, truth * 0, pred * 0, "none")], "examples"))
    assert _has_colour(empty, painted(2), 6) < 50 and _has_colour(empty, painted(1), 6) < 50


def test_class_scores_and_histogram_render_with_missing_values():
    img = _image(
        figures.class_scores(
            {"background": 0.99, "ischemic": float("nan"), "hemorrhagic": 0.7},
            {"background": 0.99, "ischemic": float("nan"), "hemorrhagic": 0.8},
            "s",
        )
    )
    assert img.shape[0] > 200
    img = _image(figures.probability_histogram(np.linspace(0, 1, 50), 0.4, "h"))
    assert _has_colour(img, (255, 0, 0), 20) > 50  # the threshold line
