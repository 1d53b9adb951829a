"""FLARE21 metrics: Dice, NSD and HD95 against a brute-force implementation and DeepMind's package; the evaluate job."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from nnsdm.evaluation import metrics
from nnsdm.errors import NnsdmError
from nnsdm.evaluation import (
    FLARE22_TOLERANCE_MM,
    dice,
    evaluate_case,
    evaluate_folder,
    format_summary,
    hd95,
    normalized_surface_dice,
    parse_tolerance,
    surface_area_table,
)
from nnsdm.labels import FLARE21_LABELS

# DeepMind's package uses deprecated scipy namespaces.
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

# Many surfel distances equal the tolerances below; 0.8 mm is not exact in binary (nor in float32).
SPACINGS = [(1.0, 1.0, 1.0), (2.0, 0.75, 1.0), (0.5, 1.25, 0.75), (2.5, 0.8, 0.8), (0.8, 0.8, 0.8)]


def _blob(rng: np.random.Generator, shape, sigma=1.5, level=0.55) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def _pair(rng: np.random.Generator, shape=(10, 12, 11)):
    """A ground truth and a prediction that overlaps it imperfectly (grown, with some voxels flipped)."""
    while True:
        gt = _blob(rng, shape)
        pred = ndimage.binary_dilation(gt) ^ (rng.random(shape) < 0.03) if rng.random() < 0.5 else _blob(rng, shape)
        if gt.any() and pred.any():
            return pred, gt


# ---------------------------------------------------------------------------------------------------------
# Independent brute-force reference: explicit loops over cubes, pairwise distances.


def _brute_surfels(mask: np.ndarray):
    """Cube positions and codes of every 2x2x2 cube of the zero-padded mask that is neither empty nor full."""
    padded = np.pad(mask.astype(np.uint8), 1)
    points, codes = [], []
    for i in range(padded.shape[0] - 1):
        for j in range(padded.shape[1] - 1):
            for k in range(padded.shape[2] - 1):
                code = 0
                for a in (0, 1):
                    for b in (0, 1):
                        for c in (0, 1):
                            code |= int(padded[i + a, j + b, k + c]) << (7 - (4 * a + 2 * b + c))
                if code not in (0, 255):
                    points.append((i, j, k))
                    codes.append(code)
    return np.array(points, dtype=float), np.array(codes)


def _brute_distances(pred, gt, spacing):
    table = surface_area_table(spacing)
    p_pts, p_codes = _brute_surfels(pred)
    g_pts, g_codes = _brute_surfels(gt)
    # every pair of surfels; squares summed in the order scipy's distance transform uses, so that
    # distances equal to the tolerance compare the same way as in DeepMind's code
    sq = ((g_pts[:, None, :] - p_pts[None, :, :]) * np.asarray(spacing)) ** 2
    d = np.sqrt((sq[..., 0] + sq[..., 1]) + sq[..., 2])
    return d.min(axis=1), table[g_codes], d.min(axis=0), table[p_codes]


def _brute_nsd(pred, gt, spacing, tol):
    if not gt.any() and not pred.any():
        return 1.0
    if not gt.any() or not pred.any():
        return 0.0
    d_g, a_g, d_p, a_p = _brute_distances(pred, gt, spacing)
    return (a_g[d_g <= tol].sum() + a_p[d_p <= tol].sum()) / (a_g.sum() + a_p.sum())


def _brute_percentile(d, a, q=0.95):
    order = sorted(range(len(d)), key=lambda i: (d[i], a[i]))
    total = a.sum()
    running = 0.0
    for i in order:
        running += a[i]
        if running / total >= q:
            return d[i]
    return d[order[-1]]


# ---------------------------------------------------------------------------------------------------------
# The surface-area table


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.7), (0.6, 3.0, 1.1)])
def test_area_table_planar_cases_match_geometry(spacing):
    s0, s1, s2 = spacing
    table = surface_area_table(spacing)
    assert table[0] == table[255] == 0
    np.testing.assert_allclose(table, table[::-1], atol=1e-12)  # a code and its complement: same surface
    corner = 0.5 * math.sqrt((s1 * s2 / 4) ** 2 + (s0 * s2 / 4) ** 2 + (s0 * s1 / 4) ** 2)
    for bit in range(8):  # one corner inside: a triangle cutting the three edges at their midpoints
        assert table[1 << bit] == pytest.approx(corner, rel=1e-12)
    # two corners along axis 2 (bits 7 and 6 are corners (0,0,0) and (0,0,1)): a rectangle
    assert table[0b11000000] == pytest.approx(s2 * math.hypot(s0 / 2, s1 / 2), rel=1e-12)
    # four corners of the a=0 face: a square across the cube, perpendicular to axis 0
    assert table[0b11110000] == pytest.approx(s1 * s2, rel=1e-12)
    assert table[0b11001100] == pytest.approx(s0 * s2, rel=1e-12)  # the b=0 face
    assert table[0b10101010] == pytest.approx(s0 * s1, rel=1e-12)  # the c=0 face


def test_box_surface_area_is_the_chamfered_box():
    spacing = (2.0, 0.75, 1.25)
    n0, n1, n2 = 4, 6, 5
    mask = np.zeros((8, 10, 9), dtype=bool)
    mask[2 : 2 + n0, 2 : 2 + n1, 2 : 2 + n2] = True
    _, codes = _brute_surfels(mask)
    s0, s1, s2 = spacing
    faces = 2 * ((n1 - 1) * s1 * (n2 - 1) * s2 + (n0 - 1) * s0 * (n2 - 1) * s2 + (n0 - 1) * s0 * (n1 - 1) * s1)
    edges = 4 * ((n0 - 1) * s0 * math.hypot(s1 / 2, s2 / 2) + (n1 - 1) * s1 * math.hypot(s0 / 2, s2 / 2)
                 + (n2 - 1) * s2 * math.hypot(s0 / 2, s1 / 2))
    corners = 8 * 0.5 * math.sqrt((s1 * s2 / 4) ** 2 + (s0 * s2 / 4) ** 2 + (s0 * s1 / 4) ** 2)
    assert surface_area_table(spacing)[codes].sum() == pytest.approx(faces + edges + corners, rel=1e-12)


def test_area_table_matches_deepmind():
    lookup_tables = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in [(1.0, 1.0, 1.0), (2.5, 0.8, 0.7), (0.3, 5.0, 1.7)]:
        reference = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surface_area_table(spacing), reference, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# NSD, HD95 and Dice


@pytest.mark.parametrize("force_edt", [False, True], ids=["ball", "edt"])
def test_nsd_matches_brute_force_including_ties(force_edt, monkeypatch):
    if force_edt:  # every tolerance through the edt path with exact re-decision near the tolerance
        monkeypatch.setattr(metrics, "_MAX_BALL_OFFSETS", 0)
    rng = np.random.default_rng(0)
    ties = 0
    for spacing in SPACINGS:
        for _ in range(3):
            pred, gt = _pair(rng)
            d_g, _, d_p, _ = _brute_distances(pred, gt, spacing)
            for tol in (0.0, 0.5, 0.75, 0.8, 1.0, 1.25, 1.6, 2.0, 2.4, 2.5, 4.0):
                ties += int(np.sum(d_g == tol) + np.sum(d_p == tol))
                assert normalized_surface_dice(pred, gt, spacing, tol) == pytest.approx(
                    _brute_nsd(pred, gt, spacing, tol), abs=1e-12), (spacing, tol)
    assert ties > 100  # surfels exactly at the tolerance were part of the comparison


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(1)
    for spacing in [(2.0, 0.75, 1.0), (2.5, 0.8, 0.7)]:
        for _ in range(3):
            pred, gt = _pair(rng)
            d_g, a_g, d_p, a_p = _brute_distances(pred, gt, spacing)
            expected = max(_brute_percentile(d_g, a_g), _brute_percentile(d_p, a_p))
            assert hd95(pred, gt, spacing) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("force_edt", [False, True], ids=["ball", "edt"])
def test_nsd_and_hd95_match_deepmind_with_anisotropic_spacing(force_edt, monkeypatch):
    surface_distance = pytest.importorskip("surface_distance")
    if force_edt:
        monkeypatch.setattr(metrics, "_MAX_BALL_OFFSETS", 0)
    rng = np.random.default_rng(2)
    # 0.8 mm is not exact in binary: distances of 0.8, 1.6, 2.4 and 2.5 mm round differently in float32
    for spacing in [(2.5, 0.8, 0.8), (0.7, 1.3, 0.9), (1.0, 1.0, 1.0), (0.8, 0.8, 0.8)]:
        for _ in range(3):
            pred, gt = _pair(rng, shape=(14, 18, 16))
            ref = surface_distance.compute_surface_distances(gt, pred, spacing)
            for tol in (0.8, 1.0, 1.6, 2.0, 2.4, 2.5, 3.0, 5.0):
                assert normalized_surface_dice(pred, gt, spacing, tol) == pytest.approx(
                    surface_distance.compute_surface_dice_at_tolerance(ref, tol), abs=1e-9)
            expected = surface_distance.compute_robust_hausdorff(ref, 95)
            assert hd95(pred, gt, spacing) == pytest.approx(expected, abs=1e-9)


def test_metrics_do_not_depend_on_the_crop():
    rng = np.random.default_rng(4)
    pred, gt = _pair(rng)
    big_pred, big_gt = (np.pad(m, ((3, 1), (0, 5), (2, 2))) for m in (pred, gt))
    spacing = (2.5, 0.8, 0.7)
    assert normalized_surface_dice(big_pred, big_gt, spacing, 1.0) == pytest.approx(
        normalized_surface_dice(pred, gt, spacing, 1.0), abs=1e-12)
    assert hd95(big_pred, big_gt, spacing) == pytest.approx(hd95(pred, gt, spacing), abs=1e-12)


def test_identical_masks_and_a_one_voxel_shift():
    mask = np.zeros((6, 12, 12), dtype=bool)
    mask[1:5, 2:10, 3:9] = True
    shifted = np.roll(mask, 1, axis=2)
    spacing = (2.5, 0.8, 0.8)
    assert normalized_surface_dice(mask, mask, spacing, 0.0) == 1.0
    assert hd95(mask, mask, spacing) == 0.0
    assert normalized_surface_dice(shifted, mask, spacing, 0.8) == pytest.approx(1.0)
    assert normalized_surface_dice(shifted, mask, spacing, 0.79) < 1.0
    assert hd95(shifted, mask, spacing) == pytest.approx(0.8)


def test_empty_mask_rules():
    empty = np.zeros((5, 6, 7), dtype=bool)
    full = empty.copy()
    full[1:4, 2:5, 2:6] = True
    spacing = (2.5, 0.8, 0.8)
    assert dice(empty, empty) == 1.0 and normalized_surface_dice(empty, empty, spacing, 1.0) == 1.0
    assert hd95(empty, empty, spacing) == 0.0
    for pred, gt in ((full, empty), (empty, full)):
        assert dice(pred, gt) == 0.0
        assert normalized_surface_dice(pred, gt, spacing, 1.0) == 0.0
        assert hd95(pred, gt, spacing) == math.inf


def test_dice_counts():
    rng = np.random.default_rng(5)
    gt = _blob(rng, (10, 12, 11))
    pred = ndimage.binary_dilation(gt) ^ (rng.random(gt.shape) < 0.1)
    inter, a, b = np.sum(pred & gt), np.sum(pred), np.sum(gt)
    assert dice(pred, gt) == pytest.approx(2 * inter / (a + b))
    assert 0 < dice(pred, gt) < 1
    assert dice(gt, gt) == 1.0


def test_bad_arguments():
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError):
        normalized_surface_dice(a, np.zeros((4, 4, 5), dtype=bool), (1, 1, 1), 1.0)
    with pytest.raises(ValueError):
        normalized_surface_dice(a, a, (1, 1), 1.0)
    with pytest.raises(ValueError):
        normalized_surface_dice(a, a, (1, 1, 1), -1.0)
    with pytest.raises(ValueError):
        hd95(a[0], a[0], (1, 1))


# ---------------------------------------------------------------------------------------------------------
# Tolerance option


def test_parse_tolerance():
    assert parse_tolerance("1") == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    assert parse_tolerance(" 2.5 ") == {label: 2.5 for label in FLARE21_LABELS}
    assert parse_tolerance("liver=5,kidney=3,spleen=3,pancreas=5") == FLARE22_TOLERANCE_MM
    assert parse_tolerance("pancreas=5, 1=5, Kidney=3,spleen=3") == FLARE22_TOLERANCE_MM
    assert parse_tolerance("flare22") == FLARE22_TOLERANCE_MM
    for bad in ("", "abc", "-1", "nan", "inf", "liver=5", "liver=5,kidney=3,spleen=3,pancreas=x",
                "liver=5,kidney=3,spleen=3,pancreas=5,stomach=2", "liver=5,liver=5,kidney=3,spleen=3,pancreas=5",
                "liver:5,kidney=3,spleen=3,pancreas=5"):
        with pytest.raises(NnsdmError, match="--tolerance"):
            parse_tolerance(bad)


# ---------------------------------------------------------------------------------------------------------
# The evaluate job


SPACING_XYZ = (0.75, 1.0, 2.0)  # SimpleITK order; (z, y, x) = (2.0, 1.0, 0.75)
SPACING_ZYX = tuple(reversed(SPACING_XYZ))


def _organs(rng: np.random.Generator, shape=(12, 20, 22), labels=(1, 2, 3, 4)) -> np.ndarray:
    seg = np.zeros(shape, dtype=np.uint8)
    boxes = {1: (slice(1, 9), slice(1, 10), slice(1, 12)), 2: (slice(2, 7), slice(12, 18), slice(2, 7)),
             3: (slice(3, 10), slice(11, 19), slice(13, 20)), 4: (slice(8, 11), slice(3, 8), slice(14, 21))}
    for label in labels:
        box = boxes[label]
        seg[box][_blob(rng, seg[box].shape, sigma=1.0, level=0.45)] = label
        if label == 2:  # the second kidney
            seg[2:7, 12:18, 15:20][_blob(rng, (5, 6, 5), sigma=1.0, level=0.45)] = 2
    return seg


def _write(seg: np.ndarray, path, spacing=SPACING_XYZ, origin=(10.0, -5.0, 3.0)):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def _perturb(rng, seg):
    pred = seg.copy()
    pred[ndimage.binary_dilation(seg == 1) & (seg == 0) & (rng.random(seg.shape) < 0.5)] = 1
    pred[(seg == 3) & (rng.random(seg.shape) < 0.1)] = 0
    return pred


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(7)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    arrays = {}
    gt_a = _organs(rng)
    arrays["case_a"] = (_perturb(rng, gt_a), gt_a)
    gt_b = _organs(rng, labels=(1, 3))  # no kidney and no pancreas in the ground truth
    pred_b = _perturb(rng, gt_b)
    pred_b[2:5, 13:16, 3:6] = 2  # a kidney the ground truth does not have
    arrays["case_b"] = (pred_b, gt_b)
    gt_c = _organs(rng)
    arrays["case_c"] = (None, gt_c)  # prediction missing
    _write(gt_a, gt_dir / "case_a.nii.gz")
    _write(arrays["case_a"][0], pred_dir / "case_a.nii.gz")
    _write(gt_b, gt_dir / "case_b.mha")
    _write(pred_b, pred_dir / "case_b.nii.gz")
    _write(gt_c, gt_dir / "case_c.nii")
    (gt_dir / "notes.txt").write_text("not an image")
    return pred_dir, gt_dir, arrays


def test_evaluate_folder_scores_every_ground_truth_case(folders, tmp_path, caplog):
    pred_dir, gt_dir, arrays = folders
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="nnsdm.evaluation"):
        summary = evaluate_folder(pred=pred_dir, gt=gt_dir, out=out, tolerance_mm=1.0, progress=False)
    expected = f"{pred_dir / 'case_c.nii.gz'}: prediction missing, scored as empty"
    assert [r.getMessage() for r in caplog.records] == [expected]

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["case", "label", "organ", "dsc", "nsd"]
    assert len(metrics) == 12
    for row in metrics.itertuples():
        pred, gt = arrays[row.case]
        p = pred == row.label if pred is not None else np.zeros(gt.shape, dtype=bool)
        g = gt == row.label
        assert row.organ == FLARE21_LABELS[row.label]
        assert row.dsc == pytest.approx(dice(p, g), abs=1e-12)
        assert row.nsd == pytest.approx(normalized_surface_dice(p, g, SPACING_ZYX, 1.0), abs=1e-12)
    by = metrics.set_index(["case", "organ"])
    assert by.loc[("case_b", "kidney"), "dsc"] == 0 and by.loc[("case_b", "kidney"), "nsd"] == 0
    assert by.loc[("case_b", "pancreas"), "dsc"] == 1 and by.loc[("case_b", "pancreas"), "nsd"] == 1
    assert (by.loc["case_c", ["dsc", "nsd"]] == 0).all().all()
    assert 0 < by.loc[("case_a", "liver"), "nsd"] < 1
    # the spacing comes from the header, in (z, y, x) order
    p, g = arrays["case_a"][0] == 1, arrays["case_a"][1] == 1
    assert abs(normalized_surface_dice(p, g, SPACING_XYZ, 1.0) - by.loc[("case_a", "liver"), "nsd"]) > 1e-3

    saved = pd.read_csv(out / "summary.csv", index_col="organ")
    assert list(saved.index) == ["liver", "kidney", "spleen", "pancreas", "all"]
    pd.testing.assert_frame_equal(saved, summary, check_dtype=False, atol=1e-12)
    for organ in FLARE21_LABELS.values():
        values = metrics[metrics.organ == organ]
        assert summary.loc[organ, "dsc_mean"] == pytest.approx(values.dsc.mean())
        assert summary.loc[organ, "nsd_std"] == pytest.approx(values.nsd.std(ddof=0))
        assert summary.loc[organ, "cases"] == 3
    per_case = metrics.groupby("case").nsd.mean()
    assert summary.loc["all", "nsd_mean"] == pytest.approx(metrics.nsd.mean())
    assert summary.loc["all", "nsd_std"] == pytest.approx(per_case.std(ddof=0))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.csv"]  # no temporary files left

    table = format_summary(summary)
    assert all(name in table for name in ["liver", "kidney", "spleen", "pancreas", "all", "DSC", "NSD"])
    assert f"{summary.loc['liver', 'dsc_mean']:.4f}" in table


def test_evaluate_folder_hd95_and_per_organ_tolerance(folders, tmp_path):
    pred_dir, gt_dir, arrays = folders
    out = tmp_path / "out"
    evaluate_folder(pred=pred_dir, gt=gt_dir, out=out, tolerance_mm=FLARE22_TOLERANCE_MM, hd95=True, progress=False)
    metrics = pd.read_csv(out / "metrics.csv").set_index(["case", "label"])
    assert "hd95" in metrics.columns
    pred, gt = arrays["case_a"]
    for label in FLARE21_LABELS:
        p, g = pred == label, gt == label
        assert metrics.loc[("case_a", label), "nsd"] == pytest.approx(
            normalized_surface_dice(p, g, SPACING_ZYX, FLARE22_TOLERANCE_MM[label]), abs=1e-12)
        assert metrics.loc[("case_a", label), "hd95"] == pytest.approx(hd95(p, g, SPACING_ZYX), abs=1e-9)
    assert metrics.loc[("case_b", 4), "hd95"] == 0.0  # both empty
    assert metrics.loc[("case_c", 1), "hd95"] == math.inf  # prediction missing


def test_evaluate_case_rows_and_workers_agree(folders, tmp_path):
    pred_dir, gt_dir, _ = folders
    rows = evaluate_case(pred_dir / "case_a.nii.gz", gt_dir / "case_a.nii.gz", tolerance_mm={1: 1, 2: 1, 3: 1, 4: 1})
    assert [r["case"] for r in rows] == ["case_a"] * 4 and [r["label"] for r in rows] == [1, 2, 3, 4]
    serial = evaluate_folder(pred=pred_dir, gt=gt_dir, out=tmp_path / "o1", progress=False)
    parallel = evaluate_folder(pred=pred_dir, gt=gt_dir, out=tmp_path / "o2", progress=False, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


@pytest.mark.parametrize("change", ["spacing", "size", "origin", "direction"])
def test_geometry_mismatch_names_the_prediction(folders, change):
    import SimpleITK as sitk

    pred_dir, gt_dir, arrays = folders
    pred, _ = arrays["case_a"]
    path = pred_dir / "case_a.nii.gz"
    if change == "spacing":
        _write(pred, path, spacing=(0.75, 1.0, 2.5))
    elif change == "size":
        _write(pred[:, :, :-1], path)
    elif change == "origin":
        _write(pred, path, origin=(10.0, -5.0, 5.0))
    else:
        image = sitk.GetImageFromArray(pred)
        image.SetSpacing(SPACING_XYZ)
        image.SetOrigin((10.0, -5.0, 3.0))
        image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
        sitk.WriteImage(image, str(path))
    with pytest.raises(NnsdmError, match=f"{path}: geometry does not match.*{change}"):
        evaluate_folder(pred=pred_dir, gt=gt_dir, out=pred_dir.parent / "out", progress=False)
    assert not (pred_dir.parent / "out" / "metrics.csv").exists()


def test_folder_errors(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(NnsdmError, match="no ground-truth images"):
        evaluate_folder(pred=tmp_path / "pred", gt=tmp_path / "gt", out=tmp_path / "out", progress=False)
    with pytest.raises(NnsdmError, match="not found"):
        evaluate_folder(pred=tmp_path / "pred", gt=tmp_path / "nope", out=tmp_path / "out", progress=False)
    _write(np.zeros((3, 4, 5), dtype=np.uint8), tmp_path / "gt" / "x.nii.gz")
    with pytest.raises(NnsdmError, match="not found"):
        evaluate_folder(pred=tmp_path / "nope", gt=tmp_path / "gt", out=tmp_path / "out", progress=False)
    (tmp_path / "pred" / "x.nii.gz").write_text("garbage")
    with pytest.raises(NnsdmError, match="x.nii.gz"):
        evaluate_folder(pred=tmp_path / "pred", gt=tmp_path / "gt", out=tmp_path / "out", progress=False)
    _write(np.full((3, 4, 5), 0.5, dtype=np.float32), tmp_path / "pred" / "x.nii.gz")
    with pytest.raises(NnsdmError, match="not a label map"):
        evaluate_folder(pred=tmp_path / "pred", gt=tmp_path / "gt", out=tmp_path / "out", progress=False)
