"""SDM targets for one training batch: nnsdm (edt) against a plain scipy implementation.

Batch: 2 x 80 x 192 x 160 (the FLARE21 paper's patch), spacing (2.5, 0.8, 0.8) mm, 4 organ labels of
very different sizes (liver, two kidneys sharing label 2, spleen, pancreas) as irregular ellipsoids.
Checks that both give the same values (max abs diff < 1e-5) and that nnsdm is at least 3x faster.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from nnsdm.sdm import batch_signed_distance_maps

SHAPE = (80, 192, 160)
SPACING = (2.5, 0.8, 0.8)
CLASSES = (1, 2, 3, 4)
REPEATS = 2


def make_batch(rng: np.random.Generator, batch: int = 2) -> np.ndarray:
    """Irregular ellipsoid organs (radii in mm) at slightly different places per sample, as int16 (B, 1, z, y, x)."""
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(SHAPE, SPACING))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    organs = [  # label, centre (mm), radii (mm)
        (1, (100, 70, 50), (60, 55, 45)),  # liver, partly cut by the patch border
        (2, (110, 110, 35), (25, 18, 14)),  # right kidney
        (2, (110, 110, 100), (25, 18, 14)),  # left kidney
        (3, (90, 60, 110), (30, 20, 18)),  # spleen
        (4, (105, 95, 70), (8, 10, 35)),  # pancreas: thin and long
    ]
    seg = np.zeros((batch, 1, *SHAPE), dtype=np.int16)
    for b in range(batch):
        for label, centre, radii in organs:
            c = np.asarray(centre) + rng.normal(0, 5, 3)
            r = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
            bumps = 0.08 * np.sin(yy / 7 + rng.uniform(0, 6)) * np.cos(xx / 9 + rng.uniform(0, 6))
            inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1 + bumps
            seg[b, 0][inside] = label
    return seg


def scipy_reference(seg: np.ndarray, classes, spacing) -> np.ndarray:
    """Plain implementation of the convention with scipy only, written independently of nnsdm."""
    seg = seg[:, 0]
    out = np.zeros((seg.shape[0], len(classes), *seg.shape[1:]), dtype=np.float64)
    cross = ndimage.generate_binary_structure(seg.ndim - 1, 1)
    for b in range(seg.shape[0]):
        for k, c in enumerate(classes):
            posmask = seg[b] == c
            if not posmask.any():
                continue
            if posmask.all():
                out[b, k] = -1
                continue
            posdis = ndimage.distance_transform_edt(posmask, sampling=spacing)
            negdis = ndimage.distance_transform_edt(~posmask, sampling=spacing)
            boundary = posmask & ~ndimage.binary_erosion(posmask, structure=cross, border_value=1)
            sdf = negdis / negdis.max() - posdis / posdis.max()
            sdf[boundary] = 0
            out[b, k] = sdf
    return out


def best_time(fn) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    seg = make_batch(np.random.default_rng(0))
    fractions = [float((seg == c).mean()) for c in CLASSES]
    print(f"batch {seg.shape} {seg.dtype}, spacing {SPACING}, class fractions "
          + ", ".join(f"{c}: {f:.4f}" for c, f in zip(CLASSES, fractions)))

    t_ref, ref = best_time(lambda: scipy_reference(seg, CLASSES, SPACING))
    t_new, new = best_time(lambda: batch_signed_distance_maps(seg, CLASSES, SPACING))

    diff = float(np.abs(new.astype(np.float64) - ref).max())
    ratio = t_ref / t_new
    print(f"scipy reference : {t_ref:7.3f} s per batch (best of {REPEATS})")
    print(f"nnsdm (edt)     : {t_new:7.3f} s per batch (best of {REPEATS})")
    print(f"speed-up        : {ratio:7.2f}x (goal >= 3x)")
    print(f"max abs diff    : {diff:.2e} (goal < 1e-5); dtype {new.dtype}, shape {new.shape}")
    assert new.dtype == np.float32 and new.shape == ref.shape
    assert diff < 1e-5, f"values differ from the scipy reference by {diff}"
    assert ratio >= 3, f"speed-up {ratio:.2f}x is below 3x"


if __name__ == "__main__":
    main()
