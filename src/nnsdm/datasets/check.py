"""Validate an nnU-Net v2 raw dataset folder before planning, reporting every problem with its file.

nnU-Net's own ``verify_dataset_integrity`` stops at the first failing assertion, prints multi-line
messages, and lets some faults through (a truncated ``.nii.gz`` reads as zeros through SimpleITK's NIfTI
reader). :func:`check_dataset` collects all problems as one-line :class:`Problem` s instead.

Headers are read cheaply (``ImageFileReader.ReadImageInformation``); voxels are read only for labels
(to check their values) and floating-point images (to look for NaN or infinity; NIfTI voxels through
nibabel, since SimpleITK's NIfTI reader silently turns NaN into 0). NIfTI data are checked
for completeness against the header: a ``.nii`` by its file size, a ``.nii.gz`` by the uncompressed size
recorded in the gzip trailer, decompressing the whole stream only when that does not match (a truncated
file has random bytes there). Files whose voxels are read anyway (labels, float images) are decompressed
whole, which also verifies the gzip checksum.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Problem", "check_dataset"]

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
SPACING_RTOL = 1e-3  # relative tolerance on spacing
ORIGIN_TOL = 1e-3  # origin tolerance, as a fraction of the largest voxel spacing
DIRECTION_TOL = 1e-3  # absolute tolerance on direction cosines
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Problem:
    """One fault in a dataset: the file at fault and what is wrong with it."""

    file: Path
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class _Spec:
    """What dataset.json says, as far as it could be understood (None: missing or invalid)."""

    n_channels: int | None = None
    labels: set[int] | None = None
    file_ending: str | None = None
    num_training: int | None = None
    explicit: dict | None = None  # the optional "dataset" entry: case -> {"images": [...], "label": ...}
    labels_with_foreground: int = 0  # label maps seen so far that hold any foreground voxel


@dataclass
class _Case:
    name: str
    images: dict[int, Path] = field(default_factory=dict)  # channel -> file
    label: Path | None = None


@dataclass(frozen=True)
class _Header:
    path: Path
    size: tuple[int, ...]  # SimpleITK order (x, y, z)
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    is_float: bool


def check_dataset(dataset: Path, *, progress: bool = True) -> list[Problem]:
    """Validate an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/, optional imagesTs/).

    Returns every problem found, one :class:`Problem` each (an empty list when the dataset is clean).
    """
    from tqdm import tqdm

    dataset = Path(dataset)
    if not dataset.is_dir():
        return [Problem(dataset, "dataset folder not found")]
    spec, problems = _read_spec(dataset / "dataset.json")
    if spec.file_ending is None and spec.explicit is None:
        return problems  # without file_ending, images cannot be told apart from other files

    if spec.explicit is not None:
        training, found = _cases_from_json(dataset, spec.explicit)
    else:
        training, found = _cases_from_folders(dataset, spec)
    problems += found
    folders_found = training is not None
    if training is None:  # imagesTr or labelsTr missing: already reported
        training = []
    elif spec.num_training is not None and spec.num_training != len(training):
        where = "dataset.json's 'dataset' entry" if spec.explicit is not None else "imagesTr"
        problems.append(Problem(dataset / "dataset.json",
                                f"numTraining is {spec.num_training} but {where} has {len(training)} cases"))
    test: list[_Case] = []
    if spec.file_ending is not None and (dataset / "imagesTs").is_dir():
        test, found = _group_images(dataset / "imagesTs", spec)
        problems += found

    for case in tqdm(training + test, desc="checking cases", unit="case", disable=not progress):
        problems += _check_case(case, spec)
    if folders_found and not training:
        problems.append(Problem(dataset / "imagesTr", "no training cases: nothing to train on"))
    elif training and spec.labels is not None and spec.labels_with_foreground == 0 and not problems:
        problems.append(Problem(dataset / "labelsTr", "every label map is all background (0): nothing to learn"))
    return problems


# dataset.json ------------------------------------------------------------------------------------------


def _read_spec(path: Path) -> tuple[_Spec, list[Problem]]:
    spec = _Spec()
    if not path.is_file():
        return spec, [Problem(path, "missing (an nnU-Net raw dataset needs dataset.json)")]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return spec, [Problem(path, f"not valid JSON ({exc})")]
    if not isinstance(meta, dict):
        return spec, [Problem(path, "not a JSON object")]

    problems = [Problem(path, f"missing required key '{key}'") for key in REQUIRED_KEYS if key not in meta]

    def bad(message: str) -> None:
        problems.append(Problem(path, message))

    if "channel_names" in meta:
        channels = meta["channel_names"]
        if not isinstance(channels, dict) or not channels:
            bad("channel_names must be a non-empty object such as {\"0\": \"CT\"}")
        elif sorted(channels, key=str) != sorted(str(i) for i in range(len(channels))):
            bad(f"channel_names keys must be \"0\"..\"{len(channels) - 1}\", got {sorted(channels)}")
        else:
            spec.n_channels = len(channels)

    if "labels" in meta:
        spec.labels = _check_labels(meta["labels"], bad)

    if "file_ending" in meta:
        ending = meta["file_ending"]
        if isinstance(ending, str) and ending.startswith(".") and len(ending) > 1:
            spec.file_ending = ending
        else:
            bad(f"file_ending must be a file extension such as \".nii.gz\", got {ending!r}")

    if "numTraining" in meta:
        num = meta["numTraining"]
        if isinstance(num, int) and not isinstance(num, bool) and num >= 0:
            spec.num_training = num
        else:
            bad(f"numTraining must be a whole number, got {num!r}")

    if "dataset" in meta:
        entries = meta["dataset"]
        valid = isinstance(entries, dict) and all(
            isinstance(e, dict) and isinstance(e.get("label"), str) and isinstance(e.get("images"), list)
            and e["images"] and all(isinstance(i, str) for i in e["images"]) for e in entries.values())
        if valid:
            spec.explicit = entries
        else:
            bad("'dataset' must map each case to {\"images\": [file, ...], \"label\": file}")
    return spec, problems


def _check_labels(labels, bad) -> set[int] | None:
    """Validate dataset.json's labels as nnU-Net's LabelManager does; return the allowed label values."""
    if not isinstance(labels, dict) or not labels:
        bad("labels must be a non-empty object such as {\"background\": 0, \"liver\": 1}")
        return None

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    values: set[int] = set()
    ignore = None
    ok = True
    for name, value in labels.items():
        if is_int(value):
            members = [value]
        elif isinstance(value, list) and value and all(is_int(v) for v in value) and name != "ignore":
            members = value  # a region: a union of labels
        else:
            bad(f"label '{name}' has value {value!r}, expected a whole number")
            ok = False
            continue
        if name == "ignore":
            ignore = value
        else:
            values.update(members)
    if "background" not in labels:
        bad("labels has no 'background' (it must be 0)")
        ok = False
    elif labels["background"] != 0 or not is_int(labels["background"]):
        bad(f"background label must be 0, got {labels['background']!r}")
        ok = False
    if not ok:
        return None
    if ignore is not None:
        if ignore != max(values) + 1:
            bad(f"ignore label must be the highest label value ({max(values) + 1}), got {ignore}")
            return None
        values.add(ignore)
    if sorted(values) != list(range(len(values))):
        bad(f"labels must be consecutive (0, 1, 2, ...), got {sorted(values)}")
        return None
    return values


# finding cases -----------------------------------------------------------------------------------------


def _listing(folder: Path) -> list[Path]:
    """Non-hidden entries of a folder, broken symbolic links included, sorted by name."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir())


def _group_images(folder: Path, spec: _Spec) -> tuple[list[_Case], list[Problem]]:
    """Group CASE_XXXX<file_ending> files of an images folder into cases."""
    cases: dict[str, _Case] = {}
    problems = []
    ending = spec.file_ending
    for path in _listing(folder):
        if not path.name.endswith(ending):
            problems.append(Problem(path, f"does not end with file_ending '{ending}' (nnU-Net would ignore it)"))
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            problems.append(Problem(path, f"not named CASE_XXXX{ending} (XXXX: the 4-digit channel number)"))
            continue
        case = cases.setdefault(match["case"], _Case(match["case"]))
        case.images[int(match["channel"])] = path
    return list(cases.values()), problems


def _cases_from_folders(dataset: Path, spec: _Spec) -> tuple[list[_Case] | None, list[Problem]]:
    problems = []
    for sub in ("imagesTr", "labelsTr"):
        if not (dataset / sub).is_dir():
            problems.append(Problem(dataset / sub, "folder missing"))
    if problems:
        return None, problems
    cases, problems = _group_images(dataset / "imagesTr", spec)
    by_name = {c.name: c for c in cases}
    ending = spec.file_ending
    for path in _listing(dataset / "labelsTr"):
        if not path.name.endswith(ending):
            problems.append(Problem(path, f"does not end with file_ending '{ending}' (nnU-Net would ignore it)"))
            continue
        name = path.name[: -len(ending)]
        if name in by_name:
            by_name[name].label = path
        else:
            problems.append(Problem(path, f"label without image (no imagesTr/{name}_0000{ending})"))
    for case in cases:
        if case.label is None:
            first = case.images[min(case.images)]
            problems.append(Problem(first, f"image without label (no labelsTr/{case.name}{ending})"))
    return cases, problems


def _cases_from_json(dataset: Path, entries: dict) -> tuple[list[_Case], list[Problem]]:
    """Cases listed in dataset.json's 'dataset' entry (paths relative to the dataset folder)."""
    cases, problems = [], []
    for name, entry in entries.items():
        case = _Case(name, {i: dataset / p for i, p in enumerate(entry["images"])}, dataset / entry["label"])
        for path in [*case.images.values(), case.label]:
            if not path.exists():
                problems.append(Problem(path, f"listed for case '{name}' in dataset.json but missing"))
        cases.append(case)
    return cases, problems


# per case ----------------------------------------------------------------------------------------------


def _check_case(case: _Case, spec: _Spec) -> list[Problem]:
    """Channels, readability, geometry, intensities and label values of one case."""
    problems: list[Problem] = []
    if spec.n_channels is not None:
        for channel in range(spec.n_channels):
            if channel not in case.images:
                missing = _sibling(case, channel, spec)
                problems.append(Problem(missing, f"missing channel {channel} of case '{case.name}' "
                                                 f"(channel_names has {spec.n_channels} channels)"))
        for channel, path in case.images.items():
            if channel >= spec.n_channels:
                problems.append(Problem(path, f"channel {channel} but channel_names has only "
                                              f"{spec.n_channels} channel(s)"))

    reference: _Header | None = None
    for channel in sorted(case.images):
        path = case.images[channel]
        if not path.exists() and spec.explicit is not None:
            continue  # already reported as missing
        header, found = _read_header(path)
        problems += found
        if header is None:
            continue
        if header.is_float:
            problems += _check_finite(path)
        if reference is None:
            reference = header
        else:
            problems += _compare(header, reference)

    if case.label is not None and (case.label.exists() or spec.explicit is None):
        header, found = _read_header(case.label)
        problems += found
        if header is not None:
            if reference is not None:
                problems += _compare(header, reference)
            if spec.labels is not None:
                problems += _check_label_values(case.label, spec)
    return problems


def _sibling(case: _Case, channel: int, spec: _Spec) -> Path:
    """The file name a missing channel would have."""
    some = next(iter(case.images.values()))
    ending = spec.file_ending or "".join(some.suffixes)
    return some.with_name(f"{case.name}_{channel:04d}{ending}")


def _read_header(path: Path) -> tuple[_Header | None, list[Problem]]:
    """Read an image header and check that the file is a complete 3D scalar image."""
    import SimpleITK as sitk

    if not path.exists():
        what = "broken symbolic link" if path.is_symlink() else "file not found"
        return None, [Problem(path, f"unreadable image ({what})")]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return None, [Problem(path, f"unreadable image ({_reason(exc, path)})")]
    size = tuple(reader.GetSize())
    shape = "x".join(str(s) for s in reversed(size))
    if reader.GetDimension() != 3:
        return None, [Problem(path, f"not a 3D image ({reader.GetDimension()}D, shape {shape})")]
    if reader.GetNumberOfComponents() != 1:
        return None, [Problem(path, f"not a 3D scalar image ({reader.GetNumberOfComponents()} components "
                                    f"per voxel, shape {shape})")]
    incomplete = incomplete_voxel_data(path, reader)
    if incomplete:
        return None, [Problem(path, incomplete)]
    header = _Header(path, size, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()),
                     reader.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64))
    if not all(np.isfinite(header.spacing)) or min(header.spacing) <= 0:  # resampling divides by it
        return None, [Problem(path, f"voxel spacing {_zyx(header.spacing)} (z, y, x, mm) is not finite and positive")]
    return header, []


def _reason(exc: Exception, path: Path) -> str:
    """The informative line of a (multi-line) SimpleITK error message, without the file name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "ERROR" in x or "rror" in x), lines[-1] if lines else "unknown error")
    line = line.split("ERROR:", 1)[-1].strip()
    if line.startswith("Unable to determine ImageIO reader"):
        return "not an image format SimpleITK can read"
    return line.replace(f'"{path}"', "").replace(str(path), "").strip()[:200]


def incomplete_voxel_data(path: Path, reader) -> str | None:
    """Say why the voxel data are incomplete or corrupt, or None when they are whole.

    ``reader``: a SimpleITK ``ImageFileReader`` that has read ``path``'s header. SimpleITK's NIfTI reader
    fills a truncated file's missing voxels with zeros; this compares the bytes the header needs with the
    file (or, for ``.nii.gz``, the size the gzip trailer records, decompressing only when that differs).
    """
    import SimpleITK as sitk

    name = path.name.lower()
    keys = set(reader.GetMetaDataKeys())
    if not name.endswith((".nii", ".nii.gz")) or not {"vox_offset", "bitpix", "dim[0]"} <= keys:
        # Other formats' readers raise on truncated data (NIfTI's fills the missing part with zeros).
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as exc:
            return f"unreadable image ({_reason(exc, path)})"
        return None
    ndim = int(reader.GetMetaData("dim[0]"))
    n_voxels = int(np.prod([int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, ndim + 1)]))
    expected = int(float(reader.GetMetaData("vox_offset"))) + n_voxels * int(reader.GetMetaData("bitpix")) // 8
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        if not compressed:
            size = path.stat().st_size
            return None if size >= expected else f"truncated image ({size} bytes, the header needs {expected})"
        f.seek(-4, 2)
        if int.from_bytes(f.read(4), "little") == expected % 2**32:
            return None  # the gzip trailer records the expected uncompressed size
    return _gzip_problem(path, expected)


def _gzip_problem(path: Path, expected: int) -> str | None:
    """Decompress a whole gzip stream (several members allowed) to check that it holds `expected` bytes."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        return f"truncated or corrupt image (gzip data: {exc})"
    if total < expected:
        return f"truncated image ({total} bytes uncompressed, the header needs {expected})"
    return None


def _compare(header: _Header, ref: _Header) -> list[Problem]:
    """Geometry of one file (label or further channel) against the case's first image."""
    out = []
    if header.size != ref.size:
        out.append(Problem(header.path, f"shape {_zyx(header.size)} differs from {ref.path.name} {_zyx(ref.size)} "
                                        "(z, y, x)"))
    if not np.allclose(header.spacing, ref.spacing, rtol=SPACING_RTOL, atol=0):
        out.append(Problem(header.path, f"spacing {_zyx(header.spacing)} differs from {ref.path.name} "
                                        f"{_zyx(ref.spacing)} (z, y, x, mm)"))
    if not np.allclose(header.origin, ref.origin, rtol=0, atol=ORIGIN_TOL * max(ref.spacing)):
        out.append(Problem(header.path, f"origin {_fmt(header.origin)} differs from {ref.path.name} "
                                        f"{_fmt(ref.origin)} (x, y, z, mm)"))
    if not np.allclose(header.direction, ref.direction, rtol=0, atol=DIRECTION_TOL):
        out.append(Problem(header.path, f"direction {_fmt(header.direction)} differs from {ref.path.name} "
                                        f"{_fmt(ref.direction)}"))
    return out


def _zyx(values) -> str:
    return _fmt(tuple(reversed(values)))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _read_voxels(path: Path) -> np.ndarray:
    """Voxel values as stored. NIfTI goes through nibabel, since SimpleITK's NIfTI reader turns NaN and
    infinity into 0; a ``.nii.gz`` is decompressed whole first, so that its gzip checksum is verified."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        import nibabel

        return np.asanyarray(nibabel.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes())).dataobj)
    if name.endswith(".nii"):
        import nibabel

        return np.asanyarray(nibabel.load(path).dataobj)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def non_finite_voxels(path: Path) -> int:
    """How many voxels of an image file are NaN or infinite, as stored (SimpleITK would read NaN as 0)."""
    voxels = _read_voxels(path)
    if not np.issubdtype(voxels.dtype, np.floating):
        return 0
    return voxels.size - int(np.count_nonzero(np.isfinite(voxels)))


def _check_finite(path: Path) -> list[Problem]:
    try:
        bad = non_finite_voxels(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unreadable
        return [Problem(path, f"unreadable image ({_reason(exc, path)})")]
    if bad:
        return [Problem(path, f"{bad} voxel(s) are NaN or infinite")]
    return []


def _check_label_values(path: Path, spec: _Spec) -> list[Problem]:
    """Label values must be among dataset.json's labels (which are 0..K, consecutive); counts foreground maps."""
    allowed = spec.labels
    try:
        voxels = _read_voxels(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unreadable
        return [Problem(path, f"unreadable image ({_reason(exc, path)})")]
    spec.labels_with_foreground += bool(voxels.size and np.nanmax(voxels) > 0)
    top = max(allowed)
    if np.issubdtype(voxels.dtype, np.integer):
        if voxels.size == 0 or (voxels.min() >= 0 and voxels.max() <= top):
            return []  # the common case, decided without the slower unique()
        voxels = voxels[(voxels < 0) | (voxels > top)]
    found = np.unique(voxels)
    unexpected = sorted(v.item() for v in found if not (v == v and float(v).is_integer() and int(v) in allowed))
    if not unexpected:
        return []
    shown = ", ".join(f"{v:g}" for v in unexpected[:10]) + (", ..." if len(unexpected) > 10 else "")
    return [Problem(path, f"label values {{{shown}}} not in dataset.json labels {sorted(allowed)}")]
