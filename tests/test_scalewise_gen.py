"""VAR through the training loop: the VQVAE task, then the scale-wise generation task on its export."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from zoo.data import DigitsDataModule
from zoo.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from zoo.training import main, run  # noqa: E402

FAST = {"max_steps": 2, "max_epochs": 1, "limit_val_batches": 1, "limit_test_batches": 1, "num_sanity_val_steps": 0,
        "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1}
# 16 px digits, a 4x4 token grid (downsample 4) at scales 1, 2, 4: the configs' shapes, shrunk
TINY_VQVAE = {"vocab_size": 32, "z_channels": 8, "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
              "patch_nums": [1, 2, 4], "test_mode": False}
TINY_DATA = {"img_size": 16, "limit": 16, "batch_size": 8}


def _config(name: str, out: Path, model_kwargs: dict, task_args: dict | None = None) -> Path:
    """A config of the repository shrunk to two steps of tiny data and models."""
    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    cfg["model"]["kwargs"].update(model_kwargs)
    cfg["task"]["args"].update(task_args or {})
    cfg["data"]["args"].update(TINY_DATA)
    cfg["trainer"] = {**cfg["trainer"], **FAST}
    cfg["output_dir"] = str(out)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "run"
    return run(["--config", str(_config("vqvae_digits.yaml", out, TINY_VQVAE))]), out


def test_vqvae_task_fits_logs_psnr_writes_grid_and_exports(vqvae_run):
    result, out = vqvae_run
    assert result.trainer.global_step == 2
    psnr = result.results["test/psnr"]
    assert 0 < psnr < 40  # dB of a two-step tokenizer: finite, positive, far from perfect
    assert (out / "samples" / "recon_epoch000.png").stat().st_size > 100
    loaded = zoo.create("vqvae", pretrained=str(out / "export"))
    trained = result.model.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())


def test_scalewise_task_fits_logs_per_scale_accuracy_samples_and_exports(vqvae_run, tmp_path):
    _, vq_out = vqvae_run
    out = tmp_path / "var"
    tiny_var = {"vae": str(vq_out / "export"), "depth": 2, "embed_dim": 32, "num_heads": 2}
    cfg = _config("var_digits.yaml", out, tiny_var, {"sample_per_class": 2, "sample_classes": 3})
    result = run(["--config", str(cfg)])
    assert result.trainer.global_step == 2
    import csv

    with open(out / "metrics.csv", newline="") as fh:
        val_rows = [r for r in csv.DictReader(fh) if r.get("val/acc_1x1")]
    assert len(val_rows) == 1
    for pn in (1, 2, 4):  # one accuracy and loss per scale
        assert 0 <= float(val_rows[0][f"val/acc_{pn}x{pn}"]) <= 1
        assert 0 <= result.results[f"test/acc_{pn}x{pn}"] <= 1
        assert result.results[f"test/loss_{pn}x{pn}"] > 0
    assert result.results["test/acc_tail"] == result.results["test/acc_4x4"]
    from PIL import Image

    grid = Image.open(out / "samples" / "epoch000.png")
    assert grid.size[1] > 3 * 16 and grid.size[0] > 2 * 16 and grid.size[1] < 4 * 16 + 10  # 3 rows of 2
    # the export records the tokenizer's path and also carries a copy of it: both load alone
    trained = result.model.model.state_dict()
    for vae in (None, str(out / "export" / "vae")):
        kwargs = {} if vae is None else {"vae": zoo.create("vqvae", pretrained=vae, test_mode=True)}
        loaded = zoo.create("var", pretrained=str(out / "export"), **kwargs)
        assert loaded.patch_nums == (1, 2, 4)
        assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    from zoo.generation import load_for_sampling, sample_grid

    net = load_for_sampling("var", str(out / "export"), str(out / "export" / "vae"))
    png = sample_grid(net, tmp_path / "two.png", class_id=2, n=4, cfg=1.5, top_k=0, top_p=0.0, seed=1)
    assert png.stat().st_size > 100


def test_scalewise_loss_is_the_release_token_mean(vqvae_run):
    """Each token weighs 1/L (the release's loss_weight), so the loss is the per-scale losses
    weighted by their token counts; per-scale accuracies come from the same logits."""
    _, vq_out = vqvae_run
    torch.manual_seed(0)
    net = zoo.create("var", vae=str(vq_out / "export"), num_classes=10, depth=1, embed_dim=32, num_heads=2,
                     cond_drop_rate=0.0)
    task = TASKS["scalewise_gen"](net)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 4, 9])
    loss = task.training_step((images, labels), 0)
    gt, x = net.teacher_forcing_batch(images)
    losses, accs = net.loss_per_scale(net(labels, x), gt)
    counts = torch.tensor([1.0, 4.0, 16.0])
    torch.testing.assert_close(loss.detach(), (losses * counts).sum() / counts.sum())
    assert loss.requires_grad and accs.shape == (3,)


def test_bad_input_is_named(vqvae_run, tmp_path, capsys):
    _, vq_out = vqvae_run
    missing = tmp_path / "no_tokenizer_here"
    cfg = _config("var_digits.yaml", tmp_path / "bad", {"vae": str(missing)})
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "configs/vqvae_digits.yaml" in err
    frozen = _config("vqvae_digits.yaml", tmp_path / "frozen", {**TINY_VQVAE, "test_mode": True})
    assert main(["--config", str(frozen)]) == 2
    assert "test_mode: false" in capsys.readouterr().err
    with pytest.raises(TypeError, match="trains a VAR"):
        TASKS["scalewise_gen"](zoo.create("vqvae", pretrained=str(vq_out / "export")))
    with pytest.raises(ValueError, match="normalize"):
        DigitsDataModule(normalize="0-1")


def test_digits_symmetric_range_and_standard_default():
    sym = DigitsDataModule(img_size=16, normalize="symmetric")
    sym.setup()
    images = sym.splits["train"].tensors[0]
    assert images.min().item() == -1.0 and 0.9 < images.max().item() <= 1.0
    assert sym.background == -1.0
    std = DigitsDataModule(img_size=16)
    std.setup()
    train_images = std.splits["train"].tensors[0]
    assert abs(train_images.mean().item()) < 1e-4 and abs(train_images.std().item() - 1) < 1e-3
    assert std.mean > 0 and std.std > 0


@pytest.mark.parametrize("name", ["vqvae_imagenet256", "var_d16_imagenet256"])
def test_imagenet_configs_parse_and_name_a_missing_data_root(name, tmp_path, capsys):
    config = str(ROOT / "configs" / "imagenet" / f"{name}.yaml")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", config, "--print_config"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["args"]["img_size"] == 256
    assert printed["model"]["kwargs"]["patch_nums"] == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    missing = tmp_path / "imagenet"
    assert main(["fit", "--config", config, "--data.args.root", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err  # the data module fails before any model is built
