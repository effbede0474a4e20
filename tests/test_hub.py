"""Every weight source of ``zoo.create(name, pretrained=...)``, through the real loading code.

No test reaches the network: files, folders, the Hugging Face cache and the torch hub cache are
built here. Each test checks numbers (weights, outputs), not only that nothing raised.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from weights_helpers import assert_same_model, assert_weights, put_in_hf_cache, random_sd
from weights_helpers import hf_cache, sd10, sd10_files, sd1000  # noqa: F401 (fixtures)

# ---------------------------------------------------------------------------- 1-2: state dicts and files


def test_state_dict_in_memory(sd10):
    model = zoo.create("resnet18", num_classes=10, pretrained=sd10)
    assert_weights(model, sd10)
    assert model.fc.out_features == 10
    assert model.pretrained_cfg["file"] == "<state dict>" and model.pretrained_cfg["source"] == "user"


def test_safetensors_file(sd10_files, sd10):
    path = sd10_files["safetensors"]
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=str(path)), sd10)
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=path), sd10)  # a Path works too


def test_safetensors_file_without_suffix_is_recognised(tmp_path, sd10_files, sd10):
    path = tmp_path / "weights.bin"
    shutil.copyfile(sd10_files["safetensors"], path)
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=str(path)), sd10)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_file(sd10_files, sd10, legacy):
    path = sd10_files["legacy" if legacy else "zip"]
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=str(path)), sd10)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_torch_file_training_wrapper_and_prefixes(tmp_path, sd10, prefix):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet18", "best_acc1": 71.2,
                "state_dict": {prefix + k: v for k, v in sd10.items()}}, path)
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=str(path)), sd10)


def test_model_prefix_stripped_only_when_every_key_has_it(tmp_path, sd10):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in sd10.items()}, "global_step": 10}, path)
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=str(path)), sd10)


# ------------------------------------------------------------------------ 3: save_pretrained and folders


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A resnet18 (10 classes, 1 input channel) with random weights, saved with zoo.save_pretrained.
    Shared by the module: tests that write copy the folder first."""
    torch.manual_seed(3)
    model = zoo.create("resnet18", num_classes=10, in_chans=1)
    model.load_state_dict(random_sd("resnet18", seed=3, num_classes=10, in_chans=1))
    folder = tmp_path_factory.mktemp("saved") / "resnet18-grey"
    assert zoo.save_pretrained(model, folder) == folder
    return model, folder


def test_save_pretrained_layout(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # no temp files left
    config = json.loads((folder / "config.json").read_text())
    assert {"architecture", "num_classes", "model_args", "pretrained_cfg"} <= set(config)
    assert config["architecture"] == "resnet18"
    assert config["num_classes"] == 10
    assert config["model_args"] == {"num_classes": 10, "in_chans": 1}
    assert config["num_features"] == model.num_features == 512
    assert config["pretrained_cfg"]["architecture"] == "resnet18"
    assert config["pretrained_cfg"]["num_classes"] == 10
    # the saved folder is a source in itself, not the release it may have started from; timm's key set only
    assert not {"url", "file", "hf_hub_id", "source", "filename", "paper", "extra"} & set(config["pretrained_cfg"])
    assert config["zoo"]["pretrained_cfg"]["paper"] == "https://arxiv.org/abs/1512.03385"
    from safetensors.torch import load_file
    assert_weights(model, load_file(str(folder / "model.safetensors")))


def test_save_pretrained_overwrites_atomically(saved, tmp_path):
    model, folder = saved
    folder = Path(shutil.copytree(folder, tmp_path / "copy"))
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    zoo.save_pretrained(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert_same_model(zoo.create("resnet18", pretrained=str(folder)), model, in_chans=1)


@pytest.mark.parametrize("how", ["path", "pathlike", "local-dir", "name"])
def test_load_saved_folder(saved, how):
    model, folder = saved
    if how == "path":
        loaded = zoo.create("resnet18", pretrained=str(folder))
    elif how == "pathlike":
        loaded = zoo.create("resnet18", pretrained=folder)
    elif how == "local-dir":
        loaded = zoo.create("resnet18", pretrained="local-dir:" + str(folder))
    else:
        loaded = zoo.create("local-dir:" + str(folder), pretrained=True)
    # num_classes=10 and in_chans=1 come from config.json, not from the call
    assert loaded.fc.out_features == 10 and loaded.in_chans == 1 and loaded.conv1.in_channels == 1
    assert loaded.model_args == {"num_classes": 10, "in_chans": 1}
    assert loaded.pretrained_cfg["file"] == str(folder)
    assert_same_model(loaded, model, in_chans=1, forward=how == "name")


def test_saved_folder_explicit_kwargs_win(saved):
    model, folder = saved
    loaded = zoo.create("resnet18", pretrained=str(folder), num_classes=5)  # fine-tune: new head, same body
    assert loaded.fc.out_features == 5 and loaded.in_chans == 1
    assert_weights(loaded, model.state_dict(), skip=("fc.weight", "fc.bias"))


def test_local_dir_name_without_pretrained_builds_the_architecture_only(saved):
    model, folder = saved
    torch.manual_seed(0)
    fresh = zoo.create("local-dir:" + str(folder))
    assert fresh.fc.out_features == 10 and fresh.in_chans == 1
    assert not torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_save_and_reload_roundtrips_twice(saved, tmp_path):
    model, folder = saved
    again = tmp_path / "again"
    zoo.save_pretrained(zoo.create("local-dir:" + str(folder), pretrained=True), again)
    assert json.loads((again / "config.json").read_text())["model_args"] == {"num_classes": 10, "in_chans": 1}
    assert_same_model(zoo.create("local-dir:" + str(again), pretrained=True), model, in_chans=1)


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        zoo.create("resnet18", pretrained="local-dir:" + str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        zoo.create("local-dir:" + str(tmp_path / "empty"), pretrained=True)


# ------------------------------------------------------------------------------------- 4: hf-hub cache


def _hub_files(saved_folder: Path) -> dict[str, bytes]:
    return {name: (saved_folder / name).read_bytes() for name in ("model.safetensors", "config.json")}


def test_hf_hub_pretrained_string(hf_cache, saved):
    model, folder = saved
    snapshot = put_in_hf_cache(hf_cache, "org/repo", _hub_files(folder))
    loaded = zoo.create("resnet18", pretrained="hf-hub:org/repo")
    assert loaded.fc.out_features == 10 and loaded.in_chans == 1  # from the hub config.json
    assert loaded.pretrained_cfg["file"] == "hf-hub:org/repo"
    assert_same_model(loaded, model, in_chans=1)
    assert (snapshot / "model.safetensors").is_file()


def test_hf_hub_name(hf_cache, saved):
    model, folder = saved
    put_in_hf_cache(hf_cache, "org/repo", _hub_files(folder))
    loaded = zoo.create("hf-hub:org/repo", pretrained=True)
    assert loaded.fc.out_features == 10 and loaded.in_chans == 1
    assert_same_model(loaded, model, in_chans=1, forward=True)


def test_hf_hub_revision(hf_cache, saved, sd10, sd10_files):
    model, folder = saved
    put_in_hf_cache(hf_cache, "org/repo", _hub_files(folder))  # main
    other = "f" * 40
    put_in_hf_cache(hf_cache, "org/repo", {"model.safetensors": sd10_files["safetensors"].read_bytes(),
                                            "config.json": json.dumps({"architecture": "resnet18",
                                                                       "num_classes": 10}).encode()},
                     commit=other, ref="v2")
    assert_weights(zoo.create("resnet18", pretrained="hf-hub:org/repo@v2"), sd10)
    assert_weights(zoo.create("resnet18", pretrained=f"hf-hub:org/repo@{other}"), sd10)
    assert_same_model(zoo.create("hf-hub:org/repo@main", pretrained=True), model, in_chans=1)


def test_hf_hub_torch_bin_and_no_config(hf_cache, sd10, sd10_files):
    """A repository that has only pytorch_model.bin, and no config.json, still loads from the cache."""
    put_in_hf_cache(hf_cache, "org/binonly", {"pytorch_model.bin": sd10_files["zip"].read_bytes()})
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained="hf-hub:org/binonly"), sd10)
    # as a model name the config is needed (it names the architecture): the error says it is not cached
    with pytest.raises(FileNotFoundError, match=r"config\.json.*not in the Hugging Face cache"):
        zoo.create("hf-hub:org/binonly", pretrained=True)


def test_hf_hub_cfg_source(hf_cache, sd1000, tmp_path):
    """A registered cfg with hf_hub_id (timm's own releases) reads the same cache."""
    save_file(sd1000, str(tmp_path / "model.safetensors"))
    put_in_hf_cache(hf_cache, "timm/resnet18.test_in1k", {"model.safetensors": (tmp_path / "model.safetensors").read_bytes()})
    model = zoo.create("resnet18", pretrained=True,
                       pretrained_cfg_overlay={"url": "", "hf_hub_id": "timm/resnet18.test_in1k"})
    assert_weights(model, sd1000)
    assert model.pretrained_cfg["hf_hub_id"] == "timm/resnet18.test_in1k"
    # a whole cfg, as timm's create_model(pretrained_cfg=...) takes it: a PretrainedCfg or its dict
    cfg = zoo.get_pretrained_cfg("resnet18.tv_in1k").replace(url="", hf_hub_id="timm/resnet18.test_in1k")
    for given in (cfg, cfg.to_dict()):
        model = zoo.create("resnet18", pretrained=True, pretrained_cfg=given)
        assert_weights(model, sd1000)
        assert "pretrained_cfg" not in model.model_args


@pytest.mark.parametrize("how", ["pretrained", "name"])
def test_hf_hub_missing_repo(hf_cache, how):
    with pytest.raises(FileNotFoundError) as info:
        if how == "pretrained":
            zoo.create("resnet18", pretrained="hf-hub:org/missing")
        else:
            zoo.create("hf-hub:org/missing", pretrained=True)
    message = str(info.value)
    assert "org/missing" in message
    assert "cache" in message and str(hf_cache) in message
    assert "local-dir:" in message


# ------------------------------------------------------------------------------ 5: URLs and hand-placed


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_url_downloads_once_into_torch_hub_cache(torch_home, tmp_path, sd10, sd10_files, online):
    src = tmp_path / "remote" / "resnet18-10cls.pth"
    src.parent.mkdir()
    shutil.copyfile(sd10_files["zip"], src)
    url = src.as_uri()
    assert url.startswith("file://")
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=url), sd10)
    cached = torch_home / "hub" / "checkpoints" / "resnet18-10cls.pth"
    assert cached.is_file() and cached.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == ["resnet18-10cls.pth"]  # no partial download left
    src.unlink()  # the second call must not touch the source
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=url), sd10)


def test_url_download_failure_names_the_cache(torch_home, tmp_path, online):
    url = (tmp_path / "nowhere" / "gone.pth").as_uri()
    with pytest.raises(FileNotFoundError) as info:
        zoo.create("resnet18", pretrained=url)
    assert url in str(info.value)
    assert str(torch_home / "hub" / "checkpoints" / "gone.pth") in str(info.value)
    assert not (torch_home / "hub" / "checkpoints" / "gone.pth").exists()


def test_url_offline_without_cache(torch_home, sd10, sd10_files):
    src = sd10_files["zip"]  # exists, but offline nothing is fetched
    with pytest.raises(FileNotFoundError) as info:
        zoo.create("resnet18", num_classes=10, pretrained=src.as_uri())
    target = torch_home / "hub" / "checkpoints" / src.name
    assert "offline" in str(info.value) and str(target) in str(info.value)
    assert not target.exists()
    # placing the file where the message says makes it load, still offline
    target.parent.mkdir(parents=True)
    target.write_bytes(src.read_bytes())
    assert_weights(zoo.create("resnet18", num_classes=10, pretrained=src.as_uri()), sd10)


def test_hand_placed_filename(torch_home):
    cfg = zoo.get_pretrained_cfg("eca_resnet50.release_in1k")
    assert cfg.source == "manual" and cfg.filename == "eca_resnet50_k3557.pth.tar"
    target = torch_home / "hub" / "checkpoints" / cfg.filename
    with pytest.raises(FileNotFoundError) as info:
        zoo.create("eca_resnet50.release_in1k", pretrained=True)
    assert cfg.filename in str(info.value) and str(target) in str(info.value)

    torch.manual_seed(4)
    sd = zoo.create("eca_resnet50").state_dict()
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, target)  # as the release is saved
    torch.manual_seed(5)
    loaded = zoo.create("eca_resnet50.release_in1k", pretrained=True)
    assert_weights(loaded, sd)
    assert loaded.pretrained_cfg["tag"] == "release_in1k"


# ---------------------------------------------------------------------------------- 6: pretrained tags


@pytest.mark.parametrize("how", ["name", "tag-string"])
def test_pretrained_tag(torch_home, how):
    def create():
        if how == "name":
            return zoo.create("resnet18.tv_in1k", pretrained=True)
        return zoo.create("resnet18", pretrained="tv_in1k")

    target = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError) as info:
        create()
    assert "resnet18-f37072fd.pth" in str(info.value) and str(target) in str(info.value)

    torch.manual_seed(6)
    sd = zoo.create("resnet18").state_dict()
    target.parent.mkdir(parents=True)
    torch.save(sd, target)
    model = create()
    assert_weights(model, sd)
    assert model.pretrained_cfg["tag"] == "tv_in1k"
    assert model.pretrained_cfg["url"].endswith("resnet18-f37072fd.pth")
    if how == "name":  # tv_in1k is also resnet18's default tag
        assert_weights(zoo.create("resnet18", pretrained=True), sd)


def test_unknown_tag():
    with pytest.raises(KeyError, match="tv_in1k"):
        zoo.create("resnet18.in22k", pretrained=True)
def test_saved_preprocessing_survives_reload(tmp_path):
    model = zoo.create("resnet18", num_classes=4, pretrained_cfg_overlay={"mean": (0.5, 0.5, 0.5), "input_size": (3, 96, 96)})
    zoo.save_pretrained(model, tmp_path / "m")
    loaded = zoo.create("resnet18", pretrained=str(tmp_path / "m"))
    assert loaded.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert loaded.pretrained_cfg["input_size"] == (3, 96, 96)
    assert loaded.pretrained_cfg["architecture"] == "resnet18"

