"""The two models: a slice classifier (VGG16 with the study's head, or another torchvision
backbone) and a lesion segmenter (segmentation-models-pytorch U-Net and relatives).

Pretrained weights are never downloaded by default (none can be here): ``weights`` is None, a
torchvision weights name (``IMAGENET1K_V1``; needs network or a filled torch hub cache), or a
local ``.safetensors`` file holding the model's state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

from strokeray.checks import check_positive, check_range
from strokeray.learn.tasks import CLASSIFY, SEGMENT, get_task

CLASSIFIER_BACKBONES = (
    "vgg16",
    "vgg_small",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "densenet121",
)
# vgg_small's blocks: (width, 3x3 convolutions), each followed by 2x2 max pooling
VGG_SMALL_BLOCKS = ((32, 1), (64, 2), (128, 2), (256, 2))
SEGMENTER_ARCHS = ("unet", "unetplusplus", "deeplabv3plus")
CLASSIFIER_HEADS = ("study", "linear")


@dataclass(frozen=True)
class ModelConfig:
    task: str = CLASSIFY.name  # a learn.tasks.TASKS name
    backbone: str = "vgg16"  # classifier backbone, or segmenter encoder
    arch: str = "unet"  # segmenter architecture
    in_channels: int = 3  # one per HU window
    num_classes: int = CLASSIFY.num_classes  # the task's (TrainConfig fills it in)
    dropout: float = 0.5
    # the classifier's head: the study's dense stack, or torchvision's one linear layer
    head: str = "study"
    freeze_features: bool = False  # train the classifier head only
    # standardise each input channel by its training-set mean and std (classifier only)
    input_norm: bool = False
    weights: str | None = None

    def __post_init__(self) -> None:
        check_range("dropout", self.dropout, 0.0, 0.99)
        check_positive(in_channels=self.in_channels, num_classes=self.num_classes)
        if self.head not in CLASSIFIER_HEADS:
            raise ValueError(f"unknown classifier head {self.head!r}; choose from {CLASSIFIER_HEADS}")
        if self.input_norm and get_task(self.task).dense:
            raise ValueError("input_norm is for the classifier; the segmenter's encoder takes the views as they are")


class StudyHead(nn.Module):
    """The study's head: global average pooling, dense 2048-1024-1024-512 with dropout, 2 outputs."""

    def __init__(self, in_features: int, num_classes: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        width = in_features
        for out in (2048, 1024, 1024, 512):
            layers += [nn.Linear(width, out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def linear_head(in_features: int, num_classes: int = 2, dropout: float = 0.0) -> nn.Module:
    """torchvision's own head: global average pooling, (dropout,) one linear layer."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, num_classes)
    )


def input_standardiser(channels: int) -> nn.Module:
    """Per-channel (x - mean) / std with the training set's statistics, kept in the state dict.

    A batch norm without scale or shift: its running mean and variance are the training inputs'
    (the precise-BN pass after each epoch re-estimates them over training batches), and in eval
    mode it applies exactly those, so scoring standardises as training did.
    """
    return nn.BatchNorm2d(channels, affine=False)


class Classifier(nn.Module):
    """(Input standardiser +) backbone features + head; ``features`` is what ``freeze_features`` freezes."""

    def __init__(self, features: nn.Module, head: nn.Module, inputs: nn.Module | None = None) -> None:
        super().__init__()
        self.inputs = inputs or nn.Identity()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.inputs(x)))


def vgg_small(in_channels: int = 3) -> tuple[nn.Module, int]:
    """A small VGG-style feature stack for training from scratch on a CPU; (features, width).

    VGG16's pattern (3x3 convolutions, 2x2 max pooling, width doubling) at an eighth of its widths
    and with batch norm after every convolution, so it trains without warm-up or pretrained weights:
    1.2 M parameters against VGG16's 14.7 M, about resnet18's cost at 96 px.
    """
    layers: list[nn.Module] = []
    width = in_channels
    for out, convs in VGG_SMALL_BLOCKS:
        for _ in range(convs):
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers), width


def _first_conv(module: nn.Module, in_channels: int) -> None:
    """Make the first convolution take ``in_channels`` (its RGB kernels averaged and repeated)."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            if child.in_channels == in_channels:
                return
            # torch stores kernel size, stride and padding as tuples its own signature does not name
            shape: dict = {"kernel_size": child.kernel_size, "stride": child.stride, "padding": child.padding}
            new = nn.Conv2d(in_channels, child.out_channels, **shape, bias=child.bias is not None)
            with torch.no_grad():
                new.weight.copy_(child.weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels)
                if child.bias is not None and new.bias is not None:
                    new.bias.copy_(child.bias)
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


def _features(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The backbone's convolutional stack taking ``cfg.in_channels``, and its output width."""
    tv_weights = cfg.weights if cfg.weights and not cfg.weights.endswith(".safetensors") else None
    if cfg.backbone == "vgg_small":
        if tv_weights:
            raise ValueError("vgg_small has no torchvision weights; pass a local .safetensors file or none")
        return vgg_small(cfg.in_channels)
    net = getattr(torchvision.models, cfg.backbone)(weights=tv_weights)
    if cfg.backbone == "vgg16":
        features, width = net.features, 512
    elif cfg.backbone.startswith("resnet"):
        features = nn.Sequential(*list(net.children())[:-2])
        width = net.fc.in_features
    elif cfg.backbone == "efficientnet_b0":
        features, width = net.features, net.classifier[-1].in_features
    else:  # densenet121
        features = nn.Sequential(net.features, nn.ReLU(inplace=True))
        width = net.classifier.in_features
    _first_conv(features, cfg.in_channels)
    return features, width


def build_classifier(cfg: ModelConfig) -> nn.Module:
    if cfg.backbone not in CLASSIFIER_BACKBONES:
        raise ValueError(f"unknown classifier backbone {cfg.backbone!r}; choose from {CLASSIFIER_BACKBONES}")
    features, width = _features(cfg)
    head = StudyHead if cfg.head == "study" else linear_head
    inputs = input_standardiser(cfg.in_channels) if cfg.input_norm else None
    model = Classifier(features, head(width, cfg.num_classes, cfg.dropout), inputs)
    if cfg.freeze_features:
        for p in model.features.parameters():
            p.requires_grad_(False)
    return model


def build_segmenter(cfg: ModelConfig) -> nn.Module:
    import segmentation_models_pytorch as smp

    archs = {"unet": smp.Unet, "unetplusplus": smp.UnetPlusPlus, "deeplabv3plus": smp.DeepLabV3Plus}
    if cfg.arch not in archs:
        raise ValueError(f"unknown segmenter architecture {cfg.arch!r}; choose from {SEGMENTER_ARCHS}")
    enc_weights = cfg.weights if cfg.weights and not cfg.weights.endswith(".safetensors") else None
    return archs[cfg.arch](
        encoder_name=cfg.backbone, encoder_weights=enc_weights, in_channels=cfg.in_channels, classes=cfg.num_classes
    )


BUILDERS = {CLASSIFY.name: build_classifier, SEGMENT.name: build_segmenter}


def freeze_unused(model: nn.Module, in_channels: int, size: int = 64) -> list[str]:
    """Freeze the parameters no forward pass reaches; their names.

    Some encoders keep layers their forward skips (segmentation-models-pytorch's efficientnet keeps
    its classifier's ``_conv_head`` and ``_bn1``). Such parameters never get a gradient, and DDP's
    default (``find_unused_parameters=False``) then fails on the second step with more than one
    process. Frozen, DDP leaves them out; searching for unused parameters every step instead would
    cost a graph walk per step. Probed with one eval-mode pass, so running statistics stay as they are.
    """
    was_training = model.training
    model.eval()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    saved = {n: p.grad for n, p in trainable}
    for _, p in trainable:
        p.grad = None
    model(torch.zeros(1, in_channels, size, size)).float().sum().backward()
    unused = [n for n, p in trainable if p.grad is None]
    for n, p in trainable:
        p.grad = saved[n]
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh model for ``cfg``; a local .safetensors ``weights`` file is loaded into it."""
    model = BUILDERS[get_task(cfg.task).name](cfg)
    if cfg.weights and cfg.weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        model.load_state_dict(load_file(cfg.weights))
    return model
