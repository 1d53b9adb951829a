"""Preview images: a PNG per case with the organs over the CT, and a contact sheet of all cases.

A case's preview shows three orthogonal planes (axial, coronal, sagittal) through the centre of all its
organ voxels (the middle of the volume when no organ was found), in patient orientation whatever the
storage order: radiological convention (patient's right on the image's left; anterior up in axial
slices, superior up in the others), every panel drawn in millimetres so anisotropic voxels keep their
physical proportions. CT in an abdominal window (level 40, width 400 HU); organs filled in fixed colours
(:data:`nnsdm.labels.ORGAN_COLOURS`) at 45% opacity; the legend lists every organ of the model with its
volume, "not found" for an organ absent from the case. The contact sheet tiles the previews in a grid,
to spot a failed case in a cohort at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnsdm.fileio import atomic_path
from nnsdm.inference.io import label_image
from nnsdm.labels import CT_WINDOW, ORGAN_COLOURS

PREVIEW_SUFFIX = "_preview.png"
CONTACT_SHEET = "previews.png"
PREVIEW_SIZE = (12.0, 4.6)  # inches at PREVIEW_DPI: 1200 x 460 pixels
PREVIEW_DPI = 100
OVERLAY_ALPHA = 0.45
_FALLBACK = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def organ_colour(label: int, name: str) -> str:
    """The organ's fixed colour (:data:`nnsdm.labels.ORGAN_COLOURS`; other organs a tab10 colour by label)."""
    return ORGAN_COLOURS.get(name, _FALLBACK[int(label) % len(_FALLBACK)])


def _lps_arrays(labels: np.ndarray, image: sitk.Image) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """CT and labels permuted and flipped to LPS ((z, y, x): superior, posterior, left), and (z, y, x) spacing."""
    ct = sitk.DICOMOrient(image, "LPS")
    lab = sitk.DICOMOrient(label_image(labels, image), "LPS")
    spacing = tuple(float(s) for s in reversed(ct.GetSpacing()))
    return sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lab), spacing


def _planes(ct: np.ndarray, labels: np.ndarray, spacing) -> list[tuple[str, np.ndarray, np.ndarray, tuple, str]]:
    """(title, CT slice, label slice, extent in mm, left/right edge letters) of the three planes, display-ready."""
    found = np.argwhere(labels > 0)
    z, y, x = (np.round(found.mean(axis=0)).astype(int) if len(found) else np.array(labels.shape) // 2)
    sz, sy, sx = spacing
    nz, ny, nx = labels.shape
    return [
        ("axial", ct[z], labels[z], (0, nx * sx, ny * sy, 0), "RL"),
        ("coronal", ct[::-1, y], labels[::-1, y], (0, nx * sx, nz * sz, 0), "RL"),
        ("sagittal", ct[::-1, :, x], labels[::-1, :, x], (0, ny * sy, nz * sz, 0), "AP"),
    ]


def _overlay(labels: np.ndarray, colours: Mapping[int, str]) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*labels.shape, 4))
    for label, colour in colours.items():
        rgba[labels == label] = to_rgba(colour, OVERLAY_ALPHA)
    return rgba


def write_preview(labels: np.ndarray, image: sitk.Image, path: Path, label_names: Mapping[int, str], *,
                  title: str = "") -> Path:
    """Write the case's preview PNG (1200 x 460 pixels) to ``path`` atomically; see the module docstring.

    ``labels``: the label array on ``image``'s grid ((z, y, x)); ``label_names``: label -> organ name.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ct, lps, spacing = _lps_arrays(np.asarray(labels), image)
    colours = {label: organ_colour(label, name) for label, name in label_names.items()}
    planes = _planes(ct, lps, spacing)
    fig = Figure(figsize=PREVIEW_SIZE, dpi=PREVIEW_DPI, layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[plane[3][1] for plane in planes])
    for ax, (name, ct_slice, label_slice, extent, edges) in zip(axes, planes):
        ax.imshow(ct_slice, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], extent=extent, interpolation="nearest")
        ax.imshow(_overlay(label_slice, colours), extent=extent, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
        for x, letter in zip((0.01, 0.99), edges):
            ax.text(x, 0.5, letter, transform=ax.transAxes, color="yellow", ha="left" if x < 0.5 else "right",
                    va="center", fontsize=9)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    handles = []
    for label, name in sorted(label_names.items()):
        count = int(np.count_nonzero(lps == label))
        text = f"{name} {count * voxel_ml:.0f} ml" if count else f"{name}: not found"
        handles.append(Patch(facecolor=colours[label], edgecolor="black", label=text))
    fig.legend(handles=handles, loc="outside lower center", ncol=max(1, len(handles)), frameon=False)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=PREVIEW_DPI, facecolor="white")
    return Path(path)


def write_contact_sheet(previews: Sequence[Path], path: Path, *, columns: int | None = None,
                        tile_width: int = 600) -> Path:
    """Tile preview PNGs (in the given order) into one PNG grid, each scaled to ``tile_width`` pixels wide.

    ``columns`` defaults to a roughly square sheet.
    """
    from PIL import Image

    tiles = []
    for preview in previews:
        with Image.open(preview) as tile:
            height = max(1, round(tile.height * tile_width / tile.width))
            tiles.append(tile.convert("RGB").resize((tile_width, height), Image.Resampling.LANCZOS))
    if not tiles:
        raise ValueError("no preview to put on a contact sheet")
    tile_height = max(t.height for t in tiles)
    if columns is None:
        columns = max(1, round(math.sqrt(len(tiles) * tile_height / tile_width)))
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * tile_width, rows * tile_height), "white")
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % columns) * tile_width, (n // columns) * tile_height))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
