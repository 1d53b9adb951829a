"""Reading nnU-Net checkpoints: every problem is a one-line error naming the file."""

from __future__ import annotations

import pytest
import torch

from nnsdm.checkpoints import read_checkpoint
from nnsdm.errors import NnsdmError


def test_a_checkpoint_is_read_with_its_weights(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "trainer_name": "nnsdmTrainer"}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["trainer_name"] == "nnsdmTrainer"
    torch.testing.assert_close(checkpoint["network_weights"]["w"], torch.ones(2))


def test_missing_corrupt_and_foreign_files_are_one_line_errors(tmp_path):
    with pytest.raises(NnsdmError, match="nope.pth: checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(NnsdmError, match=r"corrupt.pth: corrupt checkpoint \("):
        read_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(NnsdmError, match=r"foreign.pth: not an nnU-Net checkpoint \(no network_weights\)"):
        read_checkpoint(foreign)


def test_continuing_needs_the_training_state(tmp_path):
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"network_weights": {}}, path)
    read_checkpoint(path)
    with pytest.raises(NnsdmError, match="no current_epoch, logging, network_weights, optimizer_state"):
        read_checkpoint(path, for_training=True)
    torch.save({"network_weights": {}, "optimizer_state": {}, "current_epoch": 3, "logging": {}}, path)
    assert read_checkpoint(path, for_training=True)["current_epoch"] == 3
