"""Checks of a model folder's JSON files (``plans.json``, ``dataset.json``, ``nnsdm.json``), which may come from elsewhere.

Model folders travel between teams, so their JSON is input like any other: each file's types are
checked before use, a name that ends up in a path (dataset name, plans name, file ending) must be one
plain file-name part that cannot climb out of its folder, and the dotted names nnU-Net imports and calls
while building the network (``pydoc.locate`` on the architecture class and its ``*_op``/``nonlin``
arguments) must name classes from dynamic_network_architectures and ``torch.nn``, never any other
importable callable. Problems are one-line ``NnsdmError`` naming the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from nnsdm.errors import NnsdmError

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")
_FILE_ENDING = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9.]{0,15}$")
_ORIENTATION = re.compile(r"^[LRAPSI]{3}$")
_NETWORK_PACKAGE = "dynamic_network_architectures.architectures."
_OP_PACKAGE = "torch.nn."
_NNUNET_CLASS_KEYS = ("preprocessor_name", "resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")


def plain_name(value, what: str, path: Path) -> str:
    """``value`` when it is one plain file-name part (no separator, not ``..``, no leading dot), else ``NnsdmError``."""
    if not isinstance(value, str) or not _PLAIN_NAME.match(value) or ".." in value:
        raise NnsdmError(f"{path}: {what} {value!r} is not a plain name (letters, digits, _ . + -)")
    return value


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refusing a name that resolves outside ``folder`` (``..``, absolute paths, links)."""
    target = (Path(folder) / name).resolve()
    if not target.is_relative_to(Path(folder).resolve()):
        raise NnsdmError(f"{name}: would be written outside {folder}")
    return Path(folder) / name


def _need(data: dict, key: str, kind, path: Path, where: str = ""):
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise NnsdmError(f"{path}: {where}{key} must be {names}, got {type(value).__name__}")
    return value


def _positive_list(values, what: str, path: Path, *, integers: bool) -> None:
    ok = isinstance(values, list) and 1 <= len(values) <= 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        and (not integers or float(v).is_integer()) for v in values)
    if not ok:
        raise NnsdmError(f"{path}: {what} must be 1 to 3 positive {'integers' if integers else 'numbers'}, got {values!r}")


def _check_architecture(arch: dict, path: Path, where: str) -> None:
    name = _need(arch, "network_class_name", str, path, where)
    if not name.startswith(_NETWORK_PACKAGE) or not re.fullmatch(r"[A-Za-z0-9_.]+", name):
        raise NnsdmError(f"{path}: {where}network_class_name {name!r} is not a dynamic_network_architectures class")
    kwargs = _need(arch, "arch_kwargs", dict, path, where)
    for key in _need(arch, "_kw_requires_import", list, path, where):
        op = kwargs.get(key) if isinstance(key, str) else key
        if op is not None and (not isinstance(op, str) or not op.startswith(_OP_PACKAGE)
                               or not re.fullmatch(r"[A-Za-z0-9_.]+", op)):
            raise NnsdmError(f"{path}: {where}arch_kwargs.{key} {op!r} is not a torch.nn class")


def check_plans(plans, path: Path) -> dict:
    """``plans`` (parsed ``plans.json``) when its types and names are sound, else a one-line ``NnsdmError``."""
    if not isinstance(plans, dict):
        raise NnsdmError(f"{path}: not an nnU-Net plans file (not a JSON object)")
    plain_name(_need(plans, "dataset_name", str, path), "dataset_name", path)
    plain_name(_need(plans, "plans_name", str, path), "plans_name", path)
    for key in ("image_reader_writer", "label_manager"):
        if key in plans:
            plain_name(plans[key], key, path)
    for name, config in _need(plans, "configurations", dict, path).items():
        where = f"configurations.{name}."
        if not isinstance(config, dict):
            raise NnsdmError(f"{path}: {where[:-1]} must be an object")
        if "inherits_from" in config:
            continue  # completed from its parent by nnU-Net's PlansManager, which is checked itself
        _positive_list(config.get("patch_size"), where + "patch_size", path, integers=True)
        _positive_list(config.get("spacing"), where + "spacing", path, integers=False)
        _check_architecture(_need(config, "architecture", dict, path, where), path, where + "architecture.")
        for key in _NNUNET_CLASS_KEYS:
            if key in config:
                plain_name(config[key], where + key, path)
    return plans


def check_dataset_json(dataset_json, path: Path) -> dict:
    """``dataset_json`` when its labels, channels and file ending are sound, else a one-line ``NnsdmError``."""
    if not isinstance(dataset_json, dict):
        raise NnsdmError(f"{path}: not an nnU-Net dataset.json (not a JSON object)")
    labels = _need(dataset_json, "labels", dict, path)
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536 for v in values):
            raise NnsdmError(f"{path}: label {name!r} must be an integer 0..65535 (or a list of them), got {value!r}")
    channels = dataset_json.get("channel_names", dataset_json.get("modality", {"0": "CT"}))
    if not isinstance(channels, dict) or not channels or not all(isinstance(v, str) for v in channels.values()):
        raise NnsdmError(f"{path}: channel_names must map channel numbers to names")
    ending = dataset_json.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not _FILE_ENDING.match(ending) or ".." in ending:
        raise NnsdmError(f"{path}: file_ending {ending!r} is not a file extension such as '.nii.gz'")
    return dataset_json


def check_metadata(meta, path: Path) -> dict:
    """``meta`` (parsed ``nnsdm.json``) when its types are sound, else a one-line ``NnsdmError``."""
    if not isinstance(meta, dict):
        raise NnsdmError(f"{path}: not an nnsdm metadata file (not a JSON object)")
    weight = meta.get("sdm_weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
        raise NnsdmError(f"{path}: not an nnsdm metadata file (sdm_weight must be a number >= 0, got {weight!r})")
    classes = meta.get("sdm_classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in classes):
        raise NnsdmError(f"{path}: sdm_classes must be a list of positive label values, got {classes!r}")
    for key in ("configuration", "plans"):
        if key in meta:
            plain_name(meta[key], key, path)
    orientation = meta.get("orientation")
    if orientation is not None and (not isinstance(orientation, str) or not _ORIENTATION.match(orientation)
                                    or len(set(orientation.translate(str.maketrans("RAI", "LPS")))) != 3):
        raise NnsdmError(f"{path}: orientation must be a code such as 'LPS', got {orientation!r}")
    if not isinstance(meta.get("training", {}), dict):
        raise NnsdmError(f"{path}: training must be an object")
    return meta
