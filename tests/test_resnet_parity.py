"""Full ResNet-family parity: the official ECA-Net and FcaNet vectors, and timm's checkpoints."""
from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from safetensors.torch import load_file

import zoo


def seeded_state_dict(keys: list, model_state: dict) -> dict:
    """The vectors' seeded fill (../shared/vectors/README.md), walking the official key order."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, shape, dtype in keys:
        if dtype.startswith("int"):
            out[name] = torch.zeros(shape, dtype=torch.int64)
        elif name.endswith("dct_layer.weight"):
            out[name] = model_state[name].clone()  # the DCT filter is computed, and so is under test
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        elif name.endswith("running_mean"):
            out[name] = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) >= 2:
            out[name] = torch.randn(shape, generator=gen) * math.sqrt(1 / math.prod(shape[1:]))
        elif name.endswith("weight"):
            out[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = 0.1 * torch.randn(shape, generator=gen)
    return out


@pytest.mark.parametrize("arch,stem", [("eca_resnet50", "eca_resnet50_k3557"), ("fcanet50", "fcanet50")])
def test_official_release_layout_reproduces_logits(vectors, tmp_path, arch, stem):
    meta = json.loads((vectors / "attn" / f"{stem}.seeded.json").read_text())
    io = load_file(str(vectors / "attn" / f"{stem}.seeded_io.safetensors"))
    state = seeded_state_dict(meta["keys"], zoo.create(arch).state_dict())
    # the releases were saved from DataParallel inside a training checkpoint
    path = tmp_path / f"{stem}.pth.tar"
    torch.save({"epoch": 100, "arch": arch, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = zoo.create(arch, pretrained=str(path)).eval()
    for case in ("small", "native"):
        with torch.no_grad():
            logits = model(io[f"{case}.input"])
        torch.testing.assert_close(logits, io[f"{case}.logits_fp32"], atol=1e-4, rtol=0)
        torch.testing.assert_close(logits.double(), io[f"{case}.logits_fp64"], atol=1e-4, rtol=0)


def test_attention_matters_for_the_vectors(vectors):
    """Disabling ECA moves the logits far beyond the tolerance, so a pass above is meaningful."""
    meta = json.loads((vectors / "attn" / "eca_resnet50_k3557.seeded.json").read_text())
    io = load_file(str(vectors / "attn" / "eca_resnet50_k3557.seeded_io.safetensors"))
    model = zoo.create("eca_resnet50")
    model.load_state_dict(seeded_state_dict(meta["keys"], model.state_dict()))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in stage:
            blk.eca = torch.nn.Identity()
    with torch.no_grad():
        logits = model.eval()(io["small.input"])
    assert (logits - io["small.logits_fp32"]).abs().max() > 1e-2


def test_release_kernel_sizes_and_key_layout(vectors):
    meta = json.loads((vectors / "attn" / "eca_resnet50_k3557.seeded.json").read_text())
    model = zoo.create("eca_resnet50")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [(k, tuple(s)) for k, s, _ in meta["keys"]]
    assert [model.get_submodule(f"layer{i}.0.eca").k_size for i in range(1, 5)] == [3, 5, 5, 7]
    assert [zoo.create("eca_resnet50", k_size=(3, 3, 3, 3)).get_submodule(f"layer{i}.0.eca").k_size
            for i in range(1, 5)] == [3, 3, 3, 3]
    fca = json.loads((vectors / "attn" / "fcanet50.seeded.json").read_text())
    assert [(k, tuple(v.shape)) for k, v in zoo.create("fcanet50").state_dict().items()] == \
        [(k, tuple(s)) for k, s, _ in fca["keys"]]


def _perturbed_timm(name: str) -> tuple[torch.nn.Module, dict]:
    """A timm model with seeded weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = timm.create_model(name)
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            value = torch.rand(value.shape, generator=gen) * 0.5 + 0.75
        elif value.ndim == 1 and key.endswith("weight"):  # undo timm's zero-init of the last BN
            value = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.is_floating_point():
            value = value + 0.02 * torch.randn(value.shape, generator=gen)
        state[key] = value
    model.load_state_dict(state)
    return model.eval(), state


@pytest.mark.parametrize("name", ["seresnet50", "ecaresnet50d", "resnet50"])
def test_timm_checkpoints_give_timm_logits(timm_keys, name):
    timm_model, state = _perturbed_timm(name)
    if name in timm_keys:  # the key list recorded beside the vectors is what we load
        assert [k for k in state] == [k for k, _, _ in timm_keys[name]["keys"]]
    model = zoo.create(name, pretrained=state).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = timm_model(x), model(x)
    scale = expected.abs().max().item()
    assert (expected[0] - expected[1]).abs().max() > 1e-2 * scale  # outputs depend on the input
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in timm_model.parameters())


@pytest.fixture(scope="module")
def timm_keys(request):
    vectors = request.getfixturevalue("vectors")
    return json.loads((vectors / "attn" / "timm_keys.json").read_text())["models"]
