"""One synthetic CT case: choose the grid, paint the anatomy, blur, add noise, store in some orientation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnsdm.errors import NnsdmError
from nnsdm.phantom._anatomy import sample_anatomy, sample_hu
from nnsdm.phantom._geom import Canvas
from nnsdm.phantom._paint import TISSUES, draw

# Orientations other than LPS that about one case in four is stored in: DICOM-style codes naming the
# patient direction each array axis (i, j, k) points to. The voxel array is reoriented with them, so the
# physical anatomy stays the same.
OTHER_ORIENTATIONS = ("RAS", "LPI", "RAI", "PLS")
TEMPLATE_WIDTH = 380.0  # template mm spanning 82% of the nominal in-plane field of view
TEMPLATE_HEIGHT = 320.0  # template mm spanning the nominal z extent (lower chest to iliac crest)
SUBSLICES = 3  # each slice is the mean of this many thin slices (its thickness); labels from the middle one


def check_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Validate a nominal (z, y, x) shape and spacing."""
    try:
        shape = tuple(int(n) for n in shape)
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise NnsdmError(f"shape/spacing: expected three numbers each, got {shape!r} and {spacing!r}") from None
    if len(shape) != 3 or min(shape) < 16:
        raise NnsdmError(f"shape: expected three sizes of at least 16 voxels (z, y, x), got {shape}")
    if len(spacing) != 3 or not all(0 < s < 50 for s in spacing):
        raise NnsdmError(f"spacing: expected three positive sizes in mm (z, y, x), got {spacing}")
    return shape, spacing


def template_scale(shape, spacing) -> tuple[float, float]:
    """Physical mm per template mm in-plane and along z, fixed by the nominal grid (same for every case)."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    return 0.82 * min(ny * sy, nx * sx) / TEMPLATE_WIDTH, nz * sz / TEMPLATE_HEIGHT


def generate_case_arrays(seed: int, shape, spacing, orientation: str | None):
    """Everything ``generate_case`` returns, as SimpleITK images plus the info dict (with the tissue image)."""
    import SimpleITK as sitk

    shape, spacing = check_grid(shape, spacing)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise NnsdmError(f"seed: expected a non-negative integer, got {seed!r}")
    if orientation is not None and orientation != "LPS" and orientation not in OTHER_ORIENTATIONS:
        raise NnsdmError(f"orientation: expected LPS or one of {', '.join(OTHER_ORIENTATIONS)}, got {orientation!r}")
    # separate streams: the patient's anatomy and intensities do not depend on the grid drawn for the case
    anatomy_seq, grid_seq, image_seq = np.random.SeedSequence(int(seed)).spawn(3)
    arng = np.random.default_rng(anatomy_seq)
    A = sample_anatomy(arng)
    H = sample_hu(arng, A)
    scale = template_scale(shape, spacing)
    g = _case_grid(np.random.default_rng(grid_seq), A, shape, spacing, scale[1])
    orientation = orientation or g["orientation"]
    ct, label, tissue, findings = _paint_case(np.random.default_rng(image_seq), A, H, g, scale)

    (nz, ny, nx), (sp_z, sp_y, sp_x) = g["shape"], g["spacing"]
    origin = tuple(c - (n - 1) / 2 * s for c, n, s in zip(g["fov_centre"], (nx, ny, nz), (sp_x, sp_y, sp_z)))

    def image(array):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((sp_x, sp_y, sp_z))
        img.SetOrigin(origin)
        img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return sitk.DICOMOrient(img, orientation) if orientation != "LPS" else img

    ct_img, lab_img, tissue_img = image(ct), image(label), image(tissue)
    info = {
        "seed": int(seed),
        "orientation": orientation,
        "shape": list(sitk.GetArrayViewFromImage(ct_img).shape),
        "spacing": [round(s, 6) for s in reversed(ct_img.GetSpacing())],
        "liver_dome_cropped": bool((label[-1] == 1).any()),
        **findings,
        "noise_sd": round(float(g["noise_sd"]), 2),
        "hu": {k: round(float(v), 1) for k, v in H.items()},
        "template_scale": [round(scale[0], 6), round(scale[1], 6)],
        "tissue": sitk.GetArrayFromImage(tissue_img),
        "tissue_names": list(TISSUES),
    }
    return ct_img, lab_img, info


def _case_grid(rng: np.random.Generator, A: dict, shape, spacing, s_z: float) -> dict:
    """This case's grid: spacing, field of view and slice range vary around the nominal ones; also the
    patient's position, the stored orientation, blur and noise level."""
    f_xy = rng.uniform(0.78, 1.22)
    sp_y, sp_x = spacing[1] * f_xy, spacing[2] * f_xy
    coarse = rng.uniform() < 0.4
    sp_z = spacing[0] * (rng.uniform(1.2, 2.0) if coarse else rng.uniform(0.8, 1.2))
    fov = rng.uniform(0.95, 1.12)
    ny = max(16, round(shape[1] * spacing[1] * fov / sp_y))
    nx = max(16, round(shape[2] * spacing[2] * fov / sp_x))
    crop_dome = rng.uniform() < 0.3
    top = A["dome_top"] + (rng.uniform(-24, -5) if crop_dome else rng.uniform(8, 40))
    extent = TEMPLATE_HEIGHT * rng.uniform(0.85, 1.05)
    nz = max(8, round(extent * s_z / sp_z))
    body_y = (A["b_post"] - A["b_ant"] - A["fat"] * (A["fat_ant"] + A["fat_post"])) / 2
    return {
        "shape": (nz, ny, nx), "spacing": (sp_z, sp_y, sp_x), "z_bottom": top - (nz - 1) * sp_z / s_z,
        "centre": (rng.normal(0, 8), body_y + rng.normal(0, 8)),
        "yaw": float(np.clip(rng.normal(0, 0.06), -0.15, 0.15)),
        "fov_centre": (rng.uniform(-30, 30), rng.uniform(-40, 20), rng.uniform(-700, -100)),
        "orientation": "LPS" if rng.uniform() >= 0.25 else str(rng.choice(OTHER_ORIENTATIONS)),
        "blur": (rng.uniform(0.3, 0.5), rng.uniform(0.45, 0.75)),
        "noise_sd": rng.uniform(8, 22),
    }


def _paint_case(rng: np.random.Generator, A: dict, H: dict, g: dict, scale: tuple[float, float]):
    """CT (int16 HU), label and tissue arrays of the case on its grid, and the findings painted."""
    # paint thin slices, then average them into slices of the case's thickness (partial volume along z)
    m = SUBSLICES
    (nz, ny, nx), (sp_z, sp_y, sp_x) = g["shape"], g["spacing"]
    fine = (nz * m, ny, nx)
    cv = Canvas(fine, (sp_z / m, sp_y, sp_x), scale=scale, yaw=g["yaw"], centre=g["centre"],
                z_bottom=g["z_bottom"] - (m - 1) / 2 * sp_z / m / scale[1], label_step=m)
    tex = rng.standard_normal(fine, dtype=np.float32)
    ndimage.gaussian_filter(tex, (0.6 * m, 1.2, 1.2), output=tex, truncate=3.0)
    tex /= max(float(tex.std()), 1e-6)
    cv.texture = tex
    findings = draw(cv, A, H)
    hu = cv.hu.reshape(nz, m, ny, nx).mean(axis=1)
    label, tissue = cv.label[m // 2::m], cv.tissue[m // 2::m]

    # blur (the slice profile's tails along z, the reconstruction kernel in-plane), then correlated noise
    blur = g["blur"]
    hu = ndimage.gaussian_filter(hu, (blur[0], blur[1], blur[1]), truncate=3.0)
    noise = rng.standard_normal((nz, ny, nx), dtype=np.float32)
    ndimage.gaussian_filter(noise, (0.0, 0.6, 0.6), output=noise, truncate=3.0)
    noise *= g["noise_sd"] / max(float(noise.std()), 1e-6)
    hu += noise
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return ct, label, tissue, findings
