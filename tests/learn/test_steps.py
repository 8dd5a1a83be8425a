"""The shared training and evaluation steps (torch only, no Ray)."""

import numpy as np
import pytest
import torch

from strokeray.learn.augment import AugmentConfig
from strokeray.learn.models import ModelConfig, build_model
from strokeray.learn.steps import TaskSteps, lr_factor
from strokeray.learn.tasks import CLASSIFY, SEGMENT, get_task

CPU = torch.device("cpu")


def _seg_batch(n=4, size=32):
    rng = np.random.default_rng(0)
    mask = np.zeros((n, size, size), np.uint8)
    mask[:, 8:16, 8:16] = 1
    mask[:, 20:28, 4:12] = 2
    image = (rng.random((n, 2, size, size)) * 60).astype(np.uint8)
    image[:, 0][mask == 1] = 200
    image[:, 1][mask == 2] = 250
    return {"seg_image": image, "seg_mask": mask}


def test_inputs_scale_resize_and_keep_mask_classes():
    steps = TaskSteps("segment", CPU, input_size=16, augment=AugmentConfig(strength=0))
    x, y = steps.inputs(_seg_batch())
    assert x.shape == (4, 2, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.shape == (4, 16, 16) and y.dtype == torch.long
    assert set(torch.unique(y).tolist()) == {0, 1, 2}  # nearest: no invented in-between classes
    # Size as stored: nothing is resampled.
    x2, y2 = TaskSteps("segment", CPU).inputs(_seg_batch())
    assert x2.shape[-1] == 32 and torch.equal(y2, torch.from_numpy(_seg_batch()["seg_mask"]).long())


def test_class_weights_change_the_classifier_loss():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.0]])
    y = torch.tensor([1, 1, 0])
    plain = TaskSteps("classify", CPU).loss(logits, y)
    weighted = TaskSteps("classify", CPU, class_weights=[1.0, 3.0]).loss(logits, y)
    manual = torch.nn.functional.cross_entropy(logits, y, weight=torch.tensor([1.0, 3.0]))
    assert torch.isclose(weighted, manual) and not torch.isclose(plain, weighted)


def test_train_step_learns_a_fixed_batch_and_eval_step_reports_it():
    torch.manual_seed(0)
    model = build_model(ModelConfig(task="segment", backbone="resnet18", in_channels=2, num_classes=3))
    steps = TaskSteps("segment", CPU, augment=AugmentConfig(strength=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _seg_batch()
    model.train()
    losses = [steps.train_step(model, opt, batch) for _ in range(10)]
    assert all(n == 4 for _, n in losses)
    assert losses[-1][0] < 0.7 * losses[0][0], losses
    model.eval()
    logits, y, summed = steps.eval_step(model, batch)
    assert logits.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32)
    assert abs(summed - 4 * float(steps.loss(logits, y))) < 1e-4


def test_fit_meters_score_the_training_pass_from_the_step_outputs():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    meter = CLASSIFY.fit_meter()
    meter.update(logits, torch.tensor([0, 1, 1]))
    other = CLASSIFY.fit_meter()
    other.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    merged = meter.host()
    merged.merge(other.host())
    assert merged.report() == {"train_accuracy": 0.75}
    seg = SEGMENT.fit_meter()
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[0, :2, :2] = 2
    seg.update(torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float(), y)
    assert seg.host().report() == {"train_mean_lesion_iou": 1.0, "train_competition_iou": 1.0}  # perfect prediction
    model = build_model(ModelConfig(task="segment", backbone="resnet18", in_channels=2, num_classes=3))
    steps = TaskSteps(SEGMENT, CPU, augment=AugmentConfig(strength=0))
    fit = SEGMENT.fit_meter()
    loss, n = steps.train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), _seg_batch(), fit)
    assert isinstance(loss, torch.Tensor) and n == 4  # not read back to the host by the step
    assert fit.host().true_area.sum() == 4 * 32 * 32  # every pixel of the batch counted


def test_device_fit_meters_count_what_the_numpy_meters_count():
    """Random logits and masks with lesions at the image border: the device counts (max-pooling
    dilation and erosion) equal the numpy meters' (OpenCV), class by class."""
    from strokeray.learn.meters import AccuracyMeter, LesionMeter

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 20, 24, generator=g)
    y = torch.randint(0, 3, (6, 20, 24), generator=g)
    y[:, :5] = 0
    y[0, :3, :3] = 2  # a lesion in the corner: OpenCV's border does not erode it away
    device = SEGMENT.fit_meter()
    device.update(logits[:4], y[:4])
    device.update(logits[4:], y[4:])
    reference = LesionMeter(SEGMENT.class_names, fit=True)
    reference.update(SEGMENT.outputs(logits), y.numpy())
    got = device.host()
    for attr in ("inter", "union", "pred_area", "true_area", "comp_inter", "comp_union"):
        assert np.array_equal(getattr(got, attr), getattr(reference, attr)), attr
    cls_logits = torch.randn(50, 2, generator=g)
    cls_logits[0] = 0.0  # a tie is P(stroke) = 0.5: stroke
    labels = torch.randint(0, 2, (50,), generator=g)
    acc = CLASSIFY.fit_meter()
    acc.update(cls_logits, labels)
    numpy_acc = AccuracyMeter()
    numpy_acc.update(CLASSIFY.outputs(cls_logits), labels.numpy())
    assert acc.host().report() == numpy_acc.report()


def test_validation_meters_merge_workers_and_report_like_one():
    """The classifier's validation outputs gathered from two workers score as if one had seen all."""
    rng = np.random.default_rng(0)
    lab = np.repeat([0, 1] * 5, 4)  # patient-level labels, as CT-ICH's
    prob, pat = rng.random(40) * 0.6 + 0.3 * lab, np.repeat(np.arange(10), 4).astype(str)
    whole, a, b = CLASSIFY.val_meter(), CLASSIFY.val_meter(), CLASSIFY.val_meter()
    whole.update(prob, lab, {"patient": pat})
    a.update(prob[:15], lab[:15], {"patient": pat[:15]})
    b.update(prob[15:], lab[15:], {"patient": pat[15:]})
    a.merge(b)
    assert a.report() == whole.report() and {"val_auc", "val_patient_auc", "val_threshold"} <= set(whole.report())
    at = CLASSIFY.val_meter(threshold=0.7)
    at.update(prob, lab, {"patient": pat})
    rep = at.report("")
    assert rep["threshold"] == 0.7 and rep["slice_accuracy"] == pytest.approx(((prob >= 0.7) == lab).mean())


def test_tasks_are_found_by_name_and_refuse_unknown_ones():
    assert get_task("segment") is SEGMENT and get_task(CLASSIFY) is CLASSIFY
    assert SEGMENT.dense and not CLASSIFY.dense and (CLASSIFY.num_classes, SEGMENT.num_classes) == (2, 3)
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("detect")


def test_recalibrate_bn_makes_eval_mode_match_the_current_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    bn = model[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after weights moved fast
    bn.running_var.fill_(0.01)
    steps = TaskSteps("classify", CPU)
    rng = np.random.default_rng(0)
    batch = {"cls_image": rng.integers(0, 255, (16, 3, 24, 24), dtype=np.uint8), "label": np.zeros(16, np.int64)}
    x, _ = steps.inputs(batch)
    model.eval()
    stale = model(x)
    assert steps.recalibrate_bn(model, []) == 0  # nothing seen: the statistics stay
    assert float(bn.running_mean[0]) == 5.0
    assert (
        steps.recalibrate_bn(model, [{k: v[:8] for k, v in batch.items()}, {k: v[8:] for k, v in batch.items()}]) == 16
    )
    assert not model.training and bn.momentum == 0.1  # mode and momentum restored
    with torch.no_grad():
        fresh = model(x)
        model.train()
        batch_stats = model(x)
    assert torch.allclose(fresh, batch_stats, atol=2e-2) and not torch.allclose(stale, batch_stats, atol=2e-2)


def test_cosine_schedule_warms_up_then_anneals_without_reaching_zero():
    f = [lr_factor("cosine", e, 6) for e in range(6)]
    assert f[0] == pytest.approx(0.1) and f[1] == 1.0
    assert all(a > b for a, b in zip(f[1:], f[2:])) and f[-1] > 0.05
    assert [lr_factor("constant", e, 6) for e in range(6)] == [1.0] * 6
    assert lr_factor("cosine", 0, 1) == 1.0  # one epoch: no warm-up
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 0, 6)
