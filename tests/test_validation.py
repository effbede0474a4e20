"""The "valid:" list of an unknown-argument error names only what the user can set: no ``self``, and not
the arguments the caller passes itself (a task's model, optimizer and scheduler)."""
from __future__ import annotations

import pytest

from zoo import blocks
from zoo.blocks.validation import check_kwargs
from zoo.data import DATAMODULES
from zoo.tasks import TASKS

NOT_SETTABLE = {"self", "cls", "model", "optimizer", "scheduler"}


def _valid(message: str) -> set[str]:
    return set(message.split("valid: ", 1)[1].split(", "))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_argument_error_lists_only_settable_arguments(task):
    """As train.py checks ``task.args``: the task's ``__init__`` as the class holds it."""
    with pytest.raises(TypeError) as info:
        check_kwargs(f"task {task!r}", {"ema_decy": 0.99}, TASKS[task].__init__)
    message = str(info.value)
    assert "did you mean 'ema_decay'" in message
    assert "ema_decay" in _valid(message) and not NOT_SETTABLE & _valid(message), message


def test_an_argument_the_caller_passes_is_refused_saying_so():
    with pytest.raises(TypeError, match="'optimizer' \\(the caller passes it: not settable here\\)"):
        check_kwargs("task 'classification'", {"optimizer": "sgd"}, TASKS["classification"].__init__)


def test_data_and_block_lists_have_no_self():
    with pytest.raises(TypeError) as info:
        check_kwargs("data 'digits'", {"batch": 8}, DATAMODULES["digits"].__init__)
    assert "batch_size" in _valid(str(info.value)) and "self" not in _valid(str(info.value))
    with pytest.raises(TypeError) as info:
        blocks.create("se", 64, rd_ration=0.25)
    assert "rd_ratio" in _valid(str(info.value)) and "self" not in _valid(str(info.value))
