"""A machine without the network: weights come from the caches at once, or the error names the file and
the cache path to put it in; a release file's bare name gets the same answer as its tag."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo import network
from weights_helpers import assert_weights, put_in_hf_cache, random_sd
from weights_helpers import hf_cache  # noqa: F401 (fixture)

FAST_S = 1.0  # the offline answer; the hub client's retries took 70 s


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails, as on a machine without a route; counts the attempts."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(network, "_probes", {})  # no answer remembered from another test
    return attempts


@pytest.fixture
def hub_client_online(hf_cache, monkeypatch):  # noqa: F811 (fixture)
    """Neither offline switch on (the test sets the one it means): only the zoo can keep the client quiet."""
    from huggingface_hub import constants

    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # huggingface_hub read it at import
    return hf_cache


def _create_fails_fast(name: str, **kwargs) -> str:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        zoo.create(name, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < FAST_S, f"the error took {elapsed:.1f} s"
    return str(info.value)


@pytest.mark.parametrize("switch", ["ZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_hub_tag_fails_at_once_naming_file_and_cache(switch, hub_client_online, no_network, monkeypatch):
    monkeypatch.setenv(switch, "1")
    message = _create_fails_fast("seresnet50.a1_in1k", pretrained=True)
    assert not no_network, "an offline machine must not try the network"
    assert "model.safetensors" in message and f"{switch}=1" in message
    assert str(hub_client_online / "models--timm--seresnet50.a1_in1k") in message  # where to put it
    assert "hf download timm/seresnet50.a1_in1k" in message


def test_unreachable_hub_fails_at_once_without_retries(hub_client_online, no_network):
    message = _create_fails_fast("seresnet50.a1_in1k", pretrained=True)
    assert len(no_network) == 1, "one probe, then the cache only"
    assert "huggingface.co cannot be reached" in message
    assert str(hub_client_online / "models--timm--seresnet50.a1_in1k") in message


def test_unreachable_hub_still_loads_the_cached_copy(hub_client_online, no_network, tmp_path):
    sd = random_sd("resnet18", num_classes=10)
    save_file(sd, str(tmp_path / "model.safetensors"))
    put_in_hf_cache(hub_client_online, "org/cached", {"model.safetensors": (tmp_path / "model.safetensors").read_bytes()})
    start = time.perf_counter()
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained="hf-hub:org/cached"), sd)
    assert time.perf_counter() - start < 5 * FAST_S  # building and loading included


def test_unreachable_url_fails_at_once(torch_home, no_network, monkeypatch):
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    message = _create_fails_fast("fcanet50", pretrained=True)
    assert "github.com cannot be reached" in message
    assert str(torch_home / "hub" / "checkpoints" / "fca50.pth") in message


# ------------------------------------------------------------------------------ release files by name


@pytest.mark.parametrize("name, release, hint", [
    ("fcanet50", "fca50.pth", "https://github.com/cfzd/FcaNet/releases/download/v1.0/fca50.pth"),
    ("rcan_x2", "RCAN_BIX2.pt", "https://github.com/yulunzhang/RCAN"),
    ("rcan", "RCAN_BIX3.pt", "https://github.com/yulunzhang/RCAN"),  # a sibling architecture's release
    ("eca_resnet50", "eca_resnet50_k3557.pth.tar", "https://github.com/BangguWu/ECANet"),
    ("var_d16", "var_d16.pth", "https://huggingface.co/FoundationVision/var/resolve/main/var_d16.pth"),
])
def test_release_file_name_gets_the_tags_hint(name, release, hint, torch_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such file here
    message = _create_fails_fast(name, pretrained=release)
    assert "not a tag" not in message
    assert hint in message and str(torch_home / "hub" / "checkpoints" / release) in message


def test_release_file_name_of_a_submodel_gets_the_hint(torch_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _create_fails_fast("var", vae="vae_ch160v4096z32.pth")  # VAR's tokenizer argument
    assert str(torch_home / "hub" / "checkpoints" / "vae_ch160v4096z32.pth") in message


def test_release_file_name_loads_from_the_cache(torch_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = random_sd("fcanet50")
    target = torch_home / "hub" / "checkpoints" / "fca50.pth"
    target.parent.mkdir(parents=True)
    torch.save(sd, target)
    model = zoo.create("fcanet50", pretrained="fca50.pth")
    assert_weights(model, sd)
    assert model.pretrained_cfg["tag"] == "release_in1k"
    # a file of that name in the working folder is the user's file, not the release
    torch.save(random_sd("fcanet50", seed=2), tmp_path / "fca50.pth")
    assert zoo.create("fcanet50", pretrained="fca50.pth").pretrained_cfg["file"] == "fca50.pth"


def test_unknown_bare_name_is_still_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a tag of 'fcanet50'"):
        zoo.create("fcanet50", pretrained="fca51.pth")
    assert not Path("fca51.pth").exists()
