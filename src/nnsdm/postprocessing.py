"""Connected-component post-processing of label maps.

nnU-Net's "keep only the largest component" deletes a whole kidney when one label covers both kidneys
(FLARE21 label 2), so here each label keeps its own number of largest components
(:data:`nnsdm.labels.FLARE21_KEEP`: two for the kidneys, one for liver, spleen and pancreas).

Components are found with full connectivity (26 neighbours in 3D, 8 in 2D), as nnU-Net does:
nnunetv2 2.8.1's ``remove_all_but_largest_component_from_segmentation`` calls acvl_utils'
``remove_all_but_largest_component``, which labels with ``skimage.measure.label(connectivity=None)``,
i.e. full connectivity. Like nnU-Net, components tied in size with the last one kept are kept too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_components"]


def keep_largest_components(seg: np.ndarray, *, labels: Iterable[int] | None = None,
                            keep: Mapping[int, int] | None = None) -> np.ndarray:
    """Per label, keep the ``keep[label]`` largest connected components (default 1) and set the rest to 0.

    ``labels``: the labels to clean (default: every label > 0 present in ``seg``); other labels are left
    as they are. Returns a new array of the same dtype; ``seg`` is not modified. Each label is labelled
    on its bounding-box crop, which keeps this fast on large volumes.
    """
    seg = np.asarray(seg)
    if seg.dtype.kind not in "iu":
        raise ValueError(f"seg must be an integer label array, not {seg.dtype}")
    keep = dict(keep or {})
    out = seg.copy()
    if seg.size == 0:
        return out
    if labels is None:
        max_label = int(seg.max())
        labels = range(1, max_label + 1)
    else:
        labels = sorted({int(v) for v in labels if int(v) > 0})
        max_label = max(labels, default=0)
    if max_label < 1:
        return out
    boxes = ndimage.find_objects(seg, max_label=max_label)  # None for a label that is absent
    structure = ndimage.generate_binary_structure(seg.ndim, seg.ndim)
    for label in labels:
        n_keep = int(keep.get(label, 1))
        if n_keep < 1:
            raise ValueError(f"keep[{label}] = {n_keep}: must keep at least one component")
        box = boxes[label - 1]
        if box is None:
            continue
        mask = seg[box] == label
        components, count = ndimage.label(mask, structure=structure)
        if count <= n_keep:
            continue
        sizes = np.bincount(components.ravel())[1:]
        threshold = np.sort(sizes)[::-1][n_keep - 1]
        kept = np.concatenate([[False], sizes >= threshold])
        region = out[box]
        region[mask & ~kept[components]] = 0
    return out
