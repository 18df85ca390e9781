"""Writing files so that nothing is ever half-written, and failing before the work when a file cannot be written.

git and pip write aside, then rename: a rename within one folder is atomic, so a reader sees the old file or the
new one, never a piece of either, whatever interrupts the write (an exception, Ctrl-C, a full disk). Every file
minigen writes goes through `write_atomically`; `writable_folder` proves a folder takes files before hours of
training rather than after; `interrupts_deferred` holds Ctrl-C back during the few renames that commit a change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path


def why_not_written(path: Path, err: BaseException) -> str:
    """The cause of a failed write in words: torch.save reports a full disk as 'unexpected pos ...' (a
    RuntimeError), so the folder's free space and permissions are asked directly."""
    folder = path.parent
    if getattr(err, "errno", None) == errno.ENOSPC or (folder.is_dir() and shutil.disk_usage(folder).free < 1 << 20):
        return "the disk is full"
    if folder.is_dir() and not os.access(folder, os.W_OK):
        return "the folder is not writable"
    if getattr(err, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (a read-only folder or file system?)"
    return (str(err).splitlines() or [type(err).__name__])[0]


def write_atomically(path, write) -> Path:
    """write(temporary path) in `path`'s folder, then rename it onto `path`. On any failure the temporary is
    removed, `path` is left as it was, and a failure to write (OSError, or the RuntimeError torch.save raises
    for a full disk) becomes one OSError naming the path and the cause."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells matplotlib the format
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write {path}: {why_not_written(path, err)}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def writable_folder(folder, what: str = "") -> Path:
    """Create `folder` if needed and prove a file can be written there, before any expensive work: a read-only
    place or a file in the way fails now, naming the path (and `what` it is, e.g. "--out"), not after training."""
    if str(folder).strip() == "":
        raise ValueError(f"{what or 'the output folder'} must name a folder, got {str(folder)!r}")
    folder = Path(folder)
    name = f"{folder} ({what})" if what else str(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write into {name}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".minigen-write-test-"):
            pass
    except OSError as err:
        raise OSError(f"cannot write into {name}: {err.strerror or err}") from err
    return folder


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) inside the block takes effect when it ends: for the renames that commit several files at
    once. Only the main thread can hold signals back; elsewhere (or where SIGINT is not Python's) it does nothing."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])
