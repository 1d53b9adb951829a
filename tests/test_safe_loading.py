"""Model folders from elsewhere: checkpoints load without running code, JSON files are type-checked."""

from __future__ import annotations

import builtins
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnsdm.checkpoints import read_checkpoint
from nnsdm.errors import NnsdmError
from nnsdm.model_json import check_dataset_json, check_metadata, check_plans, inside, plain_name


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    weights = {"conv.weight": torch.zeros(2, 2)}
    torch.save({"network_weights": weights, "trainer_name": "nnsdmTrainer", "payload": _CreatesFile(marker)}, path)
    return path


def test_the_crafted_checkpoint_really_runs_code_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "proof"
    torch.load(_crafted_checkpoint(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()  # so the refusal below is a real protection, not a test artefact


def test_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _crafted_checkpoint(tmp_path / "checkpoint_final.pth", marker)
    with pytest.raises(NnsdmError) as exc:
        read_checkpoint(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: refused") and "(io.open)" in message and "\n" not in message
    assert not marker.exists()


def test_predict_with_a_crafted_model_folder_refuses_in_one_line(trained_model, phantom_dataset, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("validation", "*.png", "checkpoint_best.pth"))
    marker = tmp_path / "pwned"
    _crafted_checkpoint(model / "fold_0" / "checkpoint_final.pth", marker)
    image = phantom_dataset / "imagesTr" / "phantom_000_0000.nii.gz"
    result = subprocess.run([sys.executable, "-m", "nnsdm", "predict", "-i", str(image), "-o", str(tmp_path / "out"),
                             "--model", str(model), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("*.nii.gz")) if (tmp_path / "out").exists() else True


def test_nnsdm_checkpoints_load_for_inference_and_resume(trained_model):
    checkpoint = read_checkpoint(trained_model / "fold_0" / "checkpoint_final.pth", for_training=True)
    assert checkpoint["trainer_name"] == "nnsdmTrainer"
    assert isinstance(checkpoint["_best_ema"], np.floating)  # numpy scalars in nnU-Net's logger load
    assert isinstance(checkpoint["init_args"]["device"], torch.device)
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["network_weights"].values())


def test_stock_nnunet_checkpoints_load(copy_planned, tmp_path):
    """A checkpoint written by nnU-Net's own trainer (its save_checkpoint, numpy values of every float width in the log)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    workspace = copy_planned(tmp_path / "ws")  # its log stays here
    name = workspace.dataset_name(None)
    workspace.activate()
    plans = {**workspace.load_plans(name), "continue_training": False}
    dataset_json = json.loads((workspace.preprocessed / name / "dataset.json").read_text())
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.output_folder = str(tmp_path)
    trainer.initialize()
    for key, value in (("mean_fg_dice", np.float64(0.5)), ("ema_fg_dice", np.float32(0.25)), ("train_losses", np.float16(1)),
                       ("val_losses", 0.5), ("lrs", 0.01), ("dice_per_class_or_region", [np.float64(0.1)] * 4),
                       ("epoch_start_timestamps", 1.0), ("epoch_end_timestamps", 2.0)):
        trainer.logger.log(key, value, 0)
    trainer._best_ema = np.float64(0.5)
    trainer.current_epoch = 1
    trainer.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    checkpoint = read_checkpoint(tmp_path / "checkpoint_latest.pth", for_training=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and checkpoint["_best_ema"] == 0.5
    assert checkpoint["logging"]["ema_fg_dice"] == [np.float32(0.25)]


@pytest.mark.parametrize("payload", [np.array([1, 2]), np.array(["x"], dtype=object), Path("x"), print, np.str_("x")])
def test_objects_outside_the_allow_list_are_refused(tmp_path, payload):
    path = tmp_path / "c.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "extra": payload}, path)
    with pytest.raises(NnsdmError, match=rf"^{tmp_path}/c.pth: (refused|corrupt)"):
        read_checkpoint(path)


def test_weights_must_be_a_state_dict(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"network_weights": {"w": 3}}, path)
    with pytest.raises(NnsdmError, match="not a state dict"):
        read_checkpoint(path)


# --- JSON files of a model folder ------------------------------------------------------------------

def _json(model: Path, name: str) -> dict:
    return json.loads((model / name).read_text())


def test_real_model_json_files_pass(trained_model):
    check_plans(_json(trained_model, "plans.json"), trained_model / "plans.json")
    check_dataset_json(_json(trained_model, "dataset.json"), trained_model / "dataset.json")
    check_metadata(_json(trained_model, "nnsdm.json"), trained_model / "nnsdm.json")


def _plans_with(trained_model, change) -> dict:
    plans = _json(trained_model, "plans.json")
    change(plans, plans["configurations"]["3d_fullres"]["architecture"])
    return plans


PLANS_ATTACKS = {
    "network class is any callable": lambda p, a: a.__setitem__("network_class_name", "os.system"),
    "op is any callable": lambda p, a: a["arch_kwargs"].__setitem__("nonlin", "subprocess.Popen"),
    "dataset name climbs out": lambda p, a: p.__setitem__("dataset_name", "../../../etc"),
    "dataset name is absolute": lambda p, a: p.__setitem__("dataset_name", "/tmp/x"),
    "patch size is text": lambda p, a: p["configurations"]["3d_fullres"].__setitem__("patch_size", "16x64x64"),
    "spacing is not finite": lambda p, a: p["configurations"]["3d_fullres"].__setitem__("spacing", [1, float("nan"), 1]),
    "configurations is a list": lambda p, a: p.__setitem__("configurations", []),
    "preprocessor is a path": lambda p, a: p["configurations"]["3d_fullres"].__setitem__("preprocessor_name", "a/b"),
}


@pytest.mark.parametrize("attack", sorted(PLANS_ATTACKS))
def test_plans_attacks_are_refused(trained_model, attack):
    with pytest.raises(NnsdmError, match="plans.json: "):
        check_plans(_plans_with(trained_model, PLANS_ATTACKS[attack]), trained_model / "plans.json")


@pytest.mark.parametrize("change", [
    {"file_ending": "/../../x.nii.gz"}, {"file_ending": 3}, {"labels": {"background": "0"}}, {"labels": []},
    {"labels": {"liver": True}}, {"channel_names": {"0": 1}},
])
def test_dataset_json_attacks_are_refused(trained_model, change):
    data = {**_json(trained_model, "dataset.json"), **change}
    with pytest.raises(NnsdmError, match="dataset.json: "):
        check_dataset_json(data, trained_model / "dataset.json")


@pytest.mark.parametrize("change", [
    {"sdm_weight": "1"}, {"sdm_weight": -1}, {"sdm_classes": "1234"}, {"configuration": "../x"},
    {"orientation": "LLL"}, {"orientation": 5}, {"training": []},
])
def test_metadata_attacks_are_refused(trained_model, change):
    data = {**_json(trained_model, "nnsdm.json"), **change}
    with pytest.raises(NnsdmError, match="nnsdm.json: "):
        check_metadata(data, trained_model / "nnsdm.json")


def test_predict_refuses_a_plans_file_naming_a_foreign_callable(trained_model, phantom_dataset, tmp_path, capsys):
    from nnsdm.cli import main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("validation", "*.png", "checkpoint_best.pth"))
    (model / "plans.json").write_text(json.dumps(_plans_with(trained_model, PLANS_ATTACKS["network class is any callable"])))
    image = phantom_dataset / "imagesTr" / "phantom_000_0000.nii.gz"
    assert main(["predict", "-i", str(image), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nnsdm: error: {model / 'plans.json'}: ") and "os.system" in err and err.count("\n") == 1


def test_names_cannot_climb_out(tmp_path):
    assert plain_name("Dataset501_Phantom", "dataset_name", tmp_path) == "Dataset501_Phantom"
    for bad in ("..", "../x", "a/b", "/abs", ".hidden", "a\\b", "", "x" * 300):
        with pytest.raises(NnsdmError):
            plain_name(bad, "name", tmp_path)
    assert inside(tmp_path, "a.nii.gz") == tmp_path / "a.nii.gz"
    (tmp_path / "link").symlink_to("/tmp")
    for bad in ("../a", "/etc/passwd", "link/x"):
        with pytest.raises(NnsdmError, match="outside"):
            inside(tmp_path, bad)


def test_a_flipped_byte_in_the_weights_is_refused_not_loaded(trained_model, tmp_path):
    """torch.load does not check the archive's CRC-32: without this check the damaged weight would load."""
    path = tmp_path / "checkpoint_final.pth"
    data = bytearray((trained_model / "fold_0" / "checkpoint_final.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=False)  # loads silently
    with pytest.raises(NnsdmError, match=r"corrupt checkpoint \(checksum mismatch in .*/data/"):
        read_checkpoint(path)
