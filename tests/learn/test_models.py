import pytest
import torch

from strokeray.learn.losses import SegLossConfig, segmentation_loss
from strokeray.learn.models import (
    CLASSIFIER_BACKBONES,
    VGG_SMALL_BLOCKS,
    ModelConfig,
    StudyHead,
    build_model,
    freeze_unused,
)

# Parameters segmentation-models-pytorch's efficientnet encoder keeps but its forward never uses.
EFFICIENTNET_LEFTOVERS = ["encoder._conv_head.weight", "encoder._bn1.weight", "encoder._bn1.bias"]


@pytest.mark.parametrize("backbone", CLASSIFIER_BACKBONES)
def test_classifiers(backbone):
    model = build_model(ModelConfig(task="classify", backbone=backbone, in_channels=3)).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    assert freeze_unused(model, 3) == []  # every parameter of every backbone gets a gradient


def test_vgg16_study_head_and_freezing():
    model = build_model(ModelConfig(backbone="vgg16", freeze_features=True, in_channels=4))
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 2048),
        (2048, 1024),
        (1024, 1024),
        (1024, 512),
        (512, 2),
    ]
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.features[0].in_channels == 4
    assert isinstance(StudyHead(8).net[0], torch.nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize(
    "arch,encoder",
    [
        ("unet", "resnet34"),
        ("unet", "vgg16"),
        ("unet", "densenet201"),
        ("unet", "efficientnet-b0"),
        ("unetplusplus", "resnet18"),
        ("deeplabv3plus", "resnet18"),
    ],
)
def test_segmenters(arch, encoder):
    model = build_model(ModelConfig(task="segment", backbone=encoder, arch=arch, num_classes=3)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert freeze_unused(model, 3) == (EFFICIENTNET_LEFTOVERS if encoder == "efficientnet-b0" else [])


def test_ddp_trains_an_encoder_with_leftover_layers_once_they_are_frozen(tmp_path):
    """DDP without ``find_unused_parameters`` fails on the second step where a parameter got no
    gradient (one process shows it); train_loop freezes those first, and then the steps run."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def two_steps(model):
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.01)
        for _ in range(2):
            optimizer.zero_grad()
            ddp(torch.rand(2, 3, 64, 64)).sum().backward()
            optimizer.step()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        cfg = ModelConfig(task="segment", backbone="efficientnet-b0", num_classes=3)
        with pytest.raises(RuntimeError, match="parameters that were not used"):
            two_steps(build_model(cfg))
        model = build_model(cfg)
        bn = dict(model.named_buffers())["encoder._bn0.running_mean"].clone()
        assert freeze_unused(model, 3) == EFFICIENTNET_LEFTOVERS
        assert torch.equal(dict(model.named_buffers())["encoder._bn0.running_mean"], bn)  # the probe left BN alone
        assert model.training
        two_steps(model)
    finally:
        dist.destroy_process_group()


def test_linear_head_is_torchvisions_single_layer():
    model = build_model(ModelConfig(backbone="resnet18", head="linear", dropout=0.0)).eval()
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2)]
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    assert freeze_unused(model, 3) == []  # every parameter of every backbone gets a gradient
    with pytest.raises(ValueError, match="head"):
        ModelConfig(head="mlp")


def test_unknown_names_raise():
    with pytest.raises(ValueError):
        build_model(ModelConfig(backbone="alexnet"))
    with pytest.raises(ValueError):
        build_model(ModelConfig(task="segment", arch="fpn9"))


def test_segmentation_loss_prefers_the_truth():
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:10, 4:10] = 2
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    bad = torch.zeros_like(good)
    cfg = SegLossConfig(dice=1, ce=1, focal=1, jaccard=1)
    assert segmentation_loss(good, target, cfg) < 0.05 < segmentation_loss(bad, target, cfg)


def test_dice_and_jaccard_average_only_the_classes_present():
    """No ischemic pixel in the truth: the overlap terms are the mean over background and
    hemorrhage alone (an absent class neither rewards nor penalises)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 2
    prob = logits.softmax(1)
    for dice, jaccard in ((1.0, 0.0), (0.0, 1.0)):
        want = []
        for c in (0, 2):
            p, t = prob[:, c], (target == c).float()
            inter, area = (p * t).sum(), p.sum() + t.sum()
            want.append(1 - (2 * inter + 1) / (area + 1) if dice else 1 - (inter + 1) / (area - inter + 1))
        got = segmentation_loss(logits, target, SegLossConfig(ce=0.0, dice=dice, jaccard=jaccard))
        assert torch.isclose(got, torch.stack(want).mean(), atol=1e-6)


def test_vgg_small_is_a_small_vgg_with_batch_norm():
    model = build_model(ModelConfig(backbone="vgg_small", head="linear", dropout=0.0, in_channels=1))
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs) and convs[0].in_channels == 1
    assert len(convs) == sum(n for _, n in VGG_SMALL_BLOCKS)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.features.modules()) == len(convs)
    assert sum(p.numel() for p in model.parameters()) < 1.5e6  # VGG16's features alone: 14.7 M
    with torch.no_grad():
        assert model.features(torch.zeros(1, 1, 96, 96)).shape == (1, 256, 6, 6)  # four 2x poolings
    with pytest.raises(ValueError, match="no torchvision weights"):
        build_model(ModelConfig(backbone="vgg_small", weights="IMAGENET1K_V1"))


def test_input_norm_standardises_with_the_training_statistics_and_travels_in_the_bundle(tmp_path):
    from strokeray.learn.bundle import load_bundle, save_bundle

    cfg = ModelConfig(backbone="vgg_small", head="linear", dropout=0.0, input_norm=True)
    model = build_model(cfg)
    torch.manual_seed(0)
    shift, scale = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.05, 0.2, 0.3])
    model.inputs.momentum = None  # cumulative average, as the precise-BN pass uses
    with torch.no_grad():
        for _ in range(20):  # training batches set the statistics
            model(torch.randn(16, 3, 32, 32) * scale[:, None, None] + shift[:, None, None])
    model.eval()
    x = torch.full((1, 3, 8, 8), 0.0) + shift[:, None, None] + scale[:, None, None]  # one std above each mean
    assert torch.allclose(model.inputs(x), torch.ones_like(x), atol=0.05)
    save_bundle(str(tmp_path / "b"), model, cfg, {})
    loaded, doc = load_bundle(str(tmp_path / "b"))
    assert doc["model"]["input_norm"] is True
    assert torch.allclose(loaded.inputs(x), model.inputs(x))
    assert isinstance(build_model(ModelConfig(backbone="vgg_small")).inputs, torch.nn.Identity)  # off by default
    with pytest.raises(ValueError, match="input_norm"):
        ModelConfig(task="segment", input_norm=True)
