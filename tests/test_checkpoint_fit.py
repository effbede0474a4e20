"""What zoo.create does with the weights it reads: timm's head and first-conv adaptation, the strict
key and shape check that names every mismatch, and corrupt or unsafe files refused with a sentence."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import zoo
from weights_helpers import NotAWeight, assert_weights, random_sd, sd10, sd10_files, sd1000  # noqa: F401 (fixtures)


# ------------------------------------------------------------------------------ 7: adaptation, as timm


def test_num_classes_adaptation(sd1000):
    model = zoo.create("resnet18", num_classes=10, pretrained=sd1000)
    torch.manual_seed(0)
    fresh = zoo.create("resnet18", num_classes=10)
    assert_weights(model, sd1000, skip=("fc.weight", "fc.bias"))
    assert model.fc.weight.shape == (10, 512) and model.fc.bias.shape == (10,)
    # the head is the model's own init, exactly as an unloaded model draws it
    assert torch.equal(model.fc.weight, fresh.fc.weight) and torch.equal(model.fc.bias, fresh.fc.bias)
    assert not torch.equal(model.fc.weight, sd1000["fc.weight"][:10])


def test_num_classes_zero_drops_the_head(sd1000):
    model = zoo.create("resnet18", num_classes=0, pretrained=sd1000)
    assert_weights(model, sd1000, skip=("fc.weight", "fc.bias"))
    assert isinstance(model.fc, torch.nn.Identity) and "fc.weight" not in model.state_dict()


@pytest.mark.parametrize("in_chans", [1, 5, 7])
def test_in_chans_adaptation(sd1000, in_chans):
    w = sd1000["conv1.weight"]
    model = zoo.create("resnet18", in_chans=in_chans, pretrained=sd1000)
    if in_chans == 1:
        expected = w.sum(dim=1, keepdim=True)
    else:
        expected = w.repeat(1, -(-in_chans // 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    assert model.conv1.weight.shape == (64, in_chans, 7, 7)
    assert torch.equal(model.conv1.weight, expected)
    assert_weights(model, sd1000, skip=("conv1.weight",))
    if in_chans == 5:
        torch.testing.assert_close(model.conv1.weight, w.repeat(1, 2, 1, 1)[:, :5] * 3 / 5)
    # the first conv sees a grey image as the original sees it replicated to R = G = B
    if in_chans == 1:
        x = torch.randn(2, 1, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(model.conv1(x), torch.nn.functional.conv2d(x.expand(-1, 3, -1, -1), w, stride=2, padding=3))


def test_adaptation_via_checkpoint_path(tmp_path, sd1000):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd1000.items()}}, path)
    model = zoo.create("resnet18", num_classes=10, in_chans=1, checkpoint_path=str(path))
    assert torch.equal(model.conv1.weight, sd1000["conv1.weight"].sum(dim=1, keepdim=True))
    assert_weights(model, sd1000, skip=("conv1.weight", "fc.weight", "fc.bias"))
    assert model.fc.weight.shape == (10, 512)
    assert "checkpoint_path" not in model.model_args

    model5 = zoo.create("resnet18", in_chans=5, checkpoint_path=str(path))
    w = sd1000["conv1.weight"]
    torch.testing.assert_close(model5.conv1.weight, w.repeat(1, 2, 1, 1)[:, :5] * 3 / 5)
    assert_weights(model5, sd1000, skip=("conv1.weight",))


def test_checkpoint_path_after_pretrained(sd10_files, sd1000, sd10):
    """checkpoint_path is loaded after pretrained, so its weights win."""
    path = sd10_files["safetensors"]
    model = zoo.create("resnet18", num_classes=10, pretrained=sd1000, checkpoint_path=str(path))
    assert_weights(model, sd10)


def test_attention_key_remap_between_releases():
    """An SE checkpoint keyed ``se_module`` (another release's name) loads into zoo's ``se``."""
    sd = random_sd("seresnet18", seed=7, num_classes=10)
    renamed = {k.replace(".se.", ".se_module."): v for k, v in sd.items()}
    assert renamed != sd
    assert_weights(zoo.create("seresnet18", num_classes=10, pretrained=renamed), sd)


# ------------------------------------------------------------------------------------------ 8: bad input


def test_missing_keys(sd1000):
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet34", pretrained=sd1000)
    message = str(info.value)
    assert "missing keys" in message and "layer1.2.conv1.weight" in message
    assert "ResNet" in message


def test_unexpected_keys(sd1000):
    sd = {**sd1000, "extra.weight": torch.zeros(3)}
    with pytest.raises(zoo.CheckpointError, match=r"unexpected keys \(1\): extra\.weight"):
        zoo.create("resnet18", pretrained=sd)


def test_mis_shaped_key(sd1000):
    sd = dict(sd1000)
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet18", pretrained=sd)
    message = str(info.value)
    assert "layer2.0.conv1.weight" in message
    assert "(128, 64, 1, 1)" in message and "(128, 64, 3, 3)" in message


def test_mis_shaped_file_names_the_file(tmp_path, sd1000):
    sd = dict(sd1000)
    sd["bn1.weight"] = torch.zeros(32)
    path = tmp_path / "bad_shape.safetensors"
    save_file(sd, str(path))
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet18", pretrained=str(path))
    assert str(path) in str(info.value) and "bn1.weight" in str(info.value)
    assert "(32,)" in str(info.value) and "(64,)" in str(info.value)


def test_failed_fit_leaves_the_model_untouched(sd1000, sd10):
    """Every key is checked before anything is copied: a checkpoint that does not fit changes nothing."""
    from zoo.checkpoint import load_into

    model = zoo.create("resnet18", pretrained=sd1000)
    bad = {**sd10, "layer4.1.bn2.bias": torch.zeros(3)}
    bad.pop("fc.weight"), bad.pop("fc.bias")
    with pytest.raises(zoo.CheckpointError, match="layer4.1.bn2.bias"):
        load_into(model, bad, source="bad", first_conv="conv1", classifier="fc")
    assert_weights(model, sd1000)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_truncated_safetensors(tmp_path, sd10_files, suffix):
    full = sd10_files["safetensors"]
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(full.read_bytes()[:100])
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet18", num_classes=10, pretrained=str(path))
    assert str(path) in str(info.value)
    assert "refusing" not in str(info.value)


def test_truncated_safetensors_tail(tmp_path, sd10_files):
    full = sd10_files["safetensors"]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(zoo.CheckpointError, match="truncated"):
        zoo.create("resnet18", num_classes=10, pretrained=str(path))


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_pth(tmp_path, seed):
    g = torch.Generator().manual_seed(seed)
    path = tmp_path / "garbage.pth"
    path.write_bytes(bytes(torch.randint(0, 256, (64 + 997 * seed,), generator=g, dtype=torch.uint8).tolist()))
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet18", pretrained=str(path))
    assert str(path) in str(info.value)
    # a corrupt file is not a security refusal
    assert "refusing" not in str(info.value)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_torch_file(tmp_path, sd10_files, fmt):
    full = sd10_files[fmt]
    path = tmp_path / "cut.pth"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet18", num_classes=10, pretrained=str(path))
    assert str(path) in str(info.value) and "refusing" not in str(info.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_not_weights_only_pickle_is_refused(tmp_path, sd10, legacy):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": sd10, "obj": NotAWeight()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("resnet18", num_classes=10, pretrained=str(path))
    assert "refusing" in str(info.value) and str(path) in str(info.value)
    # the same via checkpoint_path
    with pytest.raises(zoo.CheckpointError, match="refusing"):
        zoo.create("resnet18", num_classes=10, checkpoint_path=str(path))


def test_nonexistent_path(tmp_path):
    path = tmp_path / "does_not_exist.pth"
    with pytest.raises(FileNotFoundError) as info:
        zoo.create("resnet18", pretrained=str(path))
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        zoo.create("resnet18", checkpoint_path=str(path))
    assert str(path) in str(info.value)


def test_no_tensors_in_checkpoint(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(zoo.CheckpointError, match="no tensors.*epoch"):
        zoo.create("resnet18", pretrained=str(path))


def test_bad_pretrained_type():
    with pytest.raises(TypeError, match="pretrained"):
        zoo.create("resnet18", pretrained=3.5)


def test_unknown_model_name():
    with pytest.raises(KeyError) as info:
        zoo.create("seresnet5")
    assert "seresnet5" in str(info.value) and "seresnet50" in str(info.value)


def test_unknown_kwarg():
    with pytest.raises(TypeError) as info:
        zoo.create("resnet18", num_clases=10)
    assert "num_clases" in str(info.value) and "'num_classes'" in str(info.value)


def test_wrong_channel_count_at_forward():
    model = zoo.create("resnet18")
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 4, 32, 32))
    message = str(info.value)
    assert "(B, 3, H, W)" in message and "(1, 4, 32, 32)" in message and "in_chans=4" in message
