"""One writer at a time: an exclusive lock per output folder (a training fold, a prediction output).

``with hold(folder, "train"):`` creates ``folder/.nnsdm-train.lock``, locks it with ``flock`` and writes
the holder into it (pid, host, start time, command). A second writer is refused with one line naming
the holder. The kernel releases the lock when the holder dies, however it dies (``kill -9``, OOM killer),
so a dead holder never blocks: the next writer takes the lock over. Where the file system has no
``flock`` (some network file systems), the lock file is created exclusively instead, and a holder on
this host whose process is gone (or whose pid now belongs to a process started later) is taken over;
a holder on another host is never assumed dead.

Names: :func:`lock_name` gives one lock per writer kind, with an optional shard so that the N shards of
one sharded prediction (``--shards N``, each writing its own cases into one output folder) each hold
their own lock while two runs of the same shard still exclude each other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nnsdm.errors import NnsdmError

__all__ = ["LockHeld", "hold", "holder", "lock_name", "lock_path"]


class LockHeld(NnsdmError):
    """Another nnsdm process holds the lock (its message names the holder)."""


def lock_name(kind: str, shard: int | None = None, shards: int | None = None) -> str:
    """``kind`` (``train``, ``predict``...), or ``predict-shard-2-of-8`` for shard 2 of a sharded run."""
    if shard is None:
        return kind
    if shards is None or not 0 <= int(shard) < int(shards):
        raise NnsdmError(f"shard {shard} of {shards}: the shard index must be in 0..shards-1")
    return f"{kind}-shard-{int(shard)}-of-{int(shards)}"


def lock_path(folder: Path, name: str) -> Path:
    return Path(folder) / f".nnsdm-{name}.lock"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(["nnsdm", *sys.argv[1:]])[:300]}


def holder(folder: Path, name: str) -> dict | None:
    """What the lock file says about its holder (``None``: no lock file or unreadable)."""
    try:
        data = json.loads(lock_path(folder, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(path: Path, info: dict | None) -> str:
    if not info:
        return f"{path}: locked by another nnsdm process"
    return (f"{path}: in use by pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
            f"({info.get('command', 'nnsdm')}); wait for it to finish or stop it")


def _alive_here(info: dict) -> bool:
    """Whether the holder recorded in ``info`` still runs (only decidable on this host: else True)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    start = info.get("process_start")
    return start is None or _process_start(pid) in (None, start)


def _write(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)


def _acquire_flock(path: Path, name: str) -> int | None:
    """The locked file descriptor, ``None`` where flock is unsupported; ``LockHeld`` when held."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(_describe(path, holder(path.parent, name))) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder removed while we waited for it
            return fd
        os.close(fd)


def _acquire_exclusive(path: Path, name: str) -> int:
    """Fallback without flock: create the file exclusively, taking over a dead holder on this host."""
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = holder(path.parent, name)
            if info is None or _alive_here(info):
                raise LockHeld(_describe(path, info)) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    raise LockHeld(_describe(path, holder(path.parent, name)))


@contextlib.contextmanager
def hold(folder: Path, name: str) -> Iterator[Path]:
    """Hold ``folder``'s lock ``name`` for the block (creating ``folder``); ``LockHeld`` if another process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder, name)
    fd = _acquire_flock(path, name)
    if fd is None:
        fd = _acquire_exclusive(path, name)
    me = _me()
    try:
        _write(fd, me)
        yield path
    finally:
        if holder(folder, name) == me:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still locked: a waiting process re-checks the inode
        os.close(fd)
