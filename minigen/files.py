"""Writing files so that nothing is ever half-written: every file minigen writes goes through here.

git and pip write aside, then rename: a rename within one folder is atomic, so a reader sees the old file or the
new one, never a piece of either, whatever interrupts the write (an exception, Ctrl-C, a full disk).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path, write) -> Path:
    """write(temporary path) in `path`'s folder, then rename it onto `path`; on any failure the temporary is removed
    and `path` is left as it was. The temporary keeps `path`'s suffix (matplotlib picks the format by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
