"""Fuzz driver: run ``nnsdm predict`` on damaged copies of its inputs and model files, in one process.

Usage: ``python helpers_fuzz.py MODEL IMAGE DICOM_SERIES WORK SEEDS`` prints one JSON line per run:
``{"target", "seed", "mutation", "outcome", "message"}`` with outcome ``ok`` (exit 0 and a readable label
map), ``refused`` (exit 1 and one ``nnsdm: error:`` line) or ``bad`` (anything else: a traceback, another
exit code, several lines, a run over the time limit). One process for all runs: starting Python and torch
per run would cost seconds each; a crash of the process itself is seen by the caller.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import sys
import traceback
from pathlib import Path

TIME_LIMIT_S = 90


JSON_BYTES = b'0123456789-.eE[]{}":, truefalsn'


def mutate(data: bytes, seed: int, *, text: bool = False) -> tuple[bytes, str]:
    """Truncate (one seed in three) or overwrite 1-16 random bytes, deterministically from ``seed``.

    ``text``: overwrite 1-3 bytes with JSON's own characters, so that some damaged files still parse and
    reach the checks of their content.
    """
    rng = random.Random(seed)
    if seed % 3 == 0:
        cut = rng.randrange(len(data))
        return data[:cut], f"truncated to {cut} of {len(data)} bytes"
    out = bytearray(data)
    positions = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 3 if text else 16)))
    for p in positions:
        out[p] = rng.choice(JSON_BYTES) if text else rng.randrange(256)
    return bytes(out), f"{len(positions)} byte(s) overwritten at {positions[:4]}{'...' if len(positions) > 4 else ''}"


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def run_once(args: list[str], label: Path | None) -> tuple[str, str]:
    """Run ``nnsdm ARGS`` in this process; the outcome and the message line (or the problem)."""
    from nnsdm.cli import main

    err = io.StringIO()
    signal.alarm(TIME_LIMIT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
    except _Timeout:
        return "bad", f"no result within {TIME_LIMIT_S} s"
    except BaseException:  # noqa: BLE001 - exactly what must never happen
        return "bad", traceback.format_exc(limit=-3)
    finally:
        signal.alarm(0)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("nnsdm:")]
    if code == 1 and len(lines) == 1 and lines[0].startswith("nnsdm: error: ") and "Traceback" not in err.getvalue():
        return "refused", lines[0]
    if code == 0 and label is not None and label.is_file():
        import SimpleITK as sitk

        sitk.ReadImage(str(label))
        return "ok", ""
    return "bad", f"exit {code}: {err.getvalue()[-500:]}"


def main() -> None:
    model, image, series, work, seeds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
    signal.signal(signal.SIGALRM, _on_alarm)
    good_model = work / "model"
    shutil.copytree(model, good_model, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt", "checkpoint_best.pth"))
    shutil.copy(image, work / "image_0000.nii.gz")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(image)), str(work / "plain_0000.nii"))
    shutil.copytree(series, work / "series")
    targets = {  # what is damaged, and the file under which the damaged copy is put
        "NIfTI (.nii.gz)": work / "image_0000.nii.gz",
        "NIfTI (.nii)": work / "plain_0000.nii",
        "DICOM slice": sorted((work / "series").iterdir())[3],
        "checkpoint": good_model / "fold_0" / "checkpoint_final.pth",
        "plans.json": good_model / "plans.json",
        "dataset.json": good_model / "dataset.json",
    }
    originals = {name: path.read_bytes() for name, path in targets.items()}
    for n, (name, path) in enumerate(targets.items()):
        source = path.parent if name == "DICOM slice" else path
        for seed in range(seeds):
            damaged, how = mutate(originals[name], 1000 * n + seed, text=name.endswith(".json"))
            path.write_bytes(damaged)
            out = work / f"out_{n}_{seed}"
            given = path if name.startswith("NIfTI") else source if name == "DICOM slice" else work / "image_0000.nii.gz"
            stem = {"DICOM slice": "series", "NIfTI (.nii)": "plain"}.get(name, "image")
            outcome, message = run_once(["predict", "-i", str(given), "-o", str(out), "--model", str(good_model),
                                         "--device", "cpu", "--no-tta", "--step-size", "1"], out / f"{stem}.nii.gz")
            print(json.dumps({"target": name, "seed": seed, "mutation": how, "outcome": outcome, "message": message}),
                  flush=True)
            path.write_bytes(originals[name])
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
