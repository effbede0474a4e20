"""timm both ways, with the real timm: a folder zoo saves loads in timm bit for bit and timm's own
export loads in zoo; the pretrained configs of the tags both have agree field for field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import zoo
from weights_helpers import assert_same_model

SHARED = ["resnet18", "seresnet18", "ecaresnet50d"]
PREPROCESSING = ("input_size", "test_input_size", "fixed_input_size", "interpolation", "crop_pct", "test_crop_pct",
                 "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv", "classifier")


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
        assert_same_model(ours, theirs)
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
    assert_same_model(theirs, timm.create_model(f"local-dir:{back}", pretrained=True))


def test_pretrained_cfgs_of_shared_tags_equal_timms():
    bridged = set(timm.list_models(module="timm_bridge"))  # zoo's own, registered with timm by zoo
    shared = sorted(n for n in set(zoo.list_pretrained()) & set(timm.list_pretrained()) if n.split(".")[0] not in bridged)
    assert len(shared) >= 9
    for name in shared:
        ours = zoo.get_pretrained_cfg(name).to_dict()
        theirs = timm.models.get_pretrained_cfg(name).to_dict(remove_null=False)
        for key in PREPROCESSING:
            a, b = ours.get(key), theirs.get(key)
            a, b = (tuple(a) if isinstance(a, (list, tuple)) else a), (tuple(b) if isinstance(b, (list, tuple)) else b)
            assert a == b, f"{name}: {key} is {a!r} here and {b!r} in timm"


def test_list_models_takes_timms_arguments(monkeypatch):
    assert zoo.list_models("*eca*") == sorted(n for n in zoo.list_models() if "eca" in n)
    both = zoo.list_models(["se*", "fca*"], exclude_filters=["*101*", "*152*"])
    assert "seresnet50" in both and "fcanet50" in both and not any("101" in n or "152" in n for n in both)
    assert zoo.list_models("seresnet*", pretrained=True) == ["seresnet50.a1_in1k"]
    assert zoo.list_models("seresnet*", pretrained=True, include_tags=False) == ["seresnet50"]
    assert zoo.list_models(module="rcan") == ["rcan", "rcan_tiny_x2", "rcan_x2", "rcan_x3", "rcan_x4", "rcan_x8"]
    monkeypatch.setitem(zoo.registry._ENTRYPOINTS, "cfgless_net", zoo.registry._ENTRYPOINTS["resnet18"])
    monkeypatch.setitem(zoo.registry._FAMILY, "cfgless_net", "resnet")  # an architecture without a config
    assert "ecaresnet50d" in zoo.list_models(name_matches_cfg=True) and "cfgless_net" not in zoo.list_models(
        name_matches_cfg=True) and "cfgless_net" in zoo.list_models()
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


@pytest.mark.parametrize("arch", ["seresnet50", "fcanet50", "ecaresnet50d"])
def test_torchvision_feature_extractor_takes_zoo_backbones(arch):
    """FX symbolic tracing passes the models' input checks and fusion choices (the traced graph runs the
    modules); FcaNet's size-dependent DCT pooling is one wrapped node."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = zoo.create(arch).eval()
    extractor = create_feature_extractor(model, return_nodes={"layer2": "stride8", "layer4": "stride32"})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = extractor(x)
        want = model.forward_features(x)
    assert out["stride8"].shape == (1, 512, 8, 8)
    torch.testing.assert_close(out["stride32"], want, atol=1e-5, rtol=1e-5)


def test_forward_intermediates_matches_timms():
    torch.manual_seed(0)
    ours = zoo.create("seresnet18", num_classes=5).eval()
    theirs = timm.create_model("seresnet18", num_classes=5).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for kwargs in ({}, {"indices": 2}, {"indices": [0, -2]}, {"indices": [1], "stop_early": True}):
            final, taps = ours.forward_intermediates(x, **kwargs)
            want_final, want_taps = theirs.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, want_final, atol=1e-5, rtol=1e-5)
            assert len(taps) == len(want_taps)
            for a, b in zip(taps, want_taps):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        only = ours.forward_intermediates(x, indices=3, intermediates_only=True)
        assert [t.shape[1] for t in only] == [128, 256, 512]
    with pytest.raises(ValueError, match="NCHW"):
        ours.forward_intermediates(x, output_fmt="NHWC")


def _pairs(taps):
    """Taps and, where ``return_prefix_tokens`` paired them, their prefix tokens, as one flat list."""
    return [t for tap in taps for t in (tap if isinstance(tap, tuple) else (tap,))]


def test_vit_forward_intermediates_and_pruning_match_timms():
    torch.manual_seed(0)
    ours = zoo.create("vit_tiny_p8", img_size=32, depth=3, num_classes=4).eval()
    theirs = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=4).eval()
    theirs.load_state_dict(ours.state_dict())  # the same keys
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for kwargs in ({}, {"indices": 2, "norm": True}, {"indices": [0, -1], "return_prefix_tokens": True},
                       {"indices": [1], "stop_early": True, "output_fmt": "NLC"}):
            final, taps = ours.forward_intermediates(x, **kwargs)
            want_final, want_taps = theirs.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, want_final)
            assert len(_pairs(taps)) == len(_pairs(want_taps))
            for a, b in zip(_pairs(taps), _pairs(want_taps)):
                torch.testing.assert_close(a, b)
        assert ours.forward_intermediates(x, intermediates_only=True)[0].shape == (2, 192, 4, 4)  # the patch grid
        assert ours.prune_intermediate_layers([0, 1]) == theirs.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(ours.blocks) == 2 and isinstance(ours.head, torch.nn.Identity)
        for a, b in zip(ours.forward_intermediates(x, intermediates_only=True),
                        theirs.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="'NCHW' or 'NLC'"):
        ours.forward_intermediates(x, output_fmt="NHWC")


def test_resnet_pruning_matches_timms():
    torch.manual_seed(0)
    ours = zoo.create("resnet18", num_classes=5).eval()
    theirs = timm.create_model("resnet18", num_classes=5).eval()
    theirs.load_state_dict(ours.state_dict())
    assert ours.prune_intermediate_layers([1, 2]) == theirs.prune_intermediate_layers([1, 2]) == [1, 2]
    assert isinstance(ours.layer3, torch.nn.Identity) and isinstance(ours.fc, torch.nn.Identity)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours.forward_intermediates(x, [1, 2], intermediates_only=True),
                        theirs.forward_intermediates(x, [1, 2], intermediates_only=True)):
            torch.testing.assert_close(a, b)


def test_channelvit_intermediates_put_each_channels_features_side_by_side():
    model = zoo.create("channelvit_tiny", img_size=32, patch_size=8, in_chans=3, depth=2).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        final, (maps,) = model.forward_intermediates(x, indices=1, norm=True)
        (tokens,) = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
        (subset,) = model.forward_intermediates(x[:, :2], indices=1, intermediates_only=True,
                                                channel_ids=torch.tensor([[0, 2]]))
    assert maps.shape == (1, 3 * 192, 4, 4) and tokens.shape == (1, 3 * 16, 192)
    assert model.feature_info.channels()[-1] == 3 * 192
    # channel 1's 16 patch tokens are the map's second block of 192 features, on the 4 x 4 patch grid
    torch.testing.assert_close(maps[:, 192:384], tokens[:, 16:32].transpose(1, 2).reshape(1, 192, 4, 4))
    torch.testing.assert_close(final[:, 1:], tokens)  # the last block's normed patch tokens
    assert subset.shape == (1, 2 * 192, 4, 4)


def test_timm_builds_the_families_it_lacks_through_zoo():
    assert {"fcanet50", "eca_resnet50", "rcan_x2", "channelvit_small"} <= set(timm.list_models())
    assert "resnet50" in timm.list_models() and timm.create_model("resnet50").__module__.startswith("timm.")
    model = timm.create_model("fcanet50", num_classes=3)
    assert isinstance(model, zoo.models.resnet.ResNet) and model.num_classes == 3
    assert "fcanet50.release_in1k" in timm.list_pretrained("fcanet*")
    sr = timm.create_model("rcan_tiny_x2.quickstart", pretrained=True)  # the weights that ship with zoo
    torch.testing.assert_close(sr.state_dict()["head.0.weight"],
                               zoo.create("rcan_tiny_x2", pretrained=True).state_dict()["head.0.weight"])


def test_timm_reads_a_saved_folder_of_a_family_it_lacks(tmp_path):
    """timm merges the folder's model_args into the call and names the folder in pretrained_cfg: the bridge
    loads that folder's weights, not the architecture's release file."""
    ours = zoo.create("eca_resnet18", num_classes=4, in_chans=1)
    folder = zoo.save_pretrained(ours, tmp_path / "eca")
    assert_same_model(timm.create_model(f"local-dir:{folder}", pretrained=True), ours, in_chans=1)
    assert timm.create_model(f"local-dir:{folder}").fc.out_features == 4  # the saved arguments, random weights


def test_pretrained_cfg_as_a_tag_a_dict_or_timms_object():
    want = zoo.get_pretrained_cfg("seresnet50.a1_in1k")
    for given in ("a1_in1k", want.to_dict(), timm.models.get_pretrained_cfg("seresnet50.a1_in1k")):
        model = zoo.create("seresnet50", pretrained_cfg=given, num_classes=2)
        cfg = model.pretrained_cfg
        assert (cfg["crop_pct"], cfg["test_input_size"], cfg["interpolation"]) == (0.95, (3, 288, 288), "bicubic")


def test_model_card_parses_with_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    model = zoo.create("seresnet50.a1_in1k", num_classes=10)
    folder = zoo.save_pretrained(model, tmp_path / "m", metrics={"top1": 0.8123}, dataset="imagenet-1k")
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "zoo" and data["pipeline_tag"] == "image-classification"
    assert data["license"] == "apache-2.0" and {"zoo", "resnet", "timm"} <= set(data["tags"])
    result = data["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == pytest.approx(0.8123) and result["dataset"]["name"] == "imagenet-1k"
    assert "seresnet50" in card.text and 'zoo.create("seresnet50"' in card.text
    sr = zoo.save_pretrained(zoo.create("rcan_tiny_x2"), tmp_path / "sr")
    assert ModelCard.load(sr / "README.md").data.to_dict()["pipeline_tag"] == "image-to-image"


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    """No hub can run here: the real HfApi is used up to the network, and its upload call is checked to
    receive the folder save_pretrained wrote (config.json, weights, model card)."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    seen = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        seen["repo"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
        seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        seen["config"] = json.loads((Path(folder_path) / "config.json").read_text())
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = zoo.push_to_hub(zoo.create("resnet18", num_classes=4), "me/resnet18-digits", private=True)
    assert url == "https://huggingface.co/me/resnet18-digits/commit/abc"
    assert seen["repo"] == ("me/resnet18-digits", True, True)
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"] and seen["config"]["num_classes"] == 4


def test_push_to_hub_offline_says_what_to_do_instead():
    """The suite runs with ZOO_OFFLINE=1 (conftest): nothing is contacted, the message gives the way round."""
    with pytest.raises(RuntimeError, match=r"offline .*save_pretrained the model here and upload the folder"):
        zoo.push_to_hub(zoo.create("resnet18", num_classes=2), "me/x")


def test_features_only_getter_for_vits_and_on_request():
    vit = zoo.create("vit_tiny_p8", img_size=32, depth=4, features_only=True, out_indices=(1, 3))
    assert isinstance(vit, zoo.features.FeatureGetterNet)  # a ViT's default: taps from forward_intermediates
    assert vit.feature_info.channels() == [192, 192] and vit.feature_info.reduction() == [8, 8]
    assert len(vit.model.blocks) == 4 and isinstance(vit.model.head, torch.nn.Identity)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert [tuple(t.shape) for t in vit(x)] == [(1, 192, 4, 4)] * 2
    resnet = zoo.create("resnet18", features_only=True, out_indices=(1, 2))
    getter = zoo.create("resnet18", features_only=True, out_indices=(1, 2), feature_cls="getter")
    getter.model.load_state_dict(resnet.state_dict(), strict=False)
    with torch.no_grad():
        for a, b in zip(resnet.eval()(torch.rand(1, 3, 64, 64).expand(2, -1, -1, -1)),
                        getter.eval()(torch.rand(1, 3, 64, 64).expand(2, -1, -1, -1))):
            assert a.shape == b.shape
    with pytest.raises(ValueError, match="feature_cls must be one of 'list', 'getter'"):
        zoo.create("resnet18", features_only=True, feature_cls="hook")


def test_resnet_takes_timms_pools_and_sizes_its_head():
    model = zoo.create("resnet18", num_classes=3, global_pool="catavgmax").eval()
    assert model.head_hidden_size == 1024 and model.fc.in_features == 1024
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, torch.cat([feats.mean((2, 3)), feats.amax((2, 3))], 1))
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(x).shape == (2, 512, 2, 2)  # no pooling: the map
    assert not model.training and not model.fc.training  # a new head takes the model's mode
    with pytest.raises(ValueError, match="global_pool must be one of 'avg', 'max', 'avgmax', 'catavgmax', ''"):
        zoo.create("resnet18", global_pool="gem")


def test_vits_trace_with_timms_fx_helpers():
    """timm's FX feature extraction calls the shape-dependent steps (channel ids, HCS, the position table)
    as they are, so the ViTs trace, in eval and in training (HCS then still samples at run time)."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    x = torch.rand(2, 3, 32, 32)
    for name in ("vit_tiny", "channelvit_tiny"):
        model = zoo.create(name, img_size=32, patch_size=8, depth=2, num_classes=4).eval()
        traced = create_feature_extractor(model, return_nodes={"blocks.1": "tokens", "head": "logits"},
                                          tracer_kwargs=tracer)
        with torch.no_grad():
            out = traced(x)
            torch.testing.assert_close(out["logits"], model(x))
        assert out["tokens"].shape[1] == 1 + (3 if name.startswith("channel") else 1) * 16
