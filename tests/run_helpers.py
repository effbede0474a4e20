"""Shared by the training-loop tests: the configs shrunk to a few batches of tiny data, and
checkpoint comparison."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
import yaml

import zoo
from zoo.data import DATAMODULES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
FAST_TRAINER = {"max_steps": 2, "max_epochs": 1, "limit_val_batches": 1, "limit_test_batches": 1,
                "num_sanity_val_steps": 0, "enable_progress_bar": False, "log_every_n_steps": 1}


def _tiny_image_folder(root: Path, count: int = 2, size: int = 48) -> str:
    """A folder of small RGB PNGs cut from a bundled photograph, standing in for a user's data."""
    from zoo.data import write_image
    from zoo.data.super_resolution import sample_image

    photo = sample_image("astronaut")
    for i in range(count):
        write_image(photo[:, 100 + 40 * i:100 + 40 * i + size, 150:150 + size], root / f"img{i}.png")
    return str(root)


def _stand_in_tokenizer(path: str, out: Path) -> str:
    """A randomly initialised tokenizer with the architecture of the config that trains ``path``
    (``runs/vqvae_digits/export`` -> configs/vqvae_digits.yaml), saved where the generator can load it."""
    config = ROOT / "configs" / f"{Path(path).parent.name}.yaml"
    assert config.is_file(), f"no config trains the tokenizer {path}"
    model = yaml.safe_load(config.read_text())["model"]
    zoo.save_pretrained(zoo.create(model["name"], **model["kwargs"]), out)
    return str(out)


def tiny_config(path: Path, out: Path, **trainer) -> Path:
    """``path`` shrunk to a few batches of tiny data, written beside the run. Folders a config points
    at (a user's data) are replaced by small ones made here."""
    cfg = yaml.safe_load(path.read_text())
    data_cls = DATAMODULES[cfg.get("data", {}).get("name", "digits")]
    accepted = inspect.signature(data_cls.__init__).parameters
    args = cfg.setdefault("data", {}).setdefault("args", {})
    for key in [k for k in args if k.endswith("_dir") and args[k]]:
        args[key] = _tiny_image_folder(out.parent / f"data_{key}")
    if "limit" in accepted:
        args["limit"] = 16
    if "batch_size" in accepted:
        args["batch_size"] = 8 if "limit" in accepted else 2
    if "patch_size" in accepted:  # super-resolution: small crops, few of them, small validation images
        args.update(patch_size=8, repeat=4, val_crop=32, num_workers=0)
    if "train_images" in accepted:
        args.update(train_images=["chelsea"], val_images=["coffee"], test_images=["colorwheel"])
    kwargs = cfg.get("model", {}).get("kwargs", {})
    if isinstance(kwargs.get("vae"), str):  # a generator on a tokenizer trained by another config: a random one
        kwargs["vae"] = _stand_in_tokenizer(kwargs["vae"], out.parent / "vae")
    cfg["trainer"] = {**cfg.get("trainer", {}), **FAST_TRAINER, **trainer}
    cfg["output_dir"] = str(out)
    tiny = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tiny.write_text(yaml.safe_dump(cfg))
    return tiny


def checkpoint_state(path: Path) -> tuple[dict, list]:
    ckpt = torch.load(path, weights_only=True)
    return ckpt["state_dict"], ckpt["optimizer_states"]


def assert_equal_nested(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


