"""timm both ways, with the real timm: a folder zoo saves loads in timm bit for bit and timm's own
export loads in zoo; the pretrained configs of the tags both have agree field for field."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import zoo

SHARED = ["resnet18", "seresnet18", "ecaresnet50d"]
PREPROCESSING = ("input_size", "test_input_size", "fixed_input_size", "interpolation", "crop_pct", "test_crop_pct",
                 "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv", "classifier")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("arch", SHARED)
def test_zoo_folder_loads_in_timm(arch, tmp_path):
    torch.manual_seed(0)
    ours = zoo.create(arch, num_classes=10).eval()
    folder = zoo.save_pretrained(ours, tmp_path / arch)
    config = json.loads((folder / "config.json").read_text())
    timm.models.PretrainedCfg(**config["pretrained_cfg"])  # timm's dataclass takes every key
    by_dir = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    by_file = timm.create_model(arch, pretrained=True, num_classes=10,
                                pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), num_classes=10)).eval()
    x = torch.rand(2, 3, 64, 64)
    for theirs in (by_dir, by_file):
        _same_weights(ours, theirs)
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    assert by_dir.pretrained_cfg["interpolation"] == ours.pretrained_cfg["interpolation"]


@pytest.mark.parametrize("arch", SHARED)
def test_timm_export_loads_in_zoo(arch, tmp_path):
    torch.manual_seed(1)
    theirs = timm.create_model(arch, num_classes=7).eval()
    timm.models.save_for_hf(theirs, str(tmp_path / arch))
    ours = zoo.create(arch, pretrained=str(tmp_path / arch)).eval()
    assert ours.num_classes == 7
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    back = zoo.save_pretrained(ours, tmp_path / "back")  # and round again into timm
    _same_weights(theirs, timm.create_model(f"local-dir:{back}", pretrained=True))


def test_pretrained_cfgs_of_shared_tags_equal_timms():
    shared = sorted(set(zoo.list_pretrained()) & set(timm.list_pretrained()))
    assert len(shared) >= 9
    for name in shared:
        ours = zoo.get_pretrained_cfg(name).to_dict()
        theirs = timm.models.get_pretrained_cfg(name).to_dict(remove_null=False)
        for key in PREPROCESSING:
            a, b = ours.get(key), theirs.get(key)
            a, b = (tuple(a) if isinstance(a, (list, tuple)) else a), (tuple(b) if isinstance(b, (list, tuple)) else b)
            assert a == b, f"{name}: {key} is {a!r} here and {b!r} in timm"


def test_list_models_takes_timms_arguments():
    assert zoo.list_models("*eca*") == sorted(n for n in zoo.list_models() if "eca" in n)
    both = zoo.list_models(["se*", "fca*"], exclude_filters=["*101*", "*152*"])
    assert "seresnet50" in both and "fcanet50" in both and not any("101" in n or "152" in n for n in both)
    assert zoo.list_models("seresnet*", pretrained=True) == ["seresnet50.a1_in1k"]
    assert zoo.list_models("seresnet*", pretrained=True, include_tags=False) == ["seresnet50"]
    assert zoo.list_models(module="rcan") == ["rcan", "rcan_tiny_x2", "rcan_x2", "rcan_x3", "rcan_x4", "rcan_x8"]
    assert "ecaresnet50d" in zoo.list_models(name_matches_cfg=True) and "seresnet18" not in zoo.list_models(
        name_matches_cfg=True)
    assert zoo.list_pretrained("fcanet*", exclude_filters="*34*") == [
        "fcanet101.release_in1k", "fcanet152.release_in1k", "fcanet50.release_in1k"]


def test_features_only_on_a_model_without_stages_says_so():
    with pytest.raises(ValueError, match="rcan_tiny_x2 has no feature stages.*forward_features"):
        zoo.create("rcan_tiny_x2", features_only=True)
    features = zoo.create("resnet18", features_only=True)
    assert features.default_cfg is features.pretrained_cfg and features.default_cfg["architecture"] == "resnet18"


def test_image_folder_transforms_are_timms_for_the_models_cfg(tmp_path):
    from timm.data import create_transform, resolve_data_config

    from zoo.data import ImageFolderDataModule

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
    data = ImageFolderDataModule(str(tmp_path), num_workers=0, auto_augment="rand-m9-mstd0.5", re_prob=0.25)
    cfg = zoo.get_pretrained_cfg("seresnet50.a1_in1k").to_dict()
    data.configure_for_model(cfg)
    theirs_cfg = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("seresnet50.a1_in1k").to_dict())
    assert data.data_config == theirs_cfg and theirs_cfg["interpolation"] == "bicubic" and theirs_cfg["crop_pct"] == 0.95
    ours = data.transforms()
    assert str(ours["eval"]) == str(create_transform(**theirs_cfg, is_training=False))
    assert str(ours["train"]) == str(create_transform(**theirs_cfg, is_training=True, auto_augment="rand-m9-mstd0.5",
                                                      re_prob=0.25, color_jitter=0.0))
    explicit = ImageFolderDataModule(str(tmp_path), num_workers=0, img_size=128, crop_pct=0.8, interpolation="bilinear")
    explicit.configure_for_model(cfg)  # what the config says wins over the model's cfg
    assert explicit.data_config["input_size"] == (3, 128, 128) and explicit.data_config["crop_pct"] == 0.8
    assert explicit.data_config["interpolation"] == "bilinear" and explicit.data_config["mean"] == cfg["mean"]
