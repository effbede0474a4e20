"""The model contract, checked on every registered architecture at a small input size."""
from __future__ import annotations

import pytest
import torch

import zoo

# Families with their own contract, checked in their own files: VAR and its tokenizer are generators
# (labels + token maps in, logits / images out; tests/test_var.py, tests/test_vqvae.py), the language
# models take token ids (B, T) and return (B, T, vocab) logits (tests/test_moc_lm.py).
OWN_CONTRACT = ("var", "vqvae", "moc_lm")
MODELS = [m for m in zoo.list_models() if zoo.registry.model_family(m) not in OWN_CONTRACT]
# vision transformers: token features (B, 1 + T, D) and no feature pyramid; their contract is test_token_model_contract
TOKEN_MODELS = [m for m in MODELS if zoo.registry.model_family(m) == "channelvit"]
CLASSIFIERS = [m for m in MODELS if zoo.get_pretrained_cfg(m).num_classes > 0 and m not in TOKEN_MODELS]
SR_MODELS = [m for m in MODELS if m not in CLASSIFIERS and m not in TOKEN_MODELS]
IMG = 64  # smallest size that keeps a 2x2 map at stride 32


def test_registry_lists_the_families():
    for family in ("resnet", "seresnet", "eca_resnet", "fcanet"):
        assert {f"{family}{d}" for d in ((18, 34, 50, 101, 152) if family != "fcanet" else (34, 50, 101, 152))} <= set(MODELS)
    assert {"ecaresnet50d", "ecaresnet101d"} <= set(MODELS)
    assert zoo.list_models("*eca*") == sorted(m for m in MODELS if "eca" in m)
    assert "seresnet50.a1_in1k" in zoo.list_models("seresnet*", pretrained=True)
    assert all("." in name for name in zoo.list_pretrained())
    assert "fcanet50.release_in1k" in zoo.list_pretrained("fcanet*")


def _check_cfg_forward_and_gradients(model: torch.nn.Module, name: str, x: torch.Tensor) -> None:
    """The pretrained cfg names the model's layers; 7 logits; every parameter gets a gradient."""
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "num_classes", "license", "paper", "origin_url"):
        assert key in cfg
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def _check_head(model: torch.nn.Module, feats: torch.Tensor, x: torch.Tensor) -> None:
    """forward_head (pre-logits and logits) and reset_classifier, on an eval model under no_grad."""
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_model_contract(name):
    model = zoo.create(name, num_classes=7, zero_init_last=False)
    x = torch.randn(2, 3, IMG, IMG)
    _check_cfg_forward_and_gradients(model, name, x)

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, IMG // 32, IMG // 32)
        _check_head(model, feats, x)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_features_and_save_round_trip(name, tmp_path):
    features = zoo.create(name, features_only=True, out_indices=(0, 2, 4)).eval()
    info = features.feature_info
    assert len(info) == 3 and info.reduction() == [2, 8, 32]
    with torch.no_grad():
        maps = features(torch.randn(1, 3, IMG, IMG))
    assert [m.shape[1] for m in maps] == info.channels()
    assert [IMG // m.shape[-1] for m in maps] == info.reduction()
    assert not any(k.startswith("fc.") for k in features.state_dict())

    model = zoo.create(name, num_classes=3, drop_path_rate=0.1).eval()
    zoo.save_pretrained(model, tmp_path / name)
    loaded = zoo.create(name, pretrained=str(tmp_path / name)).eval()
    assert loaded.num_classes == 3
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_token_model_contract(name, tmp_path):
    """ViTs: the classifier contract with token features (B, 1 + T, D) in place of a feature map; at
    depth 2, since every block is alike and twelve ViT-B blocks cost a minute on this CPU."""
    model = zoo.create(name, num_classes=7, depth=2)
    x = torch.randn(2, 3, IMG, IMG)
    _check_cfg_forward_and_gradients(model, name, x)

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 3 and feats.shape[0] == 2 and feats.shape[-1] == model.num_features
        _check_head(model, feats, x)

    model = zoo.create(name, num_classes=3, drop_path_rate=0.1, depth=2).eval()
    zoo.save_pretrained(model, tmp_path / name)
    loaded = zoo.create(name, pretrained=str(tmp_path / name)).eval()
    assert loaded.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_features_only_rejects_bad_indices():
    with pytest.raises(IndexError, match="5 feature stages"):
        zoo.create("resnet18", features_only=True, out_indices=(1, 5))
    with pytest.raises(IndexError, match="twice"):
        zoo.create("resnet18", features_only=True, out_indices=(1, -4))
    last = zoo.create("resnet18", features_only=True, out_indices=(-1,))
    assert last.feature_info.channels() == [512]


def test_drop_path_and_drop_rate_act_only_in_training():
    model = zoo.create("resnet18", drop_rate=0.5, drop_path_rate=0.2)
    x = torch.randn(2, 3, IMG, IMG)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    rates = [blk.drop_path.drop_prob for stage in (model.layer1, model.layer4) for blk in stage
             if hasattr(blk.drop_path, "drop_prob")]
    assert rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


def test_quant_argument_is_validated_before_building():
    with pytest.raises(ValueError, match="w4a8"):
        zoo.create("resnet18", quant="w3a9")


@pytest.mark.parametrize("name", SR_MODELS)
def test_super_resolution_contract(name, tmp_path):
    """SR models: [0, 1] RGB in, x``scale`` out; features at input size; gradients; save and reload."""
    model = zoo.create(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and f"{cfg['first_conv']}.weight" in model.state_dict()
    scale = model.scale
    x = torch.rand(1, 3, 6, 5)  # odd sizes: nothing may assume even or square inputs
    out = model(x)
    assert out.shape == (1, 3, 6 * scale, 5 * scale)
    assert model.forward_features(x).shape == (1, model.num_features, 6, 5)
    out.square().mean().backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for _, g in grads)
    # HAN's attention gammas start at zero (as released), so their inner convs start without gradient
    nonzero = sum(bool(g.abs().sum() > 0) for _, g in grads)
    assert nonzero >= 0.95 * len(grads), [n for n, g in grads if not g.abs().sum() > 0][:5]
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 1, 6, 5))

    zoo.save_pretrained(model, tmp_path / name)
    loaded = zoo.create(name, pretrained=str(tmp_path / name)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)
