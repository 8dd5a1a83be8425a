"""What running on a GPU changes, decided in one place: mixed precision, cuDNN autotuning and
channels-last memory. On a CPU nothing changes (fp32, torch's defaults)."""

from __future__ import annotations

import torch

FP32, FP16_AUTOCAST = "fp32", "fp16-autocast"


def uses_amp(device: torch.device | str) -> bool:
    """Autocast to fp16 (and scale the loss) on CUDA devices only."""
    return torch.device(device).type == "cuda"


def precision_name(device: torch.device | str) -> str:
    """The arithmetic a model runs in on ``device``: recorded in bundles (the operating point was
    chosen under it) and in scoring digests (a run must not mix fp16 and fp32 decisions)."""
    return FP16_AUTOCAST if uses_amp(device) else FP32


def for_device(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``model`` on ``device``; on CUDA in channels-last memory (convolutions in fp16 run on tensor
    cores without layout transposes) with cuDNN picking the fastest kernels for the fixed input size."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return model.to(device).to(memory_format=torch.channels_last)
    return model.to(device)


def to_device(t, device, dtype=None):
    """A host tensor on ``device`` without stalling it: a copy from pageable memory waits for the
    GPU's queue to drain, one from pinned memory is queued behind it."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device=device, dtype=dtype, non_blocking=True)
    return t.to(device=device, dtype=dtype)
