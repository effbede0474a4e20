"""One run owns its folder: a lock against a second live run, leftovers of a killed one cleared,
``metrics.csv`` continued (not restarted) when a run resumes, and a fresh run beside, never into, the
folder of an earlier one (``runs/NAME``, then ``runs/NAME-2``, ``runs/NAME-3``, ...)."""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Optional

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ..files import atomic_write

LOCK_NAME = ".run.lock"


# what a run leaves in its folder; a folder holding none of them (new, empty, a lock only) is free
RUN_FILES = ("config.yaml", "metrics.csv")
RUN_FOLDERS = ("checkpoints", "export")


def holds_run(folder: Path) -> bool:
    """Whether an earlier run wrote into ``folder`` (a file of its own, a checkpoint or an export; not the
    hidden temporaries a killed write leaves, which the next run in the folder clears)."""
    return any((folder / name).is_file() for name in RUN_FILES) or \
        any(not entry.name.startswith(".") for name in RUN_FOLDERS if (folder / name).is_dir()
            for entry in (folder / name).iterdir())


def _numbered(folder: Path) -> Optional[tuple[Path, int]]:
    """``runs/NAME-3`` -> (``runs/NAME``, 3) when ``runs/NAME`` exists: a later run of that series."""
    match = re.fullmatch(r"(.+)-(\d+)", folder.name)
    if match and int(match.group(2)) >= 2 and (folder.parent / match.group(1)).is_dir():
        return folder.parent / match.group(1), int(match.group(2))
    return None


def _series(base: Path) -> dict[int, Path]:
    """The runs of ``base`` by number: ``base`` is 1, ``base-N`` is N."""
    runs = {1: base} if base.is_dir() else {}
    if base.parent.is_dir():
        pattern = re.compile(re.escape(base.name) + r"-(\d+)")
        for sibling in base.parent.iterdir():
            match = pattern.fullmatch(sibling.name)
            if match and int(match.group(1)) >= 2 and sibling.is_dir():
                runs[int(match.group(1))] = sibling
    return runs


def latest_run(output_dir: Path) -> Path:
    """The run that ``output_dir`` names: a numbered folder (``runs/NAME-2``) itself, else the highest-numbered
    run of its series that holds one, else ``output_dir``."""
    if _numbered(output_dir):
        return output_dir
    held = [n for n, folder in _series(output_dir).items() if holds_run(folder)]
    return _series(output_dir)[max(held)] if held else output_dir


def fresh_run(output_dir: Path) -> Path:
    """Where a new run of ``output_dir`` goes: ``output_dir`` while it holds no run, else the next number of
    its series (after the highest that holds one, so the latest run is always the highest number)."""
    if not holds_run(output_dir):
        return output_dir
    base = _numbered(output_dir)[0] if _numbered(output_dir) else output_dir
    runs = _series(base)
    number = max(n for n, folder in runs.items() if holds_run(folder)) + 1
    return base.with_name(f"{base.name}-{number}")


class RunFolderBusy(RuntimeError):
    """Another live run writes to the same ``output_dir``."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def launched_rank() -> bool:
    """A process of another rank (Lightning's launcher, torchrun, SLURM): the global rank-0 process
    holds the lock for the whole run."""
    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


class RunLock:
    """``output_dir/.run.lock`` while a run is live. A lock whose process is gone (a SIGKILL, a
    crash) is stale and taken over; a live one is refused with its owner's pid, host and start."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        if launched_rank():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_owner()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            self.held = True
            return self
        raise RunFolderBusy(f"could not take the lock {self.path}; remove it if no run is using {self.path.parent}")

    def _check_owner(self) -> None:
        """Refuse a live owner; remove the lock of a dead one (the caller then retries)."""
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        pid, host = owner.get("pid"), owner.get("host")
        if isinstance(pid, int) and pid in (os.getpid(), os.getppid()):
            return self.path.unlink(missing_ok=True)
        if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
            return self.path.unlink(missing_ok=True)  # stale: its run was killed
        if host != socket.gethostname() or isinstance(pid, int):
            raise RunFolderBusy(
                f"another run (pid {pid} on {host}, started {owner.get('started', '?')}) is writing to "
                f"{self.path.parent}; wait for it to finish or stop it, or choose another output_dir "
                f"(if that run is certainly gone, delete {self.path})")
        if time.time() - self.path.stat().st_mtime < 10:
            raise RunFolderBusy(f"another run is starting in {self.path.parent} (its lock {self.path} is being "
                                f"written); wait for it, or choose another output_dir")
        self.path.unlink(missing_ok=True)  # unreadable and old: a lock file cut short by a kill

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files atomic writes leave when a run is killed mid-write (call it
    with the lock held, so no live writer owns them)."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that the rows already in the folder's ``metrics.csv`` are kept (a fresh
    run has a folder of its own, so the rows there are its own: a resumed fit, or an evaluation of its
    checkpoint)."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        self.metrics_keys = sorted(header)  # appended rows and later new columns keep the old ones


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` in the run folder, continued by every command that runs there;
    :meth:`drop_rows_from_step` drops the rows a killed run wrote after the checkpoint it resumes from, so
    every step appears once."""

    def __init__(self, save_dir: str | os.PathLike) -> None:
        super().__init__(save_dir, name="", version="")

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            if rank_zero_only.rank > 0:
                return super().experiment  # Lightning's dummy writer off rank 0
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir)
        return self._experiment

    def drop_rows_from_step(self, step: int) -> None:
        """Keep the header and the rows of steps before ``step``."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            column = header.index("step") if "step" in header else None
            kept = [header] + [row for row in reader if column is None or not row[column] or int(float(row[column])) < step]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as out:
                csv.writer(out).writerows(kept)

        atomic_write(path, write)
