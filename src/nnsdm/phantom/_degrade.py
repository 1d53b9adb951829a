"""Ways real scans go wrong, applied to a finished synthetic case (HU, labels and tissues on its LPS grid).

Each degradation takes a ``severity`` in (0, 1] (1: strong enough that a model trained on clean cases
often fails) and its own random stream, so the same case seed gives the same anatomy with and without
it. Labels stay those of the true anatomy (motion, noise and streaks change only the image), except
where the degradation changes the grid itself: a truncated field of view crops image and labels alike,
thick slices keep the label of each slab's middle slice.

* ``noise``: extra correlated noise, 20-120 HU;
* ``low_dose``: noise growing with the X-ray path length through the body, streaky along the widest
  (left-right) path, as in photon starvation;
* ``non_contrast``: unenhanced phase: organs and vessels at native HU (liver about 55, spleen 48, kidney
  32, pancreas 42, blood 42), so organs barely stand out from each other;
* ``arterial``: late arterial phase: bright aorta, corticomedullary kidneys, heterogeneous spleen,
  weakly enhanced liver, brightly enhanced pancreas;
* ``metal``: two spinal fixation rods (3000 HU) with dark and bright streaks radiating from them;
* ``motion``: breathing motion: the image is the mean of copies shifted along z and y, plus a ghost;
* ``truncated_fov``: reconstructed field of view smaller than the patient (image and labels cropped);
* ``thick_slices``: slabs of 2-3 slices averaged into one (slice spacing and thickness x2-3).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

DEGRADATIONS = ("noise", "low_dose", "non_contrast", "arterial", "metal", "motion", "truncated_fov", "thick_slices")

# Native (unenhanced) and late-arterial HU of the tissues that contrast changes.
_NATIVE = {"liver": 55.0, "liver_vessel": 42.0, "liver_lesion": 40.0, "spleen": 48.0, "kidney_cortex": 32.0,
           "kidney_medulla": 30.0, "kidney_tumour": 35.0, "pancreas": 42.0, "aorta": 42.0, "artery": 42.0,
           "vein": 42.0, "portal_vein": 42.0, "heart": 42.0, "bowel_wall": 38.0}
_ARTERIAL = {"liver": 75.0, "liver_vessel": 60.0, "spleen": 105.0, "kidney_cortex": 230.0, "kidney_medulla": 70.0,
             "pancreas": 135.0, "aorta": 340.0, "artery": 300.0, "vein": 90.0, "portal_vein": 120.0, "heart": 250.0}


def _correlated_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma, output=noise, truncate=3.0)
    return noise / max(float(noise.std()), 1e-6)


def _body(tissue: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return (tissue != names.index("air")) & (tissue != names.index("table"))


def _contrast(hu, tissue, names, target: dict, severity: float, rng) -> np.ndarray:
    """Move each listed tissue's HU towards its target, as a smooth per-voxel offset (partial volume kept)."""
    delta = np.zeros(hu.shape, np.float32)
    for name, value in target.items():
        mask = tissue == names.index(name)
        if mask.any():
            delta[mask] = severity * (value - float(np.median(hu[mask])))
    if "spleen" in target and target is _ARTERIAL:  # arterial spleen: moire pattern of red and white pulp
        spleen = tissue == names.index("spleen")
        delta[spleen] += severity * 45.0 * _correlated_noise(rng, hu.shape, (1.0, 4.0, 4.0))[spleen]
    return hu + ndimage.gaussian_filter(delta, (0.4, 0.6, 0.6), truncate=3.0)


def _low_dose(hu, tissue, names, spacing, severity, rng) -> np.ndarray:
    body = _body(tissue, names)
    path = body.sum(axis=2, keepdims=True) * spacing[2]  # left-right path length through the body (mm) per row
    scale = np.sqrt(path / max(float(path.max()), 1.0))
    sd = (30.0 + 130.0 * severity) * scale
    streaks = _correlated_noise(rng, hu.shape, (0.0, 0.4, 8.0))
    grain = _correlated_noise(rng, hu.shape, (0.0, 0.6, 0.6))
    return hu + sd * (0.6 * streaks + 0.8 * grain) * body


def _metal(hu, tissue, names, spacing, severity, rng) -> np.ndarray:
    spine = np.argwhere(tissue == names.index("vertebral_body"))
    if len(spine) == 0:
        return hu
    cy, cx = spine[:, 1].mean(), spine[:, 2].mean()
    nz, ny, nx = hu.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    out = hu.copy()
    amp = 150.0 + 450.0 * severity
    angles = rng.uniform(0, math.pi, 6)
    rods = [(cy + rng.uniform(-4, 4) / spacing[1], cx + side * rng.uniform(14, 20) / spacing[2]) for side in (-1, 1)]
    ty, tx = rods[1][0] - rods[0][0], rods[1][1] - rods[0][1]
    across = ((y - rods[0][0]) * tx - (x - rods[0][1]) * ty) / math.hypot(ty, tx)  # distance (voxels) from the rods' line
    pattern = -1.2 * np.exp(-(across * spacing[1] / 3.0) ** 2)  # dark band between and beyond the two rods
    for ry, rx in rods:
        dy, dx = (y - ry) * spacing[1], (x - rx) * spacing[2]
        r, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
        rays = sum(np.cos(theta - a) ** 300 * (1 if i % 2 else -1) for i, a in enumerate(angles))
        pattern = pattern + rays / (1.0 + r / 40.0)
    body = _body(tissue, names)
    out += amp * pattern[None] * body
    for ry, rx in rods:
        rod = ((y - ry) * spacing[1]) ** 2 + ((x - rx) * spacing[2]) ** 2 <= 3.0 ** 2
        out[:, rod] = 3000.0
    return out


def _motion(hu, spacing, severity, rng) -> np.ndarray:
    travel = 3.0 + 9.0 * severity  # mm of diaphragm travel during the acquisition
    steps = np.linspace(0.0, 1.0, 7)
    out = np.zeros_like(hu)
    for t in steps:
        out += ndimage.shift(hu, (t * travel / spacing[0], 0.4 * t * travel / spacing[1], 0), order=1, mode="nearest")
    out /= len(steps)
    ghost = ndimage.shift(hu, (0, rng.choice([-1, 1]) * 25.0 / spacing[1], 0), order=1, mode="nearest")
    return out + 0.25 * severity * (ghost - out)


def degrade(kind: str, severity: float, hu: np.ndarray, label: np.ndarray, tissue: np.ndarray,
            spacing: tuple[float, float, float], names: tuple[str, ...], rng: np.random.Generator):
    """Apply one degradation to a case's (z, y, x) arrays in LPS order.

    Returns ``(hu, label, tissue, spacing, shift)``: ``shift`` is how far (voxels, z y x, in the old grid)
    the new first voxel's centre lies from the old one, for the origin.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")
    s = float(np.clip(severity, 0.0, 1.0))
    shift = (0.0, 0.0, 0.0)
    if kind == "noise":
        hu = hu + (20.0 + 100.0 * s) * _correlated_noise(rng, hu.shape, (0.0, 0.7, 0.7))
    elif kind == "low_dose":
        hu = _low_dose(hu, tissue, names, spacing, s, rng)
    elif kind in ("non_contrast", "arterial"):
        hu = _contrast(hu, tissue, names, _NATIVE if kind == "non_contrast" else _ARTERIAL, s, rng)
    elif kind == "metal":
        hu = _metal(hu, tissue, names, spacing, s, rng)
    elif kind == "motion":
        hu = _motion(hu, spacing, s, rng)
    elif kind == "truncated_fov":
        keep = 1.0 - 0.35 * s  # fraction of the width and depth reconstructed
        lo = [int(round(n * (1 - keep) / 2)) for n in hu.shape[1:]]
        box = (slice(None), slice(lo[0], hu.shape[1] - lo[0]), slice(lo[1], hu.shape[2] - lo[1]))
        hu, label, tissue = hu[box], label[box], tissue[box]
        shift = (0.0, float(lo[0]), float(lo[1]))
    else:  # thick_slices
        k = 2 if s < 0.67 else 3
        nz = hu.shape[0] // k
        hu = hu[:nz * k].reshape(nz, k, *hu.shape[1:]).mean(axis=1)
        label, tissue = label[k // 2:nz * k:k], tissue[k // 2:nz * k:k]
        spacing = (spacing[0] * k, spacing[1], spacing[2])
        shift = ((k - 1) / 2, 0.0, 0.0)
    return hu, label, tissue, spacing, shift
