"""The training loop: every config runs, resume is exact, DDP runs, EMA is kept, bad input is named."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import zoo
from zoo.data import DATAMODULES, DigitsDataModule
from zoo.tasks import NonFiniteLossError
from zoo.training import main, run

ROOT = Path(__file__).resolve().parents[1]
from run_helpers import CONFIGS, assert_equal_nested, checkpoint_state, tiny_config  # noqa: E402

DIGITS = ROOT / "configs" / "digits_seresnet.yaml"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_fits_two_steps_and_exports(config, tmp_path):
    """The subcommand-less form: fit, test the best checkpoint, export."""
    out = tmp_path / "run"
    cli = run(["--config", str(tiny_config(config, out))])
    assert cli.trainer.global_step == 2
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "metrics.csv").is_file()
    assert any(k.startswith("test/") for k in cli.results)
    # the export loads through zoo.create and equals the trained weights
    cfg = yaml.safe_load(config.read_text())
    loaded = zoo.create(cfg["model"]["name"], pretrained=str(out / "export"))
    trained = cli.model.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fit_subcommand_with_a_callback_by_class_path_and_the_resolved_config(tmp_path):
    """``fit -c X --trainer.callbacks+=EarlyStopping --trainer.callbacks.monitor=val/top1``: the callback runs
    beside the loop's own, config.yaml in the run folder holds every resolved key, and the warmup the
    scheduler section asks for is the lr of each step (timm's warmup from lr / warmup_steps)."""
    out = tmp_path / "run"
    cfg = tiny_config(DIGITS, out, max_steps=3, max_epochs=2)  # 2 batches an epoch
    cli = run(["fit", "-c", str(cfg), "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/top1",
               "--trainer.callbacks.mode=max", "--optimizer.lr", "0.004", "--scheduler.warmup_steps", "2",
               "--data.args.batch_size", "8"])
    assert cli.datamodule.batch_size == 8 and isinstance(cli.datamodule.batch_size, int)  # read as YAML
    stoppers = [c for c in cli.trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert len(stoppers) == 1 and stoppers[0].monitor == "val/top1" and stoppers[0].mode == "max"
    val_top1 = [float(r["val/top1"]) for r in _csv_rows(out / "metrics.csv") if r.get("val/top1")][-1]
    assert float(stoppers[0].best_score) == pytest.approx(val_top1)  # it watched the loop's metric
    assert cli.results == {}  # fit alone tests nothing
    # lr per step: warmup over 2 steps from 0.004 / 2, then the cosine's first value (the peak)
    lrs = [float(r["lr"]) for r in _csv_rows(out / "metrics.csv") if r.get("lr")]
    assert lrs == pytest.approx([0.002, 0.003, 0.004])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["trainer"]["callbacks"][0]["class_path"] == "lightning.pytorch.callbacks.EarlyStopping"
    assert saved["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/top1"
    assert saved["optimizer"]["init_args"]["lr"] == 0.004 and saved["scheduler"]["init_args"]["warmup_steps"] == 2
    assert saved["trainer"]["max_steps"] == 3 and saved["seed_everything"] == 0
    assert saved["model"]["name"] == "seresnet18" and saved["output_dir"] == str(out)
    assert not list(out.glob(".config.yaml.*.tmp"))  # written through atomic_write, nothing left over


def test_csv_and_tensorboard_loggers_by_class_path(tmp_path):
    """Loggers given by class_path log beside the run folder's metrics.csv, the same numbers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny_config(DIGITS, out)
    logger = ('[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "%s", "name": "csv"}}, '
              '{"class_path": "TensorBoardLogger", "init_args": {"save_dir": "%s", "name": "tb"}}]'
              % (tmp_path / "extra", tmp_path / "extra"))
    cli = run(["fit", "-c", str(cfg), "--trainer.logger", logger])
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["RunCSVLogger", "CSVLogger", "TensorBoardLogger"]
    ours = {r["step"]: float(r["train/loss_step"]) for r in _csv_rows(out / "metrics.csv") if r.get("train/loss_step")}
    theirs = {r["step"]: float(r["train/loss_step"]) for r in
              _csv_rows(tmp_path / "extra" / "csv" / "version_0" / "metrics.csv") if r.get("train/loss_step")}
    assert len(ours) == 2 and ours == theirs
    events = EventAccumulator(str(next((tmp_path / "extra" / "tb").glob("version_*"))))
    events.Reload()
    board = {str(e.step): e.value for e in events.Scalars("train/loss_step")}
    assert board.keys() == ours.keys() and all(board[k] == pytest.approx(v, rel=1e-6) for k, v in ours.items())
    assert not (out / "tensorboard").exists()  # a logger given replaces the default TensorBoard one


def test_console_script_and_module_command_show_the_subcommands():
    script = Path(sys.executable).parent / "zoo-train"
    for cmd in ([str(script), "--help"], [sys.executable, "-m", "zoo", "train", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")  # not the checkout
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "{fit,validate,test,predict}" in proc.stdout and "--config" in proc.stdout
    proc = subprocess.run([str(script), "fit", "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert "--optimizer" in proc.stdout and "--trainer.callbacks" in proc.stdout and "--ckpt_path" in proc.stdout


def test_bf16_mixup_compile_and_predict(tmp_path):
    """The options a config can switch on run together: bf16 autocast on CPU, mixup + cutmix,
    torch.compile (aot_eager keeps it fast here), and the predict step."""
    out = tmp_path / "run"
    cfg = tiny_config(DIGITS, out, precision="bf16-mixed")
    args = '{"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "compile": "aot_eager"}'
    cli = run(["fit", "--config", str(cfg), "--task.args", args])
    assert cli.trainer.global_step == 2 and cli.model._compiled_forward is not None
    run(["predict", "--config", str(cfg), "--task.args", args, "--ckpt_path", "last"])
    preds = load_file(str(out / "predictions.safetensors"))["predictions"]
    assert preds.shape == (16, 10)
    torch.testing.assert_close(preds.float().sum(-1), torch.ones(16), atol=1e-2, rtol=0)


def test_ema_differs_from_raw_weights_and_is_saved(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(DIGITS, out, max_steps=4, max_epochs=2)
    cli = run(["--config", str(cfg), "--task.args", '{"ema_decay": 0.9}'])
    raw = load_file(str(out / "export" / "model.safetensors"))
    ema = load_file(str(out / "export" / "ema" / "model.safetensors"))
    assert raw.keys() == ema.keys()
    diff = max((raw[k] - ema[k]).abs().max().item() for k in raw if raw[k].is_floating_point())
    assert diff > 1e-4
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert int(ckpt["state_dict"]["ema.num_updates"]) == 4
    assert "test_ema/top1" in cli.results


def _conv_bn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(6, 2))


def _train_step(model: torch.nn.Module) -> None:
    """New weights and new BatchNorm statistics (and its integer step count)."""
    model(torch.randn(2, 3, 8, 8, dtype=next(model.parameters()).dtype))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)


def test_model_ema_equals_timm_model_ema_v3():
    """Without warmup the average is timm's, bit for bit: parameters and float buffers lerped, the rest copied."""
    from timm.utils import ModelEmaV3

    from zoo.tasks import ModelEma

    model = _conv_bn().train()
    ours, timm_ema = ModelEma(model, 0.9, warmup=False), ModelEmaV3(model, decay=0.9)
    for _ in range(3):
        _train_step(model)
        ours.update(model)
        timm_ema.update(model)
    assert_equal_nested(ours.module.state_dict(), timm_ema.module.state_dict())
    assert int(ours.num_updates) == 3


def test_model_ema_follows_the_task_through_a_cast():
    """Casting the task puts new buffers in both models; the update then averages those, not the old ones."""
    from zoo.tasks import ModelEma

    task = torch.nn.Module()
    task.model = _conv_bn().train()
    task.ema = ModelEma(task.model, 0.5, warmup=False)
    task.ema.update(task.model)
    task.double()
    before = task.ema.module[1].running_mean.clone()
    _train_step(task.model)
    task.ema.update(task.model)
    expected = before.lerp(task.model[1].running_mean, 0.5)
    assert task.ema.module[1].running_mean.dtype == torch.float64
    torch.testing.assert_close(task.ema.module[1].running_mean, expected, rtol=0, atol=0)


def test_resume_is_exact(tmp_path):
    """2 epochs straight == 1 epoch, stop, resume to 2: same weights, EMA and optimizer state."""
    common = {"max_steps": -1, "limit_train_batches": 3}
    straight = tmp_path / "straight"
    run(["fit", "--config", str(tiny_config(DIGITS, straight, max_epochs=2, **common))])
    resumed = tmp_path / "resumed"
    first = tiny_config(DIGITS, resumed, max_epochs=1, **common)
    run(["fit", "--config", str(first)])
    run(["fit", "--config", str(first), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    sd_a, opt_a = checkpoint_state(straight / "checkpoints" / "last.ckpt")
    sd_b, opt_b = checkpoint_state(resumed / "checkpoints" / "last.ckpt")
    assert_equal_nested(sd_a, sd_b, "state_dict")
    assert_equal_nested(opt_a, opt_b, "optimizer")
    assert int(sd_b["ema.num_updates"]) == 4  # 2 epochs x 2 batches (16 images, batch 8)


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny_config(DIGITS, out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(cfg), "--trainer.strategy",
                           "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
                          capture_output=True, text=True, env=env, timeout=280, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "MEMBER: 2/2" in log, log[-3000:]  # both ranks joined the gloo process group
    assert (out / "export" / "model.safetensors").is_file()


def _one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, expect", [
    (["--optimizer.lrr", "3"], "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    (["fit", "--trainer.max_epoch", "3"], "unknown config key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'?"),
    (["--optimizer", "torch.optim.SGD", "--optimizer.momentun", "0.9"],
     "unknown config key 'optimizer.momentun'; did you mean 'optimizer.momentum'?"),
    (["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitr=val/top1"],
     "unknown config key 'trainer.callbacks.monitr'; did you mean 'trainer.callbacks.monitor'?"),
    (["--trainer.callbacks+=EarlyStoping"], "trainer.callbacks: no class 'EarlyStoping'; did you mean 'EarlyStopping'?"),
    (["--trainer.logger", "CSVLogger"], "trainer.logger: CSVLogger needs save_dir; give --trainer.logger.save_dir VALUE"),
    (["--optimizer.name", "lino"], "optimizer.name 'lino' is not one of timm's optimizers; did you mean 'lion'?"),
    (["--scheduler.name", "cosin"], "did you mean 'cosine'?"),
    (["--run", "[test]"], "unknown config key 'run': give the step as a subcommand"),
    (["--task.args", '{"label_smothing": 0.1}'], "'label_smothing' (did you mean 'label_smoothing'?)"),
    (["--data.args.bach_size", "3"], "'bach_size' (did you mean 'batch_size'?)"),
])
def test_misspelt_keys_name_the_nearest_before_any_work(argv, expect, tmp_path, capsys):
    out = tmp_path / "run"
    subcommand = argv[:1] if argv[0] == "fit" else []
    assert main(subcommand + ["--config", str(DIGITS), "--output_dir", str(out)] + argv[len(subcommand):]) == 2
    assert expect in _one_sentence(capsys)
    assert not (out / "checkpoints").exists() and not (out / "metrics.csv").exists()  # no work was done


def test_renamed_and_misspelt_sections_in_a_config_file(tmp_path, capsys):
    bad = yaml.safe_load(DIGITS.read_text())
    bad["optimiser"] = bad.pop("optimizer")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["--config", str(path)]) == 2
    assert "unknown config key 'optimiser.lr'; did you mean 'optimizer.lr'?" in _one_sentence(capsys)
    old = yaml.safe_load(DIGITS.read_text())
    old["seed"] = old.pop("seed_everything")  # the key before Lightning's CLI
    path.write_text(yaml.safe_dump(old))
    assert main(["--config", str(path)]) == 2
    assert "'seed': the key is seed_everything" in _one_sentence(capsys)


def test_bad_model_and_data_names(tmp_path, capsys):
    base = ["--config", str(DIGITS), "--output_dir", str(tmp_path / "x")]
    assert main(base + ["--model.name", "seresnet5"]) == 2
    assert "seresnet50" in capsys.readouterr().err
    assert main(base + ["--data.name", "image_folder", "--data.args", '{"root": "/no/such/folder"}']) == 2
    assert "/no/such/folder" in capsys.readouterr().err
    assert main(base + ["--model.kwargs", '{"num_classes": 7, "in_chans": 1}']) == 2
    assert "10 classes" in capsys.readouterr().err


class _NanDigits(DigitsDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        self.splits["train"].tensors[0][:] = float("nan")


def test_nan_loss_stops_the_run_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DATAMODULES, "nan_digits", _NanDigits)
    out = tmp_path / "nan"
    cfg = tiny_config(DIGITS, out)
    assert main(["--config", str(cfg), "--data.name", "nan_digits"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan" in err and "optimizer.lr" in err
    assert not list((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").exists() else True


def test_nonfinite_guard_message():
    from zoo.tasks import ClassificationTask

    task = ClassificationTask(zoo.create("resnet18", num_classes=3))
    with pytest.raises(NonFiniteLossError, match="loss is inf"):
        task.check_loss(torch.tensor(float("inf")))


def test_digits_split_is_fixed_and_disjoint():
    a, b = DigitsDataModule(), DigitsDataModule()
    a.setup(), b.setup()
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] == sizes["test"] and 260 <= sizes["test"] <= 280
    for split in a.splits:
        assert torch.equal(a.splits[split].tensors[0], b.splits[split].tensors[0])
    seen = [set(a.indices[s].tolist()) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 1797
