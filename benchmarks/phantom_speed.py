"""Synthetic dataset speed: `generate_dataset` of 20 cases at the default 64x160x160 nominal grid.

Goal: under 60 s on 2 CPU cores. Prints the whole run against that budget, then where the time goes:
generating the cases (anatomy, blur, noise, orientation) and writing them as gzip-compressed NIfTI,
with uncompressed NIfTI writing for comparison.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from nnsdm.phantom import case_seed, generate_case, generate_dataset

CASES = 20
SEED = 0
BUDGET_S = 60.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate_dataset(tmp / "Dataset999_Phantom", cases=CASES, seed=SEED)
        total = time.perf_counter() - t0

        gen = write_gz = write_raw = 0.0
        voxels = 0
        for i in range(CASES):
            t0 = time.perf_counter()
            image, label = generate_case(seed=case_seed(SEED, i))
            gen += time.perf_counter() - t0
            voxels += image.GetNumberOfPixels()
            for compress, suffix in ((True, ".nii.gz"), (False, ".nii")):
                t0 = time.perf_counter()
                sitk.WriteImage(image, str(tmp / f"img{suffix}"), useCompression=compress)
                sitk.WriteImage(label, str(tmp / f"lab{suffix}"), useCompression=compress)
                dt = time.perf_counter() - t0
                if compress:
                    write_gz += dt
                else:
                    write_raw += dt

    print(f"phantom dataset, {CASES} cases, nominal 64x160x160 "
          f"({voxels / CASES / 1e6:.2f} M voxels per case on average)")
    print(f"  generate_dataset: {total:6.1f} s   budget {BUDGET_S:.0f} s   ratio {total / BUDGET_S:.2f} "
          f"({'OK' if total < BUDGET_S else 'OVER BUDGET'})")
    print(f"  generating cases: {gen:6.1f} s   ({gen / CASES:.2f} s per case)")
    print(f"  writing .nii.gz:  {write_gz:6.1f} s   vs uncompressed .nii {write_raw:.1f} s "
          f"(gzip costs {write_gz / max(write_raw, 1e-9):.1f}x)")
    assert total < BUDGET_S, f"generate_dataset took {total:.1f} s, over the {BUDGET_S:.0f} s budget"


if __name__ == "__main__":
    main()
