"""Quality scores on constructed cases: agreement of the SDM head with the segmentation, and the softmax baseline."""

from __future__ import annotations

import numpy as np
import pytest

from nnsdm.inference.qc import QC_COLUMNS, case_qc, entropy_score, read_qc_csv, sdm_score, update_qc_csv
from nnsdm.sdm import signed_distance_map

SHAPE = (24, 48, 48)
SPACING = (2.5, 1.0, 1.0)
ORGANS = {1: "liver", 2: "kidney"}


def _ellipsoid(centre=(12, 24, 24), radii=(15.0, 12.0, 9.0)) -> np.ndarray:
    z, y, x = np.indices(SHAPE, dtype=float)
    zz, yy, xx = (z - centre[0]) * SPACING[0], (y - centre[1]) * SPACING[1], (x - centre[2]) * SPACING[2]
    return (zz / radii[0]) ** 2 + (yy / radii[1]) ** 2 + (xx / radii[2]) ** 2 <= 1.0


def _sdm(mask: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The reference SDM, slightly negative on the inner boundary (where the reference is 0) as a trained head is."""
    return scale * (signed_distance_map(mask.astype(np.uint8), [1], SPACING)[0] - 1e-3 * mask)


def test_perfect_prediction_scores_one_whatever_the_head_scale():
    mask = _ellipsoid()
    for scale in (1.0, 0.2, 0.03):  # the head's magnitude varies with the per-patch normalisation
        sdm = _sdm(mask, scale)
        assert sdm_score(mask, sdm, SPACING) == pytest.approx(1.0)


def test_disagreement_scores_low_and_monotonically():
    mask = _ellipsoid()
    scores = [sdm_score(mask, _sdm(_ellipsoid(centre=(12, 24, 24 + shift))), SPACING) for shift in (0, 2, 4, 7, 11, 20)]
    assert scores[0] > 0.9
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] == 0.0  # no overlap at all
    # a head that sees a much smaller organ than the segmentation (volume disagreement)
    small = sdm_score(mask, _sdm(_ellipsoid(radii=(8.0, 6.0, 5.0))), SPACING)
    assert small < 0.5


def test_absent_organs():
    empty = np.zeros(SHAPE, dtype=bool)
    assert sdm_score(empty, np.ones(SHAPE, np.float32), SPACING) == 1.0  # both say absent
    assert sdm_score(empty, _sdm(_ellipsoid()), SPACING) == 0.0  # the head sees an organ the segmentation lacks
    assert sdm_score(_ellipsoid(), np.ones(SHAPE, np.float32), SPACING) == 0.0  # and the reverse


def _probabilities(mask: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over (background, organ) from a signed distance: sharper for a lower temperature."""
    logit = -_sdm(mask) * 10.0 / temperature
    p = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([1.0 - p, p]).astype(np.float32)


def test_entropy_baseline_is_high_when_confident_and_falls_with_uncertainty():
    mask = _ellipsoid()
    onehot = np.stack([~mask, mask]).astype(np.float32)
    assert entropy_score(onehot, 1, mask, SPACING) == pytest.approx(1.0)
    scores = [entropy_score(_probabilities(mask, t), 1, mask, SPACING) for t in (0.1, 1.0, 3.0, 10.0)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    uniform = np.full((2, *SHAPE), 0.5, np.float32)
    assert entropy_score(uniform, 1, mask, SPACING) == pytest.approx(0.0, abs=1e-6)
    # confidently absent: no voxel near the organ's probability
    assert entropy_score(np.stack([np.ones(SHAPE), np.zeros(SHAPE)]), 1, np.zeros(SHAPE, bool), SPACING) == 1.0


def test_case_qc_rows_and_csv(tmp_path):
    liver, kidney = _ellipsoid(), _ellipsoid(centre=(12, 24, 24), radii=(6.0, 5.0, 4.0))
    segmentation = np.where(kidney, 2, np.where(liver, 1, 0)).astype(np.uint8)
    sdm = signed_distance_map(segmentation, [1, 2], SPACING) - 1e-3 * np.stack([segmentation == 1, segmentation == 2])
    sdm[1] = _sdm(_ellipsoid(centre=(12, 24, 40), radii=(6.0, 5.0, 4.0)))  # the head puts the kidney elsewhere
    probabilities = np.stack([segmentation == k for k in range(3)]).astype(np.float32)
    rows = case_qc("case_a", segmentation, sdm, probabilities, SPACING, ORGANS)
    assert [r["organ"] for r in rows] == ["liver", "kidney"]
    assert rows[0]["qc"] > 0.95 and rows[0]["flagged"] == 0 and rows[0]["qc_baseline"] == pytest.approx(1.0)
    assert rows[1]["qc"] == 0.0 and rows[1]["flagged"] == 1
    path = tmp_path / "qc.csv"
    update_qc_csv(path, rows)
    update_qc_csv(path, case_qc("case_0", segmentation, sdm, None, SPACING, ORGANS))
    update_qc_csv(path, rows)  # replacing a case's rows keeps one copy
    table = read_qc_csv(path)
    assert list(table[0]) == QC_COLUMNS
    assert [(r["case"], r["organ"]) for r in table] == [("case_0", "liver"), ("case_0", "kidney"),
                                                         ("case_a", "liver"), ("case_a", "kidney")]
    assert table[0]["qc_baseline"] == ""  # no probabilities, no baseline
    assert not list(tmp_path.glob("*.tmp*"))


# --- predict --qc with the session's tiny trained SDM model -------------------------------------------------

@pytest.mark.slow
def test_predict_qc_writes_scores_matching_its_outputs(tmp_path, trained_model, phantom_dataset):
    import SimpleITK as sitk

    from nnsdm.inference import predict
    from nnsdm.inference.qc import QC_FILE, QC_THRESHOLD

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = sitk.ReadImage(str(sorted((phantom_dataset / "imagesTr").glob("*_0000.nii.gz"))[0]))
    sitk.WriteImage(image, str(inputs / "lps_0000.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(image, "SAR"), str(inputs / "sar_0000.nii.gz"))
    out = tmp_path / "out"
    predict(input=inputs, output=out, model=trained_model, tta=False, device="cpu", save_sdm=True,
            save_probabilities=True, qc=True, progress=False)
    table = read_qc_csv(out / QC_FILE)
    assert [(r["case"], r["organ"]) for r in table] == [(c, o) for c in ("lps", "sar")
                                                        for o in ("liver", "kidney", "spleen", "pancreas")]
    for case in ("lps", "sar"):
        seg_image = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        sdm = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}_sdm.nii.gz")))
        probabilities = np.load(out / f"{case}.npz")["probabilities"]
        expected = case_qc(case, sitk.GetArrayFromImage(seg_image), sdm, probabilities,
                           tuple(reversed(seg_image.GetSpacing())), {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"})
        rows = [r for r in table if r["case"] == case]
        for row, want in zip(rows, expected):
            assert float(row["qc"]) == pytest.approx(want["qc"], abs=1e-4)
            assert float(row["qc_baseline"]) == pytest.approx(want["qc_baseline"], abs=1e-4)
            assert 0.0 <= float(row["qc"]) <= 1.0 and 0.0 <= float(row["qc_baseline"]) <= 1.0
            assert int(row["flagged"]) == int(float(row["qc"]) < QC_THRESHOLD)
    # a folder predicted without --qc gets its scores on the next run with --qc
    plain = tmp_path / "plain"
    predict(input=inputs / "lps_0000.nii.gz", output=plain, model=trained_model, tta=False, device="cpu", progress=False)
    assert not (plain / QC_FILE).exists()
    predict(input=inputs / "lps_0000.nii.gz", output=plain, model=trained_model, tta=False, device="cpu", qc=True,
            progress=False)
    assert [r["organ"] for r in read_qc_csv(plain / QC_FILE)] == ["liver", "kidney", "spleen", "pancreas"]
