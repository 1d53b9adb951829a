"""The workspace: one folder holding nnU-Net's raw, preprocessed and results folders.

nnU-Net v2 finds its folders through the environment variables ``nnUNet_raw``, ``nnUNet_preprocessed``
and ``nnUNet_results`` (read lazily by ``nnunetv2.paths`` each time a path is used).
:meth:`Workspace.activate` sets them, so a user never exports ``nnUNet_*`` by hand and one process can
switch workspaces (the tests do).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nnsdm.errors import NnsdmError

DEFAULT_WORKSPACE = Path("nnsdm_workspace")
_ENV = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}
_DATASET_DIR = re.compile(r"^Dataset(\d{3})_(.+)$")


@dataclass(frozen=True)
class Workspace:
    """Paths of one nnsdm workspace (created on first use)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    def activate(self) -> "Workspace":
        """Create the folders and point nnU-Net's environment variables at them."""
        for var, attr in _ENV.items():
            path = getattr(self, attr)
            path.mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(path)
        return self

    def datasets(self) -> list[str]:
        """Names (``DatasetXXX_Name``) of the datasets planned in this workspace."""
        if not self.preprocessed.is_dir():
            return []
        return sorted(p.name for p in self.preprocessed.iterdir() if _DATASET_DIR.match(p.name) and p.is_dir())

    def dataset_name(self, dataset: str | None = None) -> str:
        """Resolve the dataset to use: the given name or id, or the only planned one."""
        names = self.datasets()
        if dataset is None:
            if not names:
                raise NnsdmError(f"{self.root}: workspace holds no planned dataset (run `nnsdm plan` first)")
            if len(names) > 1:
                raise NnsdmError(f"{self.root}: workspace holds several datasets ({', '.join(names)}); choose one with --dataset")
            return names[0]
        for name in names:
            match = _DATASET_DIR.match(name)
            if dataset in (name, match.group(2)) or (dataset.isdigit() and int(dataset) == int(match.group(1))):
                return name
        raise NnsdmError(f"{self.root}: no planned dataset named {dataset!r} (have: {', '.join(names) or 'none'})")

    def plans_file(self, dataset: str | None = None) -> Path:
        """nnU-Net's plans file of the dataset (``nnUNetPlans.json``)."""
        return self.preprocessed / self.dataset_name(dataset) / "nnUNetPlans.json"

    def load_plans(self, dataset: str | None = None) -> dict:
        """The dataset's plans; a missing or unreadable file is a one-line error."""
        path = self.plans_file(dataset)
        if not path.is_file():
            raise NnsdmError(f"{path}: plans not found (run `nnsdm plan` first)")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise NnsdmError(f"{path}: unreadable plans ({exc})") from None


def next_dataset_id(workspace: Workspace, *, start: int = 501) -> int:
    """Smallest free dataset id >= ``start`` in the workspace's raw folder."""
    used = set()
    if workspace.raw.is_dir():
        for p in workspace.raw.iterdir():
            match = _DATASET_DIR.match(p.name)
            if match:
                used.add(int(match.group(1)))
    ident = start
    while ident in used:
        ident += 1
    return ident
