"""Where and in what precision nnsdm computes: the device, the CPU precision and the CPU fast path.

Training and prediction share these: ``--device`` (``auto``, ``cpu``, ``cuda``) and, on a CPU,
``--cpu-precision`` (``auto``, ``bf16``, ``fp32``) with the channels-last layout of
:func:`use_cpu_fast_path`. On CUDA nnU-Net's own fp16 autocast applies.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from nnsdm.errors import NnsdmError
from nnsdm.network import DeepSupervisionOutputs


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NnsdmError("--device cuda: no CUDA device is available to this torch build")
    if device not in ("cpu", "cuda"):
        raise NnsdmError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)


def cpu_training_threads(cores: int | None = None, *, bf16: bool, passive_wait: bool | None = None) -> int:
    """Torch threads for training on a CPU: every core for an fp32 step under passive OpenMP waits, else the
    cores nnU-Net's augmentation workers leave free (at least 1).

    ``passive_wait`` (default: whether torch's OpenMP runtime was loaded under ``OMP_WAIT_POLICY=PASSIVE``,
    which importing nnsdm sets, :data:`nnsdm.OMP_PASSIVE_WAIT`): a waiting thread sleeps and hands its core
    to a worker that has a batch to make. An fp32 step (CPUs without native bf16) is long next to a batch,
    and on 2 cores two threads beside one worker run an iteration about 1.4x faster than one thread. A
    bf16 step is 3-4x shorter, the worker's batch with its SDM targets is no longer small next to it, and
    on shared cores the SDM's targets would lengthen every step (cpu-small at 4x2x2 mm: +21% over
    ``--sdm-weight 0`` instead of +4-7% with a core each; ``benchmarks/train_step.py``), so there the step and the workers
    each get cores of their own, as they also do where the threads spin while they wait.
    """
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    import nnsdm

    cores = cores or usable_cores()
    if not bf16 and (nnsdm.OMP_PASSIVE_WAIT if passive_wait is None else passive_wait):
        return cores
    return max(1, cores - get_allowed_n_proc_DA())


WORKER_NICENESS = 19  # the lowest CPU priority of ordinary processes


def lower_worker_priority(*loaders) -> None:
    """Run nnU-Net's augmentation worker processes at the lowest CPU priority, for training on the CPU
    that also runs them: Linux's idle scheduling class (``SCHED_IDLE``) where there is one, nice 19 also.

    On 2 cores the step's threads and a worker share the cores; at equal priority a worker that wakes
    mid-step takes a core from one of the step's threads, and the step's other threads then wait for
    that one. At the lowest priority the worker runs mostly while a step thread sleeps (passive OpenMP
    waits, Python between operators). Under ``SCHED_IDLE`` a step thread that wakes takes its core back
    at once; at nice 19 it can wait for the scheduler's wake-up granularity, which the step pays at each
    of its thousands of OpenMP barriers. The worker is never starved: once its queue of batches is empty
    the step waits for it and it gets the cores. Measured with ``benchmarks/train_step.py``. Loaders
    without worker processes are left alone.
    """
    for loader in loaders:
        for process in worker_processes(loader):
            try:
                os.setpriority(os.PRIO_PROCESS, process.pid, WORKER_NICENESS)
            except (OSError, AttributeError, TypeError):
                continue  # the worker has exited, or the platform has no nice values
            if hasattr(os, "SCHED_IDLE"):
                try:
                    os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))
                except OSError:
                    pass  # a container may forbid it: nice 19 stays


def worker_processes(loader) -> list:
    """The started worker processes of one of nnU-Net's data loaders (none for a single-threaded one).

    batchgenerators' multi-process augmenters keep them in a private attribute; this is the one place
    that reads it.
    """
    return list(getattr(loader, "_processes", None) or [])


def usable_cores() -> int:
    """Cores this process may run on (a SLURM allocation or ``taskset`` limits them), not the machine's count.

    Training threads, the demo's augmentation workers and planning's processes are sized from it.
    """
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


CPU_PRECISIONS = ("auto", "bf16", "fp32")


def resolve_cpu_precision(cpu_precision: str) -> str:
    """``bf16`` or ``fp32`` for ``--cpu-precision``: ``auto`` is bf16 where the CPU computes it natively."""
    if cpu_precision not in CPU_PRECISIONS:
        raise NnsdmError(f"--cpu-precision {cpu_precision}: choose auto, bf16 or fp32")
    if cpu_precision == "auto":
        return "bf16" if cpu_bf16_supported() else "fp32"
    return cpu_precision


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 convolutions are emulated there
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 convolutions pay off.

    Honours the instruction-set caps PyTorch and oneDNN honour (``ATEN_CPU_CAPABILITY`` below AVX512,
    ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16): under them bf16 runs emulated, as on a CPU without it.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return False
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private torch helpers: treat their absence as "no"
        return False


def cpu_features() -> str:
    """What decides a CPU's speed here: the instruction set PyTorch uses, native bf16 or not, and the cores."""
    return (f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_bf16_supported() else 'no'}, "
            f"{os.cpu_count()} cores")


def use_cpu_fast_path(network: nn.Module, *, bf16: bool) -> nn.Module:
    """Make a network that runs on the CPU about 1.5x (fp32) or 2.5x (bf16) faster per training step.

    oneDNN's 3D convolutions, above all their backward pass, are much faster in the channels-last
    (NDHWC) layout, so weights and inputs are switched to it. With ``bf16`` the forward pass runs under
    CPU autocast with bfloat16 (the CPU counterpart of nnU-Net's fp16 autocast on CUDA; bfloat16 has
    fp32's range, so no gradient scaler is needed). Outputs are returned in float32, so losses, Dice and
    the exported probabilities are computed in full precision. Parameters and state dict keys are
    unchanged (checkpoints load into a network without the fast path). Returns ``network``.

    Inference in fp32 with a batch of one (nnU-Net's sliding window): PyTorch sends float32 3D
    convolutions with a batch of one and few channels to its slow reference kernel (``slow_conv3d``,
    about 9x slower here than oneDNN for 8 channels at 32x80x80), so without gradients such a batch is
    run as two identical samples, which takes oneDNN's path, and the first is returned.
    """
    network.to(memory_format=torch.channels_last_3d)
    forward = network.forward

    def fast_forward(x: torch.Tensor, *args, **kwargs):
        single = x.dim() == 5 and x.shape[0] == 1 and not bf16 and not torch.is_grad_enabled()
        if single:
            x = x.expand(2, *x.shape[1:])
        if x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x, *args, **kwargs)
        out = _map_outputs(out, lambda t: t.float())
        return _map_outputs(out, lambda t: t[:1]) if single else out

    network.forward = fast_forward
    return network


def _map_outputs(out, fn):
    """``fn`` applied to every tensor of a network output (tensor, list/tuple, DeepSupervisionOutputs)."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, DeepSupervisionOutputs):
        return DeepSupervisionOutputs([fn(o) for o in out], [fn(o) for o in out.sdm])
    if isinstance(out, (list, tuple)):
        return type(out)(_map_outputs(o, fn) for o in out)
    return out
