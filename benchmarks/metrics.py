"""NSD for one FLARE21-like case: nnsdm against DeepMind's surface-distance (the reference implementation).

Case: 100 x 256 x 256 voxels, spacing (2.5, 0.8, 0.8) mm, 4 organ labels (liver, two kidneys sharing
label 2, spleen, pancreas) as irregular ellipsoids; the prediction is the same organs drawn again with
small random shifts, size changes and a spurious blob. Per organ, DeepMind runs
``compute_surface_distances`` + ``compute_surface_dice_at_tolerance`` and nnsdm runs
``normalized_surface_dice``, at the FLARE21 tolerance (1 mm) and the FLARE22 ones (3 and 5 mm).
Checks that both give the same values (max abs diff < 1e-6) and that nnsdm is at least 5x faster at 1 mm.
Needs ``pip install surface-distance`` (DeepMind's package; numpy 2 needs ``np.Inf`` restored).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from nnsdm.evaluation import FLARE21_TOLERANCE_MM, FLARE22_TOLERANCE_MM, normalized_surface_dice

SHAPE = (100, 256, 256)
SPACING = (2.5, 0.8, 0.8)
REPEATS = 3
ORGANS = [  # label, centre (mm), radii (mm)
    (1, (130, 90, 70), (60, 60, 50)),  # liver
    (2, (140, 130, 45), (28, 20, 15)),  # right kidney
    (2, (140, 130, 160), (28, 20, 15)),  # left kidney
    (3, (120, 80, 165), (35, 22, 20)),  # spleen
    (4, (135, 115, 100), (9, 11, 40)),  # pancreas: thin and long
]


def draw(rng: np.random.Generator, jitter_mm: float, scale: float) -> np.ndarray:
    """uint8 label map of irregular ellipsoids, each organ moved by ~jitter_mm and resized by ~scale."""
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(SHAPE, SPACING))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    seg = np.zeros(SHAPE, dtype=np.uint8)
    for label, centre, radii in ORGANS:
        c = np.asarray(centre) + rng.normal(0, jitter_mm, 3)
        r = np.asarray(radii) * rng.uniform(1 - scale, 1 + scale, 3)
        bumps = 0.08 * np.sin(yy / 7 + rng.uniform(0, 6)) * np.cos(xx / 9 + rng.uniform(0, 6))
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1 + bumps
        seg[inside] = label
    return seg


def make_case() -> tuple[np.ndarray, np.ndarray]:
    gt = draw(np.random.default_rng(1), jitter_mm=0.0, scale=0.0)
    pred = draw(np.random.default_rng(2), jitter_mm=1.5, scale=0.04)
    pred[60:64, 40:50, 200:215] = 3  # a spurious spleen blob
    return pred, gt


def best_time(fn, repeats: int = REPEATS) -> tuple[float, list[float]]:
    best, values = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        values = fn()
        best = min(best, time.perf_counter() - t0)
    return best, values


def main() -> int:
    try:
        np.Inf = np.inf  # surface-distance 0.1 uses np.Inf, removed in numpy 2
        import surface_distance
    except ImportError:
        print("benchmarks/metrics.py needs DeepMind's package: pip install surface-distance", file=sys.stderr)
        return 1

    pred, gt = make_case()
    print(f"case {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, spacing {SPACING} mm, 4 organs; best of {REPEATS} runs")
    ok = True
    settings = (("FLARE21 (1 mm)", FLARE21_TOLERANCE_MM), ("FLARE22 (5/3/3/5 mm)", FLARE22_TOLERANCE_MM))
    for name, tolerances in settings:

        def reference() -> list[float]:
            out = []
            for label, tol in tolerances.items():
                d = surface_distance.compute_surface_distances(gt == label, pred == label, SPACING)
                out.append(float(surface_distance.compute_surface_dice_at_tolerance(d, tol)))
            return out

        def ours() -> list[float]:
            return [normalized_surface_dice(pred == label, gt == label, SPACING, tol)
                    for label, tol in tolerances.items()]

        t_ref, v_ref = best_time(reference)
        t_ours, v_ours = best_time(ours)
        diff = float(np.max(np.abs(np.array(v_ref) - np.array(v_ours))))
        ratio = t_ref / t_ours
        print(f"{name}: NSD per organ {np.round(v_ours, 4).tolist()}")
        print(f"  DeepMind surface-distance: {t_ref * 1000:8.1f} ms")
        print(f"  nnsdm:                     {t_ours * 1000:8.1f} ms")
        print(f"  speed-up {ratio:.1f}x, max |difference| {diff:.2e}")
        if diff > 1e-6:
            print("  FAIL: values differ by more than 1e-6")
            ok = False
        if tolerances is FLARE21_TOLERANCE_MM and ratio < 5:
            print("  FAIL: nnsdm is less than 5x faster")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
