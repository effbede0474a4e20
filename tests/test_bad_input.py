"""Bad input from a careless or hostile user (issue 18): every case is refused before any work, with a
typed exception whose message names the thing to fix; no file runs code; damaged files are refused.

Each test asserts the exception type and the words that tell the user what to change, so a check that
disappears (a silent result, or torch's own traceback) fails here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from zoo.__main__ import main
from zoo.checkpoint import DIGEST_KEY, CheckpointError, content_digest, read_checkpoint
from zoo.data.images import read_image
from zoo.generation import generate, sample_grid
from zoo.hub import save_pretrained
from zoo.inference import upscale
from zoo.quant.io import META_KEY, save_quantized
from weights_helpers import payload_checkpoint

# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    """resnet18 with 10 classes and random weights (BatchNorm statistics included)."""
    torch.manual_seed(0)
    model = zoo.create("resnet18", num_classes=10).eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.1)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, resnet) -> Path:
    """resnet written by save_pretrained (safetensors + config.json)."""
    return save_pretrained(resnet, tmp_path_factory.mktemp("saved") / "resnet18")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """A w8a8 resnet18 written by save_quantized."""
    model = zoo.create("resnet18", num_classes=10, quant="w8a8")
    return save_quantized(model, tmp_path_factory.mktemp("quant") / "q.safetensors")


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """One tiny model of each family whose entry point is checked."""
    torch.manual_seed(0)
    vae = zoo.create("vqvae", ch=32, vocab_size=32, z_channels=8, patch_nums=(1, 2, 4))
    return {
        "rcan": zoo.create("rcan", n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4).eval(),
        "han": zoo.create("han", n_resgroups=10, n_resblocks=1, n_feats=32, reduction=4).eval(),
        "resnet": zoo.create("resnet18", num_classes=10).eval(),
        "channelvit": zoo.create("channelvit", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2).eval(),
        "lm": zoo.create("moc_lm_tiny").eval(),
        "var": zoo.create("var", vae=vae, num_classes=10, depth=1, embed_dim=32, num_heads=2,
                          patch_nums=(1, 2, 4)).eval(),
    }


def _copy_with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of a saved folder whose config.json has ``changes`` (``model_args.x`` reaches inside)."""
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    config = json.loads((src / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("model_args."):
            config["model_args"][key.split(".", 1)[1]] = value
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _flip_safetensors_data(path: Path, count: int = 4096) -> None:
    """Overwrite ``count`` bytes in the middle of the tensor data (after the header), leaving the header
    intact: safetensors itself still reads the file."""
    raw = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")
    middle = (data_start + len(raw)) // 2
    raw[middle:middle + count] = bytes(b ^ 0x5A for b in raw[middle:middle + count])
    path.write_bytes(bytes(raw))


def _assert_one_sentence(exc: BaseException, *words: str) -> None:
    """The message names every word (case-insensitive) and is one line."""
    text = str(exc.args[0] if isinstance(exc, KeyError) else exc)
    for word in words:
        assert word.lower() in text.lower(), (word, text)
    assert "\n" not in text, text


# ----------------------------------------------------------------------------------- integrity record


def test_content_digest_is_order_and_container_independent_but_sees_every_byte() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = content_digest({"a": t, "b": [1, 2.5, "x"], "c": {0: t[0]}})
    assert base == content_digest({"c": {0: t[0].clone()}, "b": (1, 2.5, "x"), "a": t.clone()})
    flipped = t.clone()
    flipped.view(torch.int32)[1, 2] ^= 1  # one bit of one float
    assert content_digest({"a": flipped, "b": [1, 2.5, "x"], "c": {0: t[0]}}) != base
    assert content_digest({"a": t.to(torch.float64), "b": [1, 2.5, "x"], "c": {0: t[0]}}) != base  # dtype counts
    assert content_digest({"a": t.reshape(3, 2), "b": [1, 2.5, "x"], "c": {0: t[0]}}) != base  # shape counts
    assert content_digest({"a": t, "b": [1, 2.5, "y"], "c": {0: t[0]}}) != base  # plain values count
    assert content_digest({"a": t, "b": [1, 2.5, "x"], "c": {"0": t[0]}}) != base  # 0 and "0" differ


def test_saved_folder_carries_a_digest_and_refuses_flipped_bytes(saved, resnet, tmp_path) -> None:
    with safe_open(str(saved / "model.safetensors"), framework="pt") as fh:
        assert fh.metadata()[DIGEST_KEY] == content_digest(load_file(str(saved / "model.safetensors")))
    loaded = zoo.create("resnet18", pretrained=str(saved))  # unchanged: loads, bit for bit
    for key, value in resnet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    bad = _copy_with_config(saved, tmp_path / "bad")
    _flip_safetensors_data(bad / "model.safetensors")
    load_file(str(bad / "model.safetensors"))  # the damage is invisible to safetensors itself
    with pytest.raises(CheckpointError) as info:
        zoo.create("resnet18", pretrained=str(bad), num_classes=10)
    _assert_one_sentence(info.value, str(bad / "model.safetensors"), "corrupt", "re-download")


def test_quantized_file_carries_a_digest_and_refuses_flipped_bytes(quantized, tmp_path) -> None:
    zoo.create("resnet18", pretrained=str(quantized), num_classes=10)  # unchanged: loads
    bad = tmp_path / "q.safetensors"
    bad.write_bytes(quantized.read_bytes())
    _flip_safetensors_data(bad)
    with pytest.raises(CheckpointError) as info:
        zoo.create("resnet18", pretrained=str(bad), num_classes=10)
    _assert_one_sentence(info.value, str(bad), "corrupt")


def test_torch_file_with_a_digest_is_verified_and_returned_without_it(tmp_path) -> None:
    """The contract train.py's checkpoints use: a top-level DIGEST_KEY over the dict without it."""
    marker = torch.full((4096,), 1.25)  # a run of bytes that is easy to find in the file
    tree = {"state_dict": {"w": marker, "b": torch.zeros(3)}, "epoch": 3, "loops": {"step": [1, 2]}}
    path = tmp_path / "run.ckpt"
    torch.save({**tree, DIGEST_KEY: content_digest(tree)}, path)
    got = read_checkpoint(path)
    assert DIGEST_KEY not in got and got["epoch"] == 3 and torch.equal(got["state_dict"]["w"], marker)
    raw = bytearray(path.read_bytes())
    at = raw.find(marker[:16].numpy().tobytes()) + 1024
    assert at > 1024
    raw[at:at + 4096] = bytes(b ^ 0x5A for b in raw[at:at + 4096])
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    _assert_one_sentence(info.value, str(path), "corrupt")


def test_files_without_a_digest_load_as_before(tmp_path, resnet) -> None:
    """Third-party files carry no record: nothing to check, nothing refused."""
    sd = {k: v.contiguous() for k, v in resnet.state_dict().items()}
    save_file(sd, str(tmp_path / "plain.safetensors"))
    torch.save(sd, tmp_path / "plain.pth")
    for name in ("plain.safetensors", "plain.pth"):
        model = zoo.create("resnet18", pretrained=str(tmp_path / name), num_classes=10)
        assert torch.equal(model.fc.weight, resnet.fc.weight)


# ----------------------------------------------------------------------------------- dtypes and values


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_or_bool_weights_are_refused_naming_key_and_dtypes(tmp_path, resnet, dtype) -> None:
    sd = {k: (v.to(dtype) if k == "conv1.weight" else v).contiguous() for k, v in resnet.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=rf"conv1\.weight: checkpoint {dtype} vs model torch\.float32"):
        zoo.create("resnet18", pretrained=str(tmp_path / "w.safetensors"), num_classes=10)


def test_float_weights_of_another_precision_still_load(tmp_path, resnet) -> None:
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in resnet.state_dict().items()}
    save_file(sd, str(tmp_path / "w16.safetensors"))
    model = zoo.create("resnet18", pretrained=str(tmp_path / "w16.safetensors"), num_classes=10)
    assert model.conv1.weight.dtype == torch.float32
    assert torch.equal(model.conv1.weight, resnet.conv1.weight.half().float())


def test_float_where_integer_codes_belong_is_refused(quantized, tmp_path) -> None:
    with safe_open(str(quantized), framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != DIGEST_KEY}
    tensors = load_file(str(quantized))
    key = next(k for k in tensors if k.endswith("qweight"))
    tensors[key] = tensors[key].float()
    save_file(tensors, str(tmp_path / "q.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"{key}.*torch\.float32"):
        zoo.create("resnet18", pretrained=str(tmp_path / "q.safetensors"), num_classes=10)


def test_non_finite_weights_warn_naming_the_keys(resnet) -> None:
    sd = dict(resnet.state_dict())
    sd["layer1.0.conv1.weight"] = torch.full_like(sd["layer1.0.conv1.weight"], float("nan"))
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], float("inf"))
    with pytest.warns(UserWarning, match=r"layer1\.0\.conv1\.weight, fc\.bias hold NaN or infinite"):
        zoo.create("resnet18", pretrained=sd, num_classes=10)


def test_all_zero_quantization_scales_warn(quantized, tmp_path) -> None:
    with safe_open(str(quantized), framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != DIGEST_KEY}
    tensors = load_file(str(quantized))
    key = next(k for k in tensors if k.endswith("weight_scale"))
    tensors[key] = torch.zeros_like(tensors[key])
    save_file(tensors, str(tmp_path / "q.safetensors"), metadata=meta)
    with pytest.warns(UserWarning, match=rf"{key} are all zero"):
        zoo.create("resnet18", pretrained=str(tmp_path / "q.safetensors"), num_classes=10)


# ---------------------------------------------------------------------------- config.json and arguments


@pytest.mark.parametrize("changes, exc, words", [
    ({"architecture": 5}, ValueError, ["'architecture'", "got 5"]),
    ({"architecture": "resnet_18"}, ValueError, ["'resnet_18'", "resnet18", "'architecture'"]),
    ({"model_args": "num_classes=10"}, ValueError, ["'model_args'", "got a str"]),
    ({"model_args": [10]}, ValueError, ["'model_args'", "got a list"]),
    ({"pretrained_cfg": "imagenet"}, ValueError, ["'pretrained_cfg'"]),
    ({"num_classes": "ten", "model_args.num_classes": "ten"}, TypeError, ["num_classes", "'ten'"]),
    ({"num_classes": 10**9, "model_args.num_classes": 10**9}, ValueError, ["num_classes", "1000000000", "0..1000000"]),
    ({"num_classes": -1, "model_args.num_classes": -1}, ValueError, ["num_classes", "gives -1"]),
    ({"model_args.num_classes": -1}, ValueError, ["num_classes", "model_args"]),
])
def test_malformed_config_json_is_refused_naming_the_file(saved, tmp_path, changes, exc, words) -> None:
    folder = _copy_with_config(saved, tmp_path / "m", **changes)
    with pytest.raises(exc) as info:
        zoo.create("local-dir:" + str(folder))
    _assert_one_sentence(info.value, str(folder), *words)


def test_config_json_that_is_not_an_object(saved, tmp_path) -> None:
    folder = _copy_with_config(saved, tmp_path / "m")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError) as info:
        zoo.create("resnet18", pretrained=str(folder))
    _assert_one_sentence(info.value, str(folder / "config.json"), "JSON object")


@pytest.mark.parametrize("value, exc", [(-1, ValueError), ("ten", TypeError), (10**9, ValueError), (2.5, TypeError),
                                        (True, TypeError)])
def test_num_classes_argument_is_checked_before_building(value, exc) -> None:
    with pytest.raises(exc) as info:
        zoo.create("resnet18", num_classes=value)
    _assert_one_sentence(info.value, "num_classes", "resnet18", repr(value) if isinstance(value, str) else str(value))


def test_sampling_a_model_that_is_not_a_generator_says_so_before_reading_weights() -> None:
    from zoo.generation import load_for_sampling

    with pytest.raises(ValueError) as info:
        load_for_sampling("resnet18", weights="/no/such/weights.safetensors")
    _assert_one_sentence(info.value, "resnet18 is not a VAR model", "var_d16")


def test_model_name_must_be_a_string() -> None:
    with pytest.raises(TypeError) as info:
        zoo.create(5)
    _assert_one_sentence(info.value, "model name", "int")


@pytest.mark.parametrize("edit, words", [
    (lambda meta: meta.pop("spec"), ["'spec'"]),
    (lambda meta: meta.pop("layers"), ["'layers'"]),
    (lambda meta: meta.update(spec={"weight_bits": 8, "no_such_field": 1}), ["spec", "no_such_field"]),
    (lambda meta: next(iter(meta["layers"].values())).pop("in_channels"), ["layer", "in_channels"]),
    ("{not json", ["not valid JSON"]),
])
def test_malformed_quantization_metadata_names_the_file(quantized, tmp_path, edit, words) -> None:
    with safe_open(str(quantized), framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != DIGEST_KEY}
    if isinstance(edit, str):
        meta[META_KEY] = edit
    else:
        record = json.loads(meta[META_KEY])
        edit(record)
        meta[META_KEY] = json.dumps(record)
    path = tmp_path / "q.safetensors"
    save_file(load_file(str(quantized)), str(path), metadata=meta)
    with pytest.raises(CheckpointError) as info:
        zoo.create("resnet18", pretrained=str(path), num_classes=10)
    _assert_one_sentence(info.value, str(path), "save_quantized", *words)


# ----------------------------------------------------------------------------------------- model inputs

_IMG = torch.rand(1, 3, 8, 8)
_IMG32 = torch.rand(1, 3, 32, 32)

# (model, call, exception, words): each call is something a user typed that used to give garbage or a
# traceback from deep inside torch
INPUT_CASES: dict[str, tuple[str, Callable, type, list[str]]] = {
    "sr uint8": ("rcan", lambda m: m((_IMG * 255).to(torch.uint8)), TypeError, ["rcan", "uint8", "255", "zoo.inference.upscale"]),
    "sr 0..255 floats": ("rcan", lambda m: m(_IMG * 255), ValueError, ["[0, 1]", "divide by 255", "zoo.inference.upscale"]),
    "sr 0x0": ("rcan", lambda m: m(torch.rand(1, 3, 0, 0)), ValueError, ["0x0", "at least one pixel"]),
    "sr list": ("rcan", lambda m: m(_IMG.tolist()), TypeError, ["torch.Tensor", "list"]),
    "han uint8": ("han", lambda m: m((_IMG * 255).to(torch.uint8)), TypeError, ["han", "uint8", "255"]),
    "han 0..255 floats": ("han", lambda m: m(_IMG * 255), ValueError, ["divide by 255", "zoo.inference.upscale"]),
    "han 0x4": ("han", lambda m: m(torch.rand(1, 3, 0, 4)), ValueError, ["0x4"]),
    "cnn int64": ("resnet", lambda m: m((_IMG32 * 255).long()), TypeError, ["resnet18", "float", "int64", "x.float()"]),
    "cnn fp16 into fp32": ("resnet", lambda m: m(_IMG32.half()), TypeError, ["float32", "float16", "x.to(torch.float32)"]),
    "cnn list": ("resnet", lambda m: m(_IMG32.tolist()), TypeError, ["torch.Tensor", "list", "torch.as_tensor"]),
    "cnn 3-D": ("resnet", lambda m: m(_IMG32[0]), ValueError, ["(B, 3, H, W)", "(3, 32, 32)"]),
    "cnn 0x0": ("resnet", lambda m: m(torch.rand(1, 3, 0, 0)), ValueError, ["0x0"]),
    "vit int": ("channelvit", lambda m: m((_IMG32 * 255).long()), TypeError, ["float", "int64"]),
    "vit list": ("channelvit", lambda m: m(_IMG32.tolist()), TypeError, ["torch.Tensor", "list"]),
    "vit 5-D": ("channelvit", lambda m: m(_IMG32[None]), ValueError, ["(B, C_in, H, W)"]),
    "vit 0x0": ("channelvit", lambda m: m(torch.rand(1, 3, 0, 0)), ValueError, ["0x0"]),
    "lm id above vocab": ("lm", lambda m: m(torch.tensor([[1, 300]])), ValueError, ["0..256", "vocab_size=257", "300"]),
    "lm negative id": ("lm", lambda m: m(torch.tensor([[-3, 1]])), ValueError, ["0..256", "-3"]),
    "lm empty batch": ("lm", lambda m: m(torch.zeros(0, 4, dtype=torch.long)), ValueError, ["empty batch", "B = 0"]),
    "lm list": ("lm", lambda m: m([[1, 2]]), TypeError, ["torch.Tensor", "list"]),
    "lm float ids": ("lm", lambda m: m(torch.rand(1, 4)), ValueError, ["token ids", "float32"]),
    "generate temperature nan": ("lm", lambda m: generate(m, torch.tensor([[1, 2]]), 2, temperature=float("nan")),
                                 ValueError, ["temperature", "nan"]),
    "generate temperature inf": ("lm", lambda m: generate(m, torch.tensor([[1, 2]]), 2, temperature=float("inf")),
                                 ValueError, ["temperature", "finite"]),
    "generate top_k 0": ("lm", lambda m: generate(m, torch.tensor([[1, 2]]), 2, top_k=0), ValueError, ["top_k", "0"]),
    "generate top_p 1.5": ("lm", lambda m: generate(m, torch.tensor([[1, 2]]), 2, top_p=1.5), ValueError, ["top_p", "1.5"]),
    "generate top_p nan": ("lm", lambda m: generate(m, torch.tensor([[1, 2]]), 2, top_p=float("nan")), ValueError, ["top_p"]),
    "generate prompt outside vocab": ("lm", lambda m: generate(m, torch.tensor([[1, 257]]), 2), ValueError, ["257", "vocab_size"]),
    "var cfg nan": ("var", lambda m: m.autoregressive_infer_cfg(1, 3, cfg=float("nan")), ValueError, ["cfg", "finite", "nan"]),
    "var top_k -1": ("var", lambda m: m.autoregressive_infer_cfg(1, 3, top_k=-1), ValueError, ["top_k", "-1"]),
    "var top_k float": ("var", lambda m: m.autoregressive_infer_cfg(1, 3, top_k=2.5), ValueError, ["top_k", "2.5"]),
    "var top_p nan": ("var", lambda m: m.autoregressive_infer_cfg(1, 3, top_p=float("nan")), ValueError, ["top_p", "nan"]),
    "var top_p 1.5": ("var", lambda m: m.autoregressive_infer_cfg(1, 3, top_p=1.5), ValueError, ["top_p", "[0, 1]"]),
    "var zero images": ("var", lambda m: m.autoregressive_infer_cfg(0, 3), ValueError, ["B", ">= 1", "got 0"]),
    "var labels of str": ("var", lambda m: m.autoregressive_infer_cfg(2, ["a", "b"]), ValueError, ["label_B", "['a', 'b']"]),
    "var labels too few": ("var", lambda m: m.autoregressive_infer_cfg(3, [1, 2]), ValueError, ["2 labels", "B=3"]),
    "var labels out of range": ("var", lambda m: m.autoregressive_infer_cfg(2, [1, 12]), ValueError, ["0..9", "12"]),
    "var label bool": ("var", lambda m: m.autoregressive_infer_cfg(1, True), ValueError, ["label_B", "True"]),
    "var forward empty batch": ("var", lambda m: m(torch.zeros(0, dtype=torch.long), torch.zeros(0, 20, 8)),
                                ValueError, ["empty batch", "B = 0"]),
    "sample_grid cfg nan": ("var", lambda m: sample_grid(m, "unused.png", 1, n=1, cfg=float("nan")), ValueError, ["cfg"]),
}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_bad_model_input_gets_a_sentence(models, case) -> None:
    name, call, exc, words = INPUT_CASES[case]
    with pytest.raises(exc) as info:
        call(models[name])
    _assert_one_sentence(info.value, *words)


def test_good_inputs_still_run(models) -> None:
    """The checks refuse only what is wrong: list labels, half-precision ViT input, autocast."""
    images = models["var"].autoregressive_infer_cfg(2, [1, 2], g_seed=0)
    assert images.shape == (2, 3, 64, 64)
    vit = models["channelvit"]
    with torch.no_grad():
        assert torch.allclose(vit(_IMG32.half()), vit(_IMG32), atol=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert models["resnet"](_IMG32.bfloat16()).shape == (1, 10)
    assert models["rcan"](_IMG).shape == (1, 3, 16, 16)


def test_input_checks_survive_graph_capture(models) -> None:
    """Value checks are skipped while compiling, so fullgraph capture still works."""
    rcan = torch.compile(models["rcan"], fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(rcan(_IMG), models["rcan"](_IMG), atol=1e-5)


def test_upscale_takes_uint8_images(models) -> None:
    """zoo.inference.upscale does the division the SR models' error message points to."""
    image = (torch.rand(3, 8, 8) * 255).to(torch.uint8)
    assert torch.equal(upscale(models["rcan"], image), upscale(models["rcan"], image.float() / 255))


@pytest.mark.parametrize("content, words", [(b"", ["is empty"]), (b"\x89PNG\r\n\x1a\nnot an image", ["not a readable image"])])
def test_undecodable_image_file_names_the_file(tmp_path, content, words) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_image(path)
    _assert_one_sentence(info.value, str(path), "re-export", *words)


# ----------------------------------------------------------------------------------------- pickled code


def _evil_file(path: Path, marker: Path) -> Path:
    return payload_checkpoint(path, marker, **{"conv1.weight": torch.zeros(64, 3, 7, 7)})


def test_payload_is_refused_even_when_the_environment_disables_weights_only(tmp_path, monkeypatch) -> None:
    canary = tmp_path / "canary"
    torch.load(_evil_file(tmp_path / "canary.pth", canary), weights_only=False)
    assert canary.exists()  # the payload does run when unpickled unsafely: the test below can fail
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.pth", marker)
    for load in (lambda: read_checkpoint(evil), lambda: zoo.create("resnet18", pretrained=str(evil)),
                 lambda: zoo.create("resnet18", checkpoint_path=str(evil))):
        with pytest.raises(CheckpointError) as info:
            load()
        _assert_one_sentence(info.value, str(evil), "refusing", "arbitrary code", "re-save only its tensors")
    assert main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--weights", str(evil)]) == 2
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, saved) -> dict[str, str]:
    """Paths the CLI cases point at: a saved SR model, an empty and a junk image, damaged folders."""
    root = tmp_path_factory.mktemp("cli")
    sr = save_pretrained(zoo.create("rcan", n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4), root / "sr")
    damaged = _copy_with_config(sr, root / "sr_damaged")
    _flip_safetensors_data(damaged / "model.safetensors", count=256)
    (root / "empty.png").write_bytes(b"")
    (root / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\njunk")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "ok.png")
    bad_config = _copy_with_config(saved, root / "bad_config", architecture=5)
    int_weights = root / "int.safetensors"
    save_file({k: (v.long() if k == "conv1.weight" else v).contiguous() for k, v in load_file(
        str(saved / "model.safetensors")).items()}, str(int_weights))
    return {"root": str(root), "sr": str(sr), "damaged": str(damaged), "empty": str(root / "empty.png"),
            "junk": str(root / "junk.png"), "ok": str(root / "ok.png"), "bad_config": str(bad_config),
            "int_weights": str(int_weights)}


CLI_CASES = {
    "upscale empty image": (["upscale", "{empty}", "{root}/o.png", "--model", "rcan", "--weights", "{sr}"],
                            ["empty.png", "is empty"]),
    "upscale junk image": (["upscale", "{junk}", "{root}/o.png", "--model", "rcan", "--weights", "{sr}"],
                           ["junk.png", "not a readable image"]),
    "upscale damaged weights": (["upscale", "{ok}", "{root}/o.png", "--model", "rcan", "--weights", "{damaged}"],
                                ["model.safetensors", "corrupt"]),
    "info bad config": (["info", "local-dir:{bad_config}"], ["config.json", "'architecture'"]),
    "quantize integer weights": (["quantize", "resnet18", "{root}/q.safetensors", "--weights", "{int_weights}"],
                                 ["conv1.weight", "torch.int64"]),
    "generate temperature nan": (["generate", "--model", "moc_lm_tiny", "--prompt", "a", "--temperature", "nan"],
                                 ["temperature", "nan"]),
    "generate top-p 2": (["generate", "--model", "moc_lm_tiny", "--prompt", "a", "--top-p", "2"], ["top_p"]),
    "sample cfg nan": (["sample", "{root}/g.png", "--model", "var", "--class", "1", "--cfg", "nan"], ["cfg", "nan"]),
    "sample top-k -1": (["sample", "{root}/g.png", "--model", "var", "--class", "1", "--top-k", "-1"], ["top_k"]),
    "sample top-p 1.5": (["sample", "{root}/g.png", "--model", "var", "--class", "1", "--top-p", "1.5"], ["top_p"]),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_errors_are_one_line_with_exit_code_2(cli_files, capsys, case) -> None:
    argv, words = CLI_CASES[case]
    assert main([arg.format(**cli_files) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word.lower() in err.lower(), (word, err)
