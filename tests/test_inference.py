"""Inference with a trained model: geometry, orientation, real DICOM and NIfTI, SDM and probability outputs,
post-processing, efficiency records, skipping, and every kind of bad input.

Predictions use the session's tiny trained SDM model (``trained_model`` in conftest.py) without
mirroring, except one test that checks the mirroring is applied.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnsdm.errors import NnsdmError
from nnsdm.inference import determine_postprocessing, find_cases, load_postprocessing, predict
from nnsdm.inference.efficiency import COLUMNS
from nnsdm.orientation import orientation_code
from nnsdm.inference.predict import load_model, training_orientation
from nnsdm.network import strip_sdm_head
from nnsdm.labels import FLARE21_KEEP
from nnsdm.postprocessing import keep_largest_components

pytestmark = pytest.mark.slow


def _geometry(image: sitk.Image, dims: int = 3):
    """Size, spacing, origin and direction of the first ``dims`` axes."""
    n = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(n, n)[:dims, :dims]
    return image.GetSize()[:dims], image.GetSpacing()[:dims], image.GetOrigin()[:dims], direction


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    size_a, spacing_a, origin_a, dir_a = _geometry(a)
    size_b, spacing_b, origin_b, dir_b = _geometry(b)
    assert size_a == size_b
    np.testing.assert_allclose(spacing_a, spacing_b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(origin_a, origin_b, rtol=0, atol=1e-4)
    np.testing.assert_allclose(dir_a, dir_b, rtol=0, atol=1e-6)


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _image_file(phantom_dataset: Path, index: int = 0) -> Path:
    return sorted((phantom_dataset / "imagesTr").glob("*_0000.nii.gz"))[index]


# --- the tiny trained model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oriented_inputs(tmp_path_factory, phantom_dataset) -> Path:
    """One phantom case stored in four orientations (the same anatomy, axes permuted and flipped)."""
    folder = tmp_path_factory.mktemp("oriented")
    image = sitk.ReadImage(str(_image_file(phantom_dataset)))
    sitk.WriteImage(image, str(folder / "orig_0000.nii.gz"))
    for code in ("LPS", "SAR", "IPL"):
        sitk.WriteImage(sitk.DICOMOrient(image, code), str(folder / f"{code.lower()}_0000.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def oriented_prediction(tmp_path_factory, trained_model, oriented_inputs) -> Path:
    out = tmp_path_factory.mktemp("pred") / "out"
    paths = predict(input=oriented_inputs, output=out, model=trained_model, tta=False, device="cpu",
                    save_sdm=True, save_probabilities=True, progress=False)
    assert [p.name for p in paths] == ["ipl.nii.gz", "lps.nii.gz", "orig.nii.gz", "sar.nii.gz"]
    return out


def test_outputs_keep_each_inputs_grid_and_the_same_anatomy(oriented_inputs, oriented_prediction):
    original = sitk.ReadImage(str(oriented_prediction / "orig.nii.gz"))
    code = orientation_code(original)
    reference = sitk.GetArrayFromImage(original)
    reference_probabilities = np.load(oriented_prediction / "orig.npz")["probabilities"]
    assert reference_probabilities.shape == (5, *reference.shape)
    np.testing.assert_allclose(reference_probabilities.sum(0), 1, atol=1e-3)
    np.testing.assert_array_equal(reference_probabilities.argmax(0), reference)
    for name in ("orig", "lps", "sar", "ipl"):
        image = sitk.ReadImage(str(oriented_inputs / f"{name}_0000.nii.gz"))
        labels = sitk.ReadImage(str(oriented_prediction / f"{name}.nii.gz"))
        assert labels.GetPixelID() == sitk.sitkUInt8
        assert_same_grid(labels, image)
        # mapped back to the first orientation, the label map is the original's, voxel for voxel
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.DICOMOrient(labels, code)), reference)
        probabilities = np.load(oriented_prediction / f"{name}.npz")["probabilities"]
        back = []
        for channel in probabilities:
            channel_image = sitk.GetImageFromArray(channel.astype(np.float32))
            channel_image.CopyInformation(image)
            back.append(sitk.GetArrayFromImage(sitk.DICOMOrient(channel_image, code)))
        np.testing.assert_allclose(np.stack(back), reference_probabilities, atol=1e-3)


def test_sdm_output_is_4d_on_the_input_grid_in_range(oriented_inputs, oriented_prediction):
    for name in ("orig", "sar"):
        image = sitk.ReadImage(str(oriented_inputs / f"{name}_0000.nii.gz"))
        sdm_image = sitk.ReadImage(str(oriented_prediction / f"{name}_sdm.nii.gz"))
        sdm = sitk.GetArrayFromImage(sdm_image)
        z, y, x = sitk.GetArrayFromImage(image).shape
        assert sdm.shape == (4, z, y, x) and sdm.dtype == np.float32
        assert sdm.min() >= -1 and sdm.max() <= 1 and sdm.std() > 0
        assert_same_grid(sdm_image, image)
    orig = _array(oriented_prediction / "orig_sdm.nii.gz")
    sar = sitk.ReadImage(str(oriented_prediction / "sar_sdm.nii.gz"))
    code = orientation_code(sitk.ReadImage(str(oriented_inputs / "orig_0000.nii.gz")))
    for k in range(4):  # the same distance maps in the other storage order
        volume = sitk.Extract(sar, [*sar.GetSize()[:3], 0], [0, 0, 0, k])
        np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.DICOMOrient(volume, code)), orig[k], atol=1e-3)


def test_efficiency_csv_has_one_row_per_case(oriented_prediction):
    with open(oriented_prediction / "efficiency.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [r["case"] for r in rows] == ["ipl", "lps", "orig", "sar"]
    for row in rows:
        assert float(row["seconds"]) > 0 and row["device"] == "cpu"
        assert float(row["peak_rss_mib"]) > 50
        assert row["torch_peak_mib"] == "" and row["gpu_memory_flare21_mib"] == ""


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, trained_model, phantom_dataset):
    image = _image_file(phantom_dataset, 1)
    out = tmp_path / "out"
    (label,) = predict(input=image, output=out, model=trained_model, tta=False, device="cpu", progress=False)
    assert label.name == image.name.replace("_0000", "")
    marker = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8))
    sitk.WriteImage(marker, str(label))  # a stand-in that a new prediction would replace
    predict(input=image, output=out, model=trained_model, tta=False, device="cpu", progress=False)
    assert sitk.ReadImage(str(label)).GetSize() == (2, 2, 2)
    predict(input=image, output=out, model=trained_model, tta=False, device="cpu", progress=False, overwrite=True)
    assert_same_grid(sitk.ReadImage(str(label)), sitk.ReadImage(str(image)))
    # asking for an output the first run did not write predicts the case again
    predict(input=image, output=out, model=trained_model, tta=False, device="cpu", progress=False, save_sdm=True)
    assert (out / f"{label.name[:-7]}_sdm.nii.gz").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_mirroring_tta_changes_the_probabilities(tmp_path, trained_model, oriented_inputs):
    image = sitk.ReadImage(str(oriented_inputs / "orig_0000.nii.gz"))
    small = tmp_path / "small_0000.nii.gz"
    sitk.WriteImage(image[4:52, 4:52, 2:18], str(small))  # one sliding-window patch: 8 mirrored passes stay cheap
    results = {}
    for tta in (False, True):
        out = tmp_path / f"tta_{tta}"
        predict(input=small, output=out, model=trained_model, tta=tta, device="cpu", save_probabilities=True,
                progress=False)
        results[tta] = np.load(out / "small.npz")["probabilities"]
        assert_same_grid(sitk.ReadImage(str(out / "small.nii.gz")), image[4:52, 4:52, 2:18])
    assert results[True].shape == results[False].shape
    np.testing.assert_allclose(results[True].sum(0), 1, atol=1e-3)
    assert np.abs(results[True] - results[False]).max() > 1e-3


def test_largest_postprocessing_is_applied_per_label_with_two_kidneys(tmp_path, trained_model, oriented_inputs,
                                                                      oriented_prediction):
    out = tmp_path / "largest"
    predict(input=oriented_inputs / "orig_0000.nii.gz", output=out, model=trained_model, tta=False, device="cpu",
            postprocess="largest", progress=False)
    raw = _array(oriented_prediction / "orig.nii.gz")
    cleaned = _array(out / "orig.nii.gz")
    np.testing.assert_array_equal(cleaned, keep_largest_components(raw, keep=FLARE21_KEEP))
    assert (cleaned != raw).any()  # the barely trained model's fragments were there to clean


@pytest.fixture(scope="module")
def stock_model(tmp_path_factory, trained_model) -> Path:
    """The trained model without its SDM head: a plain nnU-Net network (the sdm_weight 0 case)."""
    folder = tmp_path_factory.mktemp("stock") / "nnsdmTrainer_sdm0__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(trained_model / name, folder / name)
    meta = json.loads((trained_model / "nnsdm.json").read_text())
    meta.update(sdm_weight=0.0, orientation=training_orientation(trained_model))  # away from its workspace
    (folder / "nnsdm.json").write_text(json.dumps(meta))
    checkpoint = torch.load(trained_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["network_weights"] = strip_sdm_head(checkpoint["network_weights"])
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def test_sdm_pass_leaves_the_segmentation_unchanged_and_needs_an_sdm_head(tmp_path, stock_model, oriented_inputs,
                                                                           oriented_prediction):
    assert load_model(stock_model).num_sdm_channels == 0
    out = tmp_path / "stock"
    predict(input=oriented_inputs / "sar_0000.nii.gz", output=out, model=stock_model, tta=False, device="cpu",
            progress=False)
    np.testing.assert_array_equal(_array(out / "sar.nii.gz"), _array(oriented_prediction / "sar.nii.gz"))
    with pytest.raises(NnsdmError, match="no SDM head"):
        predict(input=oriented_inputs / "sar_0000.nii.gz", output=tmp_path / "x", model=stock_model, save_sdm=True,
                overwrite=True, device="cpu", progress=False)
    assert not (tmp_path / "x").exists()


def test_folds_are_checked(tmp_path, trained_model, oriented_inputs):
    assert load_model(trained_model).folds == [0]
    assert load_model(trained_model, folds=["0"]).folds == [0]
    for folds, missing in (([3], "fold_3"), (["all"], "fold_all")):
        with pytest.raises(NnsdmError, match=f"{missing}/checkpoint_final.pth: checkpoint not found"):
            predict(input=oriented_inputs, output=tmp_path / "out", model=trained_model, folds=folds, progress=False)
    with pytest.raises(NnsdmError, match="--folds x"):
        load_model(trained_model, folds=["x"])
    assert not (tmp_path / "out").exists()


# --- cross-validation post-processing -----------------------------------------------------------------

def test_cv_postprocessing_on_the_trained_model(tmp_path, trained_model, oriented_inputs, oriented_prediction):
    copy = tmp_path / "ws" / "nnUNet_results" / trained_model.parent.name / trained_model.name
    shutil.copytree(trained_model, copy)  # keep the session's model folder untouched
    workspace = trained_model.parents[2]
    (tmp_path / "ws" / "nnUNet_preprocessed").symlink_to(workspace / "nnUNet_preprocessed")
    with pytest.raises(NnsdmError, match="postprocessing_nnsdm.json: not found"):
        predict(input=oriented_inputs, output=tmp_path / "out", model=copy, postprocess="cv", progress=False)
    result = determine_postprocessing(copy, progress=False)
    assert sorted(result["labels"]) == ["1", "2", "3", "4"] and result["folds"] == [0]
    assert result["cases"] == len(list((trained_model / "fold_0" / "validation").glob("*.nii.gz")))
    predict(input=oriented_inputs / "orig_0000.nii.gz", output=tmp_path / "out", model=copy, postprocess="cv",
            tta=False, device="cpu", progress=False)
    raw = _array(oriented_prediction / "orig.nii.gz")
    keep = load_postprocessing(copy)
    np.testing.assert_array_equal(_array(tmp_path / "out" / "orig.nii.gz"),
                                  keep_largest_components(raw, labels=keep, keep=keep) if keep else raw)


# --- DICOM ---------------------------------------------------------------------------------------------

def test_real_dicom_series_gives_a_label_map_on_its_grid(tmp_path, trained_model, real_ct):
    series = real_ct / "dicom-series"
    out = tmp_path / "out"
    (label,) = predict(input=series, output=out, model=trained_model, tta=False, device="cpu", progress=False)
    assert label == out / "dicom-series.nii.gz"
    reference = sitk.ReadImage(str(real_ct / "dicom-series-labels" / "tsex_dicom.nii.gz"))
    assert_same_grid(sitk.ReadImage(str(label)), reference)
    # a folder of series folders: one case per folder, named after it
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "abdomen").symlink_to(series, target_is_directory=True)
    (case,) = find_cases(tmp_path / "study")
    assert (case.name, case.kind, len(case.files)) == ("abdomen", "dicom", 20)


def test_real_nifti_ct_gives_a_label_map_on_its_grid(tmp_path, trained_model, real_ct):
    image = real_ct / "nifti" / "imagesTr" / "tsex_full_0000.nii.gz"
    (label,) = predict(input=image, output=tmp_path, model=trained_model, tta=False, device="cpu", progress=False)
    assert label.name == "tsex_full.nii.gz"
    assert_same_grid(sitk.ReadImage(str(label)), sitk.ReadImage(str(real_ct / "nifti" / "labelsTr" / "tsex_full.nii.gz")))


# --- bad input -------------------------------------------------------------------------------------------

def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    bad = {}
    two_d = tmp_path / "flat_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(two_d))
    bad["2d"] = (two_d, "not a 3D image \\(2D")
    single = tmp_path / "slice_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 16, 16), np.int16)), str(single))
    bad["one slice"] = (single, "a single slice")
    four_d = tmp_path / "time_0000.nii.gz"
    volume = sitk.GetImageFromArray(np.zeros((4, 16, 16), np.int16))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(four_d))  # a 4D (time series) image
    bad["4d"] = (four_d, "not a 3D image \\(4D")
    vector = tmp_path / "rgb_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 16, 16, 3), np.uint8), isVector=True), str(vector))
    bad["vector"] = (vector, "3 values per voxel")
    corrupt = tmp_path / "corrupt_0000.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 this is no NIfTI")
    bad["corrupt"] = (corrupt, "unreadable image")
    (tmp_path / "empty").mkdir()
    bad["empty folder"] = (tmp_path / "empty", "input folder is empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    bad["no images"] = (tmp_path / "other", "no NIfTI file")
    bad["missing"] = (tmp_path / "nowhere.nii.gz", "input not found")
    return bad


@pytest.mark.parametrize("kind", ["2d", "one slice", "4d", "vector", "corrupt", "empty folder", "no images", "missing"])
def test_bad_inputs_give_one_line_errors_and_no_output(tmp_path, trained_model, kind):
    path, problem = _bad_inputs(tmp_path)[kind]
    out = tmp_path / "out"
    with pytest.raises(NnsdmError, match=problem) as err:
        predict(input=path, output=out, model=trained_model, device="cpu", progress=False)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert not out.exists()


def test_truncated_image_is_refused_before_any_prediction(tmp_path, trained_model, phantom_dataset):
    src = _image_file(phantom_dataset)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src, folder / "a_0000.nii.gz")
    data = src.read_bytes()
    (folder / "b_0000.nii.gz").write_bytes(data[: len(data) // 2])  # header fine, voxels cut off
    sitk.WriteImage(sitk.ReadImage(str(src)), str(folder / "c_0000.nii"))
    (folder / "d_0000.nii").write_bytes((folder / "c_0000.nii").read_bytes()[:-100])
    out = tmp_path / "out"
    for name in ("b_0000.nii.gz", "d_0000.nii"):  # SimpleITK alone would read them, zero-filled
        with pytest.raises(NnsdmError, match=f"{name}: truncated"):
            predict(input=folder, output=out, model=trained_model, tta=False, device="cpu", progress=False)
        (folder / name).unlink()
    assert not out.exists()


def test_not_a_model_folder(tmp_path, oriented_inputs, trained_model):
    for folder, problem in ((tmp_path / "nope", "model folder not found"), (tmp_path, "not an nnsdm model folder")):
        with pytest.raises(NnsdmError, match=problem):
            predict(input=oriented_inputs, output=tmp_path / "out", model=folder, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt", "checkpoint_best.pth"))
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(NnsdmError, match="checkpoint_final.pth: corrupt checkpoint"):
        predict(input=oriented_inputs, output=tmp_path / "out", model=broken, progress=False)
    assert not (tmp_path / "out").exists()


def test_output_never_overwrites_an_input(tmp_path, trained_model, phantom_dataset):
    shutil.copy(_image_file(phantom_dataset), tmp_path / "scan.nii.gz")
    with pytest.raises(NnsdmError, match="would overwrite an input"):
        predict(input=tmp_path, output=tmp_path, model=trained_model, overwrite=True, device="cpu", progress=False)


def test_bad_options(tmp_path, trained_model, oriented_inputs):
    for kwargs, problem in ((dict(step_size=0), "--step-size"), (dict(postprocess="biggest"), "--postprocess"),
                            (dict(device="tpu"), "--device"), (dict(resample="labels"), "--resample")):
        with pytest.raises(NnsdmError, match=problem):
            predict(input=oriented_inputs, output=tmp_path / "out", model=trained_model, progress=False, **kwargs)


def test_cpu_precision_bf16_and_fp32_agree_on_the_labels(tmp_path, trained_model, oriented_inputs):
    image = oriented_inputs / "orig_0000.nii.gz"
    labels = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        predict(input=image, output=out, model=trained_model, tta=False, device="cpu", cpu_precision=precision,
                save_probabilities=True, progress=False)
        labels[precision] = (_array(out / "orig.nii.gz"), np.load(out / "orig.npz")["probabilities"])
    (seg32, prob32), (seg16, prob16) = labels["fp32"], labels["bf16"]
    # the fixture model is barely trained (near-uniform probabilities, many near-ties), so a few % may move
    assert np.mean(seg32 == seg16) > 0.97
    difference = np.abs(prob32 - prob16)
    assert difference.max() > 0 and difference.mean() < 0.01  # another precision really ran, close to fp32
    with pytest.raises(NnsdmError, match="--cpu-precision fp16"):
        predict(input=image, output=tmp_path / "x", model=trained_model, cpu_precision="fp16", progress=False)


def _organ_logits(model, shape, *, inside: float, outside: float) -> torch.Tensor:
    """Logits of one box-shaped organ (label 1) on the preprocessed grid: it leads by ``inside`` within the
    box, the background leads by ``outside`` elsewhere; the other labels trail far behind."""
    logits = torch.full((model.label_manager.num_segmentation_heads, *shape), -20.0)
    logits[0] = 0.0
    logits[1] = -outside
    z, y, x = shape
    logits[1, z // 4:3 * z // 4, y // 4:3 * y // 4, x // 4:3 * x // 4] = inside
    return logits


def test_probability_resampling_keeps_an_organ_that_logit_resampling_shrinks(trained_model):
    """nnU-Net v2 interpolates logits: a small lead inside the organ next to a large one outside moves the
    boundary inwards. Probabilities (nnU-Net v1) saturate on both sides and keep most of the organ."""
    from nnsdm.inference.predict import revert_to_input_grid

    model = load_model(trained_model)
    shape = (8, 16, 16)
    fine = [s / 2 for s in model.configuration_manager.spacing]  # the input grid: twice as fine along every axis
    properties = {"spacing": fine, "shape_after_cropping_and_before_resampling": [16, 32, 32],
                  "shape_before_cropping": [16, 32, 32], "bbox_used_for_cropping": [[0, 16], [0, 32], [0, 32]]}
    volumes = {}
    for resample in ("logits", "probabilities"):
        lopsided = revert_to_input_grid(_organ_logits(model, shape, inside=1.0, outside=8.0), model, properties,
                                        resample=resample)
        balanced = revert_to_input_grid(_organ_logits(model, shape, inside=8.0, outside=8.0), model, properties,
                                        resample=resample)
        volumes[resample] = (int((lopsided == 1).sum()), int((balanced == 1).sum()))
    # balanced leads: both ways give the same organ; lopsided: logits lose many more voxels than probabilities
    assert volumes["logits"][1] == volumes["probabilities"][1] > 0
    assert volumes["logits"][0] < 0.8 * volumes["logits"][1]
    assert volumes["probabilities"][0] > 0.9 * volumes["probabilities"][1]


def test_probability_resampling_returns_the_resampled_softmax_not_a_second_softmax(trained_model):
    from nnsdm.inference.predict import revert_to_input_grid

    model = load_model(trained_model)
    logits = torch.randn(model.label_manager.num_segmentation_heads, 6, 12, 12) * 4
    properties = {"spacing": list(model.configuration_manager.spacing), "shape_after_cropping_and_before_resampling": [6, 12, 12],
                  "shape_before_cropping": [6, 12, 12], "bbox_used_for_cropping": [[0, 6], [0, 12], [0, 12]]}
    for resample in ("logits", "probabilities"):  # same grid: nothing to resample, so both give nnU-Net's softmax
        segmentation, probabilities = revert_to_input_grid(logits, model, properties, resample=resample,
                                                           return_probabilities=True)
        np.testing.assert_allclose(probabilities, torch.softmax(logits, 0).numpy(), atol=1e-6)
        np.testing.assert_array_equal(segmentation, logits.argmax(0).numpy())


def test_resample_option_reaches_the_written_outputs(tmp_path, trained_model, oriented_inputs):
    """Each export writes labels that are the argmax of the probabilities it writes; the two exports differ."""
    image = oriented_inputs / "orig_0000.nii.gz"
    outputs = {}
    for resample in ("logits", "probabilities"):
        written = predict(input=image, output=tmp_path / resample, model=trained_model, tta=False, device="cpu",
                          resample=resample, save_probabilities=True, progress=False)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))
        probabilities = np.load(tmp_path / resample / "orig.npz")["probabilities"]
        assert probabilities.shape[1:] == labels.shape
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-4)
        assert (probabilities.argmax(0) == labels).mean() > 0.999  # ties aside
        outputs[resample] = labels, probabilities
    assert not np.allclose(outputs["logits"][1], outputs["probabilities"][1], atol=1e-3)
