"""Shared, session-scoped fixtures: tiny phantoms, a planned workspace and a tiny trained SDM model.

Planning and training are real nnU-Net runs (cpu-small preset, a few iterations), built once per
test session and reused by the planning, training, inference, export and report tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep nnU-Net small on the 2-core CI machine: one augmentation worker, two pool processes.
os.environ.setdefault("nnUNet_n_proc_DA", "1")
os.environ.setdefault("nnUNet_def_n_proc", "2")

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"
TINY_SHAPE = (24, 64, 64)
TINY_SPACING = (8.0, 5.0, 5.0)


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """The real CT scans in ../shared/data/real-ct (tests using them skip cleanly without it)."""
    if not REAL_CT.is_dir():
        pytest.skip(f"real CT data not available at {REAL_CT} (only present in the project's own workspace)")
    return REAL_CT


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Six tiny synthetic CT cases in nnU-Net raw layout."""
    from nnsdm.phantom import generate_dataset

    out = tmp_path_factory.mktemp("phantom") / "Phantom"
    return generate_dataset(out, cases=6, seed=7, shape=TINY_SHAPE, spacing=TINY_SPACING)


@pytest.fixture(scope="session")
def planned_workspace(tmp_path_factory, phantom_dataset):
    """A workspace with the tiny phantoms planned and preprocessed with the cpu-small preset."""
    from nnsdm.planning import plan
    from nnsdm.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    summary = plan(phantom_dataset, workspace=workspace, preset="cpu-small", num_processes=2)
    return workspace, summary


@pytest.fixture
def copy_planned(planned_workspace):
    """``copy_planned(dest)``: a copy of the planned workspace without any model in it.

    ``trained_model`` trains in the shared workspace; a test that trains its own copy must not find that
    model (a finished fold is skipped, not retrained).
    """
    import shutil

    from nnsdm.workspace import Workspace

    def copy(dest: Path) -> Workspace:
        source = planned_workspace[0]
        ignore = lambda folder, names: [n for n in names if Path(folder, n) == source.results]  # noqa: E731
        return Workspace(shutil.copytree(source.root, dest, symlinks=True, ignore=ignore))

    return copy


@pytest.fixture(scope="session")
def trained_model(planned_workspace) -> Path:
    """Model folder of a tiny SDM model (fold 0, 2 epochs of 3 iterations, final validation without TTA)."""
    from nnsdm.training import train

    workspace, _ = planned_workspace
    return train(workspace=workspace, fold=0, epochs=2, iterations_per_epoch=3, val_iterations=1, save_every=1,
                 device="cpu", validate=True, validation_tta=False)
