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
from zoo.tasks import NonFiniteLossError, OptimizerConfig, SchedulerConfig
from zoo.tasks.optim import Lion, build_optimizer, lr_factor, param_groups

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from run_helpers import CONFIGS, assert_equal_nested, checkpoint_state, tiny_config  # noqa: E402

@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_fits_two_steps_and_exports(config, tmp_path):
    out = tmp_path / "run"
    result = train.run(train.parse_config(["--config", str(tiny_config(config, out))]))
    assert result["trainer"].global_step == 2
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "metrics.csv").is_file()
    assert any(k.startswith("test/") for k in result["results"])
    # the export loads through zoo.create and equals the trained weights
    cfg = yaml.safe_load(config.read_text())
    loaded = zoo.create(cfg["model"]["name"], pretrained=str(out / "export"))
    trained = result["task"].model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())


def test_bf16_mixup_compile_and_predict(tmp_path):
    """The options a config can switch on run together: bf16 autocast on CPU, mixup + cutmix,
    torch.compile (aot_eager keeps it fast here), and the predict step."""
    out = tmp_path / "run"
    cfg = tiny_config(ROOT / "configs" / "digits_seresnet.yaml", out, precision="bf16-mixed")
    args = '{"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "compile": "aot_eager"}'
    result = train.run(train.parse_config(["--config", str(cfg), "--task.args", args, "--run", "[fit, predict]"]))
    assert result["trainer"].global_step == 2 and result["task"]._compiled_forward is not None
    preds = load_file(str(out / "predictions.safetensors"))["predictions"]
    assert preds.shape == (16, 10)
    torch.testing.assert_close(preds.float().sum(-1), torch.ones(16), atol=1e-2, rtol=0)


def test_ema_differs_from_raw_weights_and_is_saved(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(ROOT / "configs" / "digits_seresnet.yaml", out, max_steps=4, max_epochs=2)
    result = train.run(train.parse_config(["--config", str(cfg), "--task.args", '{"ema_decay": 0.9}']))
    raw = load_file(str(out / "export" / "model.safetensors"))
    ema = load_file(str(out / "export" / "ema" / "model.safetensors"))
    assert raw.keys() == ema.keys()
    diff = max((raw[k] - ema[k]).abs().max().item() for k in raw if raw[k].is_floating_point())
    assert diff > 1e-4
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert int(ckpt["state_dict"]["ema.num_updates"]) == 4
    assert "test_ema/top1" in result["results"]


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
    train.run(train.parse_config(["--config", str(tiny_config(ROOT / "configs" / "digits_seresnet.yaml", straight,
                                                                 max_epochs=2, **common)), "--run", "[fit]"]))
    resumed = tmp_path / "resumed"
    first = tiny_config(ROOT / "configs" / "digits_seresnet.yaml", resumed, max_epochs=1, **common)
    train.run(train.parse_config(["--config", str(first), "--run", "[fit]"]))
    train.run(train.parse_config(["--config", str(first), "--run", "[fit]", "--trainer.max_epochs", "2",
                                  "--ckpt_path", "last"]))
    sd_a, opt_a = checkpoint_state(straight / "checkpoints" / "last.ckpt")
    sd_b, opt_b = checkpoint_state(resumed / "checkpoints" / "last.ckpt")
    assert_equal_nested(sd_a, sd_b, "state_dict")
    assert_equal_nested(opt_a, opt_b, "optimizer")
    assert int(sd_b["ema.num_updates"]) == 4  # 2 epochs x 2 batches (16 images, batch 8)


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny_config(ROOT / "configs" / "digits_seresnet.yaml", out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(cfg), "--trainer.strategy", "ddp",
                           "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--run", "[fit]"],
                          capture_output=True, text=True, env=env, timeout=280, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "MEMBER: 2/2" in log, log[-3000:]  # both ranks joined the gloo process group
    assert (out / "export" / "model.safetensors").is_file()


def test_unknown_config_keys_name_the_nearest(tmp_path, capsys):
    assert train.main(["--config", str(ROOT / "configs" / "digits_seresnet.yaml"), "--optimizer.lrr", "3"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lrr" in err and "optimizer.lr" in err
    bad = yaml.safe_load((ROOT / "configs" / "digits_seresnet.yaml").read_text())
    bad["optimiser"] = bad.pop("optimizer")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert train.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "optimiser" in err and "did you mean 'optimizer." in err
    assert train.main(["--config", str(ROOT / "configs" / "digits_seresnet.yaml"),
                       "--task.args", '{"label_smothing": 0.1}']) == 2
    assert "label_smoothing" in capsys.readouterr().err


def test_bad_model_data_and_run_names(tmp_path, capsys):
    base = ["--config", str(ROOT / "configs" / "digits_seresnet.yaml"), "--output_dir", str(tmp_path / "x")]
    assert train.main(base + ["--model.name", "seresnet5"]) == 2
    assert "seresnet50" in capsys.readouterr().err
    assert train.main(base + ["--data.name", "image_folder", "--data.args", '{"root": "/no/such/folder"}']) == 2
    assert "/no/such/folder" in capsys.readouterr().err
    assert train.main(base + ["--run", "[fit, tset]"]) == 2
    assert "tset" in capsys.readouterr().err
    assert train.main(base + ["--model.kwargs", '{"num_classes": 7, "in_chans": 1}']) == 2
    assert "10 classes" in capsys.readouterr().err


class _NanDigits(DigitsDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        self.splits["train"].tensors[0][:] = float("nan")


def test_nan_loss_stops_the_run_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DATAMODULES, "nan_digits", _NanDigits)
    out = tmp_path / "nan"
    cfg = tiny_config(ROOT / "configs" / "digits_seresnet.yaml", out)
    assert train.main(["--config", str(cfg), "--data.name", "nan_digits"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan" in err and "optimizer.lr" in err
    assert not list((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").exists() else True


def test_optimizers_and_schedules():
    model = zoo.create("resnet18", num_classes=3)
    decay, no_decay = param_groups(model, 0.05)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    for name in ("adamw", "adam", "sgd", "lion"):
        assert build_optimizer(model, OptimizerConfig(name=name)).param_groups[1]["weight_decay"] == 0.0
    cos = SchedulerConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, cos) == pytest.approx(0.1) and lr_factor(9, 110, cos) == pytest.approx(1.0)
    assert lr_factor(60, 110, cos) == pytest.approx(0.55) and lr_factor(110, 110, cos) == pytest.approx(0.1)
    step = SchedulerConfig(name="step", step_size=5, gamma=0.5)
    assert [lr_factor(s, 100, step) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    # Lion moves every weight by exactly lr in the direction opposite the gradient's sign
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    w.grad = torch.tensor([0.5, -0.1, 0.0])
    Lion([w], lr=0.1).step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.9, -1.9, 3.0]))


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
