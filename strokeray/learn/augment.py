"""Batch augmentations in torch, on whatever device the batch is on.

Every geometric transform is one sampling grid applied to the image (bilinear) and to the mask
(nearest), so lesions move with the anatomy. Intensity transforms touch the image only. Inputs:
images (N, C, H, W) float in [0, 1], masks (N, H, W) integer classes or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strokeray.checks import check_range
from strokeray.learn.accel import to_device


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths; ``strength`` scales every magnitude at once (0 = off)."""

    strength: float = 1.0
    p_rot90: float = 0.5
    p_flip: float = 0.5
    p_affine: float = 0.7
    rotate_deg: float = 15.0
    scale: float = 0.1
    translate: float = 0.06  # fraction of the image
    p_elastic: float = 0.3
    elastic_alpha: float = 0.03  # displacement, fraction of the image
    elastic_grid: int = 6  # control points per side of the smooth displacement field
    p_grid: float = 0.2  # grid distortion: independent stretching of rows and columns
    grid_distort: float = 0.08
    p_intensity: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.15
    window_jitter: float = 0.05  # per-channel shift and gain: the HU windows moved a little

    def __post_init__(self) -> None:
        check_range("augment strength", self.strength, 0.0, 5.0)

    @classmethod
    def preset(cls, name: str, **overrides) -> AugmentConfig:
        """A named recipe: "full" (every transform) or "flips" (left-right mirror only: the plain
        baseline's, which leaves intensities untouched, the hyperdense-bleed signal included)."""
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; one of {sorted(AUGMENT_PRESETS)}")
        return cls(**{**AUGMENT_PRESETS[name], **overrides})


AUGMENT_PRESETS: dict[str, dict] = {
    "full": {},
    "flips": {"p_rot90": 0.0, "p_affine": 0.0, "p_elastic": 0.0, "p_grid": 0.0, "p_intensity": 0.0},
}


def _identity_grid(n: int, h: int, w: int, device, dtype) -> torch.Tensor:
    theta = torch.eye(2, 3, device=device, dtype=dtype).unsqueeze(0).expand(n, 2, 3)
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


def _affine_theta(n: int, cfg: AugmentConfig, g: torch.Generator, device, dtype) -> torch.Tensor:
    s = cfg.strength
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(cfg.rotate_deg) * s
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * cfg.scale * s
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * cfg.translate * 2 * s
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return to_device(theta, device, dtype)


def _smooth_field(n: int, h: int, w: int, grid: int, amount: float, g: torch.Generator, device, dtype) -> torch.Tensor:
    coarse = (torch.rand(n, 2, grid, grid, generator=g) * 2 - 1) * amount * 2
    field = F.interpolate(to_device(coarse, device, dtype), size=(h, w), mode="bicubic", align_corners=False)
    return field.permute(0, 2, 3, 1)


def _piecewise(coord: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Map coordinates in [-1, 1] through per-sample piecewise-linear knots (n, K+1) on a uniform grid."""
    n_seg = knots.shape[1] - 1
    t = ((coord.clamp(-1, 1) + 1) / 2 * n_seg).reshape(coord.shape[0], -1)
    k = t.floor().clamp(0, n_seg - 1).long()
    lo, hi = knots.gather(1, k), knots.gather(1, k + 1)
    return (lo + (t - k) * (hi - lo)).reshape(coord.shape)


def _rot_flip(a: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``a`` (C, H, W) or (H, W) turned k quarter turns, then mirrored left-right."""
    a = torch.rot90(a, k, dims=(-2, -1))
    return torch.flip(a, dims=(-1,)) if flip else a


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    cfg: AugmentConfig = AugmentConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Randomly transformed copies of a batch (and its masks)."""
    if cfg.strength <= 0:
        return images, masks
    g = generator or torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    n, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    x, m = images, masks
    # rot90 and flips are exact on pixels: apply them per sample without resampling.
    if h == w:
        k = torch.randint(0, 4, (n,), generator=g) * (torch.rand(n, generator=g) < cfg.p_rot90)
        flip = torch.rand(n, generator=g) < cfg.p_flip
        x = torch.stack([_rot_flip(x[i], int(k[i]), bool(flip[i])) for i in range(n)])
        m = torch.stack([_rot_flip(m[i], int(k[i]), bool(flip[i])) for i in range(n)]) if m is not None else None
    grid = _identity_grid(n, h, w, dev, dt)
    # Which samples get a transform is drawn, and tested with .any(), on the host: a test of a
    # device tensor would wait for the GPU to finish all queued work, several times a batch.
    use_affine = torch.rand(n, generator=g) < cfg.p_affine
    if use_affine.any():
        affine = F.affine_grid(_affine_theta(n, cfg, g, dev, dt), [n, 1, h, w], align_corners=False)
        grid = torch.where(to_device(use_affine, dev)[:, None, None, None], affine, grid)
    use_elastic = torch.rand(n, generator=g) < cfg.p_elastic
    if use_elastic.any():
        field = _smooth_field(n, h, w, cfg.elastic_grid, cfg.elastic_alpha * cfg.strength, g, dev, dt)
        grid = grid + field * to_device(use_elastic, dev)[:, None, None, None]
    use_grid = torch.rand(n, generator=g) < cfg.p_grid
    if use_grid.any():
        # Grid distortion: 8 row bands and 8 column bands, each stretched by its own factor.
        steps = 1 + (torch.rand(n, 2, 8, generator=g) * 2 - 1) * cfg.grid_distort * cfg.strength
        knots = torch.cat([torch.zeros(n, 2, 1), torch.cumsum(steps, -1)], -1)
        knots = to_device(knots / knots[..., -1:] * 2 - 1, dev, dt)  # (n, 2, 9) in [-1, 1]
        cols = _piecewise(grid[..., 0], knots[:, 0])
        rows = _piecewise(grid[..., 1], knots[:, 1])
        grid = torch.where(to_device(use_grid, dev)[:, None, None, None], torch.stack([cols, rows], -1), grid)
    if use_affine.any() or use_elastic.any() or use_grid.any():  # else leave pixels untouched
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if m is not None:
            m = F.grid_sample(m[:, None].to(dt), grid, mode="nearest", padding_mode="zeros", align_corners=False)[
                :, 0
            ].to(m.dtype)
    use_int = torch.rand(n, generator=g) < cfg.p_intensity
    if use_int.any():
        c = x.shape[1]
        s = cfg.strength
        gain = 1 + to_device((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * cfg.contrast * s, dev, dt)
        bias = to_device((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * cfg.brightness * s, dev, dt)
        wgain = 1 + to_device((torch.rand(n, c, 1, 1, generator=g) * 2 - 1) * cfg.window_jitter * s, dev, dt)
        wbias = to_device((torch.rand(n, c, 1, 1, generator=g) * 2 - 1) * cfg.window_jitter * s, dev, dt)
        jittered = ((x - 0.5) * gain * wgain + 0.5 + bias + wbias).clamp(0, 1)
        x = torch.where(to_device(use_int, dev)[:, None, None, None], jittered, x)
    return x, m
