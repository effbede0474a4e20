"""Console output of other libraries that tells a zoo user nothing, silenced where it is raised, in one place.

Each entry is a precise message pattern: anything else still shows, each warning as one line without the
source file it came from (a line of site-packages is nothing a user can act on)."""
from __future__ import annotations

import logging
import re
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional, TextIO

# (message regex matched at the start, category): warnings raised by third-party code during a run
IGNORED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch deprecates a class Lightning's batch flattening still uses; nothing to do on our side
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # a resumed run's own checkpoints: the run folder keeps fresh runs out of it
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    # max_steps reached before a validation: the summary says there is no best checkpoint, in one line
    (r"`ModelCheckpoint\(monitor='[^']*'\)` could not find the monitored key", UserWarning),
)
# Lightning's info lines (its rank-zero loggers) that advertise or narrate internals
IGNORED_LOGS: tuple[str, ...] = (
    r"💡 Tip: ",  # litlogger / litmodels advertisements
    r"Loading `train_dataloader` to estimate number of stepping batches",  # the schedule asked for its length
    r"`Trainer.fit` stopped: `max_(steps|epochs)=-?\d+` reached",  # the bar's last step says it, on its own line
)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropRecords(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              file: Optional[TextIO] = None, line: Optional[str] = None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)


@contextmanager
def quiet_console() -> Iterator[None]:
    """While a training command runs: the ignored warnings and log lines dropped, other warnings on one line."""
    drop = _DropRecords(IGNORED_LOGS)
    loggers = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    with warnings.catch_warnings():  # restores the filters and showwarning on the way out
        for message, category in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        warnings.showwarning = _one_line
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)
