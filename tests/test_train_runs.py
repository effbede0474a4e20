"""What a newcomer meets running the loop again and again: a second run never mixes files with the first,
evaluation without --ckpt_path takes the latest run's best checkpoint and leaves its training curves alone,
one progress bar counts the whole run, and the console holds no third-party noise."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from run_helpers import ROOT, tiny_config
from zoo.tasks.progress import RunProgressBar
from zoo.training import run
from zoo.training.quiet import quiet_console

DIGITS = ROOT / "configs" / "digits_seresnet.yaml"
# what the console of a run must not show: third-party tips, deprecations and warnings about the run folder,
# Lightning's results table (the summary prints the metrics), source paths of warnings
NOISE = ("💡", "litlogger", "LeafSpec", "_pytree", "exists and is not empty", "will be deleted",
         "could not find the monitored key", "Test metric", "UserWarning", "site-packages", "`Trainer.fit` stopped")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(text: str) -> list[dict]:
    """metrics.csv's rows, each without its empty cells (a new column rewrites the header)."""
    return [{k: v for k, v in row.items() if v} for row in csv.DictReader(io.StringIO(text))]


def test_reruns_get_numbered_folders_and_evaluation_takes_the_latest_best(tmp_path, capfd):
    out = tmp_path / "run"
    cfg = tiny_config(DIGITS, out)  # 2 steps, a validation at the end of the first epoch: best.ckpt
    run(["--config", str(cfg)])
    first = _files(out)
    capfd.readouterr()

    second = run(["fit", "--config", str(cfg), "--optimizer.lr", "0.01"])
    again = tmp_path / "run-2"
    assert second.out == again
    assert capfd.readouterr().out.splitlines()[0] == f"run folder: {again} (a new run: {out} holds an earlier run)"
    assert _files(out) == first, "the second run wrote into the first run's folder"
    assert yaml.safe_load((again / "config.yaml").read_text())["output_dir"] == str(again)
    curves = {name: (again / name).read_bytes() for name in ("loss.png", "validation.png", "config.yaml")}
    trained_rows = (again / "metrics.csv").read_text()

    tested = run(["test", "--config", str(cfg)])  # no --ckpt_path: the latest run's best checkpoint
    best = again / "checkpoints" / "best.ckpt"
    assert tested.out == again and tested.ckpt_path == str(best)
    saved = torch.load(best, weights_only=True)["state_dict"]
    for key, value in tested.model.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"]), key
    report = capfd.readouterr().out
    assert f"metrics of: {best}" in report and report.count("test/top1") == 1
    # the evaluation leaves the training curves and config alone and appends its rows to metrics.csv
    assert {name: (again / name).read_bytes() for name in curves} == curves
    before, after = _rows(trained_rows), _rows((again / "metrics.csv").read_text())
    assert after[:len(before)] == before and len(after) == len(before) + 1 and "test/top1" in after[-1]

    # the README's test command with a path: that checkpoint, evaluated in its own run folder
    explicit = run(["test", "--config", str(cfg), "--ckpt_path", str(out / "checkpoints" / "best.ckpt")])
    assert explicit.out == out and explicit.ckpt_path == str(out / "checkpoints" / "best.ckpt")
    assert explicit.results["test/loss"] != pytest.approx(tested.results["test/loss"])

    # --ckpt_path last resumes the latest run (run-2, not the run of the checkpoint tested last), in its folder
    # (a fit stopped by max_steps resumes only with both limits raised: Lightning counts its epoch as begun)
    first = _files(out)
    resumed = run(["fit", "--config", str(cfg), "--trainer.max_epochs", "3", "--trainer.max_steps", "4",
                   "--ckpt_path", "last"])
    assert resumed.out == again and resumed.trainer.global_step == 4 and _files(out) == first
    console = capfd.readouterr()
    assert [n for n in NOISE if n in console.out + console.err] == []  # Lightning's warning about its own folder




def test_console_has_one_bar_for_the_run_no_noise_and_metrics_once(tmp_path, capfd):
    """A fit that ends (max_steps) before any validation, then tested."""
    out = tmp_path / "run"
    cfg = tiny_config(DIGITS, out, max_steps=3, max_epochs=2, limit_val_batches=0, enable_progress_bar=True)
    cli = run(["--config", str(cfg)])
    bar = next(c for c in cli.trainer.callbacks if isinstance(c, RunProgressBar)).train_progress_bar
    assert (bar.n, bar.total, bar.desc, bar.unit) == (3, 3, "epoch 2/2: ", "step")  # 2 batches an epoch
    console = capfd.readouterr()
    text = console.out + console.err
    assert text.splitlines()[0] == f"run folder: {out} (a new run)"
    assert [n for n in NOISE if n in text] == []
    assert text.count("test/top1") == 1 and "no best checkpoint: no validation ran" in text
    assert "metrics of: the final weights (no best checkpoint)" in text


def test_greyscale_warning_names_the_callers_line_and_is_one_line_in_a_run(tmp_path, capsys):
    from PIL import Image

    from zoo.data import read_image

    path = tmp_path / "grey.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    with pytest.warns(UserWarning, match="grey.png is greyscale") as record:
        read_image(path)
    assert record[0].filename == __file__  # the line that read it, not zoo's code
    with quiet_console():
        warnings.simplefilter("always")
        read_image(path)
    assert capsys.readouterr().err == "warning: grey.png is greyscale; repeating it to RGB\n"
