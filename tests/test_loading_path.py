"""One loading path: float and quantized files go through build_model alike, and zoo.create resolves
``pretrained`` once."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo import builder, factory, hub


@pytest.fixture(scope="module")
def quantized_file(tmp_path_factory):
    torch.manual_seed(0)
    spec = zoo.QuantSpec.parse("w4a8").with_(keep=("<first>",))  # the classifier quantized too
    model = zoo.create("seresnet18", num_classes=10, quant=spec).eval()
    assert type(model.fc).__name__ == "QuantLinear"
    path = tmp_path_factory.mktemp("q") / "seresnet18_w4a8.safetensors"
    zoo.save_quantized(model, path)
    return model, path


def test_a_quantized_file_gives_features(quantized_file):
    model, path = quantized_file
    features = zoo.create("seresnet18", pretrained=str(path), features_only=True, out_indices=(2, 4)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = features(x)
        want = model.forward_features(x)  # the last stage of the full quantized model
    assert [f.shape[1] for f in got] == [128, 512]
    torch.testing.assert_close(got[-1], want, rtol=0, atol=0)
    assert features.pretrained_cfg["file"] == str(path)


def test_a_quantized_file_takes_another_head(quantized_file):
    model, path = quantized_file
    three = zoo.create("seresnet18", pretrained=str(path), num_classes=3).eval()
    assert type(three.fc) is torch.nn.Linear and three.fc.out_features == 3  # re-sized: float, at its init
    assert not any(t.is_meta for t in three.state_dict().values())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(three.forward_features(x), model.forward_features(x), rtol=0, atol=0)
    assert any(r.name == "fc" and r.action == "kept" for r in three.quant_report)
    same = zoo.create("seresnet18", pretrained=str(path))  # the file's own head: quantized, outputs equal
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["float file", "quantized file", "folder", "state dict"])
def test_pretrained_is_resolved_once_per_create(kind, quantized_file, tmp_path, monkeypatch):
    calls = []
    real = hub.resolve_source

    def counting(spec, cfg):
        calls.append(spec)
        return real(spec, cfg)

    for module in (factory, builder):
        monkeypatch.setattr(module, "resolve_source", counting)
    float_model = zoo.create("resnet18", num_classes=4)
    if kind == "float file":
        spec = str(zoo.save_pretrained(float_model, tmp_path / "f") / "model.safetensors")
    elif kind == "folder":
        spec = str(zoo.save_pretrained(float_model, tmp_path / "f"))
    elif kind == "state dict":
        spec = float_model.state_dict()
    else:
        spec = str(quantized_file[1])
    name = "seresnet18" if kind == "quantized file" else "resnet18"
    zoo.create(name, pretrained=spec, num_classes=10 if kind == "quantized file" else 4)
    assert len(calls) == 1
