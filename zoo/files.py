"""The lowest layer of ``zoo``: where files go and how they are written. Nothing here knows about
models; everything above writes through :func:`atomic_write`."""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch


def cache_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where URL weights live."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def zoo_cache_dir(kind: str) -> Path:
    """The zoo's own cache for ``kind`` (``text``, ...): ``$ZOO_CACHE/kind``, else
    ``$XDG_CACHE_HOME/zoo/kind``, else ``~/.cache/zoo/kind``."""
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"]).expanduser() / kind
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "zoo" / kind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file.
    A full disk is reported as such (``OSError(ENOSPC)``), whatever the writer raised."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        full = _disk_full(exc, Path(tmp))
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path} "
                                        f"({full}); free some space or write elsewhere", str(path)) from None
        raise


def _disk_full(exc: BaseException, tmp: Path) -> str:
    """Why the disk counts as full (a short description), or '' when the failure is something else.
    torch.save's C++ writer reports a full disk as 'basic_ios::clear: iostream error' or a failed
    write, so for those the free space decides."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the file system said so"
    if isinstance(exc, (RuntimeError, OSError)) and re.search(r"iostream|write failed|failed writing|No space", str(exc)):
        try:
            free = shutil.disk_usage(tmp.parent).free
        except OSError:
            return ""
        if free < max(64 << 20, tmp.stat().st_size // 10 if tmp.exists() else 0):
            return f"{free >> 20} MiB free"
    return ""
