"""Per-case running time and memory, measured the FLARE21 way, written to ``efficiency.csv``.

FLARE21 timed the whole run of one case and read the GPU memory in use (total minus free, through
NVML, in MiB) every 0.1 s, reporting the highest value seen in more than 2% of the samples
(:func:`flare21_memory`). The same background thread also samples the process's resident memory, the
figure that matters on a CPU. NVML (``pynvml`` from nvidia-ml-py) and ``psutil`` are optional: without
NVML the GPU column stays empty; without psutil the resident memory comes from ``/proc/self/statm``
(Linux) or, failing that, ``resource.getrusage`` (the process's lifetime peak).
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nnsdm.fileio import write_text

SAMPLE_INTERVAL_S = 0.1
EFFICIENCY_FILE = "efficiency.csv"
MIB = 1024 * 1024


def flare21_memory(samples: Sequence[float], *, min_fraction: float = 0.02) -> float | None:
    """The highest value that occurs in more than ``min_fraction`` of the samples (FLARE21's GPU memory).

    Short spikes (fewer than 2% of the 0.1 s samples) are ignored. ``None`` when there are no samples or
    no value repeats often enough.
    """
    counts = Counter(samples)
    frequent = [value for value, n in counts.items() if n > min_fraction * len(samples)]
    return max(frequent) if frequent else None


@dataclass
class CaseEfficiency:
    """One row of ``efficiency.csv`` (memory in MiB; empty where not measured)."""

    case: str
    seconds: float
    device: str
    peak_rss_mib: float | None = None
    torch_peak_mib: float | None = None
    gpu_memory_flare21_mib: float | None = None
    gpu_memory_max_mib: float | None = None
    samples: int = 0


COLUMNS = [f.name for f in fields(CaseEfficiency)]


def _rss_reader():
    """A function returning the process's resident memory in bytes, or None where none is available."""
    try:
        import psutil

        process = psutil.Process()
        return lambda: process.memory_info().rss
    except ImportError:
        pass
    statm = Path("/proc/self/statm")
    if statm.is_file():
        page = os.sysconf("SC_PAGE_SIZE")
        return lambda: int(statm.read_text(encoding="utf-8").split()[1]) * page
    return None


def _nvml_reader(device):
    """A function returning total-minus-free GPU memory in MiB (FLARE21's figure), or None without NVML."""
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return None
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:  # CUDA_VISIBLE_DEVICES may renumber devices: match by UUID where torch knows it
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        except Exception:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)

        def read() -> int:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            return (info.total - info.free) // MIB

        read()
        return read
    except Exception:  # no pynvml, no driver, no permission: the column stays empty
        return None


class CaseMonitor:
    """Context manager timing one case and sampling memory every 0.1 s in a background thread."""

    def __init__(self, case: str, device) -> None:
        self.case = case
        self.device = device
        self.rss: list[int] = []
        self.gpu: list[int] = []
        self.result: CaseEfficiency | None = None
        self._stop = threading.Event()
        self._read_rss = _rss_reader()
        self._read_gpu = _nvml_reader(device)

    def _sample(self) -> None:
        if self._read_rss is not None:
            self.rss.append(self._read_rss())
        if self._read_gpu is not None:
            self.gpu.append(self._read_gpu())

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def __enter__(self) -> "CaseMonitor":
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"nnsdm-monitor-{self.case}")
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._sample()
        torch_peak = None
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch_peak = torch.cuda.max_memory_allocated(self.device) / MIB
        if self.rss:
            peak_rss = max(self.rss) / MIB
        else:
            import resource

            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        self.result = CaseEfficiency(
            case=self.case,
            seconds=round(seconds, 3),
            device=str(self.device) if self.device is not None else "",
            peak_rss_mib=round(peak_rss, 1),
            torch_peak_mib=round(torch_peak, 1) if torch_peak is not None else None,
            gpu_memory_flare21_mib=flare21_memory(self.gpu) if self.gpu else None,
            gpu_memory_max_mib=max(self.gpu) if self.gpu else None,
            samples=len(self.rss) or len(self.gpu),
        )
        return False


def update_efficiency_csv(path: Path, rows: Iterable[CaseEfficiency]) -> None:
    """Add or replace the given cases' rows in ``path`` (rewritten atomically, sorted by case)."""
    path = Path(path)
    table: dict[str, dict] = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("case"):
                    table[row["case"]] = row
    for row in rows:
        table[row.case] = {k: ("" if v is None else v) for k, v in asdict(row).items()}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in sorted(table):
        writer.writerow(table[case])
    write_text(path, buffer.getvalue())
