"""Synthetic head-CT phantoms with exact lesion masks (numpy only).

A phantom patient is a head drawn in millimetres: scalp, skull, a CSF layer, a gyral cortex of
grey matter over white matter, an interhemispheric fissure, lateral ventricles, a head-rest
below the head, correlated noise; then a hemorrhage (hyperdense ellipsoid, 50-90 HU, with an
oedema rim outside the mask) or an ischaemic infarct (hypodense wedge reaching the cortex,
10-25 HU). Slices cut the same 3-D patient at consecutive z, so lesions span several slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from strokeray.checks import check_positive, check_range
from strokeray.imaging.overlay import BACKGROUND, HEMORRHAGIC

HU_AIR = -1000.0
HU_FAT = -90.0
HU_SCALP = 45.0
HU_BONE = 1100.0
HU_CSF = 6.0
HU_GREY = 38.0
HU_WHITE = 28.0
HU_TABLE = 80.0


@dataclass(frozen=True)
class PhantomConfig:
    """Scanner and anatomy ranges phantoms are drawn from."""

    size: int = 512
    fov_mm: tuple[float, float] = (215.0, 256.0)  # reconstruction field of view drawn per patient
    thickness_mm: float = 5.0
    slices: int = 6
    noise_hu: float = 4.0  # brain-noise standard deviation, as on a clinical head CT
    head_height_mm: float = 130.0  # skull base to vertex, for the z profile
    hemorrhage_hu: tuple[float, float] = (55.0, 88.0)
    ischemic_hu: tuple[float, float] = (12.0, 24.0)

    def __post_init__(self) -> None:
        check_positive(slices=self.slices, thickness_mm=self.thickness_mm)
        check_range("size", self.size, 64, 4096)


@dataclass(frozen=True)
class Lesion:
    """A lesion in head coordinates (mm): u anterior-posterior, v left-right, z up."""

    kind: int  # ISCHEMIC or HEMORRHAGIC
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float
    angle_deg: float = 0.0  # wedge direction (ischaemia) or ellipse rotation (hemorrhage)
    half_width_deg: float = 25.0  # wedge half-angle (ischaemia)
    inner: float = 0.45  # wedge's inner end as a fraction of the brain radius (ischaemia)
    wobble: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)  # boundary irregularity phases


@dataclass(frozen=True)
class PatientSpec:
    """Everything random about one phantom patient."""

    index: int
    lesion_kind: int
    spacing_mm: float
    scale: float  # head size relative to an average adult
    aspect: float
    rotation_deg: float
    shift_mm: tuple[float, float]
    z0_mm: float  # height of the first slice above the skull base
    gyri: tuple[float, ...]  # cortical folding phases and amplitudes
    ventricle_mm: float  # half-width of the lateral ventricles (atrophy varies)
    lesion: Lesion | None


def draw_patient(index: int, lesion_kind: int, rng: np.random.Generator, cfg: PhantomConfig) -> PatientSpec:
    """Draw one patient's anatomy and (for stroke classes) its lesion."""
    scale = float(rng.uniform(0.9, 1.08))
    z0 = float(rng.uniform(0.3, 0.42) * cfg.head_height_mm)
    lesion = None
    if lesion_kind != BACKGROUND:
        # Put the lesion's centre on one of the middle slices so it is visible on at least one.
        k = int(rng.integers(1, max(2, cfg.slices - 1)))
        zc = z0 + k * cfg.thickness_mm + float(rng.uniform(-1.5, 1.5))
        angle = float(rng.uniform(0, 360))
        if lesion_kind == HEMORRHAGIC:
            r = float(rng.uniform(0.15, 0.45))
            centre = (r * 55 * np.cos(np.deg2rad(angle)), r * 45 * np.sin(np.deg2rad(angle)), zc)
            radii = (float(rng.uniform(6, 17)), float(rng.uniform(5, 13)), float(rng.uniform(5, 11)))
            hu = float(rng.uniform(*cfg.hemorrhage_hu))
        else:
            centre = (0.0, 0.0, zc)
            radii = (0.0, 0.0, float(rng.uniform(6, 13)))
            hu = float(rng.uniform(*cfg.ischemic_hu))
        lesion = Lesion(
            kind=lesion_kind,
            centre=centre,
            radii=radii,
            hu=hu,
            angle_deg=angle,
            half_width_deg=float(rng.uniform(16, 32)),
            inner=float(rng.uniform(0.35, 0.6)),
            wobble=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 4)),
        )
    return PatientSpec(
        index=index,
        lesion_kind=lesion_kind,
        spacing_mm=float(rng.uniform(*cfg.fov_mm)) / cfg.size,
        scale=scale,
        aspect=float(rng.uniform(0.76, 0.86)),
        rotation_deg=float(rng.uniform(-15, 15)),
        shift_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(-12, 12))),
        z0_mm=z0,
        gyri=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 6)),
        ventricle_mm=float(rng.uniform(2.5, 6.0)),
        lesion=lesion,
    )


def slice_z(spec: PatientSpec, k: int, cfg: PhantomConfig) -> float:
    """Height (mm above the skull base) of slice k."""
    return spec.z0_mm + k * cfg.thickness_mm


def _profile(z_mm: float, cfg: PhantomConfig) -> float:
    """Head cross-section scale at height z: an ellipsoid-like dome, widest low in the skull."""
    t = (z_mm / cfg.head_height_mm - 0.38) / 0.66
    return float(np.sqrt(max(0.05, 1.0 - t * t)))


def render_slice(
    spec: PatientSpec, k: int, cfg: PhantomConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Slice k of a patient: (HU float32 size x size, class mask uint8 of the same shape)."""
    n = cfg.size
    z = slice_z(spec, k, cfg)
    sp = spec.spacing_mm
    # Pixel grid in mm, then into head coordinates (u: AP, down the image; v: LR).
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float32)
    y = (rows - n / 2 + 0.5) * sp - spec.shift_mm[0]
    x = (cols - n / 2 + 0.5) * sp - spec.shift_mm[1]
    th = np.deg2rad(spec.rotation_deg)
    u = np.cos(th) * y + np.sin(th) * x
    v = -np.sin(th) * y + np.cos(th) * x

    s = _profile(z, cfg) * spec.scale
    a_out = 96.0 * s  # outer head semi-axis, anterior-posterior (mm); left-right is aspect x this
    phi = np.arctan2(v / spec.aspect, u)
    rho_mm = np.sqrt(u**2 + (v / spec.aspect) ** 2)  # distance in "AP millimetres"

    def inside(depth_mm: float, wiggle: np.ndarray | float = 0.0) -> np.ndarray:
        return rho_mm <= a_out - depth_mm + wiggle

    g = spec.gyri
    gyral = 1.6 * np.sin(17 * phi + g[0]) + 1.0 * np.sin(29 * phi + g[1]) + 0.7 * np.sin(41 * phi + g[2])
    hu = np.full((n, n), HU_AIR, dtype=np.float32)
    hu[inside(0.0)] = HU_SCALP
    hu[inside(2.0) & ~inside(4.0)] = HU_FAT
    hu[inside(5.0)] = HU_BONE
    hu[inside(11.0)] = HU_CSF
    brain = inside(13.5, gyral)
    hu[brain] = HU_GREY
    white = inside(17.5, 0.6 * gyral)
    hu[white] = HU_WHITE
    # Interhemispheric fissure: CSF along the midline, except the middle third (corpus callosum).
    fissure = (np.abs(v) < 1.2) & brain & (np.abs(u) > 0.3 * a_out)
    hu[fissure] = HU_CSF
    # Diploe: the skull's marrow layer is less dense than its tables.
    hu[inside(7.0) & ~inside(9.0)] = 650.0

    zf = z / cfg.head_height_mm
    if 0.4 < zf < 0.75:  # lateral ventricles, shaped like two parentheses
        half = spec.ventricle_mm * (1.0 - abs(zf - 0.57) / 0.2)
        for side in (-1.0, 1.0):
            vu = u / (28.0 * s)
            vv = (v - side * (6.0 + half + 3.0 * vu**2)) / max(half, 0.5)
            hu[(vu**2 + vv**2 <= 1.0) & white] = HU_CSF

    mask = np.zeros((n, n), dtype=np.uint8)
    lesion = spec.lesion
    if lesion is not None:
        region = _lesion_region(lesion, u, v, z, phi, rho_mm, a_out, brain)
        if region is not None:
            lesion_px, rim_px = region
            if lesion.kind == HEMORRHAGIC:
                hu[rim_px & white] = 22.0  # perilesional oedema: hypodense, not part of the bleed
            hu[lesion_px] = lesion.hu
            mask[lesion_px] = lesion.kind

    # Head-rest under the occiput (posterior = +u), separated from the head by air.
    rest = (np.abs(u - (a_out + 10.0) - 0.004 * v**2) < 2.5) & (np.abs(v) < 75)
    hu[rest] = HU_TABLE

    # Scanner noise: white noise blurred to CT's correlation length, stronger in bone.
    noise = rng.standard_normal((n, n)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.7) * np.float32(cfg.noise_hu / 0.4)
    hu += np.where(hu > 300, noise * 6, noise)
    # Smooth tissue inhomogeneity (a few HU over centimetres) keeps it from looking like a cartoon.
    shade = cv2.GaussianBlur(rng.standard_normal((n // 16, n // 16)).astype(np.float32), (0, 0), 1.5)
    hu += np.where(brain, cv2.resize(shade, (n, n), interpolation=cv2.INTER_CUBIC) * 4.0, 0.0)
    hu[~inside(0.0) & ~rest] = HU_AIR + noise[~inside(0.0) & ~rest] * 2
    return hu, mask


def _lesion_region(
    lesion: Lesion,
    u: np.ndarray,
    v: np.ndarray,
    z: float,
    phi: np.ndarray,
    rho_mm: np.ndarray,
    a_out: float,
    brain: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(lesion pixels, rim pixels) of a lesion at height z, or None when the slice misses it."""
    dz = (z - lesion.centre[2]) / lesion.radii[2]
    if abs(dz) >= 1.0:
        return None
    f = float(np.sqrt(1.0 - dz * dz))
    w = lesion.wobble
    if lesion.kind == HEMORRHAGIC:
        ang = np.deg2rad(lesion.angle_deg)
        du, dv = u - lesion.centre[0], v - lesion.centre[1]
        pu = np.cos(ang) * du + np.sin(ang) * dv
        pv = -np.sin(ang) * du + np.cos(ang) * dv
        t = np.arctan2(pv, pu)
        edge = 1.0 + 0.12 * np.sin(3 * t + w[0]) + 0.07 * np.sin(5 * t + w[1])
        r = np.sqrt((pu / (lesion.radii[0] * f)) ** 2 + (pv / (lesion.radii[1] * f)) ** 2)
        core = (r <= edge) & brain
        rim = (r <= edge * 1.0 + 4.0 / max(lesion.radii[1] * f, 1.0)) & brain & ~core
        return (core, rim) if core.any() else None
    # Ischaemia: a wedge of one arterial territory, from deep white matter out to the cortex.
    centre = np.deg2rad(lesion.angle_deg)
    dphi = np.angle(np.exp(1j * (phi - centre)))
    half = np.deg2rad(lesion.half_width_deg) * f * (1.0 + 0.12 * np.sin(rho_mm / 9.0 + w[0]))
    depth = lesion.inner + 0.05 * np.sin(8 * dphi + w[1])
    core = (np.abs(dphi) <= half) & (rho_mm >= depth * a_out) & brain
    return (core, np.zeros_like(core)) if core.any() else None
