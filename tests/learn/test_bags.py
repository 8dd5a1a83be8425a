"""Patient bags and the patient objective's pooling (numpy and torch, no Ray)."""

import numpy as np
import torch

from strokeray.learn.augment import AugmentConfig
from strokeray.learn.bags import flatten_bags, make_bag, sample_bag, top_count, top_mean
from strokeray.learn.fit_meters import DeviceAccuracy
from strokeray.learn.metrics import patient_level
from strokeray.learn.models import ModelConfig, build_model
from strokeray.learn.steps import TaskSteps

CPU = torch.device("cpu")


def test_top_mean_pools_each_bag_by_its_top_quarter():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 4.0, -2.0, -1.0])
    pooled = top_mean(scores, [5, 1, 2])
    # 5 slices: the top 2 (ceil 1.25) = 0.9, 0.8; one slice: itself; 2 slices: the top one
    assert torch.allclose(pooled, torch.tensor([0.85, 4.0, -1.0]))
    assert [top_count(n) for n in (1, 4, 5, 8, 9, 40)] == [1, 1, 2, 2, 3, 10]


def test_training_pool_and_evaluation_pool_are_the_same_rule():
    """What the patient objective trains (top_mean) is what `--patient-pool top` scores."""
    rng = np.random.default_rng(0)
    lengths = [1, 3, 7, 12, 30]
    scores = rng.random(sum(lengths))
    patients = np.repeat(np.asarray([f"p{i}" for i in range(len(lengths))], dtype=object), lengths)
    _, evaluated = patient_level(patients, np.zeros(len(scores), np.int64), scores, "top")
    trained = top_mean(torch.from_numpy(scores), lengths).numpy()
    assert np.allclose(evaluated, trained)
    _, highest = patient_level(patients, np.zeros(len(scores), np.int64), scores, "max")
    assert (evaluated <= highest + 1e-12).all() and (evaluated < highest).any()


def test_make_bag_and_flatten_bags_round_trip():
    group = {
        "cls_image": np.arange(3 * 1 * 2 * 2, dtype=np.uint8).reshape(3, 1, 2, 2),
        "label": np.asarray([0, 1, 0]),
        "patient": np.asarray(["p7"] * 3, dtype=object),
        "split": np.asarray(["train"] * 3, dtype=object),
    }
    bag = make_bag(group, "cls_image")
    assert (
        bag["cls_image"].shape == (1, 3, 1, 2, 2)
        and bag["label"].tolist() == [1]
        and set(bag) == set(group) - {"split"}
    )
    other = np.full((2, 1, 2, 2), 9, np.uint8)
    batch = {
        "cls_image": np.asarray([bag["cls_image"][0], other], dtype=object),  # as Ray gives bags of two sizes
        "label": np.asarray([1, 0]),
        "patient": np.asarray(["p7", "p8"], dtype=object),
    }
    flat = flatten_bags(batch, "cls_image")
    assert flat["cls_image"].shape == (5, 1, 2, 2)
    assert flat["label"].tolist() == [1, 1, 1, 0, 0] and flat["patient"].tolist() == ["p7"] * 3 + ["p8"] * 2
    assert np.array_equal(flat["cls_image"][:3], group["cls_image"])


def test_sample_bag_keeps_small_bags_and_draws_ordered_subsets_of_large_ones():
    g = torch.Generator().manual_seed(0)
    assert sample_bag(5, 16, g).tolist() == [0, 1, 2, 3, 4]
    draws = [sample_bag(40, 16, g) for _ in range(3)]
    for d in draws:
        assert len(d) == 16 and len(set(d.tolist())) == 16 and (np.diff(d) > 0).all() and d.max() < 40
    assert not np.array_equal(draws[0], draws[1])  # a new draw every step


def _bags(n_patients=6, size=16, seed=0):
    """Patients of 4-9 noise slices; a positive patient has a bright square in one or two of them
    (a bleed seen on few slices, the label given to the whole patient)."""
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for i in range(n_patients):
        n = int(rng.integers(4, 10))
        bag = (rng.random((n, 1, size, size)) * 80).astype(np.uint8)
        if i % 2:
            for s in rng.choice(n, size=int(rng.integers(1, 3)), replace=False):
                bag[s, 0, 4:10, 4:10] = 255
        bags.append(bag)
        labels.append(i % 2)
    return {
        "cls_image": np.asarray(bags + [None], dtype=object)[:-1],
        "label": np.asarray(labels),
        "patient": np.asarray([f"p{i}" for i in range(n_patients)], dtype=object),
    }


def test_bag_step_learns_patients_from_the_few_slices_that_show_the_lesion():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", in_channels=1, head="linear", dropout=0.0))
    steps = TaskSteps("classify", CPU, augment=AugmentConfig(strength=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, meter = _bags(), DeviceAccuracy()
    model.train()
    first = steps.bag_step(model, opt, batch, meter, max_slices=16)
    assert first[1] == 6 and first[2] == sum(len(b) for b in batch["cls_image"])  # bags, images
    assert meter.host().seen == 6  # one pooled prediction per patient
    for _ in range(25):
        last = steps.bag_step(model, opt, batch, max_slices=16)
    assert float(last[0]) / 6 < 0.3 * float(first[0]) / 6, (float(first[0]), float(last[0]))
    # a capped bag draws max_slices of each patient
    assert steps.bag_step(model, opt, batch, max_slices=3)[2] == 18


def test_bag_step_weights_patients_by_class():
    batch = _bags(4)
    model = build_model(ModelConfig(backbone="resnet18", in_channels=1, head="linear", dropout=0.0)).eval()
    losses = []
    for weights in (None, [1.0, 1.0], [1.0, 5.0]):
        torch.manual_seed(0)
        steps = TaskSteps("classify", CPU, augment=AugmentConfig(strength=0), class_weights=weights)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the loss only
        losses.append(float(steps.bag_step(model, opt, batch)[0]))
    assert abs(losses[0] - losses[1]) < 1e-5 and abs(losses[0] - losses[2]) > 1e-4
