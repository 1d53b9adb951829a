"""SDM training on nnU-Net's trainer: targets in the batch, loss parts, the sdm_weight 0 baseline, resume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from nnsdm.cli import main
from nnsdm.errors import NnsdmError
from nnsdm.network import SDMUNet
from nnsdm.sdm import signed_distance_map
from nnsdm.checkpoints import read_checkpoint
from nnsdm.model_folder import ModelFolder
from nnsdm.trainer import SDMTargetTransform, SegAndSDMLoss
from nnsdm.training import build_trainer, train
from nnsdm.workspace import Workspace


def _single_process_batches(monkeypatch, trainer):
    """Data loaders in the main process (nnUNet_n_proc_DA=0): deterministic and no worker start-up."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer.initialize()
    return trainer.get_dataloaders()


def test_sdm_targets_ride_along_at_every_deep_supervision_scale(planned_workspace, monkeypatch):
    workspace, _ = planned_workspace
    trainer = build_trainer(workspace=workspace, fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
    train_loader, _ = _single_process_batches(monkeypatch, trainer)
    batch = next(train_loader)
    scales = trainer._get_deep_supervision_scales()
    target = batch["target"]
    assert len(target) == 2 * len(scales)
    spacing = trainer.configuration_manager.spacing
    weights = trainer.loss.ds_weights
    assert weights[-1] == 0 and all(w > 0 for w in weights[:-1])  # nnU-Net's lowest-resolution output has weight 0
    for seg, sdm, scale, weight in zip(target[: len(scales)], target[len(scales):], scales, weights):
        if weight == 0:  # its loss term is skipped, so no target is computed: an empty placeholder keeps the order
            assert sdm.numel() == 0
            continue
        assert sdm.dtype == torch.float32 and sdm.shape == (seg.shape[0], 4, *seg.shape[2:])
        for b in range(seg.shape[0]):
            expected = signed_distance_map(seg[b, 0].numpy(), [1, 2, 3, 4], [s / f for s, f in zip(spacing, scale)])
            np.testing.assert_array_equal(sdm[b].numpy(), expected)
    assert float(target[len(scales)].abs().max()) <= 1.0
    assert any(isinstance(t, SDMTargetTransform) for t in train_loader.data_loader.transforms.transforms)


def test_a_few_iterations_reduce_both_loss_parts(planned_workspace, monkeypatch):
    torch.manual_seed(0)
    workspace, _ = planned_workspace
    trainer = build_trainer(workspace=workspace, fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
    train_loader, _ = _single_process_batches(monkeypatch, trainer)
    batch = next(train_loader)
    trainer.network.train()
    seg_losses, sdm_losses = [], []
    for _ in range(12):  # fit one fixed batch: both parts must go down
        result = trainer.train_step(batch)
        seg_losses.append(float(result["seg_loss"]))
        sdm_losses.append(float(result["sdm_loss"]))
    assert isinstance(trainer.loss, SegAndSDMLoss)
    assert float(result["loss"]) == pytest.approx(seg_losses[-1] + sdm_losses[-1], rel=1e-5)
    assert seg_losses[-1] < 0.9 * seg_losses[0]
    assert sdm_losses[-1] < 0.9 * sdm_losses[0]


def test_sdm_weight_zero_is_the_plain_nnunet_baseline(planned_workspace, monkeypatch):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    workspace, _ = planned_workspace
    trainer = build_trainer(workspace=workspace, fold=0, epochs=1, iterations_per_epoch=1, device="cpu", sdm_weight=0)
    assert type(trainer).__name__ == "nnsdmTrainer_sdm0"
    train_loader, _ = _single_process_batches(monkeypatch, trainer)
    assert not isinstance(trainer.network, SDMUNet)
    assert type(trainer.network).__name__ == "PlainConvUNet"
    assert isinstance(trainer.loss, DeepSupervisionWrapper)
    assert not any(isinstance(t, SDMTargetTransform) for t in train_loader.data_loader.transforms.transforms)
    batch = next(train_loader)
    assert len(batch["target"]) == len(trainer._get_deep_supervision_scales())
    assert set(trainer.train_step(batch)) == {"loss"}


def test_continue_after_interruption_resumes_epoch_optimizer_and_learning_rate(planned_workspace, monkeypatch, tmp_path):
    workspace, _ = planned_workspace
    workspace = Workspace(shutil.copytree(workspace.root, tmp_path / "ws", symlinks=True))
    calls = {"n": 0}
    original = SegAndSDMLoss.forward

    def interrupt_in_third_epoch(self, output, target):
        calls["n"] += 1
        if calls["n"] == 7:  # 2 training + 1 validation calls per epoch: call 7 opens epoch index 2
            raise KeyboardInterrupt
        return original(self, output, target)

    options = dict(workspace=workspace, fold=1, epochs=3, iterations_per_epoch=2, val_iterations=1, save_every=1,
                   device="cpu", validate=False)
    monkeypatch.setattr(SegAndSDMLoss, "forward", interrupt_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(**options)
    monkeypatch.setattr(SegAndSDMLoss, "forward", original)

    model = workspace.results / workspace.dataset_name() / "nnsdmTrainer__nnUNetPlans__3d_fullres"
    latest = ModelFolder(model).resume_checkpoint(1)
    assert latest.name == "checkpoint_latest.pth"
    saved = read_checkpoint(latest, for_training=True)
    assert saved["current_epoch"] == 2

    # what --continue restores: epoch counter, optimiser state, learning-rate schedule
    trainer = build_trainer(**{k: v for k, v in options.items() if k != "validate"})
    trainer.load_checkpoint(str(latest))
    assert trainer.current_epoch == 2
    restored = trainer.optimizer.state_dict()
    for key, state in saved["optimizer_state"]["state"].items():
        torch.testing.assert_close(restored["state"][key]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=0)
    trainer.lr_scheduler.step(trainer.current_epoch)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 2 / 3) ** 0.9)

    seen = []  # the trainer's per-epoch callback: the resumed run reports its one remaining epoch
    train(**options, resume=True, epoch_callback=seen.append)
    final = read_checkpoint(model / "fold_1" / "checkpoint_final.pth", for_training=True)
    assert final["current_epoch"] == 3
    log = final["logging"]
    assert log["lrs"] == pytest.approx([0.01 * (1 - e / 3) ** 0.9 for e in range(3)])
    assert len(log["train_sdm_losses"]) == 3
    assert [(s.epoch, s.epochs) for s in seen] == [(3, 3)]
    assert seen[0].train_loss == pytest.approx(log["train_losses"][-1]) and seen[0].val_loss == pytest.approx(log["val_losses"][-1])
    assert seen[0].pseudo_dice == pytest.approx(tuple(log["dice_per_class_or_region"][-1])) and len(seen[0].pseudo_dice) == 4
    assert seen[0].seg_loss == pytest.approx(log["train_seg_losses"][-1]) and seen[0].sdm_loss == pytest.approx(log["train_sdm_losses"][-1])
    assert seen[0].seconds == pytest.approx(log["epoch_end_timestamps"][-1] - log["epoch_start_timestamps"][-1])
    assert (model / "fold_1" / "progress_sdm.png").is_file() and (model / "nnsdm.json").is_file()


def test_corrupt_checkpoint_for_continue_is_a_one_line_error(trained_model, tmp_path, capsys):
    workspace_root = trained_model.parents[2]
    copy = Workspace(shutil.copytree(workspace_root, tmp_path / "ws", symlinks=True))
    fold = copy.results / trained_model.parent.name / trained_model.name / "fold_0"
    (fold / "checkpoint_final.pth").write_bytes(b"PK\x03\x04 truncated")
    code = main(["train", "--workspace", str(copy.root), "--fold", "0", "--epochs", "3", "--continue", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "checkpoint_final.pth: corrupt checkpoint" in err


def test_checkpoint_save_is_atomic(planned_workspace, tmp_path, monkeypatch):
    workspace, _ = planned_workspace
    trainer = build_trainer(workspace=workspace, fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
    trainer.initialize()
    target = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(target))
    before = target.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        trainer.save_checkpoint(str(target))
    assert target.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--fold", "7"], "--fold 7: unknown fold"),
    (["--sdm-weight", "-1"], "--sdm-weight -1.0: must be >= 0"),
])
def test_train_bad_options_are_one_line_errors(planned_workspace, capsys, argv, message):
    workspace, _ = planned_workspace
    code = main(["train", "--workspace", str(workspace.root), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.splitlines() == [f"nnsdm: error: {message}" + err.split(message, 1)[1]]


def test_train_on_workspace_without_plans_creates_nothing(tmp_path, capsys):
    code = main(["train", "--workspace", str(tmp_path / "empty")])
    assert code == 1 and "no planned dataset" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_short_budget_recipe_adamw_without_mirroring(planned_workspace, monkeypatch):
    workspace, _ = planned_workspace
    trainer = build_trainer(workspace=workspace, fold=0, epochs=4, iterations_per_epoch=1, device="cpu",
                            optimizer="adamw", learning_rate=3e-3, mirroring=False)
    train_loader, _ = _single_process_batches(monkeypatch, trainer)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    trainer.lr_scheduler.step(2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * (1 - 2 / 4) ** 0.9)
    assert trainer.inference_allowed_mirroring_axes is None
    assert not any(type(t).__name__ == "MirrorTransform" for t in train_loader.data_loader.transforms.transforms)
    default = build_trainer(workspace=workspace, fold=0, epochs=4, iterations_per_epoch=1, device="cpu")
    default.initialize()
    assert isinstance(default.optimizer, torch.optim.SGD) and default.optimizer.defaults["nesterov"]
    with pytest.raises(NnsdmError, match="--optimizer adam"):
        build_trainer(workspace=workspace, fold=0, device="cpu", optimizer="adam")


def test_adamw_recipe_steps_the_poly_schedule_every_iteration_and_sgd_every_epoch(planned_workspace, monkeypatch):
    workspace, _ = planned_workspace
    rates = {}
    for optimizer, lr in (("adamw", 3e-3), ("sgd", 0.01)):
        trainer = build_trainer(workspace=workspace, fold=0, epochs=2, iterations_per_epoch=3, device="cpu",
                                optimizer=optimizer, learning_rate=lr, mirroring=False)
        train_loader, _ = _single_process_batches(monkeypatch, trainer)
        batch = next(train_loader)
        trainer.network.train()
        used = []
        original_step = trainer.optimizer.step

        def step(*args, _used=used, _optimizer=trainer.optimizer, _original=original_step, **kwargs):
            _used.append(_optimizer.param_groups[0]["lr"])  # the rate this update is made with
            return _original(*args, **kwargs)

        monkeypatch.setattr(trainer.optimizer, "step", step)
        for epoch in range(2):
            trainer.current_epoch = epoch
            trainer.on_train_epoch_start()
            for _ in range(3):
                trainer.train_step(batch)
        rates[optimizer] = used
    poly = lambda lr, t: lr * (1 - t / 2) ** 0.9  # noqa: E731
    assert rates["adamw"] == pytest.approx([poly(3e-3, e + i / 3) for e in range(2) for i in range(3)])
    assert rates["sgd"] == pytest.approx([poly(0.01, e) for e in range(2) for _ in range(3)])


def test_cpu_precision_auto_follows_the_cpu_and_the_network_gets_the_fast_path(planned_workspace, monkeypatch):
    import nnsdm.device as device

    workspace, _ = planned_workspace
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "cpu_bf16_supported", lambda supported=supported: supported)
        trainer = build_trainer(workspace=workspace, fold=0, epochs=1, iterations_per_epoch=1, device="cpu")
        assert trainer.cpu_precision_used == expected
    forced = build_trainer(workspace=workspace, fold=0, epochs=1, iterations_per_epoch=1, device="cpu", cpu_precision="fp32")
    forced.initialize()
    conv = forced.network.encoder.stages[0][0].convs[0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)  # oneDNN's fast layout on the CPU
    with pytest.raises(NnsdmError, match="--cpu-precision fp16"):
        build_trainer(workspace=workspace, fold=0, device="cpu", cpu_precision="fp16")


def test_trainer_classes_are_module_level_and_named_by_the_sdm_weight():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnsdm.trainer import nnsdmTrainer, trainer_class

    assert issubclass(nnsdmTrainer, nnUNetTrainer) and trainer_class(1) is nnsdmTrainer and nnsdmTrainer.sdm_weight == 1
    half = trainer_class(0.5)
    assert half.__name__ == "nnsdmTrainer_sdm0p5" and half.__module__ == "nnsdm.trainer" and half.sdm_weight == 0.5
    assert half is trainer_class(0.5) and issubclass(half, nnsdmTrainer)
    assert trainer_class(0).__name__ == "nnsdmTrainer_sdm0" and trainer_class(1e-05).__name__ == "nnsdmTrainer_sdm1em05"


def test_training_options_are_checked_before_any_work(tmp_path):
    from nnsdm.training import TrainingOptions

    workspace = Workspace(tmp_path / "ws")
    assert TrainingOptions(workspace=workspace, fold="3").fold == 3
    assert TrainingOptions(workspace=workspace, fold="all").fold == "all"
    for options, message in ((dict(fold=5), "--fold 5: unknown fold"), (dict(fold=0, epochs=0), "--epochs, --iterations-per-epoch, --val-iterations and --save-every must be at least 1"),
                             (dict(fold=0, optimizer="adam"), "--optimizer adam"), (dict(fold=0, learning_rate=0.0), "--lr 0.0"),
                             (dict(fold=0, cpu_precision="fp16"), "--cpu-precision fp16"),
                             (dict(fold=0, sdm_weight=-1.0), "--sdm-weight -1.0")):
        with pytest.raises(NnsdmError, match=message):
            TrainingOptions(workspace=workspace, **options)
    with pytest.raises(TypeError, match="not both"):
        build_trainer(TrainingOptions(workspace=workspace, fold=0), epochs=1)
    assert not workspace.root.exists()
