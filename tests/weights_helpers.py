"""Shared by the weight-loading tests: random state dicts, their files, and weight comparisons."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the snapshot a hub cache written here points at

# --------------------------------------------------------------------------------------------- helpers


def random_sd(arch: str = "resnet18", seed: int = 1, **kwargs) -> dict[str, torch.Tensor]:
    """A state dict of ``arch`` whose every float tensor is random, so a copy cannot pass by chance
    (BatchNorm's init of ones and zeros would match any other fresh model)."""
    torch.manual_seed(seed)
    sd = zoo.create(arch, **kwargs).state_dict()
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g).abs() + 0.1 if "running_var" in k else torch.randn(v.shape, generator=g))
            if v.is_floating_point() else v.clone() for k, v in sd.items()}


def put_in_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT, ref: str = "main") -> Path:
    """The layout huggingface_hub writes: blobs by hash, snapshot links per commit, refs/<branch>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        try:
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # no symlinks (Windows without developer mode): the cache then holds copies
            (snapshot / name).write_bytes(data)
    return snapshot


def assert_weights(model: torch.nn.Module, expected: dict, skip: tuple[str, ...] = ()) -> None:
    got = model.state_dict()
    want = {k: v for k, v in expected.items() if k not in skip}
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, in_chans: int = 3, forward: bool = False) -> None:
    """Same keys and bit-identical tensors; ``forward`` also runs both (this CPU is slow: only where it adds)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    if forward:
        x = torch.randn(1, in_chans, 16, 16)
        with torch.no_grad():
            ya, yb = a.eval()(x), b.eval()(x)
        assert ya.shape == (1, a.num_classes) and torch.equal(ya, yb)


class NotAWeight:
    """A custom object: a pickle holding it is not weights-only."""

    def __init__(self) -> None:
        self.payload = 42


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache, with the hub client offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    # hf_hub_download reads both at call time; HF_HUB_OFFLINE was fixed at import from the environment
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def sd10() -> dict[str, torch.Tensor]:
    """resnet18 with 10 classes, random weights."""
    return random_sd("resnet18", seed=1, num_classes=10)


@pytest.fixture(scope="module")
def sd1000() -> dict[str, torch.Tensor]:
    """resnet18 with its 1000-class ImageNet head (the layout of the tv_in1k release), random weights."""
    return random_sd("resnet18", seed=2)


@pytest.fixture(scope="module")
def sd10_files(tmp_path_factory, sd10) -> dict[str, Path]:
    """sd10 written once per module: safetensors, torch zip and legacy formats."""
    folder = tmp_path_factory.mktemp("sd10")
    files = {"safetensors": folder / "weights.safetensors", "zip": folder / "weights.pth",
             "legacy": folder / "weights_legacy.pth"}
    save_file(sd10, str(files["safetensors"]))
    torch.save(sd10, files["zip"])
    torch.save(sd10, files["legacy"], _use_new_zipfile_serialization=False)
    return files


class MarkerPayload:
    """Unpickling this creates ``marker``: what an attacker's checkpoint would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def payload_checkpoint(path: Path, marker: Path, **entries) -> Path:
    """A torch file holding ``entries`` and a :class:`MarkerPayload` that creates ``marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**entries, "payload": MarkerPayload(marker)}, path)
    return path
